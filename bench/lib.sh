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

# --- A/B cost scripts (checks.sh, milter.sh, filters.sh): daemons that differ
# in one setting, the same load against each, medians side by side.

# ab_fresh TRASH MAILDIR: an empty Maildir for nobody, the old one moved to
# TRASH (deleting thousands of files here slows later creates for minutes).
ab_fresh() {
    [ -e "$2" ] && mv "$2" "$1/$(date +%s%N)"
    install -d -m 700 -o nobody -g nogroup "$2" "$2/tmp" "$2/new" "$2/cur"
}

# ab_cpu PID: user + system CPU seconds of process PID so far.
ab_cpu() {
    awk -v hz="$(getconf CLK_TCK)" '{ s = $0; sub(/^.*\) /, "", s); split(s, f, " "); printf "%.2f\n", (f[12] + f[13]) / hz }' "/proc/$1/stat"
}

# ab_measure RESULTS PID CELL MODE KEY -- command...: one load run against the
# daemon PID. Appends "CELL MODE RATE CPU_MS_PER_MSG" to RESULTS (RATE: the
# command's KEY line; messages: its "delivered" or "msgs" line) and prints
# RATE; fails when the command does.
ab_measure() {
    local results=$1 pid=$2 cell=$3 mode=$4 key=$5 out c0 c1 rate n
    shift 6
    sync
    c0=$(ab_cpu "$pid")
    out=$("$@") || return 1
    c1=$(ab_cpu "$pid")
    rate=$(awk -v k="$key" '$1 == k { print $2 }' <<<"$out")
    n=$(awk '$1 == "delivered" || $1 == "msgs" { print $2 }' <<<"$out")
    echo "$cell $mode $rate $(awk -v a="$c0" -v b="$c1" -v n="$n" 'BEGIN { printf "%.3f", (b - a) * 1000 / n }')" >>"$results"
    echo "$rate"
}

# ab_table RESULTS "MODE=LABEL;MODE=LABEL...": one markdown row per cell and
# mode (in that order): median (min–max) of the rate, its change against the
# first mode, the median CPU ms/msg and its change.
ab_table() {
    awk -v modes="$2" '
        function med(k,   n, i, j, t, a) { n = cnt[k]; for (i = 1; i <= n; i++) a[i] = v[k, i]
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
            LO = a[1]; HI = a[n]; return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
        { k = $1 SUBSEP $2; cnt[k]++; v[k, cnt[k]] = $3 + 0; c[k, cnt[k]] = $4 + 0; cells[$1] = 1 }
        END {
            nm = split(modes, ms, ";")
            for (i = 1; i <= nm; i++) { eq = index(ms[i], "="); mode[i] = substr(ms[i], 1, eq - 1); label[i] = substr(ms[i], eq + 1) }
            for (cell in cells) for (i = 1; i <= nm; i++) {
                k = cell SUBSEP mode[i]; if (!cnt[k]) continue
                m = med(k); lo = LO; hi = HI
                for (j = 1; j <= cnt[k]; j++) v[k, j] = c[k, j]
                cm = med(k)
                if (i == 1) { base = m; cbase = cm }
                printf "%s %d| %s | %s | %.0f (%.0f–%.0f) | %+.1f%% | %.3f | %+.1f%% |\n", cell, i, cell, label[i], m, lo, hi, (m / base - 1) * 100, cm, (cm / cbase - 1) * 100
            }
        }' "$1" | sort | cut -d'|' -f2- | sed 's/^/|/'
}
