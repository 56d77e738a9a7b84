#!/bin/bash
# bench/filters.sh: what the transport filters cost. One maildird (release
# build, private config under $WORK) with three SMTP and three POP3 listeners
# that differ only in their chain: none (filters = []), ["log"] and ["zlib"].
# The load generator speaks the same chain (loadgen --filters, the code of
# `maildird tunnel`), so zlib numbers include the client's compression on the
# same two CPUs; server CPU per message is reported separately (from /proc).
# Rounds interleave the three listeners (rotating who goes first); medians,
# min-max, and the cost of each filter relative to no filter.
#
# Usage: bench/filters.sh [ROUNDS]     (as root or as any user; default 5)
# Knobs: WORK=/var/tmp/maildird-bench-filters  SKIP_BUILD=1  LOG_CONTENT=false|true
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
ROUNDS=${1:-5}
WORK=${WORK:-/var/tmp/maildird-bench-filters}
LOG_CONTENT=${LOG_CONTENT:-false}
PASS=benchpass
FILTERS="none log zlib"
declare -A SMTP_PORT=([none]=2710 [log]=2711 [zlib]=2712)
declare -A POP3_PORT=([none]=1710 [log]=1711 [zlib]=1712)

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
die() { log "error: $*"; exit 1; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive number"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    command -v cargo >/dev/null || PATH=$PATH:${HOME:-/root}/.cargo/bin
    log "building maildird and loadgen (release)"
    cargo build --release --locked --quiet
    cargo build --release --locked --quiet --example loadgen
fi
BIN=$REPO/target/release/maildird
LG=$REPO/target/release/examples/loadgen

mkdir -p "$WORK/trash"
chmod 755 "$WORK"
# Root runs the daemon as nobody, like a real install; anyone else as themselves.
if [ "$(id -u)" = 0 ]; then OWNER=nobody GROUP=nogroup; else OWNER=$(id -un) GROUP=$(id -gn); fi
{
    cat <<EOF
hostname = "mx.bench.test"
domains = ["bench.test"]
mail_root = "$WORK/mail"
users_file = "$WORK/users"
control_socket = "$WORK/control.sock"
user = "$OWNER"
group = "$GROUP"
[limits]
max_connections = 1000
max_connections_per_ip = 1000
[filter.log]
content = $LOG_CONTENT
EOF
    for f in $FILTERS; do
        chain='[]'
        [ "$f" = none ] || chain="[\"$f\"]"
        printf '[[listener]]\nname = "smtp-%s"\nprotocol = "smtp"\nbind = "127.0.0.1:%s"\nfilters = %s\n' "$f" "${SMTP_PORT[$f]}" "$chain"
        printf '[[listener]]\nname = "pop3-%s"\nprotocol = "pop3"\nbind = "127.0.0.1:%s"\nfilters = %s\n' "$f" "${POP3_PORT[$f]}" "$chain"
    done
} >"$WORK/maildird.toml"
HASH=$(echo "$PASS" | "$BIN" hash-password --password-stdin)
for u in alice u0 u1 u2 u3 u4 u5 u6 u7 u8 u9; do echo "$u:$HASH::::::roles=pop3,submit"; done >"$WORK/users"
chgrp "$GROUP" "$WORK/users"
chmod 640 "$WORK/users"
install -d -m 700 -o "$OWNER" -g "$GROUP" "$WORK/mail"
POP3_DIRS=()
for i in $(seq 0 9); do POP3_DIRS+=("$WORK/mail/u$i"); done
if [ "$(find "${POP3_DIRS[@]}" -path '*/cur/*' -type f 2>/dev/null | wc -l)" != 10000 ]; then
    log "filling u0..u9 with 1000 x 10 KiB each"
    for d in "${POP3_DIRS[@]}"; do [ -e "$d" ] && mv "$d" "$WORK/trash/$(date +%s%N)"; done
    python3 "$REPO/bench/fill_maildirs.py" --count 1000 --size 10240 \
        --owner "$(id -u "$OWNER"):$(id -g "$OWNER")" "${POP3_DIRS[@]}" >&2
fi

"$BIN" serve -c "$WORK/maildird.toml" 2>"$WORK/maildird.log" &
MD_PID=$!
trap 'kill $MD_PID 2>/dev/null; wait $MD_PID 2>/dev/null' EXIT
wait_port 127.0.0.1:"${POP3_PORT[zlib]}" || true
kill -0 $MD_PID 2>/dev/null || die "maildird did not start: $WORK/maildird.log"

RESULTS=$(mktemp)
trap 'kill $MD_PID 2>/dev/null; wait $MD_PID 2>/dev/null; rm -f "$RESULTS"' EXIT
measure() { # measure CELL FILTER KEY -- loadgen args
    local rate
    rate=$(ab_measure "$RESULTS" "$MD_PID" "$1" "$2" "$3" -- "$LG" "${@:5}") || die "$1 $2: loadgen failed"
    log "  $1 $2: $3=$rate"
}
# LG pop3 warm-up: moves new/ to cur/ once, so every measured run is the same.
"$LG" pop3 127.0.0.1:"${POP3_PORT[none]}" --user 'u{i}' --pass $PASS --conc 10 --sessions 10 \
    --pipeline 16 --expect-msgs 1000 --time-limit 120 >/dev/null
read -ra ORDER <<<"$FILTERS"
for r in $(seq 1 "$ROUNDS"); do
    log "round $r of $ROUNDS"
    for f in "${ORDER[@]}"; do
        fl=()
        [ "$f" = none ] || fl=(--filters "$f")
        measure smtp-1k-c50 "$f" e2e_per_s -- smtp 127.0.0.1:"${SMTP_PORT[$f]}" "${fl[@]}" --conc 50 \
            --count 2000 --size 1024 --rcpt alice@bench.test --maildir "$WORK/mail/alice" --time-limit 180
        measure pop3-p16 "$f" msgs_per_s -- pop3 127.0.0.1:"${POP3_PORT[$f]}" "${fl[@]}" --user 'u{i}' \
            --pass $PASS --conc 10 --sessions 30 --pipeline 16 --expect-msgs 1000 --time-limit 180
    done
    ORDER=("${ORDER[@]:1}" "${ORDER[0]}") # rotate who goes first
done

echo "## Filter costs (bench/filters.sh $ROUNDS, $(date -u '+%Y-%m-%d %H:%M UTC'), [filter.log] content = $LOG_CONTENT)"
echo
echo "| cell | chain | msgs/s median (min–max) | vs none | server CPU ms/msg | vs none |"
echo "|---|---|---|---|---|---|"
ab_table "$RESULTS" 'none=[] (none);log=["log"];zlib=["zlib"]'
echo
echo "msgs/s: delivered (SMTP 1 KiB, 50 clients, 2000 per run) or retrieved (POP3 RETR 10 KiB, 10 sessions, 16 in flight); vs none: change of the median against the listener without filters in the same daemon, same rounds."
