#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Records reach a real systemd-journald (started stand-alone by
tests/with-journald.sh) with their MESSAGE_ID and SPOTWATCH_* fields, read
back with journalctl -o json. Also: log = auto picks the journal when its
socket exists."""
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import (Daemon, SOURCE_ROOT, check, journal_records, have_journal, main,  # noqa: E402
                     spawn_sleeper, usr1_count, wait_until)


def message_ids():
    ids = {}
    with open(os.path.join(SOURCE_ROOT, "daemon", "report-ids.h")) as f:
        for m in re.finditer(r'#define REPORT_ID_(\w+)\s+"([0-9a-f]{32})"', f.read()):
            ids[m.group(1)] = m.group(2)
    return ids


def test_records_in_journal():
    ids = message_ids()
    check(len(set(ids.values())) == len(ids) == 10, "ten distinct MESSAGE_IDs in report-ids.h")
    for log in ("journal", "auto"):
        d = Daemon(fake_metadata="aws", daemon_keys={"log": log})
        p, pidfile, marker = spawn_sleeper(d.tmp)
        hook = os.path.join(d.tmp, "hook.sh")
        with open(hook, "w") as f:
            f.write("#!/bin/sh\necho \"line from hook $SPOTWATCH_EVENT\"\nexit 3\n")
        os.chmod(hook, 0o755)
        with open(d.config_path, "a") as f:
            f.write(f'\n[process "sleeper"]\npidfile = {pidfile}\n\n[hook "h-{log}"]\nexec = {hook}\n')
        try:
            with d:
                # Distinguish this run's records: its daemon PID.
                r = d.ctl("fake-notice", "--action", "terminate", "--in", "90")
                tm = re.search(r"time\s+(\S+)", r.stdout).group(1)
                pid = str(d.pid)
                wait_until(lambda: journal_records(MESSAGE_ID=ids["PLAN_DONE"], _PID=pid), 10,
                           what="plan-done record in the journal")
                notice = journal_records(MESSAGE_ID=ids["NOTICE"], _PID=pid)
                check(len(notice) == 1, f"log={log}: one notice record")
                n = notice[0]
                check(n["SPOTWATCH_EVENT"] == "terminate" and n["SPOTWATCH_CLOUD"] == "aws",
                      "notice: SPOTWATCH_EVENT=terminate SPOTWATCH_CLOUD=aws")
                from datetime import datetime, timezone
                want = int(datetime.strptime(tm, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp())
                check(n["SPOTWATCH_DEADLINE"] == str(want), "notice: SPOTWATCH_DEADLINE is the served time")
                check(n["SYSLOG_IDENTIFIER"] == "spotwatchd", "SYSLOG_IDENTIFIER=spotwatchd")
                sig = journal_records(MESSAGE_ID=ids["SIGNAL"], _PID=pid)
                check(len(sig) == 1 and sig[0]["SPOTWATCH_PID"] == str(p.pid)
                      and sig[0]["SPOTWATCH_SIGNAL"] == "SIGUSR1", "signal record with SPOTWATCH_PID")
                hk = journal_records(MESSAGE_ID=ids["HOOK"], _PID=pid)
                check(len(hk) == 1 and hk[0]["SPOTWATCH_HOOK"] == f"h-{log}"
                      and hk[0]["SPOTWATCH_EXIT_STATUS"] == "3", "hook record with SPOTWATCH_EXIT_STATUS=3")
                out = journal_records(MESSAGE_ID=ids["HOOK_OUTPUT"], _PID=pid)
                check(any("line from hook terminate" in o["MESSAGE"] for o in out), "hook output line in journal")
                done = journal_records(MESSAGE_ID=ids["PLAN_DONE"], _PID=pid)[0]
                check(done["SPOTWATCH_HOOKS_FAILED"] == "1" and done["SPOTWATCH_SIGNALLED"] == "1",
                      "plan-done summary fields")
                check(journal_records(MESSAGE_ID=ids["PLAN_START"], _PID=pid), "plan-start record")
                check("[notice]" not in d.stderr_text(), f"log={log}: records went to the journal, not stderr")
                check(usr1_count(marker) == 1, "the sleeper got SIGUSR1")
        finally:
            p.kill()
            p.wait()


def test_auto_without_journal():
    """log = auto with no journald socket: the same records as one stderr line each."""
    hide = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs tmpfs /run/systemd/journal && exec "$@"', "sh"]
    with Daemon(fake_metadata="aws", daemon_keys={"log": "auto"}, wrapper=hide) as d:
        d.ctl("fake-notice", "--in", "60")
        d.wait_stderr(r"\[plan-done\]", 10)
        n = d.records("notice")
        check(len(n) == 1 and n[0]["SPOTWATCH_EVENT"] == "terminate" and n[0]["SPOTWATCH_CLOUD"] == "aws",
              "log=auto without a journal: the notice record on stderr with its fields")
        check(not journal_records(_PID=str(d.pid)), "and nothing of it in the journal")


def test_catalog_entries():
    ids = message_ids()
    with open(os.path.join(SOURCE_ROOT, "systemd", "spotwatchd.catalog")) as f:
        text = f.read()
    for k, v in ids.items():
        check(f"-- {v}\n" in text, f"catalog has an entry for {k}")


if __name__ == "__main__":
    if not have_journal():
        print("SKIP: needs a private journald (run as root through tests/with-journald.sh)")
        sys.exit(77)
    main([test_records_in_journal, test_auto_without_journal, test_catalog_entries])
