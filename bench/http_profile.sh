#!/usr/bin/env bash
# py-spy profile of elf-serve under wrk load (bundled model, raw PNG bodies, closed loop):
#   bench/http_profile.sh OUT.raw [SRC_DIR]   (SRC_DIR: the code to serve, default this checkout)
# Needs wrk and py-spy (dev extra), and runs/bench-http-logs/bundled-images.tsv (written by
# `python -m bench.http --models bundled`). Summary: python -m bench.pyspy_summary OUT.raw
# Env: VENV_BIN (default ./.venv/bin), C (concurrency, 32), DUR (seconds, 12), MODEL (models/fashion-mnist-lt), HTTP_SERVER
# (uvicorn | granian; granian: the worker process that runs the app is profiled, and py-spy sees
# only its Python threads, not Granian's Rust threads nor the Rust code's own time).
set -eu
out=$1
src=${2:-$PWD}
C=${C:-32}
DUR=${DUR:-12}
list=runs/bench-http-logs/bundled-images.tsv
# The venv that has elf-serve and py-spy: this checkout's .venv, else the python first on PATH.
bin=${VENV_BIN:-$PWD/.venv/bin}
[ -x "$bin/elf-serve" ] || bin=$(dirname "$(command -v python)")
port=$("$bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PYTHONPATH=$src ELF_PROVIDERS=cpu ELF_LOG_LEVEL=warning ELF_HTTP_SERVER=${HTTP_SERVER:-uvicorn} \
    "$bin/elf-serve" \
    --model-dir "${MODEL:-models/fashion-mnist-lt}" --port "$port" > "$out.server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$port/v2/health/ready" > /dev/null && break
    sleep 0.5
done
url=http://127.0.0.1:$port/v1/classify
lua=bench/wrk/post_images.lua
wrk -t"$C" -c"$C" -d3s -s $lua "$url" -- $list raw "$C" > /dev/null  # warm-up
wrk -t"$C" -c"$C" -d"${DUR}s" --latency -s $lua "$url" -- $list raw "$C" > "$out.wrk.txt" &
load=$!
app=$server
if [ "${HTTP_SERVER:-uvicorn}" = granian ]; then  # the spawned worker, not the supervisor
    app=$(pgrep -P "$server" -f spawn_main)
fi
sleep 1
"$bin/py-spy" record -p "$app" -d $((DUR - 3)) -r 200 --threads -f raw -o "$out" --nonblocking > /dev/null
wait $load
grep -o 'WRKJSON.*' "$out.wrk.txt"
