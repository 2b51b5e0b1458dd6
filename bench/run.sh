#!/usr/bin/env bash
# Runs one load-generator shape against a fresh release server and prints
# the generator's JSON line. Usage:
#   bench/run.sh DATA_DIR [loadgen flags...]
# e.g. bench/run.sh /tmp/muchat-bench --members 50 --senders 1 --messages 2000 --size 100
# The server runs with the abuse limits that would throttle a benchmark
# turned off (--rate 0 --max-connections-per-ip 0), as docs/BENCHMARKS.md says.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$1; shift
rm -rf "$dir"; mkdir -p "$dir"
port=$((20000 + RANDOM % 20000))
target/release/server "127.0.0.1:$port" --data-dir "$dir" --rate 0 --max-connections-per-ip 0 \
    --idle-timeout 3600 2>/dev/null &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.05
done
target/release/loadgen "127.0.0.1:$port" --server-pid "$server" --deadline 600 "$@" | tail -1
