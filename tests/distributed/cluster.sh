#!/bin/sh
# A GlusterFS cluster on this machine, for tests/distributed.rs: three storage
# nodes (network namespaces mdt-s1, mdt-s2, mdt-s3, each with its own glusterd
# and brick) form the volume `mail` (replica 3 arbiter 1: two data bricks and a
# metadata-only arbiter), and two mail hosts (namespaces mdt-h1, mdt-h2) each
# FUSE-mount it. Every namespace hangs on the bridge mdt-br0 (10.231.0.0/24),
# where this namespace is 10.231.0.1, so a test here reaches all of them.
#
#   cluster.sh up DIR           build everything under DIR (idempotent: tears down first)
#   cluster.sh down DIR         unmount, stop every process, remove the namespaces
#   cluster.sh mount DIR NS MNT FUSE-mount the volume at MNT, the client in namespace NS
#                               (- for this one)
#   cluster.sh brick-kill DIR N SIGKILL the brick process of storage node N
#   cluster.sh brick-start DIR N  restart it (volume start force) and wait until online
#   cluster.sh heal-wait DIR SECS  trigger a heal, wait until no entry needs one
#   cluster.sh gluster DIR ARGS    run the gluster CLI on node 1
#
# Storage node N is 10.231.0.1N; host N is 10.231.0.2N.
set -eu

NET=10.231.0
BR=mdt-br0
VOL=mail

die() { echo "cluster.sh: $*" >&2; exit 1; }

glusterd_pid() { cat "$1/s$2/glusterd.pid" 2>/dev/null || true; }

# Run the gluster CLI inside storage node 1's namespaces.
cli() {
    pid=$(glusterd_pid "$DIR" 1)
    [ -n "$pid" ] || die "glusterd of node 1 is not running"
    nsenter -t "$pid" -m -n gluster --mode=script "$@"
}

veth() { # namespace address
    ip netns add "$1"
    ip link add "$1" type veth peer name eth0 netns "$1"
    ip link set "$1" master "$BR" up
    ip -n "$1" addr add "$2/24" dev eth0
    ip -n "$1" link set eth0 up
    ip -n "$1" link set lo up
}

# glusterd keeps its state in /var/lib/glusterd and its sockets in /run: each
# node gets a private mount namespace where those are its own directories.
start_glusterd() { # node
    d="$DIR/s$1"
    mkdir -p "$d/lib" "$d/log" "$d/brick"
    nsenter --net=/run/netns/mdt-s$1 unshare -m --propagation private sh -c "
        mount -t tmpfs tmpfs /run && mkdir -p /run/gluster
        mount --bind '$d/lib' /var/lib/glusterd
        mount --bind '$d/log' /var/log/glusterfs
        echo \$\$ > '$d/glusterd.pid'
        exec glusterd -N --log-file='$d/log/glusterd.log'
    " >"$d/glusterd.out" 2>&1 &
    i=0
    until [ -s "$d/glusterd.pid" ] && nsenter -t "$(cat "$d/glusterd.pid")" -m -n \
        gluster --mode=script pool list >/dev/null 2>&1; do
        i=$((i + 1)); [ $i -lt 300 ] || die "glusterd $1 did not start: $(cat "$d/glusterd.out")"
        sleep 0.1
    done
}

down() {
    # The FUSE mounts (mount them under DIR): their client processes end
    # with the unmount; any left (e.g. in this namespace) are killed.
    for m in $(awk -v d="$DIR/" 'index($2, d) == 1 && $3 ~ /fuse/ {print $2}' /proc/mounts); do
        umount -l "$m" 2>/dev/null || true
    done
    for p in $(pgrep -f "glusterfs .*--volfile-id=/$VOL $DIR/" || true); do kill -9 "$p" 2>/dev/null || true; done
    for ns in mdt-h1 mdt-h2 mdt-s1 mdt-s2 mdt-s3; do
        if [ -e "/run/netns/$ns" ]; then
            for p in $(ip netns pids "$ns"); do kill -9 "$p" 2>/dev/null || true; done
            ip netns del "$ns"
        fi
        ip link del "$ns" 2>/dev/null || true
    done
    ip link del "$BR" 2>/dev/null || true
}

