#!/bin/bash
# bench/run.sh: maildird beside Postfix (SMTP -> Maildir) and Dovecot (POP3) in
# one command. Starts everything itself, all on loopback under $WORK:
#   maildird  release build, private config, SMTP 127.0.0.1:2700, POP3 :1700,
#             Maildirs $WORK/mail/USER (owned by its service user nobody:nogroup)
#   peers     bench/peers.sh: private Postfix 3.7 (smtpd 127.0.0.1:2600, virtual(8)
#             into $WORK/peers/mail/alice/Maildir) and Dovecot 2.3 (pop3 :1600,
#             $WORK/peers/mail/USER/Maildir, owned by benchmail)
# and drives them with examples/loadgen.rs, interleaved (maildird then peer in
# odd rounds, peer then maildird in even rounds), every load bounded by
# --time-limit. Prints a Markdown report (header, medians, min-max, ratios) on
# stdout, progress on stderr, and keeps report + raw loadgen output in
# $WORK/results-DATE.txt. trap EXIT stops maildird and both peers.
#
# Usage: bench/run.sh [ROUNDS]          (as root; default 5 rounds)
# Knobs (environment):
#   WORK=/var/tmp/maildird-bench   everything lives here (nothing outside is deleted)
#   SCALE=1        multiplies SMTP message counts, POP3 sessions and idle connections
#                  (SCALE=0.05 is a smoke run); the POP3 mailboxes stay 1000 x 10 KiB
#   ONLY=smtp,pop3,idle,checks,milter     which parts to run (checks: the cell "SMTP
#                  1 KiB, c=50, checks on" beside checks off, by bench/checks.sh; needs
#                  unbound; milter: the same with a local rspamd as milter, by
#                  bench/milter.sh; needs rspamd)
#   IDLE_ROUNDS=1  repetitions of the idle-memory cells (each on a fresh server)
#   SETTLE=1       seconds of quiet (after a sync) before every measured run
#   PURGE_TRASH=1  0 keeps $WORK/trash (see "ext4 pitfall" below)
#   SKIP_BUILD=1   use the existing release binaries
#
# ext4 pitfall on the bench box (no journal): mass deletions make file creation
# slow for minutes. So nothing is deleted between measured runs: old Maildirs are
# renamed into $WORK/trash (same filesystem) and the trash is purged at the end.
# Start the next run a few minutes after a purge.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
ROUNDS=${1:-5}
WORK=${WORK:-/var/tmp/maildird-bench}
SCALE=${SCALE:-1}
ONLY=${ONLY:-smtp,pop3,idle,checks,milter}
IDLE_ROUNDS=${IDLE_ROUNDS:-1}
SETTLE=${SETTLE:-1}
PURGE_TRASH=${PURGE_TRASH:-1}
MD_SMTP=127.0.0.1:2700
MD_POP3=127.0.0.1:1700
PEER_SMTP=127.0.0.1:2600
PEER_POP3=127.0.0.1:1600
PASS=benchpass
POP3_MSGS=1000 # per mailbox u0..u9
POP3_SIZE=10240
IDLE_CONNS_FULL=1000
MD_USER=nobody
MD_GROUP=nogroup
export WORK PEER_SMTP PEER_POP3 BENCH_PASS=$PASS IDLE_USERS=$IDLE_CONNS_FULL POP3_USERS=10

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
die() { log "error: $*"; exit 1; }
want() { [[ ",$ONLY," == *",$1,"* ]]; }
scaled() { awk -v n="$1" -v s="$SCALE" -v min="$2" 'BEGIN { v = int(n * s + 0.5); print (v < min ? min : v) }'; }

