#!/bin/bash
# bench/run.sh: maildird beside a peer (Postfix for SMTP, Dovecot for POP3) in
# one run, interleaved A B A B, with the load generator examples/loadgen.rs.
# Prints medians, min-max and the maildird/peer ratio per cell.
#
# It starts maildird itself (release build, a private config under $WORK) and
# expects the peer already running on loopback with the same Maildir layout:
#   PEER_SMTP=127.0.0.1:2600  PEER_MAILDIR=/path/alice/Maildir  (SMTP)
#   PEER_POP3=127.0.0.1:1600  PEER_POP3_USER=u0 PEER_POP3_PASS=... (POP3; u0's
#   Maildir filled with the same messages as maildird's u0, e.g. 1000 x 10 KiB)
# Every load is bounded (--time-limit) and stays on loopback.
#
# Usage: bench/run.sh [ROUNDS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
WORK=${WORK:-/var/tmp/maildird-bench}
PEER_SMTP=${PEER_SMTP:?set PEER_SMTP=host:port of the peer SMTP server}
PEER_MAILDIR=${PEER_MAILDIR:?set PEER_MAILDIR to the peer Maildir that receives alice@bench.test}
PEER_POP3=${PEER_POP3:-}
PEER_POP3_USER=${PEER_POP3_USER:-u0}
PEER_POP3_PASS=${PEER_POP3_PASS:-benchpass}
MD_SMTP=127.0.0.1:2700
MD_POP3=127.0.0.1:1700

cargo build --release --locked --quiet
cargo build --release --locked --quiet --example loadgen
BIN=target/release/maildird
LG=target/release/examples/loadgen

mkdir -p "$WORK"
chmod 755 "$WORK"
cat >"$WORK/maildird.toml" <<EOF
hostname = "mx.bench.test"
domains = ["bench.test"]
mail_root = "mail"
users_file = "users"
control_socket = "control.sock"
user = "nobody"
group = "nogroup"
[limits]
max_connections_per_ip = 1000
[[listener]]
name = "smtp"
protocol = "smtp"
bind = "$MD_SMTP"
[[listener]]
name = "pop3"
protocol = "pop3"
bind = "$MD_POP3"
EOF
for u in alice u0; do
    grep -q "^$u:" "$WORK/users" 2>/dev/null || echo benchpass | "$BIN" user add "$u" --password-stdin -c "$WORK/maildird.toml" >/dev/null
done
"$BIN" serve -c "$WORK/maildird.toml" 2>"$WORK/maildird.log" &
MD_PID=$!
trap 'kill $MD_PID 2>/dev/null; wait $MD_PID 2>/dev/null' EXIT
for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/${MD_SMTP%:*}/${MD_SMTP#*:}) 2>/dev/null && break
    sleep 0.1
done

RESULTS=$(mktemp)
smtp() { # smtp NAME ADDR MAILDIR CONC SIZE COUNT
    "$LG" smtp "$2" --conc "$4" --size "$5" --count "$6" --rcpt alice@bench.test \
        --maildir "$3" --time-limit 300 --drain-timeout 120 | awk -v n="$1" -v c="smtp-$5B-c$4" '/^e2e_per_s/ {print c, n, $2}'
}
pop3() { # pop3 NAME ADDR USER PASS PIPELINE
    "$LG" pop3 "$2" --user "$3" --pass "$4" --sessions 5 --pipeline "$5" --time-limit 300 |
        awk -v n="$1" -v c="pop3-p$5" '/^msgs_per_s/ {m=$2} /^mb_per_s/ {print c, n, m; print c"-MB", n, $2}'
}
for r in $(seq 1 "$ROUNDS"); do
    for cell in "50 1024 2000" "10 1024 2000" "50 102400 500"; do
        set -- $cell
        smtp maildird "$MD_SMTP" "$WORK/mail/alice" "$1" "$2" "$3" >>"$RESULTS"
        smtp peer "$PEER_SMTP" "$PEER_MAILDIR" "$1" "$2" "$3" >>"$RESULTS"
    done
    if [ -n "$PEER_POP3" ]; then
        for p in 1 16; do
            pop3 maildird "$MD_POP3" u0 benchpass "$p" >>"$RESULTS"
            pop3 peer "$PEER_POP3" "$PEER_POP3_USER" "$PEER_POP3_PASS" "$p" >>"$RESULTS"
        done
    fi
done

echo "| cell | maildird median (min-max) | peer median (min-max) | ratio |"
echo "|---|---|---|---|"
sort "$RESULTS" | awk '
    function med(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
    { k = $1 SUBSEP $2; v[k, ++cnt[k]] = $3; cells[$1] = 1 }
    END {
        for (c in cells) {
            for (who = 0; who < 2; who++) {
                name = who ? "peer" : "maildird"; k = c SUBSEP name; n = cnt[k]
                delete a; lo = 1e18; hi = 0
                for (i = 1; i <= n; i++) { a[i] = v[k, i] + 0; if (a[i] < lo) lo = a[i]; if (a[i] > hi) hi = a[i] }
                m[who] = n ? med(a, n) : 0; range[who] = sprintf("%.0f (%.0f-%.0f)", m[who], lo, hi)
            }
            printf "| %s | %s | %s | %.2fx |\n", c, range[0], range[1], m[1] ? m[0] / m[1] : 0
        }
    }' | sort
rm -f "$RESULTS"
