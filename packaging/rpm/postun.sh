# %postun: reload unit files; on upgrade ($1 >= 1) restart a running daemon
# (%systemd_postun_with_restart). The sockets stay open, so no connection is
# refused. The user and /var/lib/maildird are kept on erase: they own the mail.
systemctl daemon-reload >/dev/null 2>&1 || :
if [ "$1" -ge 1 ]; then
    systemctl try-restart maildird.service >/dev/null 2>&1 || :
fi
exit 0
