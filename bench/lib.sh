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
