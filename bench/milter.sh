#!/bin/bash
# bench/milter.sh: what a milter costs (message_filters = ["milter.rspamd"]).
# Two maildird daemons (release build, private configs under $WORK) that
# differ only in message_filters: none, and rspamd (Debian's, a private
# instance on loopback: its proxy worker in milter mode with self_scan, two
# workers for the two cores, every network lookup pointed at a closed port).
# The load is SMTP 1 KiB, 50 clients, 2000 messages, one per connection, from
# our load generator (examples/loadgen.rs) and from a third-party client
# (python3 smtplib, 10 processes, 500 messages). Rounds interleave off/on
# (rotating who goes first); medians, min-max, and the cost of the milter.
# Server CPU is maildird's only (rspamd's is reported apart).
#
# Usage: bench/milter.sh [ROUNDS]     (as root; default 5)
# Knobs: WORK=/var/tmp/maildird-bench-milter  SKIP_BUILD=1
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
ROUNDS=${1:-5}
WORK=${WORK:-/var/tmp/maildird-bench-milter}
MILTER_PORT=2754
declare -A SMTP_PORT=([off]=2722 [on]=2723)

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
die() { log "error: $*"; exit 1; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive number"
[ "$(id -u)" = 0 ] || die "run as root (the daemons drop to nobody)"
command -v rspamd >/dev/null || die "needs rspamd (apt-get install rspamd)"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    command -v cargo >/dev/null || PATH=$PATH:${HOME:-/root}/.cargo/bin
    log "building maildird and loadgen (release)"
    cargo build --release --locked --quiet
    cargo build --release --locked --quiet --example loadgen
fi
BIN=$REPO/target/release/maildird
LG=$REPO/target/release/examples/loadgen
PY=/usr/bin/python3

mkdir -p "$WORK/trash"
chmod 755 "$WORK"

# A private rspamd: its proxy worker in milter mode, scanning itself.
RS=$WORK/rspamd
mkdir -p "$RS/local.d" "$RS/db" "$RS/run" "$RS/log"
cat >"$RS/local.d/worker-proxy.inc" <<EOF
bind_socket = "127.0.0.1:$MILTER_PORT";
milter = yes;
timeout = 120s;
count = 2;
upstream "local" { default = yes; self_scan = yes; }
EOF
for w in normal controller fuzzy; do echo "enabled = false;" >"$RS/local.d/worker-$w.inc"; done
echo 'dns { nameserver = ["127.0.0.1:1"]; timeout = 0.2s; retransmits = 1; }' >"$RS/local.d/options.inc"
printf 'use = ["x-spamd-result", "x-spam-status"];\nskip_local = false;\n' >"$RS/local.d/milter_headers.conf"
printf 'type = "console";\nlevel = "error";\n' >"$RS/local.d/logging.inc"
chmod -R 777 "$RS"
rspamd -f -u _rspamd -g _rspamd -c /etc/rspamd/rspamd.conf --var LOCAL_CONFDIR="$RS" \
    --var DBDIR="$RS/db" --var RUNDIR="$RS/run" --var LOGDIR="$RS/log" 2>"$WORK/rspamd.log" &
UB_PID=$!

for mode in off on; do
    {
        cat <<EOF
hostname = "mx.bench.test"
domains = ["bench.test"]
mail_root = "$WORK/mail-$mode"
users_file = "$WORK/users"
control_socket = "$WORK/control-$mode.sock"
user = "nobody"
group = "nogroup"
[limits]
max_connections = 1000
max_connections_per_ip = 1000
max_connection_rate_per_ip = 0
[[listener]]
name = "smtp"
protocol = "smtp"
bind = "127.0.0.1:${SMTP_PORT[$mode]}"
EOF
        if [ "$mode" = on ]; then
            printf 'message_filters = ["milter.rspamd"]\n[milter.rspamd]\naddress = "127.0.0.1:%s"\n' "$MILTER_PORT"
        fi
    } >"$WORK/maildird-$mode.toml"
    install -d -m 700 -o nobody -g nogroup "$WORK/mail-$mode"
done
echo "alice:$(echo benchpass | "$BIN" hash-password --password-stdin)::::::roles=pop3" >"$WORK/users"
chgrp nogroup "$WORK/users"
chmod 640 "$WORK/users"

declare -A PID
for mode in off on; do
    "$BIN" serve -c "$WORK/maildird-$mode.toml" 2>"$WORK/maildird-$mode.log" &
    PID[$mode]=$!
done
trap 'kill ${PID[off]} ${PID[on]} $UB_PID 2>/dev/null; wait 2>/dev/null' EXIT
for _ in $(seq 1 30); do
    wait_port 127.0.0.1:"$MILTER_PORT" 2>/dev/null && break
done
wait_port 127.0.0.1:"$MILTER_PORT" || die "rspamd did not start: $WORK/rspamd.log"
for mode in off on; do
    wait_port 127.0.0.1:"${SMTP_PORT[$mode]}" || die "maildird ($mode) did not start: $WORK/maildird-$mode.log"
done

# A fresh, empty Maildir for every run (lib.sh: ab_fresh).
fresh() {
    ab_fresh "$WORK/trash" "$WORK/mail-$1/alice"
    echo "$WORK/mail-$1/alice"
}
RESULTS=$(mktemp)
trap 'kill ${PID[off]} ${PID[on]} $UB_PID 2>/dev/null; wait 2>/dev/null; rm -f "$RESULTS"' EXIT
measure() { # measure CELL MODE KEY -- command...
    local rate
    rate=$(ab_measure "$RESULTS" "${PID[$2]}" "$@") || die "$1 $2: load client failed"
    log "  $1 $2: $3=$rate"
}
# Warm-up: one message each (rspamd's maps, the page cache).
for mode in off on; do
    "$LG" smtp 127.0.0.1:"${SMTP_PORT[$mode]}" --count 1 --rcpt alice@bench.test >/dev/null
done
grep -q 'filter="milter.rspamd" verdict="accept"' "$WORK/maildird-on.log" || die "the milter did not run: $WORK/maildird-on.log"
RS_CPU0=$(ps -o cputimes= -C rspamd | awk '{ s += $1 } END { print s + 0 }')
ORDER=(off on)
for r in $(seq 1 "$ROUNDS"); do
    log "round $r of $ROUNDS"
    for mode in "${ORDER[@]}"; do
        md=$(fresh "$mode")
        measure loadgen-1k-c50 "$mode" e2e_per_s -- "$LG" smtp 127.0.0.1:"${SMTP_PORT[$mode]}" --conc 50 \
            --count 2000 --size 1024 --rcpt alice@bench.test --maildir "$md" --time-limit 180
        measure smtplib-1k-c10 "$mode" msgs_per_s -- "$PY" "$REPO/bench/smtplib_load.py" \
            127.0.0.1:"${SMTP_PORT[$mode]}" --conc 10 --count 500 --size 1024 --rcpt alice@bench.test
    done
    ORDER=("${ORDER[@]:1}" "${ORDER[0]}")
done

RS_CPU1=$(ps -o cputimes= -C rspamd | awk '{ s += $1 } END { print s + 0 }')
echo "## Milter cost (bench/milter.sh $ROUNDS, $(date -u '+%Y-%m-%d %H:%M UTC'))"
echo
echo "| client | milter | msgs/s median (min–max) | vs off | server CPU ms/msg | vs off |"
echo "|---|---|---|---|---|---|"
ab_table "$RESULTS" 'off=off;on=on'
echo
echo "SMTP 1 KiB messages, one per connection, delivered (250 and in new/); on: every message through rspamd $(rspamd --version 2>/dev/null | awk '{ print $NF; exit }') in milter mode (2 proxy workers, self-scan) on loopback; vs off: change of the median against the daemon without message_filters, same rounds. rspamd itself used $((RS_CPU1 - RS_CPU0)) s of CPU over all the on runs."
