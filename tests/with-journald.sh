#!/bin/bash
# SPDX-License-Identifier: MIT
# Run a command with a private, real systemd-journald started by hand inside a
# private mount namespace, so it neither sees nor touches the host's journal
# sockets or files. Inside, sd_journal_send() and journalctl talk to it.
# Storage is volatile and gone afterwards. $JOURNALD_PID is exported.
# Needs root (unshare -m, mount); without root, or with SPOTWATCH_NO_JOURNALD=1,
# it runs the command as is and tests needing the journal skip themselves.
set -eu
if [ "$(id -u)" != 0 ] || [ -n "${SPOTWATCH_NO_JOURNALD:-}" ] || [ ! -x /lib/systemd/systemd-journald ]; then
    exec "$@"
fi
if [ -z "${WITH_JOURNALD_INNER:-}" ]; then
    exec env WITH_JOURNALD_INNER=1 unshare --mount --propagation private -- "$0" "$@"
fi
unset WITH_JOURNALD_INNER
mkdir -p /run/systemd/journal /run/log /var/log/journal
mount -t tmpfs -o mode=0755 tmpfs /run/systemd/journal
mount -t tmpfs -o mode=0755 tmpfs /run/log
mount -t tmpfs -o mode=0755 tmpfs /var/log/journal
mkdir -p /run/log/journal
/lib/systemd/systemd-journald </dev/null >/dev/null 2>&1 &
export JOURNALD_PID=$!
ready=
for _ in $(seq 1 200); do
    if [ -S /run/systemd/journal/socket ] && [ -S /run/systemd/journal/io.systemd.journal ] \
        && timeout 2 journalctl --sync 2>/dev/null; then
        ready=1
        break
    fi
    kill -0 "$JOURNALD_PID" 2>/dev/null || break
    sleep 0.05
done
if [ -z "$ready" ]; then
    echo "with-journald: systemd-journald did not start" >&2
    exit 1
fi
export SPOTWATCH_JOURNALD=1
rc=0
"$@" || rc=$?
kill -TERM "$JOURNALD_PID" 2>/dev/null
wait "$JOURNALD_PID" 2>/dev/null || true
exit $rc
