#!/usr/bin/env bash
# Benchmarks cluster mode: muchat nodes sharing one PostgreSQL and one Redis
# (both throwaway, started here on loopback), beside one node on PostgreSQL
# and one on SQLite (the data directory, the default) in the same run, and
# prints one table of medians. Usage:
#   bench/cluster.sh
# Cases, each on fresh nodes (and a fresh PostgreSQL database, and an
# emptied Redis), all with one shared key file:
#   fan-out sqlite   one node, --data-dir
#   fan-out pg x1    one node on PostgreSQL + Redis
#   fan-out pg xN    N nodes (NODES), members dealt round robin over them
#                    (so are the senders: loadgen gives client i node i mod N)
#   latency sqlite   one user DMs another on the same node, LATENCY messages
#   latency pg x1    the same on one PostgreSQL node
#   latency pg x2    sender on node 1, receiver on node 2: cross-node delivery
# The fan-out shape is SHAPE with 100-byte messages and loadgen's default
# window (8), as in bench/compare.sh. Every round runs each case once, in
# that order; the table gives the median over the rounds.
# Environment:
#   RUNS        rounds (default 3)
#   SHAPE       fan-out MEMBERS/SENDERS/MESSAGES (default 200/10/200)
#   NODES       cluster sizes for the fan-out (default "2 3")
#   LATENCY     messages per latency case (default 1000)
#   DEADLINE    loadgen's --deadline, seconds (default 120); each loadgen run,
#               set-up included, is also bounded (deadline + 60 + members/10)
#   DATA_ROOT   where the work directory goes (default ${TMPDIR:-/tmp}); it
#               keeps every run's output and node logs
#   SKIP_BUILD=1  do not run cargo build --release first (the binaries are
#               copied at the start either way, so every case runs the same)
# Figures: server CPU is the time on CPU of every node process over the
# measured phase (loadgen sums /proc/PID/task/*/schedstat for each
# --server-pid, to the nanosecond); "db" is PostgreSQL's and Redis's CPU over the same phase
# (loadgen --engine-pid: the postmaster with its backends, redis-server).
# Nodes run with the abuse limits off, as bench/run.sh does (bench/lib.sh).
# Needs PostgreSQL (initdb, postgres, createdb, dropdb, psql in PATH or
# /usr/lib/postgresql/*/bin; under root it runs as the postgres user, via
# setpriv), redis-server and redis-cli, python3. Loopback only. Everything
# it starts is stopped on every exit path.
# Exit status: 0 if every run delivered everything once, 1 if not, 2 for
# usage and set-up errors.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit "${1:-2}"
}
case ${1:-} in
    -h | --help) usage 0 ;;
    ?*) echo "cluster.sh: no arguments (settings are environment variables)" >&2; usage 2 ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$root/bench/lib.sh"
runs=${RUNS:-3}
shape=${SHAPE:-200/10/200}
nodes_list=${NODES:-2 3}
latency=${LATENCY:-1000}
deadline=${DEADLINE:-120}

for v in "$runs" "$latency" "$deadline"; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "cluster.sh: RUNS, LATENCY and DEADLINE are whole numbers >= 1" >&2; exit 2; }
done
[[ $shape =~ ^([0-9]+)/([0-9]+)/([0-9]+)$ ]] \
    || { echo "cluster.sh: SHAPE is MEMBERS/SENDERS/MESSAGES, not '$shape'" >&2; exit 2; }
members=${BASH_REMATCH[1]} senders=${BASH_REMATCH[2]} messages=${BASH_REMATCH[3]}
if [ "$members" -lt 2 ] || [ "$senders" -lt 1 ] || [ "$senders" -gt "$members" ] || [ "$messages" -lt 1 ]; then
    echo "cluster.sh: SHAPE needs 2 <= members and 1 <= senders <= members" >&2
    exit 2
fi
for n in $nodes_list; do
    [[ $n =~ ^[2-9]$ ]] || { echo "cluster.sh: NODES holds cluster sizes from 2 to 9, not '$n'" >&2; exit 2; }
done

# The tools, found before anything starts.
pgbin=""
if command -v initdb >/dev/null 2>&1; then
    pgbin=$(dirname "$(readlink -f "$(command -v initdb)")")
