#!/usr/bin/env bash
# Runs one load-generator shape against a fresh release server and prints
# loadgen's summary and then its JSON line, which is always the last line on
# standard output. Usage:
#   bench/run.sh DATA_DIR [loadgen flags...]
# e.g. bench/run.sh /tmp/muchat-bench --members 50 --senders 1 --messages 2000 --size 100
#      bench/run.sh /tmp/muchat-bench --idle 2000
# Build first: cargo build --release.
#
# * DATA_DIR is emptied and reused (it must be absent, empty, or a directory
#   this script made before). The server's log stays in DATA_DIR/server.log;
#   warnings and errors in it are counted on standard error at the end.
# * The server listens on 127.0.0.1 port 0 (the kernel picks a free port);
#   the script reads the port from the server's "listening addr=" log line.
# * It runs with the abuse limits that would throttle a benchmark turned off
#   (--rate 0 --max-connections-per-ip 0 --idle-timeout 3600), as
#   docs/BENCHMARKS.md says; loadgen pins the server's key fingerprint.
#   With --attack (loadgen's attacks on those limits) the server runs with
#   its default flags instead: see bench/attack.sh.
# * Flags after DATA_DIR go to loadgen. Unless given there, --server-pid,
#   --server-fingerprint and --deadline (env DEADLINE, default 120 s; it
#   bounds the measured phase) are added. The whole loadgen run, set-up
#   (account creation and Argon2 logins) included, is also bounded by
#   RUN_TIMEOUT seconds (default: deadline + 60 + members/10).
# * The open-files limit is raised for large shapes (each member is one
#   socket in the server and one in loadgen).
# * The server is stopped on every exit path (also on Ctrl-C or SIGTERM).
# Exit status: loadgen's (0 all delivered, 1 something missing or failed),
# 124 if RUN_TIMEOUT killed it, 2 for usage and set-up errors.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit "${1:-2}"
}
[ $# -ge 1 ] || usage 2
case $1 in
    -h | --help) usage 0 ;;
    -*) echo "run.sh: the first argument is the data directory, not $1" >&2; usage 2 ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$root/bench/lib.sh"
bin=${MUCHAT_BIN:-$root/target/release}
dir=$1
shift
for b in server loadgen; do
    [ -x "$bin/$b" ] || { echo "run.sh: $bin/$b is missing: run cargo build --release" >&2; exit 2; }
done

# What loadgen will be told, to fill in the defaults it lacks.
deadline=${DEADLINE:-120}
members=50
has_pid=0 has_fp=0 has_deadline=0 attack=0
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    a=${args[i]} next=${args[i + 1]:-}
    case $a in
        --deadline) deadline=$next has_deadline=1 ;;
        --deadline=*) deadline=${a#*=} has_deadline=1 ;;
        --server-pid | --server-pid=*) has_pid=1 ;;
        --server-fingerprint | --server-fingerprint=*) has_fp=1 ;;
        --members | --idle | --storm | --count) members=$next ;;
        --members=* | --idle=* | --storm=* | --count=*) members=${a#*=} ;;
        --attack | --attack=*) attack=1 ;;
    esac
done
[[ $deadline =~ ^[0-9]+$ && $members =~ ^[0-9]+$ ]] \
    || { echo "run.sh: --deadline and --members/--idle/--storm take whole numbers" >&2; exit 2; }
limit=${RUN_TIMEOUT:-$((deadline + 60 + members / 10))}

raise_open_files run.sh "$members"

# A fresh data directory; refuse to wipe one this script did not make.
if [ -e "$dir" ]; then
    if [ ! -d "$dir" ] || { [ -n "$(ls -A "$dir")" ] && [ ! -e "$dir/.muchat-bench" ]; }; then
        echo "run.sh: $dir exists and was not made by bench/run.sh; not wiping it" >&2
        exit 2
    fi
fi
rm -rf "$dir"
mkdir -p "$dir"
touch "$dir/.muchat-bench"
log=$dir/server.log
: >"$log"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/muchat-run.XXXXXX")

server_pid="" server_drainer="" lg=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_process "$lg" 1
    stop_process "$server_pid" 5
    # The drainer sees end of file once the server is gone.
    [ -z "$server_drainer" ] || wait "$server_drainer" 2>/dev/null || true
    rm -rf "$tmp"
    report_log_problems run.sh "$log"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fp=$("$bin/server" --fingerprint --data-dir "$dir" 2>>"$log") \
    || { echo "run.sh: server --fingerprint failed:" >&2; cat "$log" >&2; exit 2; }

# The abuse limits are off (one address opens and logs in every session),
# unless they are what is measured.
limits=("${BENCH_LIMITS[@]}")
[ "$attack" = 0 ] || limits=()
start_server run.sh "$bin" "$log" --data-dir "$dir" "${limits[@]}" || exit 2
server=$server_pid port=$server_port
echo "run.sh: server pid $server on 127.0.0.1:$port, key $fp, data $dir" >&2

extra=()
[ "$has_pid" = 1 ] || extra+=(--server-pid "$server")
[ "$has_fp" = 1 ] || extra+=(--server-fingerprint "$fp")
[ "$has_deadline" = 1 ] || extra+=(--deadline "$deadline")
# In the background so that a signal to this script is handled at once.
timeout -k 10 "$limit" "$bin/loadgen" "127.0.0.1:$port" "${extra[@]}" "$@" &
lg=$!
rc=0
wait "$lg" || rc=$?
lg=""
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "run.sh: loadgen did not finish within $limit s (RUN_TIMEOUT) and was stopped" >&2
fi
if ! kill -0 "$server" 2>/dev/null; then
    echo "run.sh: the server exited during the run" >&2
    [ "$rc" != 0 ] || rc=1
fi
exit "$rc"
