#!/bin/bash
# bench/peers.sh: the peers maildird is compared with, as private instances
# under $WORK/peers (loopback only, nothing system-wide is started or changed):
#
#   Postfix  smtpd on $PEER_SMTP (127.0.0.1:2600), virtual(8) delivers
#            alice@bench.test into $WORK/peers/mail/alice/Maildir/ (new/).
#            Own config_directory, queue_directory and data_directory; Postfix
#            defaults for everything that costs time (fsync of the queue file
#            before 250, in_flow_delay, process limits of the delivery agents),
#            no chroot, default/relay transport = error (nothing leaves), smtpd
#            process limit $PEER_PROC_LIMIT so 1000 idle sessions get an smtpd.
#   Dovecot  pop3 on $PEER_POP3 (127.0.0.1:1600), own base_dir/state_dir,
#            passwd-file users u0..u9 and idle0..idle<N-1> (password benchpass,
#            hash $PASS_HASH: the same scheme and cost as maildird's users file),
#            mail_location maildir:~/Maildir = $WORK/peers/mail/USER/Maildir,
#            ssl off, plaintext auth allowed, process/client limits raised so
#            1000 idle connections are served. DOVECOT_MODE=performance starts
#            the login processes in Dovecot's high-performance mode
#            (service_count=0); the default is Dovecot's default (one login
#            process per connection).
#   Mailboxes are owned by $MAIL_OWNER (benchmail).
#
# Usage: bench/peers.sh start|stop|restart|status|pid [postfix|dovecot|all]
#   start/restart reconfigure and (re)start only our instance; stop stops only
#   the instance whose master process belongs to our config; pid prints the
#   master pid (for loadgen idle --server-pid).
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

WORK=${WORK:-/var/tmp/maildird-bench}
PEERS=$WORK/peers
MAILBASE=$PEERS/mail
PF=$PEERS/postfix
DC=$PEERS/dovecot
PEER_SMTP=${PEER_SMTP:-127.0.0.1:2600}
PEER_POP3=${PEER_POP3:-127.0.0.1:1600}
MAIL_OWNER=${MAIL_OWNER:-benchmail}
DOMAIN=bench.test
POP3_USERS=${POP3_USERS:-10}   # u0..u9
IDLE_USERS=${IDLE_USERS:-1000} # idle0..idle999 (logged-in idle cell: one session per mailbox)
BENCH_PASS=${BENCH_PASS:-benchpass}
DOVECOT_MODE=${DOVECOT_MODE:-default}
PEER_PROC_LIMIT=${PEER_PROC_LIMIT:-1500}

die() { echo "peers.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (private Postfix/Dovecot need it)"

users() { # every mailbox name the peers know
    echo alice
    local i
    for ((i = 0; i < POP3_USERS; i++)); do echo "u$i"; done
    for ((i = 0; i < IDLE_USERS; i++)); do echo "idle$i"; done
}


wait_gone() { # wait_gone PID SECONDS
    local _
    for _ in $(seq 1 $(($2 * 10))); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    return 1
}

mailboxes() { # skeleton Maildirs (messages are written by run.sh's fixture)
    install -d -m 755 -o "$MAIL_OWNER" -g "$MAIL_OWNER" "$MAILBASE"
    local u
    while read -r u; do
        [ -d "$MAILBASE/$u/Maildir/cur" ] && continue
        install -d -m 700 -o "$MAIL_OWNER" -g "$MAIL_OWNER" \
            "$MAILBASE/$u" "$MAILBASE/$u/Maildir" "$MAILBASE/$u/Maildir/tmp" \
            "$MAILBASE/$u/Maildir/new" "$MAILBASE/$u/Maildir/cur"
    done < <(users)
}

# ---------------------------------------------------------------- Postfix

postfix_pid() { # master pid if it is running with our config directory
    # postfix(1) hands MAIL_CONFIG to master: proof that this master is ours.
    owned_pid "$PF/queue/pid/master.pid" environ "MAIL_CONFIG=$PF/etc"
}

postfix_config() {
    command -v postfix >/dev/null || die "postfix is not installed"
    install -d -m 755 "$PEERS" "$PF" "$PF/etc"
    install -d -m 755 -o root -g root "$PF/queue"
    install -d -m 700 -o postfix -g postfix "$PF/data"
    local uid gid
    uid=$(id -u "$MAIL_OWNER") gid=$(id -g "$MAIL_OWNER")
    echo "alice@$DOMAIN alice/Maildir/" >"$PF/etc/vmailbox"
    cat >"$PF/etc/main.cf" <<EOF
# maildird bench/peers.sh: private Postfix instance, generated on every start
compatibility_level = 3.6
config_directory = $PF/etc
queue_directory = $PF/queue
data_directory = $PF/data
syslog_name = postfix-maildird-bench
maillog_file = $PF/postfix.log
maillog_file_prefixes = $PF
myhostname = peer.$DOMAIN
mydomain = $DOMAIN
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_banner = \$myhostname ESMTP
biff = no
alias_maps =
alias_database =
# final delivery: virtual(8) into Maildir (the trailing / in vmailbox)
virtual_mailbox_domains = $DOMAIN
virtual_mailbox_base = $MAILBASE
virtual_mailbox_maps = texthash:$PF/etc/vmailbox
virtual_uid_maps = static:$uid
virtual_gid_maps = static:$gid
virtual_minimum_uid = $uid
# nothing ever leaves the box
default_transport = error:benchmark instance does not relay
relay_transport = error:benchmark instance does not relay
smtp_dns_support_level = disabled
EOF
    # master.cf: the packaged default, without chroot (the queue is not under
    # /var/spool/postfix) and with smtpd on our loopback port only.
    cp /usr/share/postfix/master.cf.dist "$PF/etc/master.cf"
    postconf -c "$PF/etc" -MX smtp/inet
    postconf -c "$PF/etc" -M "$PEER_SMTP/inet=$PEER_SMTP inet n - n - $PEER_PROC_LIMIT smtpd"
    postconf -c "$PF/etc" -F '*/*/chroot = n'
}

postfix_stop() {
    local pid
    pid=$(postfix_pid) || { echo "postfix (bench) not running"; return 0; }
    postfix -c "$PF/etc" stop >/dev/null 2>&1 || true
    if ! wait_gone "$pid" 15; then
        kill -TERM "$pid" 2>/dev/null || true
        wait_gone "$pid" 5 || die "postfix master $pid did not stop"
    fi
    echo "postfix (bench) stopped (master pid $pid)"
}

postfix_start() {
    postfix_stop >/dev/null
    postfix_config
    mailboxes
    ulimit -n "${PEER_NOFILE:-20000}" 2>/dev/null || true
    postfix -c "$PF/etc" check
    postfix -c "$PF/etc" start >/dev/null 2>&1 || die "postfix did not start, see $PF/postfix.log"
    wait_port "$PEER_SMTP" || die "postfix does not listen on $PEER_SMTP"
    echo "postfix (bench) master pid $(postfix_pid) smtp $PEER_SMTP"
}

# ---------------------------------------------------------------- Dovecot

dovecot_pid() { # master pid if it is running with our config file
    owned_pid "$DC/run/master.pid" cmdline "$DC/dovecot.conf"
}

dovecot_config() {
    command -v dovecot >/dev/null || die "dovecot is not installed"
    install -d -m 755 "$PEERS" "$DC" "$DC/run" "$DC/state"
    local uid gid hash u login
    uid=$(id -u "$MAIL_OWNER") gid=$(id -g "$MAIL_OWNER")
    hash=${PASS_HASH:-$(doveadm pw -s SHA512-CRYPT -p "$BENCH_PASS")}
    while read -r u; do
        echo "$u:$hash:$uid:$gid::$MAILBASE/$u::"
    done < <(users) >"$DC/passwd.new"
    chown root:dovecot "$DC/passwd.new"
    chmod 640 "$DC/passwd.new"
    mv -f "$DC/passwd.new" "$DC/passwd"
    case $DOVECOT_MODE in
    default) login="" ;;
    performance) login="service_count = 0
  process_min_avail = $(nproc)
  client_limit = $PEER_PROC_LIMIT" ;;
    *) die "DOVECOT_MODE is default or performance" ;;
    esac
    cat >"$DC/dovecot.conf" <<EOF
