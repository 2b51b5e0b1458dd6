# Helpers shared by the bench scripts (sourced, not run).

# raise_open_files SCRIPT MEMBERS: raises this shell's open-files limit for
# MEMBERS sessions (each one socket in the server and one in the generator,
# plus the server's store and threads), up to the hard limit, and warns
# (naming SCRIPT) when that is still too low.
raise_open_files() {
    local script=$1 members=$2 want hard
    want=$((2 * members + 1024))
    [ "$want" -ge 65536 ] || want=65536
    hard=$(ulimit -Hn)
    if [ "$hard" = unlimited ] || [ "$hard" -ge "$want" ]; then
        ulimit -n "$want" 2>/dev/null || true
    else
        ulimit -n "$hard" 2>/dev/null || true
    fi
    if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((members + 256)) ]; then
        echo "$script: warning: open-files limit $(ulimit -n) is too low for $members members" >&2
    fi
}

# The flags that turn off the abuse limits a benchmark would otherwise trip
# (every client comes from 127.0.0.1 and logs in at once): see
# docs/BENCHMARKS.md, "Machine and method".
BENCH_LIMITS=(--rate 0 --max-connections-per-ip 0 --max-sessions-per-user 0 --handshake-rate 0
    --max-password-checks 0 --login-backoff-ms 0 --login-timeout 3600 --idle-timeout 3600)

# start_server SCRIPT BIN LOG [SERVER FLAGS...]: starts BIN/server on
# 127.0.0.1 port 0 in the background with the flags given, its standard
# error appended to LOG, and waits (up to 30 s) for its "listening" line.
# Sets server_pid, server_port and server_drainer (the process copying its
# log; it ends when the server does). Returns 1 (the server's pid still in
# server_pid if it is running, and its log quoted on standard error, naming
# SCRIPT) if it did not report listening in time.
start_server() {
    local script=$1 bin=$2 log=$3 fifo line
    shift 3
    server_pid="" server_port="" server_drainer=""
    fifo=$(mktemp -u "${TMPDIR:-/tmp}/muchat-stderr.XXXXXX")
    mkfifo "$fifo" || return 1
    # The server's standard error goes through the FIFO: read up to the
    # "listening" line (the port), then the drainer copies the rest.
    "$bin/server" 127.0.0.1:0 "$@" 2>"$fifo" &
    server_pid=$!
    exec 3<"$fifo"
    rm -f "$fifo"
    while IFS= read -r -t 30 line <&3; do
        printf '%s\n' "$line" >>"$log"
        if [[ $line =~ listening\ addr=127\.0\.0\.1:([0-9]+) ]]; then
            server_port=${BASH_REMATCH[1]}
            break
        fi
    done
    cat <&3 >>"$log" &
    server_drainer=$!
    exec 3<&-
    if [ -z "$server_port" ]; then
        echo "$script: the server did not report listening within 30 s; its log ($log):" >&2
        sed 's/^/  /' "$log" >&2
        return 1
    fi
}

# stop_process PID [SECS]: SIGTERM, up to SECS (default 5) seconds to exit,
# then SIGKILL; reaps it if it is this shell's child. Quiet if it is gone.
stop_process() {
    local pid=$1 secs=${2:-5} i
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < secs * 10; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# log_problems LOG: how many WARN or ERROR lines a server log holds.
log_problems() {
    local n
    n=$(grep -cE '(^|[[:space:]])(WARN|ERROR)[[:space:]]' "$1" 2>/dev/null) || true
    echo "${n:-0}"
}

# report_log_problems SCRIPT LOG: says on standard error whether LOG has
# warnings or errors, quoting the first few.
report_log_problems() {
    local script=$1 log=$2 n
    [ -s "$log" ] || return 0
    n=$(log_problems "$log")
    if [ "${n:-0}" -gt 0 ]; then
        echo "$script: server log: $n warning/error lines ($log), first ones:" >&2
        grep -E '(^|[[:space:]])(WARN|ERROR)[[:space:]]' "$log" | head -5 | sed 's/^/  /' >&2
    else
        echo "$script: server log: no warnings or errors ($log)" >&2
    fi
}
