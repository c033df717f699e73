#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""SIGHUP reloads the configuration: a valid one is applied (RELOADING=1,
then READY=1), a bad one is rejected with a log line and the old one kept;
a notice after either is still handled."""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Daemon, check, main, wait_until  # noqa: E402


def test_reload_good_and_bad():
    d = Daemon(fake_metadata="aws")
    hook = os.path.join(d.tmp, "hook.sh")
    with open(hook, "w") as f:
        f.write("#!/bin/sh\necho ran >> \"$1\"\n")
    os.chmod(hook, 0o755)
    marker = os.path.join(d.tmp, "ran")
    with d:
        good = open(d.config_path).read().replace("poll_interval = 200ms", "poll_interval = 300ms")
        good += f'\n[hook "added"]\nexec = {hook} {marker}\n'
        with open(d.config_path, "w") as f:
            f.write(good)
        d.proc.send_signal(signal.SIGHUP)
        d.wait_stderr(r"Configuration reloaded", 5)
        wait_until(lambda: "poll_interval      300ms" in d.ctl("status").stdout, 3, what="new poll interval")
        msgs = d.read_notify()
        check("RELOADING=1" in msgs and msgs.count("READY=1") >= 2, "sd_notify RELOADING=1 then READY=1")

        with open(d.config_path, "w") as f:
            f.write(good.replace("[daemon]\n", "[daemon]\nbogus_key = 1\n", 1))
        d.proc.send_signal(signal.SIGHUP)
        d.wait_stderr(r"keeping previous configuration", 5)
        check("bogus_key" in d.stderr_text(), "the rejected config's error names the key")
        check(d.proc.poll() is None, "daemon still running after a bad reload")

        d.ctl("fake-notice", "--in", "30")
        wait_until(lambda: os.path.exists(marker), 5, what="hook from the kept config")
        check(True, "a notice after the rejected reload runs the kept config's hook")
        check(d.stop() == 0, "clean stop")
        check("STOPPING=1" in d.read_notify(), "sd_notify STOPPING=1")


def test_reload_during_plan():
    d = Daemon(fake_metadata="aws")
    hook = os.path.join(d.tmp, "slow.sh")
    with open(hook, "w") as f:
        f.write("#!/bin/sh\nsleep 1\necho done >> \"$1\"\n")
    os.chmod(hook, 0o755)
    marker = os.path.join(d.tmp, "slow.done")
    with open(d.config_path, "a") as f:
        f.write(f'\n[hook "slow"]\nexec = {hook} {marker}\n')
    with d:
        d.ctl("trigger")
        time.sleep(0.2)
        text = open(d.config_path).read().replace(f'[hook "slow"]\nexec = {hook} {marker}\n', "")
        with open(d.config_path, "w") as f:
            f.write(text)
        d.proc.send_signal(signal.SIGHUP)
        d.wait_stderr(r"Configuration reloaded", 5)
        d.wait_stderr(r"\[plan-done\]", 5)
        check(os.path.exists(marker), "the running plan finished with the hooks it started with")


def test_watchdog():
    # WATCHDOG_PID cannot name a PID before it exists; sd_watchdog_enabled()
    # accepts the variable unset.
    d = Daemon(fake_metadata="aws", env={"WATCHDOG_USEC": "400000"})
    with d:
        wait_until(lambda: d.read_notify().count("WATCHDOG=1") >= 3, 3, what="WATCHDOG=1 pings")
        check(True, "WATCHDOG=1 sent at half of WATCHDOG_USEC")


if __name__ == "__main__":
    main([test_reload_good_and_bad, test_reload_during_plan, test_watchdog])
