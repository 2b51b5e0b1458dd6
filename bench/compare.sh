#!/usr/bin/env bash
# Runs ngircd (the plaintext C IRC anchor in ../shared/peer-bench) and muchat
# on the same fan-out shapes, back to back in one run, and prints one table
# row per shape: each server's CPU microseconds per delivery, deliveries/s and
# p99 latency, and the ratio muchat/ngircd of CPU per delivery.
# Usage:
#   bench/compare.sh [SHAPE...]
#   SHAPE = MEMBERS/SENDERS/MESSAGES[/SIZE]   (SIZE in bytes, default 100)
#   default shapes: 50/1/2000 200/10/200 1000/1/200
# e.g. bench/compare.sh                # the three default shapes
#      bench/compare.sh 50/1/2000      # one shape
# Environment:
#   NGIRCD_FANOUT  the peer script (default ../shared/peer-bench/ngircd-fanout.sh)
#   ROUNDS         how many times to run every shape (default 3); the table
#                  gives each figure's median over the rounds and the range
#                  of the per-round ratios (one run is noisy: the generators
#                  share the CPUs with the servers)
#   WINDOW         requests muchat's generator keeps unanswered per sender
#                  (default: the IRC generator's window for the shape, which
#                  it reports: 15 lines for 100-byte messages, so both servers
#                  get the same offered load; loadgen's own default, 8, is
#                  the window of the latency target)
#   DEADLINE       muchat loadgen's --deadline, seconds (default 120); the
#                  IRC generator stops itself after at most 60 s
#   DATA_ROOT      where the work directory goes (default ${TMPDIR:-/tmp});
#                  it keeps every run's output and the muchat server logs
#   SKIP_BUILD=1   do not run cargo build --release first (the binaries are
#                  copied at the start either way, so all shapes use the same)
# Needs ngircd (apt-get install -y ngircd; exit status 2 without it), cargo,
# python3. Loopback only. Each shape runs ngircd first, then muchat, each on a
# fresh server. Exit status: 0 if every run delivered everything, 1 if not,
# 2 for usage and set-up errors.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit "${1:-2}"
}
case ${1:-} in -h | --help) usage 0 ;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$root/bench/lib.sh"
fanout=${NGIRCD_FANOUT:-$root/../shared/peer-bench/ngircd-fanout.sh}
deadline=${DEADLINE:-120}
rounds=${ROUNDS:-3}
window=${WINDOW:-}
shapes=("$@")
[ ${#shapes[@]} -gt 0 ] || shapes=(50/1/2000 200/10/200 1000/1/200)

if ! command -v ngircd >/dev/null 2>&1; then
    echo "compare.sh: ngircd is not installed, so there is nothing to compare against." >&2
    echo "compare.sh: install it with: apt-get install -y ngircd" >&2
    exit 2
fi
[ -x "$fanout" ] || { echo "compare.sh: peer script $fanout not found (set NGIRCD_FANOUT)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "compare.sh: python3 is needed" >&2; exit 2; }
[[ $deadline =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: DEADLINE must be whole seconds" >&2; exit 2; }
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: ROUNDS must be a whole number >= 1" >&2; exit 2; }
[[ -z $window || $window =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: WINDOW must be a whole number >= 1" >&2; exit 2; }

max_members=0
for shape in "${shapes[@]}"; do
    if ! [[ $shape =~ ^([0-9]+)/([0-9]+)/([0-9]+)(/([0-9]+))?$ ]]; then
        echo "compare.sh: bad shape '$shape' (want MEMBERS/SENDERS/MESSAGES[/SIZE])" >&2
        exit 2
    fi
    n=${BASH_REMATCH[1]} s=${BASH_REMATCH[2]} m=${BASH_REMATCH[3]} b=${BASH_REMATCH[5]:-100}
    if [ "$n" -lt 2 ] || [ "$s" -lt 1 ] || [ "$s" -gt "$n" ] || [ "$m" -lt 1 ] \
        || [ "$b" -lt 40 ] || [ "$b" -gt 400 ]; then
        echo "compare.sh: shape '$shape': need 2 <= members, 1 <= senders <= members," \
            "messages >= 1, 40 <= size <= 400 (the IRC generator's limits)" >&2
        exit 2
    fi
    [ "$n" -le "$max_members" ] || max_members=$n
done

raise_open_files compare.sh "$max_members"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    echo "compare.sh: cargo build --release (server, loadgen)" >&2
    (cd "$root" && timeout 1800 cargo build --release --bin server --bin loadgen) >&2 \
        || { echo "compare.sh: the release build failed" >&2; exit 2; }
fi

work=$(mktemp -d "${DATA_ROOT:-${TMPDIR:-/tmp}}/muchat-compare.XXXXXX")
# Pin the binaries: the target directory is shared, and a rebuild during the
# run must not change what the later shapes measure.
mkdir "$work/bin"
cp "$root/target/release/server" "$root/target/release/loadgen" "$work/bin/" \
    || { echo "compare.sh: no release binaries in $root/target/release" >&2; exit 2; }
child=""
on_signal() {
    trap - INT TERM
    if [ -n "$child" ]; then
        kill -TERM "$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
    echo "compare.sh: interrupted; partial output in $work" >&2
    exit 130
}
trap on_signal INT TERM
# Runs a command in the background (so a signal here is handled at once and
# passed on) and waits for it; prints nothing, returns its status.
run_child() {
    "$@" &
    child=$!
    local rc=0
    wait "$child" || rc=$?
    child=""
    return "$rc"
}

cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
[ -n "$cpu_model" ] || cpu_model=$(uname -m)
rev=$(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)
fs=$(df --output=fstype "$work" 2>/dev/null | tail -1 || echo "?")
echo "machine: $(nproc) CPUs (nproc), $cpu_model, $(uname -sr), load average $(cut -d' ' -f1-3 /proc/loadavg)"
# One core's 3DES speed: a gauge of the machine's state (on a shared VM the
# same build's CPU per delivery moves with it, more than ngircd's does).
cipher_speed() { "$work/bin/loadgen" 127.0.0.1:1 --cipher 2>/dev/null | sed -n 's/.*: //p' | tail -1; }
echo "3DES on one core at the start: $(cipher_speed)"
echo "servers: $(ngircd --version 2>/dev/null | head -1 | cut -d- -f1) | muchat $rev (release)," \
    "data dir on $fs ($work)"
echo

start=$SECONDS
rows=()
for round in $(seq "$rounds"); do
i=0
for shape in "${shapes[@]}"; do
    i=$((i + 1))
    IFS=/ read -r n s m b <<<"$shape"
    b=${b:-100}
    tag=r$round-$i-$n-$s-$m-$b
    t0=$SECONDS
    echo "compare.sh: round $round/$rounds [$i/${#shapes[@]}] $n/$s/$m x $b B: ngircd ..." >&2
    rc_i=0
    run_child timeout 900 "$fanout" "$n" "$s" "$m" "$b" \
        >"$work/$tag.ngircd.out" 2>"$work/$tag.ngircd.err" || rc_i=$?
    t1=$SECONDS
    # The same number of requests in flight as the IRC generator kept.
    w=$window
    if [ -z "$w" ]; then
        w=$(python3 -c 'import json, sys
for line in reversed(open(sys.argv[1]).read().splitlines()):
    if line.startswith("{"):
        print(json.loads(line).get("window", "")); break' "$work/$tag.ngircd.out" 2>/dev/null || true)
        [[ $w =~ ^[1-9][0-9]*$ ]] || w=15
    fi
    echo "compare.sh: round $round/$rounds [$i/${#shapes[@]}] $n/$s/$m x $b B: muchat (window $w) ..." >&2
    rc_m=0
    run_child env DEADLINE="$deadline" MUCHAT_BIN="$work/bin" "$root/bench/run.sh" "$work/$tag.muchat-data" \
        --members "$n" --senders "$s" --messages "$m" --size "$b" --window "$w" \
        >"$work/$tag.muchat.out" 2>"$work/$tag.muchat.err" || rc_m=$?
    t2=$SECONDS
    # Keep the server log, not the store.
    if [ -f "$work/$tag.muchat-data/server.log" ]; then
        mv "$work/$tag.muchat-data/server.log" "$work/$tag.muchat-server.log"
    fi
    rm -rf "$work/$tag.muchat-data"
    rows+=("$n/$s/$m/$b|$work/$tag|$rc_i|$rc_m|$((t1 - t0))|$((t2 - t1))|$w")
    echo "compare.sh: [$i/${#shapes[@]}] done: ngircd rc $rc_i $((t1 - t0)) s," \
        "muchat rc $rc_m $((t2 - t1)) s" >&2
done
done
elapsed=$((SECONDS - start))

status=0
python3 - "$(nproc)" "$elapsed" "$rounds" "${rows[@]}" <<'PY' || status=$?
import json, os, re, statistics, sys

ncpu, elapsed, rounds, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]

def last_json(path, key):
    """The last line of a file that parses as a JSON object holding `key`."""
    try:
        lines = open(path, errors="replace").read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if key in obj:
                return obj
    return None

def tail(path, n=3):
    try:
        lines = [l for l in open(path, errors="replace").read().splitlines() if l.strip()]
    except OSError:
        return []
    return lines[-n:]

def fnum(x, fmt):
    width = int(re.match(r"\d*", fmt).group() or 0)
    return format("-", f">{width}") if x is None else format(x, fmt)

table, notes, bad = [], [], False
for row in rows:
    shape, base, rc_i, rc_m, t_i, t_m, window = row.split("|")
    n, s, m, b = shape.split("/")
    label = f"{n}/{s}/{m}" + ("" if b == "100" else f" x{b}B")
    # ngircd: CPU per delivery from the generator's send-phase figures.
    ir = last_json(base + ".ngircd.out", "deliveries_per_s")
    i_us = i_rate = i_p99 = None
    if ir is None:
        bad = True
        notes.append(f"{label}: ngircd run failed (exit {rc_i}; {base}.ngircd.err), no JSON line: "
                     + " | ".join(tail(base + ".ngircd.err") or ["no output"]))
    else:
        i_rate, i_p99 = ir.get("deliveries_per_s"), ir.get("lat_ms_p99")
        cpu_pct, phase = ir.get("server_cpu_pct"), ir.get("send_phase_s")
        if cpu_pct is not None and phase is not None:
            i_us = cpu_pct / 100 * phase / max(ir["deliveries"], 1) * 1e6
        if ir.get("deliveries") != ir.get("expected"):
            bad = True
            notes.append(f"{label}: ngircd INCOMPLETE, {ir.get('deliveries')} of {ir.get('expected')}")
        if ir.get("n_errors"):
            notes.append(f"{label}: ngircd generator errors: {ir.get('errors')}")
    for l in tail(base + ".ngircd.err", 20):
        if "warning" in l.lower():
            notes.append(f"{label}: ngircd: {l.strip()}")
    # muchat: loadgen reports CPU per delivery itself.
    mr = last_json(base + ".muchat.out", "server_us_per_delivery")
    m_us = m_rate = m_p99 = None
    if mr is None:
        bad = True
        notes.append(f"{label}: muchat run failed (exit {rc_m}; {base}.muchat.err), no JSON line: "
                     + " | ".join(tail(base + ".muchat.err") or ["no output"]))
    else:
        m_us, m_rate, m_p99 = mr.get("server_us_per_delivery"), mr.get("per_second"), mr.get("p99_ms")
        if mr.get("deliveries", 0) < mr.get("expected", 0):
            bad = True
            notes.append(f"{label}: muchat INCOMPLETE, {mr.get('deliveries')} of {mr.get('expected')}")
        if rc_m != "0" and mr.get("deliveries", 0) >= mr.get("expected", 0):
            bad = True
            notes.append(f"{label}: muchat run exit {rc_m}: " + " | ".join(tail(base + ".muchat.err")))
    for l in tail(base + ".muchat.err", 20):
        if "server log:" in l and "no warnings" not in l:
            notes.append(f"{label}: muchat {l.replace('run.sh: ', '').strip()}")
        elif l.startswith("  ") and ("WARN" in l or "ERROR" in l):
            notes.append(f"{label}:   {l.strip()[:160]}")
    ratio = m_us / i_us if (m_us is not None and i_us) else None
    table.append((label, i_us, i_rate, i_p99, m_us, m_rate, m_p99, ratio, t_i, t_m, window))

def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

# One line per shape: medians over the rounds, and the spread of the ratio.
shapes = {}
for r in table:
    shapes.setdefault(r[0], []).append(r)
w = max(5, *(len(k) for k in shapes))
print(f"{'':{w}}  {'--------- ngircd ---------':>26}  {'--------- muchat ---------':>26}")
print(f"{'shape':{w}}  {'us/dlv':>6} {'dlv/s':>10} {'p99 ms':>8}  {'us/dlv':>6} {'dlv/s':>10} {'p99 ms':>8}"
      f"  {'ratio':>6}  {'range':>11}")
for label, runs in shapes.items():
    col = lambda k: median([r[k] for r in runs])
    ratios = [r[7] for r in runs if r[7] is not None]
    ratio = median(ratios)
    spread = f"{min(ratios):.1f}-{max(ratios):.1f}x" if len(ratios) > 1 else ""
    print(f"{label:{w}}  {fnum(col(1), '6.2f')} {fnum(col(2), '10,.0f')} {fnum(col(3), '8.2f')}"
          f"  {fnum(col(4), '6.2f')} {fnum(col(5), '10,.0f')} {fnum(col(6), '8.2f')}"
          f"  {(fnum(ratio, '.1f') + 'x') if ratio is not None else '-':>6}  {spread:>11}")
print()
print(f"How to read: {rounds} round(s), each shape on fresh servers every round; every figure is the "
      f"median over the rounds, range = the lowest and highest per-round ratio. us/dlv is the server's "
      f"CPU time (all threads, to the nanosecond, measured alike for both) per delivered copy "
      f"over the send phase, lower is better; ratio = muchat us/dlv / ngircd us/dlv, the times more "
      f"server CPU muchat spends per delivery than a plaintext single-threaded C IRC relay (muchat also "
      f"MACs every frame per recipient, stores every message and handles acknowledgements). Both "
      f"generators keep the same number of requests unanswered per sender (window: "
      + ", ".join(sorted({f"{r[0]} {r[10]}" for r in table}))
      + f"; the IRC generator's own, unless WINDOW is set). The generators share the {ncpu} CPUs "
      f"with the servers, so dlv/s and p99 depend on them too: compare us/dlv first. p99: ngircd over "
      f"every delivery, muchat over a 1-in-50 sample.")
print("seconds per run (ngircd, muchat incl. set-up): "
      + ", ".join(f"{r[0]} {r[8]}+{r[9]}" for r in table) + f"; whole run {elapsed} s")
for note in notes:
    print("note: " + note)
sys.exit(1 if bad else 0)
PY
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews every figure)"
echo "3DES on one core at the end: $(cipher_speed)"
rm -rf "$work/bin"
echo "outputs and muchat server logs: $work"
exit "$status"
