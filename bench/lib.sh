# shellcheck shell=bash
# Shell helpers shared by the bench/ scripts (sourced, not run).

# wait_port HOST:PORT -> 0 once something accepts there (10 s)
wait_port() {
    local _
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# owned_pid PIDFILE PROCFILE LINE: the pid in PIDFILE if that process runs and
# its /proc/PID/PROCFILE (NUL-separated: environ, cmdline) has the line LINE,
# i.e. it is our own instance and not someone else's.
owned_pid() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(tr -dc '0-9' <"$1")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' '\n' <"/proc/$pid/$2" 2>/dev/null | grep -qxF "$3" || return 1
    echo "$pid"
}
