#!/bin/sh
# Prints the Debian package's /etc/runtap/config.toml, made from the documented
# example config.toml: the same comments and settings, with [daemon] state_dir
# and socket set to the directories that runtap.service provides
# (StateDirectory=runtap, RuntimeDirectory=runtap).
#
#   packaging/make-config.sh > packaging/config.toml    after editing config.toml
#
# `.ci/run package` fails while packaging/config.toml differs from this output.
set -eu
cd "$(dirname "$0")/.."

out=$(sed \
    -e '1c\
# runtap: configuration of the Debian package (/etc/runtap/config.toml).\
#\
# Made from the example config.toml in runtap'"'"'s source by\
# packaging/make-config.sh. It differs from the example only in [daemon]\
# state_dir and socket, set to the directories that runtap.service provides\
# (StateDirectory=runtap, RuntimeDirectory=runtap). dpkg keeps your edits on\
# upgrade (and asks if the packaged file changed too). `systemctl reload\
# runtap` applies tokens, limits and the log level; other changes need\
# `systemctl restart runtap`, which active runs survive by default\
# ([runs] on_shutdown; they keep the settings they started with).\
#\
# The example'"'"'s own notes follow.' \
    -e 's|^# state_dir = "/var/lib/runtap"$|state_dir = "/var/lib/runtap"|' \
    -e 's|^# socket = "/run/runtap/runtap.sock"$|socket = "/run/runtap/runtap.sock"|' \
    config.toml)

# Both substitutions must have hit, or the package would ship a config whose
# socket the unit cannot serve.
for key in 'state_dir = "/var/lib/runtap"' 'socket = "/run/runtap/runtap.sock"'; do
    if ! printf '%s\n' "$out" | grep -qxF "$key"; then
        echo "make-config.sh: config.toml has no commented-out line '# $key' to enable" >&2
        exit 1
    fi
done
printf '%s\n' "$out"