fi
if [ -z "$pgbin" ] || [ ! -x "$pgbin/postgres" ]; then
    pgbin=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -1)
fi
for t in initdb postgres; do
    [ -n "$pgbin" ] && [ -x "$pgbin/$t" ] \
        || { echo "cluster.sh: PostgreSQL's $t not found (PATH, /usr/lib/postgresql/*/bin); apt-get install -y postgresql" >&2; exit 2; }
done
pgtool() { # the client tools: beside postgres, else in PATH
    if [ -x "$pgbin/$1" ]; then echo "$pgbin/$1"; else command -v "$1" || echo "$1"; fi
}
createdb=$(pgtool createdb) dropdb=$(pgtool dropdb) psql=$(pgtool psql)
for t in "$createdb" "$dropdb" "$psql" redis-server redis-cli python3 setpriv; do
    command -v "$t" >/dev/null 2>&1 \
        || { echo "cluster.sh: $t is needed (apt-get install -y postgresql redis-server python3)" >&2; exit 2; }
done

raise_open_files cluster.sh "$members"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    echo "cluster.sh: cargo build --release (server, loadgen)" >&2
    (cd "$root" && timeout 1800 cargo build --release --bin server --bin loadgen) >&2 \
        || { echo "cluster.sh: the release build failed" >&2; exit 2; }
fi

work=$(mktemp -d "${DATA_ROOT:-${TMPDIR:-/tmp}}/muchat-cluster.XXXXXX")
chmod 755 "$work"
# Pin the binaries: the target directory is shared, and a rebuild during the
# run must not change what the later cases measure.
bin=$work/bin
mkdir "$bin"
cp "$root/target/release/server" "$root/target/release/loadgen" "$bin/" \
    || { echo "cluster.sh: no release binaries in $root/target/release" >&2; exit 2; }

pg_pid="" redis_pid="" lg="" nodes=() drainers=()
stop_nodes() {
    local p
    for p in "${nodes[@]}"; do stop_process "$p" 10; done
    for p in "${drainers[@]}"; do wait "$p" 2>/dev/null || true; done
    nodes=() drainers=()
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_process "$lg" 1
    stop_nodes
    stop_process "$redis_pid" 5
    # PostgreSQL's fast shutdown is SIGINT (SIGTERM waits for sessions).
    if [ -n "$pg_pid" ] && kill -0 "$pg_pid" 2>/dev/null; then
        kill -INT "$pg_pid" 2>/dev/null || true
        stop_process "$pg_pid" 15
    fi
    # Keep the outputs and logs, not the stores.
    rm -rf "$bin" "$work/pg/data" "$work/redis" "$work"/*/node*/ 2>/dev/null || true
    [ "$rc" = 0 ] || echo "cluster.sh: exit $rc; outputs and logs in $work" >&2
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# PostgreSQL refuses to run as root: under root it runs as the postgres
# system user (setpriv execs, so $! is the postmaster itself).
as_pg=()
if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || { echo "cluster.sh: running as root and there is no postgres user to run PostgreSQL as" >&2; exit 2; }
    as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups --)
