#!/bin/bash
# bench/checks.sh: what the inbound sender checks ([checks]: SPF, DKIM, DMARC,
# iprev) cost. Two maildird daemons (release build, private configs under
# $WORK) that differ only in [checks]: off, and on (all "record") with [dns]
# pointing at a private unbound on loopback that serves the sender domain's
# SPF and DMARC records (answers cached after the first message: warm cache).
# The load is SMTP 1 KiB, 50 clients, 2000 messages, one per connection, from
# our load generator (examples/loadgen.rs) and from a third-party client
# (python3 smtplib, 10 processes, 500 messages). Rounds interleave off/on
# (rotating who goes first); medians, min-max, and the cost of checks on.
# The load's messages are unsigned: DKIM finds no signature (dkim=none).
#
# Usage: bench/checks.sh [ROUNDS]     (as root; default 5)
# Knobs: WORK=/var/tmp/maildird-bench-checks  SKIP_BUILD=1
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
ROUNDS=${1:-5}
WORK=${WORK:-/var/tmp/maildird-bench-checks}
DNS_PORT=2753
declare -A SMTP_PORT=([off]=2720 [on]=2721)

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
die() { log "error: $*"; exit 1; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive number"
[ "$(id -u)" = 0 ] || die "run as root (the daemons drop to nobody)"
command -v unbound >/dev/null || die "needs unbound (apt-get install unbound)"

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

# The sender's DNS: example.net (loadgen's and smtplib's MAIL FROM and From:).
cat >"$WORK/unbound.conf" <<EOF
server:
  interface: 127.0.0.1@$DNS_PORT
  port: $DNS_PORT
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "$WORK"
  pidfile: ""
  use-syslog: no
  logfile: ""
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  # No upstream: every other name is answered NXDOMAIN at once (the DMARC
  # tree walk also asks for _dmarc.net).
  local-zone: "." static
  local-data: '. 3600 IN SOA a.root.test. hostmaster.root.test. 1 3600 600 86400 3600'
  local-zone: "example.net." static
  local-data: 'example.net. TXT "v=spf1 ip4:127.0.0.1 -all"'
  local-data: '_dmarc.example.net. TXT "v=DMARC1; p=none"'
remote-control:
  control-enable: no
EOF
unbound -d -c "$WORK/unbound.conf" 2>"$WORK/unbound.log" &
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
            printf '[dns]\nnameservers = ["127.0.0.1:%s"]\n[checks]\n' "$DNS_PORT"
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
# Warm-up: one message each (the resolver's cache, the page cache).
for mode in off on; do
    "$LG" smtp 127.0.0.1:"${SMTP_PORT[$mode]}" --count 1 --rcpt alice@bench.test >/dev/null
done
grep -q 'spf="pass"' "$WORK/maildird-on.log" || die "checks did not run: $WORK/maildird-on.log"
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

echo "## Sender checks cost (bench/checks.sh $ROUNDS, $(date -u '+%Y-%m-%d %H:%M UTC'))"
echo
echo "| client | checks | msgs/s median (min–max) | vs off | server CPU ms/msg | vs off |"
echo "|---|---|---|---|---|---|"
ab_table "$RESULTS" 'off=off;on=on'
echo
echo "SMTP 1 KiB messages, one per connection, delivered (250 and in new/); checks on: SPF, DKIM (none: unsigned), DMARC (p=none) and iprev, answered by unbound on loopback (warm cache); vs off: change of the median against the daemon without [checks], same rounds."
