# %post: directories and the users file (0640 root:maildird), then, on first
# install only ($1 = 1), enable the service and its sockets according to the
# distribution's preset policy (the expansion of %systemd_post).
systemd-tmpfiles --create maildird.conf >/dev/null 2>&1 || :
if [ "$1" -eq 1 ]; then
    systemctl --no-reload preset maildird.service maildird-smtp.socket maildird-pop3.socket >/dev/null 2>&1 || :
fi
exit 0