fi
mkdir -p "$work/pg/socket"
[ ${#as_pg[@]} = 0 ] || chown -R postgres:postgres "$work/pg"
timeout 120 "${as_pg[@]}" "$pgbin/initdb" -D "$work/pg/data" -U muchat --auth=trust -E UTF8 \
    >"$work/pg/initdb.log" 2>&1 || { echo "cluster.sh: initdb failed:" >&2; cat "$work/pg/initdb.log" >&2; exit 2; }
pg_port=""
for _ in 1 2 3; do
    port=$(free_port)
    "${as_pg[@]}" "$pgbin/postgres" -D "$work/pg/data" -p "$port" -c listen_addresses=127.0.0.1 \
        -c unix_socket_directories="$work/pg/socket" >>"$work/pg/postgres.log" 2>&1 &
    pg_pid=$!
    for _ in $(seq 300); do
        kill -0 "$pg_pid" 2>/dev/null || break
        if PGCONNECT_TIMEOUT=2 "$psql" -X -q -h 127.0.0.1 -p "$port" -U muchat -d postgres -c 'select 1' >/dev/null 2>&1; then
            pg_port=$port
            break
        fi
        sleep 0.1
    done
    [ -z "$pg_port" ] || break
    stop_process "$pg_pid" 5
    pg_pid=""
done
[ -n "$pg_port" ] || { echo "cluster.sh: PostgreSQL did not start; its log:" >&2; tail -20 "$work/pg/postgres.log" >&2; exit 2; }

mkdir "$work/redis"
redis_port=""
for _ in 1 2 3; do
    port=$(free_port)
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work/redis" \
        --logfile "$work/redis.log" --daemonize no &
    redis_pid=$!
    for _ in $(seq 100); do
        kill -0 "$redis_pid" 2>/dev/null || break
        if [ "$(timeout 2 redis-cli -p "$port" ping 2>/dev/null)" = PONG ]; then
            redis_port=$port
            break
        fi
        sleep 0.1
    done
    [ -z "$redis_port" ] || break
    stop_process "$redis_pid" 5
    redis_pid=""
done
[ -n "$redis_port" ] || { echo "cluster.sh: redis-server did not start; its log:" >&2; tail -20 "$work/redis.log" >&2; exit 2; }

# One key for every node, so all present one fingerprint.
key=$work/server_key
fp=$("$bin/server" --fingerprint --key-file "$key" --data-dir "$work/keydir" 2>"$work/fingerprint.err") \
    || { echo "cluster.sh: server --fingerprint failed:" >&2; cat "$work/fingerprint.err" >&2; exit 2; }
rm -rf "$work/keydir"

pgv=$("$pgbin/postgres" --version | sed 's/^postgres (PostgreSQL) //')
cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
rev=$(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)
echo "machine: $(nproc) CPUs (nproc), ${cpu_model:-$(uname -m)}, $(uname -sr), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "muchat $rev (release), PostgreSQL $pgv on port $pg_port (pid $pg_pid), $(redis-server --version | cut -d' ' -f1-3) on port $redis_port (pid $redis_pid)"
echo "fan-out $members/$senders/$messages x 100 B, latency $latency messages, $runs round(s); work directory $work"
echo

limit=$((deadline + 60 + members / 10))
results=()
bad=0
# run_case NAME ROUND STORE NODES LOADGEN-ARGS...: one case on fresh nodes;
# appends "NAME|ROUND|NODES|output file|exit|log problems" to results.
run_case() {
    local name=$1 round=$2 store=$3 n=$4 i url="" db="" rc=0 problems=0 addrs=() pids=() flags=()
    shift 4
    local dir=$work/$name.r$round
    mkdir -p "$dir"
    if [ "$store" = pg ]; then
        db=$(echo "b_${name}_r$round" | tr -c 'a-z0-9_\n' _)
        PGCONNECT_TIMEOUT=5 timeout 60 "$createdb" -h 127.0.0.1 -p "$pg_port" -U muchat -T template0 "$db" \
            || { echo "cluster.sh: createdb $db failed" >&2; exit 2; }
        timeout 10 redis-cli -p "$redis_port" flushall >/dev/null \
            || { echo "cluster.sh: redis-cli flushall failed" >&2; exit 2; }
        url=postgres://muchat@127.0.0.1:$pg_port/$db
        flags=(--database-url "$url" --redis-url "redis://127.0.0.1:$redis_port/")
    fi
    for ((i = 1; i <= n; i++)); do
        start_server cluster.sh "$bin" "$dir/node$i.log" --data-dir "$dir/node$i" --key-file "$key" \
            "${flags[@]}" "${BENCH_LIMITS[@]}" || { nodes+=("$server_pid"); exit 2; }
        nodes+=("$server_pid")
        drainers+=("$server_drainer")
        addrs+=("127.0.0.1:$server_port")
        pids+=(--server-pid "$server_pid")
    done
    local engines=()
    [ "$store" != pg ] || engines=(--engine-pid "$pg_pid" --engine-pid "$redis_pid")
    echo "cluster.sh: round $round: $name ($n node(s): ${addrs[*]}) ..." >&2
    local list
    list=$(IFS=,; echo "${addrs[*]}")
    timeout -k 10 "$limit" "$bin/loadgen" "$list" "${pids[@]}" "${engines[@]}" \
        --server-fingerprint "$fp" --deadline "$deadline" "$@" >"$dir.out" 2>"$dir.err" &
    lg=$!
    wait "$lg" || rc=$?
    lg=""
    [ "$rc" = 0 ] || bad=1
    for p in "${nodes[@]}"; do
        kill -0 "$p" 2>/dev/null || { echo "cluster.sh: a node (pid $p) exited during $name" >&2; bad=1; }
    done
    stop_nodes
    for ((i = 1; i <= n; i++)); do
        problems=$((problems + $(log_problems "$dir/node$i.log")))
    done
    rm -rf "$dir"/node*/
    if [ -n "$db" ]; then
        PGCONNECT_TIMEOUT=5 timeout 60 "$dropdb" -h 127.0.0.1 -p "$pg_port" -U muchat "$db" || true
    fi
    results+=("$name|$round|$n|$dir.out|$rc|$problems")
    echo "cluster.sh: round $round: $name: exit $rc, $problems warning/error line(s) in the node logs; $(tail -1 "$dir.err" 2>/dev/null)" >&2
}

fan=(--members "$members" --senders "$senders" --messages "$messages" --size 100)
start=$SECONDS
for ((r = 1; r <= runs; r++)); do
    run_case fanout-sqlite "$r" sqlite 1 "${fan[@]}"
    run_case fanout-pg-x1 "$r" pg 1 "${fan[@]}"
    for n in $nodes_list; do
        run_case "fanout-pg-x$n" "$r" pg "$n" "${fan[@]}"
    done
    run_case latency-sqlite "$r" sqlite 1 --latency "$latency"
    run_case latency-pg-x1 "$r" pg 1 --latency "$latency"
    run_case latency-pg-x2 "$r" pg 2 --latency "$latency"
done
elapsed=$((SECONDS - start))

status=0
python3 - "$(nproc)" "$elapsed" "${results[@]}" <<'PY' || status=$?
import json, statistics, sys

ncpu, elapsed, rows = sys.argv[1], int(sys.argv[2]), sys.argv[3:]

def last_json(path):
    try:
        lines = open(path, errors="replace").read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if "deliveries" in obj:
                return obj
    return None

cases, order, notes, bad = {}, [], [], False
for row in rows:
    name, rnd, n, out, rc, problems = row.split("|")
    if name not in cases:
        cases[name] = {"nodes": int(n), "runs": {}}
        order.append(name)
    j = last_json(out)
    if j is None:
        bad = True
        notes.append(f"{name} round {rnd}: no result (exit {rc}; {out[:-4]}.err)")
        continue
    cases[name]["runs"][int(rnd)] = j
    j["ok"] = j["deliveries"] >= j["expected"] and not j.get("repeats", 0) and rc == "0"
    if not j["ok"]:
        bad = True
        notes.append(f"{name} round {rnd}: {j['deliveries']} of {j['expected']} delivered, "
                     f"{j.get('repeats', 0)} repeated, exit {rc} ({out[:-4]}.err)")
    try:
        for line in open(out[:-4] + ".err", errors="replace"):
            if line.startswith("loadgen: ") and "expected arrived" not in line:
                notes.append(f"{name} round {rnd}: {line.strip()[:240]}")
    except OSError:
        pass
    if problems != "0":
        notes.append(f"{name} round {rnd}: {problems} warning/error line(s) in the node logs ({out[:-4]}/node*.log)")

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def fig(name, key):
    c = cases.get(name)
    return med([j.get(key) for j in c["runs"].values()]) if c else None

def ratio(name, ref):
    """Median and range over the rounds of name's us/dlv over ref's, same round."""
    if name not in cases or ref not in cases:
        return None
    rs = []
    for rnd, j in cases[name]["runs"].items():
        k = cases[ref]["runs"].get(rnd)
        if k and j.get("server_us_per_delivery") and k.get("server_us_per_delivery"):
            rs.append(j["server_us_per_delivery"] / k["server_us_per_delivery"])
    if not rs:
        return None
    return statistics.median(rs), min(rs), max(rs)

def fmt(x, f, w):
    return format("-", f">{w}") if x is None else format(x, f)

def fmt_ratio(r):
    if r is None:
        return "-"
    m, lo, hi = r
    return f"{m:.2f}x" + (f" ({lo:.2f}-{hi:.2f})" if hi > lo else "")

def split(name):
    """Each node's median share of the server CPU."""
    shares = []
    for j in cases[name]["runs"].values():
        each = j.get("server_cpu_s_each") or []
        tot = sum(e for e in each if e is not None)
        if tot > 0:
            shares.append([e / tot for e in each])
    if not shares:
        return ""
    return "/".join(f"{100 * med([s[i] for s in shares]):.0f}" for i in range(len(shares[0])))

print(f"{'case':16} {'nodes':>5} {'ok':>4} {'dlv/s':>9} {'us/dlv':>7} {'db us':>6} {'p50 ms':>7} {'p99 ms':>7} "
      f"{'max ms':>7}  {'vs pg x1':>17}  {'vs sqlite':>17}  node CPU %")
for name in order:
    c = cases[name]
    rate, us, db = fig(name, "per_second"), fig(name, "server_us_per_delivery"), fig(name, "engines_us_per_delivery")
    p50, p99, mx = fig(name, "p50_ms"), fig(name, "p99_ms"), fig(name, "max_ms")
    kind = name.split("-")[0]
    vs_pg = ratio(name, f"{kind}-pg-x1") if name != f"{kind}-pg-x1" else None
    vs_sq = ratio(name, f"{kind}-sqlite") if name != f"{kind}-sqlite" else None
    ok = f"{sum(j['ok'] for j in c['runs'].values())}/{len(c['runs'])}"
    print(f"{name:16} {c['nodes']:>5} {ok:>4} {fmt(rate, '9,.0f', 9)} {fmt(us, '7.2f', 7)} "
          f"{fmt(db, '6.2f', 6)} {fmt(p50, '7.2f', 7)} {fmt(p99, '7.2f', 7)} {fmt(mx, '7.2f', 7)}  "
          f"{fmt_ratio(vs_pg):>17}  {fmt_ratio(vs_sq):>17}  {split(name) if c['nodes'] > 1 else ''}")
print()
print("How to read: medians over the rounds. us/dlv is the CPU time of all node processes summed, "
      "over the measured phase, per delivered copy (latency cases: per message); db us is PostgreSQL's and "
      "Redis's CPU per delivery over the same phase, not in us/dlv. vs pg x1 / vs sqlite: us/dlv over the "
      "one-node figure of the same kind in the same round, median (range). Fan-out p50/p99 are over a 1-in-50 "
      "sample of deliveries, across all nodes' receivers; latency cases time every message from send to "
      f"arrival, one at a time. ok: runs that delivered everything exactly once; the others count too, "
      f"with their figures up to their last delivery (loadgen stops the clock there when deliveries stall). "
      f"Generator, nodes, PostgreSQL and Redis share the {ncpu} CPUs.")
targets = []
l2 = "latency-pg-x2"
if l2 in cases and cases[l2]["runs"]:
    p50, p99 = fig(l2, "p50_ms"), fig(l2, "p99_ms")
    ok = p50 <= 5 and p99 <= 20
    targets.append(f"cross-node DM latency p50 {p50:.2f} ms (<= 5), p99 {p99:.2f} ms (<= 20): "
                   + ("met" if ok else "MISSED"))
for ref in ("fanout-pg-x1", "fanout-sqlite"):
    r = ratio("fanout-pg-x2", ref)
    if r:
        targets.append(f"fan-out on 2 nodes, server CPU per delivery {r[0]:.2f}x {ref} (<= 1.5x): "
                       + ("met" if r[0] <= 1.5 else "MISSED"))
for t in targets:
    print("target: " + t)
print(f"whole run {elapsed} s")
for note in notes:
    print("note: " + note)
sys.exit(1 if bad else 0)
PY
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews every figure)"
echo "outputs and node logs: $work"
exit "$status"