# maildird bench/peers.sh: private Dovecot instance ($DOVECOT_MODE login mode), generated on every start
instance_name = dovecot-maildird-bench
base_dir = $DC/run
state_dir = $DC/state
log_path = $DC/dovecot.log
protocols = pop3
listen = ${PEER_POP3%:*}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
passdb {
  driver = passwd-file
  args = username_format=%n $DC/passwd
}
userdb {
  driver = passwd-file
  args = username_format=%n $DC/passwd
}
first_valid_uid = $uid
mail_location = maildir:~/Maildir
# limits only: 1000 idle connections must each be served
default_process_limit = $PEER_PROC_LIMIT
default_client_limit = $((PEER_PROC_LIMIT * 3))
protocol pop3 {
  mail_max_userip_connections = $PEER_PROC_LIMIT
}
service pop3-login {
  inet_listener pop3 {
    address = ${PEER_POP3%:*}
    port = ${PEER_POP3##*:}
  }
  process_limit = $PEER_PROC_LIMIT
  $login
}
service pop3 {
  process_limit = $PEER_PROC_LIMIT
}
service anvil {
  client_limit = $((PEER_PROC_LIMIT * 4))
}
service auth {
  client_limit = $((PEER_PROC_LIMIT * 4))
}
EOF
}

dovecot_stop() {
    local pid
    pid=$(dovecot_pid) || { echo "dovecot (bench) not running"; return 0; }
    kill -TERM "$pid"
    wait_gone "$pid" 15 || die "dovecot master $pid did not stop"
    echo "dovecot (bench) stopped (master pid $pid)"
}

dovecot_start() {
    dovecot_stop >/dev/null
    dovecot_config
    mailboxes
    ulimit -n "${PEER_NOFILE:-20000}" 2>/dev/null || true
    dovecot -c "$DC/dovecot.conf" || die "dovecot did not start, see $DC/dovecot.log"
    wait_port "$PEER_POP3" || die "dovecot does not listen on $PEER_POP3"
    local _
    for _ in $(seq 1 50); do dovecot_pid >/dev/null && break; sleep 0.1; done
    echo "dovecot (bench, $DOVECOT_MODE login mode) master pid $(dovecot_pid) pop3 $PEER_POP3"
}

# ---------------------------------------------------------------- main

cmd=${1:-}
what=${2:-all}
case $what in postfix | dovecot) set -- "$what" ;; all) set -- postfix dovecot ;; *) die "unknown peer $what" ;; esac
for p in "$@"; do
    case $cmd in
    start | restart) "${p}_start" ;;
    stop) "${p}_stop" ;;
    status) if pid=$("${p}_pid"); then echo "$p running, master pid $pid"; else echo "$p not running"; fi ;;
    pid) "${p}_pid" || die "$p (bench) is not running" ;;
    *) die "usage: peers.sh start|stop|restart|status|pid [postfix|dovecot|all]" ;;
    esac
done