up() {
    down
    ip link add "$BR" type bridge
    ip addr add "$NET.1/24" dev "$BR"
    ip link set "$BR" up
    for n in 1 2 3; do veth mdt-s$n "$NET.1$n"; done
    for n in 1 2; do veth mdt-h$n "$NET.2$n"; done
    for n in 1 2 3; do start_glusterd $n; done
    cli peer probe "$NET.12" >/dev/null
    cli peer probe "$NET.13" >/dev/null
    i=0
    until [ "$(cli pool list | grep -c Connected)" = 3 ]; do
        i=$((i + 1)); [ $i -lt 300 ] || die "peers did not connect: $(cli pool list)"
        sleep 0.1
    done
    # "force": the bricks are directories on the root filesystem.
    cli volume create "$VOL" replica 3 arbiter 1 \
        "$NET.11:$DIR/s1/brick/b" "$NET.12:$DIR/s2/brick/b" "$NET.13:$DIR/s3/brick/b" force >/dev/null
    # The options that matter for Maildir (contrib/glusterfs/README documents them).
    cli volume set "$VOL" cluster.quorum-type auto >/dev/null
    cli volume set "$VOL" network.ping-timeout 5 >/dev/null
    cli volume set "$VOL" cluster.shd-max-threads 4 >/dev/null
    cli volume start "$VOL" >/dev/null
}

mount_vol() { # ns ("-": this one) mountpoint
    mkdir -p "$2"
    net=""
    [ "$1" = - ] || net="--net=/run/netns/$1"
    nsenter $net mount -t glusterfs \
        -o backup-volfile-servers="$NET.12:$NET.13" "$NET.11:/$VOL" "$2"
}

brick_pid() { # node
    pgrep -f "glusterfsd.* -s $NET.1$1 " || true
}

# glusterd notices a dead brick only when its connection to it drops, and
# "start force" does nothing before that: retry until the brick is online.
brick_start() { # node
    end=$(($(date +%s) + 60))
    until [ -n "$(brick_pid "$1")" ] && cli volume status "$VOL" "$NET.1$1:$DIR/s$1/brick/b" --xml 2>/dev/null |
        grep -q "<status>1</status>"; do
        [ "$(date +%s)" -lt "$end" ] || die "brick $1 did not come back: $(cli volume status "$VOL")"
        cli volume start "$VOL" force >/dev/null 2>&1 || true
        sleep 0.2
    done
}

# A brick killed in the middle of a create can keep a file that never got
# its GlusterFS id (no trusted.gfid xattr): the heal cannot copy it and "heal
# info" lists its directory for ever. In a Maildir's tmp/ that is an
# unfinished delivery: remove it from the brick, as GlusterFS's docs tell an
# admin to, and say so on stdout. Anywhere else it is left for the test to fail.
fix_gfidless() {
    for n in 1 2 3; do
        b="$DIR/s$n/brick/b"
        [ -d "$b/mail" ] || continue
        find "$b/mail" -mindepth 3 -maxdepth 3 -type f -path "$b/mail/*/tmp/*" | while read -r f; do
            # Only when getfattr ran and listed no trusted.gfid.
            ids=$(getfattr --absolute-names -m '^trusted\.gfid$' "$f" 2>/dev/null) || continue
            [ -z "$ids" ] || continue
            echo "removed from brick $n (no gfid): ${f#"$b"/}"
            rm -f "$f"
        done
    done
}

# The self-heal daemons start on their own when a brick comes back; trigger
# an index heal once more and poll the summary (each "heal info" starts a
# client of its own: not too often).
heal_wait() { # seconds
    cli volume heal "$VOL" >/dev/null 2>&1 || true
    start=$(date +%s)
    end=$((start + $1))
    while :; do
        info=$(cli volume heal "$VOL" info summary 2>/dev/null || true)
        pending=$(echo "$info" | awk '/^Total Number of entries:/ {s += $NF} END {print s + 0}')
        connected=$(echo "$info" | grep -c '^Status: Connected' || true)
        if [ "$pending" = 0 ] && [ "$connected" = 3 ]; then return 0; fi
        [ "$(date +%s)" -lt "$end" ] || die "heal not done after $1 s: $info"
        if [ "$(date +%s)" -ge $((start + 10)) ]; then
            fix_gfidless
            cli volume heal "$VOL" >/dev/null 2>&1 || true
        fi
        sleep 1
    done
}

cmd=${1:-}
case "$cmd" in
up) DIR=$2; up ;;
down) DIR=$2; down ;;
mount) DIR=$2; mount_vol "$3" "$4" ;;
brick-kill)
    DIR=$2; p=$(brick_pid "$3"); [ -n "$p" ] || die "no brick process on node $3"
    kill -9 $p ;;
brick-start) DIR=$2; brick_start "$3" ;;
brick-pid) DIR=$2; brick_pid "$3" ;;
heal-wait) DIR=$2; heal_wait "$3" ;;
gluster) DIR=$2; shift 2; cli "$@" ;;
*) die "usage: cluster.sh up|down|mount|brick-kill|brick-start|heal-wait|gluster DIR ..." ;;
esac
