# %pre: the service user and group, as in /usr/lib/sysusers.d/maildird.conf
# (what %sysusers_create_compat expands to; rpm >= 4.19 also creates them from
# the sysusers.d file itself). Runs on install and upgrade; idempotent.
getent group maildird >/dev/null || groupadd -r maildird
getent passwd maildird >/dev/null || \
    useradd -r -g maildird -d /var/lib/maildird -s /sbin/nologin \
        -c "maildird mail daemon" maildird
exit 0
