#!/bin/sh
# Install the Debian packages that `make test` needs (scripts/system-packages.txt), once.
#
# Fast when everything is there: one dpkg-query, no apt-get. Otherwise, as root with apt-get:
# `apt-get update` and `apt-get install` of the missing packages only. Without root or apt-get it
# stops at once with one line on stderr naming exactly what to install.
#
# ELF_SYSTEM_PACKAGES: another package list (the tests use one).
set -eu
prog=setup-system
list=${ELF_SYSTEM_PACKAGES:-$(dirname "$0")/system-packages.txt}
if [ ! -r "$list" ]; then
    echo "$prog: error: package list $list not found" >&2
    exit 2
fi
# Package names: the first word of every line that is not blank or a comment.
wanted=$(sed -e 's/#.*//' "$list" | awk 'NF { print $1 }' | tr '\n' ' ')

missing=""
if command -v dpkg-query >/dev/null 2>&1; then
    for pkg in $wanted; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
        [ "$status" = "installed" ] || missing="$missing $pkg"
    done
else
    missing=" ${wanted% }"
fi
missing=${missing# }
[ -z "$missing" ] && exit 0

install="apt-get install -y --no-install-recommends $missing"
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-query >/dev/null 2>&1; then
    echo "$prog: error: no apt-get/dpkg here; install the equivalents of these Debian packages: $missing" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "$prog: error: missing Debian packages; as root run: apt-get update && $install" >&2
    exit 1
fi
echo "$prog: installing $missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >&2
# shellcheck disable=SC2086  # word splitting of the package list is intended
apt-get install -y -q --no-install-recommends $missing >&2