[ "$(id -u)" = 0 ] || die "run as root: private Postfix/Dovecot, and loadgen idle reads the servers' /proc"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive number"
[[ $WORK == /* && $WORK != / ]] || die "WORK must be an absolute path"

# ------------------------------------------------------------------ build
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    command -v cargo >/dev/null || PATH=$PATH:${HOME:-/root}/.cargo/bin:/root/.cargo/bin
    log "building maildird and loadgen (release)"
    cargo build --release --locked --quiet
    cargo build --release --locked --quiet --example loadgen
    cargo build --release --locked --quiet --example fsprobe
fi
BIN=$REPO/target/release/maildird
LG=$REPO/target/release/examples/loadgen
PROBE=$REPO/target/release/examples/fsprobe
SMTP_SOURCE=$(command -v smtp-source || echo /usr/sbin/smtp-source)
peers() { "$REPO/bench/peers.sh" "$@" 9>&-; }
{ [ -x "$BIN" ] && [ -x "$LG" ]; } || die "missing $BIN or $LG"

# ------------------------------------------------------------------ work dirs
mkdir -p "$WORK"
chmod 755 "$WORK"
# One run per $WORK at a time (fd 9 is closed for the servers we start).
exec 9>"$WORK/run.lock"
flock -n 9 || die "another bench/run.sh is using $WORK"
mkdir -p "$WORK/trash"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$WORK/results-$STAMP.txt
RAW=$WORK/raw-$STAMP.tmp  # every loadgen line: round cell server key value
DATA=$WORK/data-$STAMP.tmp # metrics of successful runs, and failures
: >"$RAW"
: >"$DATA"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

trash_seq=0
to_trash() { # move a directory out of the way without deleting anything
    [ -e "$1" ] || return 0
    trash_seq=$((trash_seq + 1))
    mv "$1" "$WORK/trash/$STAMP-$trash_seq-$(basename "$1")"
}


CLK_TCK=$(getconf CLK_TCK)
machine_cpu() { # CPU seconds the whole machine (every core) spent busy so far
    awk -v hz="$CLK_TCK" '$1 == "cpu" { printf "%.2f\n", ($2 + $3 + $4 + $7 + $8 + $9) / hz; exit }' /proc/stat
}
tree_cpu() { # CPU seconds of process $1, its descendants and their reaped children
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v root="$1" -v hz="$CLK_TCK" '
        { pid = $1; s = $0; sub(/^.*\) /, "", s); split(s, f, " ")
          parent[pid] = f[2]; cpu[pid] = f[12] + f[13] + f[14] + f[15] }
        END {
            for (p in parent) {
                q = p
                for (i = 0; i < 64 && q != root && q in parent && q > 1; i++) q = parent[q]
                if (q == root) t += cpu[p]
            }
            printf "%.2f\n", t / hz
        }'
}

# ------------------------------------------------------------------ maildird
HASH_FILE=$WORK/passhash
[ -s "$HASH_FILE" ] || echo "$PASS" | "$BIN" hash-password --password-stdin >"$HASH_FILE"
PASS_HASH=$(cat "$HASH_FILE") # one SHA512-CRYPT hash for both servers' users
export PASS_HASH
MD_UID=$(id -u $MD_USER) MD_GID=$(id -g $MD_USER)
PEER_UID=$(id -u benchmail) PEER_GID=$(id -g benchmail)

cat >"$WORK/maildird.toml" <<EOF
hostname = "mx.bench.test"
domains = ["bench.test"]
mail_root = "$WORK/mail"
users_file = "$WORK/users"
control_socket = "$WORK/control.sock"
user = "$MD_USER"
group = "$MD_GROUP"
[limits]
max_connections = 12000
max_connections_per_ip = 12000
[[listener]]
name = "smtp"
protocol = "smtp"
bind = "$MD_SMTP"
[[listener]]
name = "pop3"
protocol = "pop3"
bind = "$MD_POP3"
EOF
md_users() {
    echo alice
    local i
    for i in $(seq 0 9); do echo "u$i"; done
    for ((i = 0; i < IDLE_CONNS_FULL; i++)); do echo "idle$i"; done
}
# The users file as `maildird user add` writes it (same hash for everyone: fast).
md_users | awk -v h="$PASS_HASH" '{ print $1 ":" h "::::::roles=pop3,submit" }' >"$WORK/users.new"
chown root:$MD_GROUP "$WORK/users.new"
chmod 640 "$WORK/users.new"
mv -f "$WORK/users.new" "$WORK/users"
install -d -m 700 -o $MD_USER -g $MD_GROUP "$WORK/mail"
md_maildir() { # md_maildir DIR: an empty Maildir owned by maildird's service user
    install -d -m 700 -o $MD_USER -g $MD_GROUP "$1" "$1/tmp" "$1/new" "$1/cur"
}
while read -r u; do [ -d "$WORK/mail/$u/cur" ] || md_maildir "$WORK/mail/$u"; done < <(md_users)

MD_PID=
md_start() {
    "$BIN" serve -c "$WORK/maildird.toml" 2>>"$WORK/maildird.log" 9>&- &
    MD_PID=$!
    { wait_port "$MD_SMTP" && wait_port "$MD_POP3"; } || die "maildird did not start, see $WORK/maildird.log"
}
md_stop() {
    [ -n "$MD_PID" ] || return 0
    kill -TERM "$MD_PID" 2>/dev/null || true
    local _
    for _ in $(seq 1 100); do kill -0 "$MD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$MD_PID" 2>/dev/null || true
    wait "$MD_PID" 2>/dev/null || true
    MD_PID=
}
cleanup() {
    set +e
    md_stop
    peers stop all >/dev/null 2>&1
    rm -f "$RAW" "$DATA"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pf_pid() { peers pid postfix; }
dc_pid() { peers pid dovecot; }

log "starting maildird and the peers (WORK=$WORK)"
md_start
peers start all >&2

# ------------------------------------------------------------------ measuring
# measure ROUND CELL SERVER PID UNITS_KEY -- loadgen args...: one bounded run;
# its lines go to $RAW, metrics of a successful run to $DATA (plus server CPU).
FAILS=0
measure() {
    local round=$1 cell=$2 server=$3 pid=$4 units=$5 out rc=0 c0 c1 m0 m1 t0 t1 n
    shift 6
    sync
    sleep "$SETTLE"
    c0=$(tree_cpu "$pid")
    m0=$(machine_cpu)
    t0=$(date +%s.%N)
    out=$("$LG" "$@" 2>"$WORK/loadgen.err") || rc=$?
    t1=$(date +%s.%N)
    m1=$(machine_cpu)
    c1=$(tree_cpu "$pid")
    awk -v p="$round $cell $server" '{ print p, $0 }' <<<"$out" >>"$RAW"
    if [ "$rc" != 0 ]; then
        FAILS=$((FAILS + 1))
        echo "$round $cell $server failed 1" >>"$DATA"
        log "  $cell $server FAILED (exit $rc): $(tail -1 "$WORK/loadgen.err")"
        return 0
    fi
    awk -v p="$round $cell $server" '{ print p, $0 }' <<<"$out" >>"$DATA"
    if [ -n "$units" ]; then
        n=$(awk -v k="$units" '$1 == k { print $2 }' <<<"$out")
        awk -v p="$round $cell $server" -v c="$c1" -v c0="$c0" -v n="$n" \
            -v m0="$m0" -v m1="$m1" -v t0="$t0" -v t1="$t1" -v cores="$(nproc)" 'BEGIN { if (n > 0) {
                printf "%s cpu_ms_per_msg %.3f\n", p, (c - c0) * 1000 / n
                printf "%s machine_ms_per_msg %.3f\n%s busy_pct %.1f\n", p, (m1 - m0) * 1000 / n, p, (m1 - m0) * 100 / ((t1 - t0) * cores)
            } }' >>"$DATA"
    fi
    log "  $cell $server: $(awk '$1 ~ /^(e2e_per_s|msgs_per_s|mb_per_s|pss_kib_per_conn|probe_p50_ms|conns)$/ { printf "%s=%s ", $1, $2 }' <<<"$out")cpu=$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2fs", b - a }')"
}

# pair ROUND FN_MAILDIRD FN_PEER: both, maildird first in odd rounds
pair() {
    if (($1 % 2)); then "$2" "$1"; "$3" "$1"; else "$3" "$1"; "$2" "$1"; fi
}

# --- SMTP: every run gets a fresh, empty Maildir (the old one goes to trash)
# smtp_target SERVER: sets ADDR, MD (alice's Maildir, fresh and empty: the old
# one goes to trash) and PID (the server's) for an SMTP cell.
smtp_target() {
    if [ "$1" = maildird ]; then
        ADDR=$MD_SMTP MD=$WORK/mail/alice PID=$MD_PID
        to_trash "$MD"; md_maildir "$MD"
    else
        ADDR=$PEER_SMTP MD=$WORK/peers/mail/alice/Maildir PID=$(pf_pid)
        to_trash "$MD"
        install -d -m 700 -o benchmail -g benchmail "$MD" "$MD/tmp" "$MD/new" "$MD/cur"
    fi
}
SMTP_CELLS="smtp-1k-c50:50:1024:2000 smtp-1k-c10:10:1024:2000 smtp-100k-c50:50:102400:1000"
smtp_run() { # smtp_run ROUND SERVER
    local server=$2 addr md pid
    smtp_target "$server"
    addr=$ADDR md=$MD pid=$PID
    measure "$1" "$CELL" "$server" "$pid" delivered -- smtp "$addr" --conc "$CONC" --size "$SIZE" \
        --count "$COUNT" --rcpt alice@bench.test --maildir "$md" --time-limit 180 --drain-timeout 60
}
smtp_md() { smtp_run "$1" maildird; }
smtp_peer() { smtp_run "$1" postfix; }

# --- SMTP with Postfix's smtp-source as the client (a third-party client):
# 50 parallel sessions, one message per connection; delivered = the last of
# COUNT files in the Maildir, timed from the start.
files_in() { find "$1/new" "$1/cur" -type f 2>/dev/null | wc -l; }
sms_run() { # sms_run ROUND SERVER
    local round=$1 server=$2 addr md pid c0 c1 m0 m1 t0 t1 n deadline
    smtp_target "$server"
    addr=$ADDR md=$MD pid=$PID
    sync
    sleep "$SETTLE"
    c0=$(tree_cpu "$pid")
    m0=$(machine_cpu)
    t0=$(date +%s.%N)
    if ! timeout 180 "$SMTP_SOURCE" -s "$CONC" -m "$COUNT" -l "$SIZE" -M client.bench.test \
        -f sender@bench.test -t alice@bench.test "$addr" >"$WORK/smtp-source.out" 2>&1; then
        FAILS=$((FAILS + 1))
        echo "$round $CELL $server failed 1" >>"$DATA"
        log "  $CELL $server FAILED: $(tail -1 "$WORK/smtp-source.out")"
        return 0
    fi
    deadline=$((SECONDS + 120))
    n=$(files_in "$md")
    while [ "$n" -lt "$COUNT" ] && [ $SECONDS -lt $deadline ]; do
        sleep 0.02
        n=$(files_in "$md")
    done
    t1=$(date +%s.%N)
    c1=$(tree_cpu "$pid")
    m1=$(machine_cpu)
    if [ "$n" -lt "$COUNT" ]; then
        FAILS=$((FAILS + 1))
        echo "$round $CELL $server failed 1" >>"$DATA"
        log "  $CELL $server FAILED: $n of $COUNT delivered"
        return 0
    fi
    # machine: every core's busy time (server, smtp-source, kernel) per
    # message, and the share of both cores that was busy.
    awk -v p="$round $CELL $server" -v n="$COUNT" -v t0="$t0" -v t1="$t1" -v c0="$c0" -v c1="$c1" \
        -v m0="$m0" -v m1="$m1" -v cores="$(nproc)" 'BEGIN {
        printf "%s e2e_per_s %.1f\n%s delivered %d\n%s cpu_ms_per_msg %.3f\n", p, n / (t1 - t0), p, n, p, (c1 - c0) * 1000 / n
        printf "%s machine_ms_per_msg %.3f\n%s busy_pct %.1f\n", p, (m1 - m0) * 1000 / n, p, (m1 - m0) * 100 / ((t1 - t0) * cores)
    }' | tee -a "$RAW" >>"$DATA"
    log "  $CELL $server: e2e_per_s=$(awk -v n="$COUNT" -v t0="$t0" -v t1="$t1" 'BEGIN { printf "%.1f", n / (t1 - t0) }') cpu=$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2fs", b - a }')"
}
sms_md() { sms_run "$1" maildird; }
sms_peer() { sms_run "$1" postfix; }

# --- the filesystem's durable-delivery limit (examples/fsprobe.rs): N writers
# looping over open, write, fsync, link, fsync(new/), unlink; no server.
probe_run() { # probe_run ROUND WRITERS
    local d=$WORK/probe out
    to_trash "$d"
    sync
    sleep "$SETTLE"
    out=$("$PROBE" "$d" "$2" 1100 5) || { log "  fsprobe $2 FAILED"; return 0; }
    awk -v p="$1 probe-w$2 disk" '$1 == "ops_per_s" { print p, $0 }' <<<"$out" | tee -a "$RAW" >>"$DATA"
    log "  probe $2 writers: $(awk '$1 == "ops_per_s" { print $2 }' <<<"$out") ops/s"
}

# --- POP3: u0..u9 hold POP3_MSGS x POP3_SIZE each, identical for both servers
pop3_fixture() {
    local want="$POP3_MSGS x $POP3_SIZE" ok=1 i d n
    local dirs_md=() dirs_peer=()
    for i in $(seq 0 9); do
        dirs_md+=("$WORK/mail/u$i") dirs_peer+=("$WORK/peers/mail/u$i/Maildir")
    done
    if [ "$(cat "$WORK/pop3-fixture" 2>/dev/null)" = "$want" ]; then
        for d in "${dirs_md[@]}" "${dirs_peer[@]}"; do
            n=$(find "$d/new" "$d/cur" -type f | wc -l)
            [ "$n" = "$POP3_MSGS" ] || ok=0
        done
    else
        ok=0
    fi
    if [ $ok = 1 ]; then
        log "POP3 mailboxes u0..u9 already hold $want (reused)"
        return
    fi
    log "filling POP3 mailboxes u0..u9 with $want for both servers"
    rm -f "$WORK/pop3-fixture"
    for d in "${dirs_md[@]}" "${dirs_peer[@]}"; do to_trash "$d"; done
    python3 "$REPO/bench/fill_maildirs.py" --count "$POP3_MSGS" --size "$POP3_SIZE" \
        --owner "$MD_UID:$MD_GID" "${dirs_md[@]}" >&2
    python3 "$REPO/bench/fill_maildirs.py" --count "$POP3_MSGS" --size "$POP3_SIZE" \
        --owner "$PEER_UID:$PEER_GID" "${dirs_peer[@]}" >&2
    sync
    echo "$want" >"$WORK/pop3-fixture"
}
pop3_run() { # pop3_run ROUND SERVER
    local addr pid
    if [ "$2" = maildird ]; then addr=$MD_POP3 pid=$MD_PID; else addr=$PEER_POP3 pid=$(dc_pid); fi
    measure "$1" "$CELL" "$2" "$pid" msgs -- pop3 "$addr" --user 'u{i}' --pass "$PASS" --conc 10 \
        --sessions "$SESSIONS" --pipeline "$PIPE" --expect-msgs "$POP3_MSGS" --time-limit 180
}
pop3_md() { pop3_run "$1" maildird; }
pop3_peer() { pop3_run "$1" dovecot; }

# --- POP3 memory: RETR_SESS sessions at once, each RETR of one 20 MiB message
# (mailboxes idle0..; emptied again afterwards); the growth of the server's
# resident memory (its whole process tree, sampled every 10 ms).
RETR_SESS=$(scaled 50 5)
RETR_SIZE=$((20 * 1024 * 1024))
retrmem_run() { # retrmem_run ROUND SERVER
    local server=$2 i d addr pid owner out dirs=()
    for ((i = 0; i < RETR_SESS; i++)); do
        if [ "$server" = maildird ]; then d=$WORK/mail/idle$i; else d=$WORK/peers/mail/idle$i/Maildir; fi
        to_trash "$d"
        dirs+=("$d")
    done
    if [ "$server" = maildird ]; then
        addr=$MD_POP3 pid=$MD_PID owner=$MD_UID:$MD_GID
    else
        addr=$PEER_POP3 pid=$(dc_pid) owner=$PEER_UID:$PEER_GID
    fi
    python3 "$REPO/bench/fill_maildirs.py" --count 1 --size "$RETR_SIZE" --owner "$owner" "${dirs[@]}" >&2
    sync
    sleep "$SETTLE"
    if out=$(python3 "$REPO/bench/retr_memory.py" "$addr" 'idle{i}' "$PASS" "$RETR_SESS" "$pid"); then
        awk -v p="$1 $CELL $server" '{ print p, $0 }' <<<"$out" | tee -a "$RAW" >>"$DATA"
        log "  $CELL $server: $(tr '\n' ' ' <<<"$out")"
    else
        FAILS=$((FAILS + 1))
        echo "$1 $CELL $server failed 1" >>"$DATA"
        log "  $CELL $server FAILED"
    fi
    # Empty again (the idle cells want empty mailboxes).
    for d in "${dirs[@]}"; do
        to_trash "$d"
        if [ "$server" = maildird ]; then
            md_maildir "$d"
        else
            install -d -m 700 -o benchmail -g benchmail "$d" "$d/tmp" "$d/new" "$d/cur"
        fi
    done
}
retrmem_md() { retrmem_run "$1" maildird; }
retrmem_peer() { retrmem_run "$1" dovecot; }

# --- idle memory: each cell on a freshly started server
IDLE_CONNS=$(scaled $IDLE_CONNS_FULL 20)
IDLE_10K=$(scaled 10000 20) # maildird alone: 10,000 idle sessions, still responsive
idle_run() { # idle_run ROUND SERVER(maildird|postfix|dovecot|dovecot-perf)
    local addr pid login=()
    [ -n "$IDLE_LOGIN" ] && login=(--login "idle{i}:$PASS" --users "$IDLE_CONNS")
    case $2 in
    maildird)
        md_stop; md_start; pid=$MD_PID
        if [ "$IDLE_PROTO" = smtp ]; then addr=$MD_SMTP; else addr=$MD_POP3; fi ;;
    postfix) peers restart postfix >&2; pid=$(pf_pid) addr=$PEER_SMTP ;;
    dovecot) DOVECOT_MODE=default peers restart dovecot >&2; pid=$(dc_pid) addr=$PEER_POP3 ;;
    dovecot-perf) DOVECOT_MODE=performance peers restart dovecot >&2; pid=$(dc_pid) addr=$PEER_POP3 ;;
    esac
    sleep 1
    measure "$1" "$CELL" "$2" "$pid" "" -- idle "$addr" --conns "$IDLE_CONNS" --proto "$IDLE_PROTO" \
        "${login[@]}" --server-pid "$pid" --probes 20 --time-limit 240
    # loadgen exits 0 with fewer sessions than asked only if none failed; insist on all
    if ! grep -q "^$1 $CELL $2 failed" "$DATA" &&
        [ "$(awk -v p="$1 $CELL $2" '$1" "$2" "$3 == p && $4 == "conns" { print $5 }' "$DATA")" != "$IDLE_CONNS" ]; then
        echo "$1 $CELL $2 failed 1" >>"$DATA"
        FAILS=$((FAILS + 1))
    fi
}
idle_md() { idle_run "$1" maildird; }
idle_pf() { idle_run "$1" postfix; }
idle_dc() { idle_run "$1" dovecot; }
idle_dcp() { idle_run "$1" dovecot-perf; }

T0=$(date +%s)
if want pop3; then
    pop3_fixture
    SESSIONS=$(scaled 60 10)
    log "POP3 warm-up: one untimed pass per server (moves new/ to cur/, builds Dovecot's index)"
    "$LG" pop3 "$MD_POP3" --user 'u{i}' --pass "$PASS" --conc 10 --sessions 10 --pipeline 16 \
        --expect-msgs "$POP3_MSGS" --time-limit 180 >/dev/null || die "POP3 warm-up on maildird failed"
    "$LG" pop3 "$PEER_POP3" --user 'u{i}' --pass "$PASS" --conc 10 --sessions 10 --pipeline 16 \
        --expect-msgs "$POP3_MSGS" --time-limit 180 >/dev/null || die "POP3 warm-up on Dovecot failed"
fi
for r in $(seq 1 "$ROUNDS"); do
    log "round $r of $ROUNDS"
    if want smtp; then
        for spec in $SMTP_CELLS; do
            IFS=: read -r CELL CONC SIZE COUNT <<<"$spec"
            COUNT=$(scaled "$COUNT" "$CONC")
            pair "$r" smtp_md smtp_peer
        done
        CELL=smtp-src-1k-c50 CONC=50 SIZE=1024 COUNT=$(scaled 2000 50)
        pair "$r" sms_md sms_peer
        for w in 1 10 50; do probe_run "$r" "$w"; done
    fi
    if want pop3; then
        for PIPE in 1 16; do
            CELL=pop3-p$PIPE
            pair "$r" pop3_md pop3_peer
        done
    fi
done
if want pop3; then
    log "POP3 memory: $RETR_SESS sessions RETR 20 MiB each at once"
    CELL=pop3-retr20m
    pair 1 retrmem_md retrmem_peer
fi
if want idle; then
    for r in $(seq 1 "$IDLE_ROUNDS"); do
        log "idle memory, $IDLE_CONNS connections (repetition $r of $IDLE_ROUNDS)"
        CELL=idle-smtp IDLE_PROTO=smtp IDLE_LOGIN=
        pair "$r" idle_md idle_pf
        CELL=idle-pop3 IDLE_PROTO=pop3 IDLE_LOGIN=
        pair "$r" idle_md idle_dc
        idle_dcp "$r"
        CELL=idle-pop3-login IDLE_PROTO=pop3 IDLE_LOGIN=1
        pair "$r" idle_md idle_dc
        CELL=idle-smtp-10k IDLE_PROTO=smtp IDLE_LOGIN=
        saved=$IDLE_CONNS IDLE_CONNS=$IDLE_10K
        idle_md "$r"
        IDLE_CONNS=$saved
    done
fi
ELAPSED=$(($(date +%s) - T0))

# ------------------------------------------------------------------ report
S1K50=$(scaled 2000 50) S1K10=$(scaled 2000 10) S100K=$(scaled 1000 50) SESS=$(scaled 60 10)
PF_VER=$(postconf -d -h mail_version 2>/dev/null || echo "?")
DC_VER=$(dovecot --version 2>/dev/null | awk '{ print $1 }')
# rows: cell | metric key | peer server | label | metric shown | better (h: higher, l: lower)
ROWS=$(
    cat <<EOF
smtp-1k-c50|e2e_per_s|postfix|SMTP 1 KiB, conc 50, $S1K50 msgs|delivered msgs/s|h
smtp-1k-c10|e2e_per_s|postfix|SMTP 1 KiB, conc 10, $S1K10 msgs|delivered msgs/s|h
smtp-100k-c50|e2e_per_s|postfix|SMTP 100 KiB, conc 50, $S100K msgs|delivered msgs/s|h
smtp-src-1k-c50|e2e_per_s|postfix|SMTP 1 KiB, conc 50, $S1K50 msgs, client smtp-source|delivered msgs/s|h
pop3-p1|msgs_per_s|dovecot|POP3 RETR 10 KiB, 10 sessions, pipeline 1|msgs/s|h
pop3-p1|mb_per_s|dovecot|POP3 RETR 10 KiB, 10 sessions, pipeline 1|MB/s|h
pop3-p16|msgs_per_s|dovecot|POP3 RETR 10 KiB, 10 sessions, pipeline 16|msgs/s|h
pop3-p16|mb_per_s|dovecot|POP3 RETR 10 KiB, 10 sessions, pipeline 16|MB/s|h
pop3-retr20m|growth_kib|dovecot|POP3 RETR 20 MiB, $RETR_SESS sessions at once|server RSS growth KiB|l
pop3-retr20m|peak_kib|dovecot|POP3 RETR 20 MiB, $RETR_SESS sessions at once|server RSS peak KiB|l
smtp-1k-c50|cpu_ms_per_msg|postfix|SMTP 1 KiB, conc 50|server CPU ms/msg|l
smtp-1k-c10|cpu_ms_per_msg|postfix|SMTP 1 KiB, conc 10|server CPU ms/msg|l
smtp-100k-c50|cpu_ms_per_msg|postfix|SMTP 100 KiB, conc 50|server CPU ms/msg|l
smtp-src-1k-c50|cpu_ms_per_msg|postfix|SMTP 1 KiB, conc 50, smtp-source|server CPU ms/msg|l
smtp-1k-c50|machine_ms_per_msg|postfix|SMTP 1 KiB, conc 50|machine CPU ms/msg (all cores)|l
smtp-1k-c50|busy_pct|postfix|SMTP 1 KiB, conc 50|cores busy %|l
smtp-src-1k-c50|machine_ms_per_msg|postfix|SMTP 1 KiB, conc 50, smtp-source|machine CPU ms/msg (all cores)|l
smtp-src-1k-c50|busy_pct|postfix|SMTP 1 KiB, conc 50, smtp-source|cores busy %|l
pop3-p1|machine_ms_per_msg|dovecot|POP3 RETR 10 KiB, pipeline 1|machine CPU ms/msg (all cores)|l
pop3-p1|busy_pct|dovecot|POP3 RETR 10 KiB, pipeline 1|cores busy %|l
pop3-p16|machine_ms_per_msg|dovecot|POP3 RETR 10 KiB, pipeline 16|machine CPU ms/msg (all cores)|l
pop3-p16|busy_pct|dovecot|POP3 RETR 10 KiB, pipeline 16|cores busy %|l
pop3-p1|cpu_ms_per_msg|dovecot|POP3 RETR 10 KiB, pipeline 1|server CPU ms/msg|l
pop3-p16|cpu_ms_per_msg|dovecot|POP3 RETR 10 KiB, pipeline 16|server CPU ms/msg|l
idle-smtp|pss_kib_per_conn|postfix|Idle SMTP after EHLO, $IDLE_CONNS conns|PSS KiB/conn|l
idle-pop3|pss_kib_per_conn|dovecot|Idle POP3 pre-login, $IDLE_CONNS conns|PSS KiB/conn|l
idle-pop3|pss_kib_per_conn|dovecot-perf|Idle POP3 pre-login, $IDLE_CONNS conns|PSS KiB/conn|l
idle-pop3-login|pss_kib_per_conn|dovecot|Idle POP3 logged in, $IDLE_CONNS conns|PSS KiB/conn|l
idle-smtp|probe_p50_ms|postfix|New session while $IDLE_CONNS SMTP idle|probe p50 ms|l
idle-pop3|probe_p50_ms|dovecot|New session while $IDLE_CONNS POP3 idle|probe p50 ms|l
idle-pop3|probe_p50_ms|dovecot-perf|New session while $IDLE_CONNS POP3 idle|probe p50 ms|l
idle-pop3-login|probe_p50_ms|dovecot|New session while $IDLE_CONNS POP3 logged in|probe p50 ms|l
idle-smtp-10k|pss_kib_per_conn|none|Idle SMTP after EHLO, $IDLE_10K conns|PSS KiB/conn|l
idle-smtp-10k|probe_p50_ms|none|New session while $IDLE_10K SMTP idle|probe p50 ms|l
idle-smtp-10k|probe_max_ms|none|New session while $IDLE_10K SMTP idle|probe max ms|l
EOF
)
# only the parts that ran (cell names start with smtp-, pop3-, idle-)
ROWS=$(awk -F'|' -v only=",$ONLY," '{ split($1, p, "-") } index(only, "," p[1] ",")' <<<"$ROWS")
table() {
    local rows=$WORK/rows-$STAMP.tmp
    echo "$ROWS" >"$rows"
    awk -F'|' -v pf="Postfix $PF_VER" -v dc="Dovecot $DC_VER" '
        function fmt(x) { return x >= 100 ? sprintf("%.0f", x) : x >= 10 ? sprintf("%.1f", x) : sprintf("%.2f", x) }
        # stats(CELL, SERVER, KEY): "median (min-max)", the median in MED
        function stats(c, s, key,   k, n, i, j, t, a, m, out) {
            k = c SUBSEP s SUBSEP key; n = cnt[k]; MED = ""
            if (!n) return failed[c, s] ? "failed (" failed[c, s] "×)" : "n/a"
            for (i = 1; i <= n; i++) a[i] = val[k, i] + 0
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
            m = n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
            MED = m
            out = n > 1 ? fmt(m) " (" fmt(a[1]) "–" fmt(a[n]) ")" : fmt(m)
            return failed[c, s] ? out " ⚠ " failed[c, s] " failed" : out
        }
        FILENAME == ARGV[1] { # data lines: round cell server key value
            split($0, f, " ")
            if (f[4] == "failed") failed[f[2], f[3]]++
            else { k = f[2] SUBSEP f[3] SUBSEP f[4]; val[k, ++cnt[k]] = f[5] }
            next
        }
        { # rows: cell|key|peer|label|metric|better
            pname = $3 == "postfix" ? pf : $3 == "dovecot" ? dc : $3 == "none" ? "– (maildird only)" : dc " (performance login)"
            a = stats($1, "maildird", $2); ma = MED
            b = stats($1, $3, $2); mb = MED
            if (ma == "" || mb == "" || ma + 0 == 0 || mb + 0 == 0) ratio = "–"
            else if ($6 == "h") ratio = sprintf("**%.2f×** (maildird/peer)", ma / mb)
            else ratio = sprintf("**%.2f×** (peer/maildird)", mb / ma)
            printf "| %s | %s %s | %s | %s | %s | %s |\n", $4, $5, ($6 == "h" ? "↑" : "↓"), pname, a, b, ratio
        }' "$DATA" "$rows"
    rm -f "$rows"
}
# The disk's durable-delivery limit (fsprobe medians) and maildird's share of it.
disk_limit() {
    grep -q ' probe-w' "$DATA" || return 0
    awk '
        function med(k,   n, i, j, t, a) { n = cnt[k]; if (!n) return 0
            for (i = 1; i <= n; i++) a[i] = v[k, i]
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
        $4 == "ops_per_s" || ($4 == "e2e_per_s" && $3 == "maildird") { k = $2; v[k, ++cnt[k]] = $5 + 0 }
        END {
            w1 = med("probe-w1"); w10 = med("probe-w10"); w50 = med("probe-w50")
            printf "\nDisk limit (examples/fsprobe.rs: open, write 1.1 KB, fsync, link, fsync new/, unlink; medians): "
            printf "%.0f/s with 1 writer, %.0f/s with 10, %.0f/s with 50.", w1, w10, w50
            if (w50 > 0) {
                printf " maildird SMTP 1 KiB, conc 50 / limit at 50 writers: **%.2f** (loadgen)", med("smtp-1k-c50") / w50
                if (med("smtp-src-1k-c50") > 0) printf ", **%.2f** (smtp-source)", med("smtp-src-1k-c50") / w50
                printf ".\n"
            }
        }' "$DATA"
}
CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
MEM=$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
read -r FS_SRC FS_TYPE FS_OPTS < <(findmnt -no SOURCE,FSTYPE,OPTIONS -T "$WORK")
JOURNAL="no journal"
compgen -G "/proc/fs/jbd2/$(basename "$FS_SRC")*" >/dev/null && JOURNAL="journal"
MD_VER="$("$BIN" --version 2>/dev/null | awk '{ print $NF }') ($(git -C "$REPO" describe --always --dirty --tags 2>/dev/null || echo unknown))"
CMD="bench/run.sh $ROUNDS"
[ "$SCALE" != 1 ] && CMD="SCALE=$SCALE $CMD"
[ "$ONLY" != smtp,pop3,idle,checks,milter ] && CMD="ONLY=$ONLY $CMD"
[ "$IDLE_ROUNDS" != 1 ] && CMD="IDLE_ROUNDS=$IDLE_ROUNDS $CMD"

report() {
    cat <<EOF
## maildird vs Postfix and Dovecot (bench/run.sh)

- **date**: $(date -u '+%Y-%m-%d %H:%M UTC') (measuring took ${ELAPSED} s)
- **machine**: $(nproc) CPUs ($CPU), $MEM RAM, kernel $(uname -r); \`$WORK\` on $FS_TYPE ($JOURNAL; $FS_OPTS)
- **versions**: maildird $MD_VER, Postfix $PF_VER, Dovecot $DC_VER
- **command**: \`$CMD\` — rounds: $ROUNDS, interleaved (odd rounds maildird first, even rounds the peer first); idle cells $IDLE_ROUNDS× on freshly started servers
- **ratio**: > 1 means maildird is better: maildird/peer for throughput (↑), peer/maildird for CPU, memory and latency (↓)

| cell | metric | peer | maildird median (min–max) | peer median (min–max) | ratio |
|---|---|---|---|---|---|
$(table)
$(disk_limit)

How it was measured:
- Everything on loopback; the load generator (examples/loadgen.rs) and the servers share the $(nproc) CPUs.
- SMTP: one message per connection, no pipelining, to alice@bench.test. *Delivered* = acknowledged with 250 **and** present in the Maildir (new/ or cur/), per second from the first connection to the last file. maildird fsyncs the message and new/ before its 250; Postfix (default settings) fsyncs its queue file before the 250 and virtual(8) writes the Maildir file afterwards. Every SMTP run starts with an empty Maildir.
- POP3: mailboxes u0..u9 with $POP3_MSGS messages of $((POP3_SIZE / 1024)) KiB body (LF line endings, the same files for both servers), warmed up by one untimed pass; $SESS sessions over 10 connections, one mailbox each: USER/PASS, LIST, RETR of every message, QUIT. MB = 10^6 bytes. Both users files hold the same SHA512-CRYPT hash.
- Server CPU: CPU time of the server's whole process tree, including exited children (/proc), during the run.
- Idle: PSS of the server's process tree (from /proc) before and after opening the connections, per connection, each cell on a freshly started server. Logged in: one mailbox per connection (idle0..idle$((IDLE_CONNS - 1))), since maildird locks a maildrop for the session (RFC 1939). Probe: a fresh session (greeting, EHLO for SMTP, QUIT) timed while the idle ones are held.
EOF
    if [ "$FAILS" != 0 ]; then
        echo
        echo "**$FAILS run(s) failed**: see the raw lines in $RESULTS, $WORK/maildird.log and $WORK/peers/*/*.log."
    fi
}
REPORT=$(report)
# The sender checks' cost (maildird only: Postfix needs milters for the same),
# after the matrix so the two never share the CPUs.
if want checks; then
    log "sender checks: bench/checks.sh $ROUNDS"
    CHECKS=$(SKIP_BUILD=1 WORK="$WORK/checks" "$REPO/bench/checks.sh" "$ROUNDS") ||
        CHECKS="**bench/checks.sh failed**: see $WORK/checks/"
    REPORT="$REPORT

$CHECKS"
fi
# What a milter costs (a local rspamd), likewise after the matrix.
if want milter; then
    log "milter: bench/milter.sh $ROUNDS"
    MILTER=$(SKIP_BUILD=1 WORK="$WORK/milter" "$REPO/bench/milter.sh" "$ROUNDS") ||
        MILTER="**bench/milter.sh failed**: see $WORK/milter/"
    REPORT="$REPORT

$MILTER"
fi
{
    echo "$REPORT"
    echo
    echo "## raw loadgen output (round cell server key value)"
    echo
    cat "$RAW"
    echo
    echo "## derived (round cell server cpu_ms_per_msg)"
    grep ' cpu_ms_per_msg ' "$DATA" || true
} >"$RESULTS"
echo "$REPORT"
log "report and raw results: $RESULTS"

# ------------------------------------------------------------------ cleanup
md_stop
peers stop all >&2
if [ "$PURGE_TRASH" = 1 ]; then
    log "purging $WORK/trash (wait a few minutes before the next run: ext4 without journal)"
    rm -rf "${WORK:?}/trash"
fi
[ "$FAILS" = 0 ]
