# %preun: on erase ($1 = 0), stop and disable the units (%systemd_preun).
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now maildird.service maildird-smtp.socket maildird-pop3.socket >/dev/null 2>&1 || :
fi
exit 0
