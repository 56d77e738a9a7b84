# %post: directories and the users file (0640 root:maildird), then, on first
# install only ($1 = 1), enable the service and its sockets according to the
# distribution's preset policy (the expansion of %systemd_post).
    systemd-tmpfiles --create maildird.conf >/dev/null 2>&1 || {
        # systemd-tmpfiles needs /proc, which a plain chroot may lack.
        [ -d /var/lib/maildird ] || install -d -o maildird -g maildird -m 0751 /var/lib/maildird
        [ -d /var/lib/maildird/mail ] || install -d -o maildird -g maildird -m 0750 /var/lib/maildird/mail
        [ -e /etc/maildird/users ] || install -o root -g maildird -m 0640 /dev/null /etc/maildird/users
}
if [ "$1" -eq 1 ]; then
    systemctl --no-reload preset maildird.service maildird-smtp.socket maildird-pop3.socket >/dev/null 2>&1 || :
fi
exit 0
