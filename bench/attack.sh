#!/usr/bin/env bash
# Runs loadgen's attacks on the abuse limits, each against a fresh release
# server with its default flags, and prints each attack's summary and JSON
# line. Usage:
#   bench/attack.sh [ATTACK...]     (default: all of them)
# ATTACK is one of guess, victim, spray, dh-flood, silent, nat (see
# `loadgen --help` and docs/SECURITY.md for what each does and the target).
# Build first: cargo build --release. Data directories go under
# ${TMPDIR:-/tmp}/muchat-attack-<name>; server logs stay there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
attacks=("$@")
[ ${#attacks[@]} -gt 0 ] || attacks=(guess victim spray dh-flood silent nat)
rc=0
for a in "${attacks[@]}"; do
    echo "== $a" >&2
    DEADLINE=${DEADLINE:-120} "$root/bench/run.sh" "${TMPDIR:-/tmp}/muchat-attack-$a" --attack "$a" \
        || rc=$?
done
exit "$rc"
