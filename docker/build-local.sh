#!/usr/bin/env bash
# Build the images of this repository on a machine that cannot pull from any image registry.
#
#   docker/build-local.sh [--force] [base|serving|train|stack|all]...   (default: all)
#
#   base     local/python:3.11-bookworm: Debian bookworm minbase + python3, venv, make and the CA
#            certificates, made by debootstrap from the Debian mirror in the machine's apt sources
#   serving  elf-serving:cpu   (docker/Dockerfile on that base)
#   train    elf-train:cpu     (docker/Dockerfile.train on that base; torch's CPU wheel from
#            ELF_TORCH_WHEELS, default /opt/wheels, when it holds one, else the PyTorch CPU index)
#   stack    elf-nginx:local, elf-prometheus:local (Debian's nginx and prometheus on that base;
#            used by docker-compose.test.yml instead of the upstream images)
#
# Idempotent: an image that exists is skipped; --force rebuilds every named image except the base
# (Docker's layer cache keeps unchanged layers). Needs root for debootstrap, and a running engine
# (DOCKER_HOST). Builds use host networking and the legacy builder, so an engine without a bridge
# works, e.g. `dockerd --data-root D --exec-root E -H unix://D/docker.sock --iptables=false
# --ip6tables=false --bridge=none --storage-driver=overlay2` (tests/deploy/engine.py starts one).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
BASE_IMAGE="${ELF_BASE_IMAGE:-local/python:3.11-bookworm}"
SUITE=bookworm
FORCE=0
TARGETS=()
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        base|serving|train|stack) TARGETS+=("$arg") ;;
        all) TARGETS+=(base serving train stack) ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(base serving train stack)

log() { echo "build-local: $*" >&2; }
exists() { docker image inspect "$1" >/dev/null 2>&1; }
wanted() { local t; for t in "${TARGETS[@]}"; do [ "$t" = "$1" ] && return 0; done; return 1; }

# The first Debian mirror of the machine's apt sources (deb822 .sources or one-line .list).
debian_mirror() {
    local files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list)
    local f url
    for f in "${files[@]}"; do
        [ -f "$f" ] || continue
        url="$(grep -hoE '^(URIs:[[:space:]]*|deb[[:space:]]+(\[[^]]*\][[:space:]]+)?)https?://[^[:space:]]+' "$f" \
            | grep -oE 'https?://[^[:space:]]+' | grep -E '/debian/?$' | head -n1 || true)"
        if [ -n "$url" ]; then echo "${url%/}"; return 0; fi
    done
    echo "http://deb.debian.org/debian"
}

build_base() {
    if exists "$BASE_IMAGE"; then log "$BASE_IMAGE exists, skipped"; return; fi
    local mirror rootfs
    mirror="$(debian_mirror)"
    rootfs="$(mktemp -d "${TMPDIR:-/tmp}/elf-rootfs.XXXXXX")"
    trap 'rm -rf "$rootfs"' RETURN
    log "debootstrap $SUITE from $mirror"
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python-is-python3,ca-certificates,make \
        "$SUITE" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || { tail -n 30 "$rootfs.log" >&2; exit 1; }
    rm -f "$rootfs.log"
    # The host's CA bundle, so that pip and apt inside reach the package indexes through whatever
    # TLS interception the host trusts.
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
    log "$BASE_IMAGE made"
}

build() {  # build IMAGE DOCKERFILE [docker build args...]
    local image="$1" dockerfile="$2"
    shift 2
    if exists "$image" && [ "$FORCE" = 0 ]; then log "$image exists, skipped"; return; fi
    log "building $image from $dockerfile"
    DOCKER_BUILDKIT=0 docker build --network host --quiet \
        --build-arg "PYTHON_IMAGE=$BASE_IMAGE" "$@" -t "$image" -f "$REPO/$dockerfile" "$REPO" >/dev/null
    log "$image built"
}

# torch's CPU wheel for the training image: the wheel directory of this machine, offered to the
# build as a one-package index on a loopback port (nothing else goes through it).
# Started in this shell (not in a $(...) subshell), so the EXIT trap stops it and removes its folder.
WHEEL_SERVER_PID=""
WHEEL_INDEX=""
TORCH_ARGS=()
stop_wheel_server() {
    [ -z "$WHEEL_SERVER_PID" ] || kill "$WHEEL_SERVER_PID" 2>/dev/null || true
    [ -z "$WHEEL_INDEX" ] || rm -rf "$WHEEL_INDEX"
    WHEEL_SERVER_PID="" WHEEL_INDEX=""
}
trap stop_wheel_server EXIT
start_wheel_server() {
    local wheels="${ELF_TORCH_WHEELS:-/opt/wheels}" wheel port
    wheel="$(ls "$wheels"/torch-*+cpu-cp311-*.whl 2>/dev/null | head -n1 || true)"
    [ -n "$wheel" ] || return 0  # the Dockerfile's default: the PyTorch CPU index
    WHEEL_INDEX="$(mktemp -d "${TMPDIR:-/tmp}/elf-torch-index.XXXXXX")"
    mkdir "$WHEEL_INDEX/torch"
    cp "$wheel" "$WHEEL_INDEX/torch/"
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    python3 -m http.server --bind 127.0.0.1 --directory "$WHEEL_INDEX" "$port" >/dev/null 2>&1 &
    WHEEL_SERVER_PID=$!
    for _ in $(seq 50); do
        python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/torch/')" \
            2>/dev/null && break
        sleep 0.1
    done
    log "torch wheel $(basename "$wheel") offered on 127.0.0.1:$port"
    TORCH_ARGS=(--build-arg "TORCH_INDEX_URL=http://127.0.0.1:$port/")
}

wanted base && build_base
if wanted serving || wanted train || wanted stack; then
    exists "$BASE_IMAGE" || { echo "no $BASE_IMAGE: run '$0 base' first" >&2; exit 1; }
fi
wanted serving && build elf-serving:cpu docker/Dockerfile
if wanted train; then
    if exists elf-train:cpu && [ "$FORCE" = 0 ]; then
        log "elf-train:cpu exists, skipped"
    else
        start_wheel_server
        build elf-train:cpu docker/Dockerfile.train "${TORCH_ARGS[@]}"
        stop_wheel_server
    fi
fi
if wanted stack; then
    build elf-nginx:local docker/local/Dockerfile.nginx
    build elf-prometheus:local docker/local/Dockerfile.prometheus
fi
