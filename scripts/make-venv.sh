#!/bin/sh
# Create a Python virtual environment: make-venv.sh PYTHON DIR.
#
# The only thing `make dev` and `make serve` need from the system is a Python (3.11 or newer)
# whose venv module can bootstrap pip (ensurepip). Debian and Ubuntu ship ensurepip separately,
# in python3-venv; without it `python3 -m venv` leaves a half-made directory and a long message,
# so this checks first and then says in one line what to install.
set -eu
prog=make-venv
if [ $# -ne 2 ]; then
    echo "$prog: usage: make-venv.sh PYTHON DIR" >&2
    exit 2
fi
python=$1
dir=$2
if ! command -v "$python" >/dev/null 2>&1; then
    echo "$prog: error: $python not found; install Python 3.11 or newer (or pass PYTHON=...)" >&2
    exit 1
fi
if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    echo "$prog: error: $python has no venv/ensurepip; install python3-venv (Debian/Ubuntu: apt-get install python3-venv)" >&2
    exit 1
fi
exec "$python" -m venv "$dir"
