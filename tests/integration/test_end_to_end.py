#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""End to end in fake-metadata mode, over the daemon's own HTTP fake: a notice
on the fake reaches real processes as SIGUSR1, the example trainer writes its
checkpoint, the hooks run with the SPEC's environment, exactly one plan."""
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import (Daemon, SOURCE_ROOT, check, count_plans, main, spawn_sleeper,  # noqa: E402
                     usr1_count, wait_until)

HOOK = """#!/bin/sh
out="$1"
env | grep '^SPOTWATCH_' | sort > "$out.tmp"
echo "hook stdout line"
echo "hook stderr line" >&2
mv "$out.tmp" "$out"
"""


def write_hook(tmp, name="hook.sh", body=HOOK):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write(body)
    os.chmod(path, 0o755)
    return path


def read_env(path):
    with open(path) as f:
        return dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)


def test_trainer_checkpoint_and_hook():
    """The demo's path with the example trainer, poll_interval = 1s: under 2 s."""
    d = Daemon(fake_metadata="aws", daemon_keys={"poll_interval": "1s"})
    tmp = d.tmp
    ckdir = os.path.join(tmp, "ckpt")
    os.mkdir(ckdir)
    pidfile = os.path.join(tmp, "trainer.pid")
    hook = write_hook(tmp)
    out = os.path.join(tmp, "hook.env")
    with open(d.config_path, "a") as f:
        f.write(f'\n[process "trainer"]\npidfile = {pidfile}\nwait = 10s\n'
                f'\n[hook "record"]\nexec = {hook} {out}\ntimeout = 5s\n')
    trainer = subprocess.Popen([sys.executable, os.path.join(SOURCE_ROOT, "scripts", "example-trainer.py"),
                                "--pidfile", pidfile, "--checkpoint-dir", ckdir],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: os.path.exists(pidfile), 10, what="trainer pidfile")
        with d:
            t0 = time.monotonic()
            r = d.ctl("fake-notice", "--action", "terminate", "--in", "120")
            m = re.search(r"time\s+(\S+)", r.stdout)
            check(m is not None, "fake-notice answers with the notice time")
            wait_until(lambda: os.path.exists(out), 10, what="hook output")
            elapsed = time.monotonic() - t0
            # The < 2 s target is the demo's to show and a benchmark's to measure; a
            # shared CI machine only bounds it loosely here.
            print(f"figure: notice on the fake -> hook ran in {elapsed:.3f} s (poll_interval 1s)")
            check(elapsed < 5.0, f"notice on the fake -> hook ran within one poll plus slack ({elapsed:.3f} s)")
            rc = trainer.wait(10)
            check(rc == 0, "the trainer exited 0 after SIGUSR1")
            files = [f for f in os.listdir(ckdir) if f.endswith(".json")]
            check(len(files) == 1, f"one checkpoint written: {files}")
            env = read_env(out)
            check(env.get("SPOTWATCH_EVENT") == "terminate", "hook got SPOTWATCH_EVENT=terminate")
            check(env.get("SPOTWATCH_CLOUD") == "aws", "hook got SPOTWATCH_CLOUD=aws")
            # The deadline the hook sees is the time the fake served.
            from datetime import datetime
            want = int(datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%SZ").replace(
                tzinfo=__import__("datetime").timezone.utc).timestamp())
            check(env.get("SPOTWATCH_DEADLINE") == str(want), f"SPOTWATCH_DEADLINE={want} as served")
            left = int(env.get("SPOTWATCH_SECONDS_LEFT", "-1"))
            check(110 <= left <= 120, f"SPOTWATCH_SECONDS_LEFT={left} is about 120")
            check(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", env.get("SPOTWATCH_NOTICE_TIME", "")),
                  "SPOTWATCH_NOTICE_TIME is RFC 3339")
            check(env.get("SPOTWATCH_INSTANCE_ID", "").startswith("i-"), "SPOTWATCH_INSTANCE_ID from the fake")
            d.wait_stderr(r"\[plan-done\]", 10)
            sig = d.records("signal")
            check(len(sig) == 1 and sig[0].get("SPOTWATCH_SIGNAL") == "SIGUSR1"
                  and sig[0].get("SPOTWATCH_PID") == str(trainer.pid), "one SIGUSR1 record for the trainer")
            check(len(d.records("process")) == 1, "the trainer's exit was seen through its pidfd")
            outs = [r["MESSAGE"] for r in d.records("hook-output")]
            check(any("hook stdout line" in o for o in outs) and any("hook stderr line" in o for o in outs),
                  "hook stdout and stderr captured line by line")
            hooks = d.records("hook")
            check(len(hooks) == 1 and hooks[0].get("SPOTWATCH_EXIT_STATUS") == "0", "hook record, exit 0")
            done = d.records("plan-done")[0]
            check(done.get("SPOTWATCH_SIGNALLED") == "1" and done.get("SPOTWATCH_HOOKS_OK") == "1",
                  "summary: 1 signalled, 1 hook ok")
            # The notice stays on the fake: later polls must not start another plan.
            time.sleep(2.5)
            check(count_plans(d) == 1, "exactly one plan although the notice is still served")
            check(d.stop() == 0, "SIGTERM: clean exit 0")
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()


def test_pidfile_and_match_fast_poll():
    d = Daemon(fake_metadata="aws", daemon_keys={"poll_interval": "200ms"})
    p1, pidfile, marker1 = spawn_sleeper(d.tmp, "one")
    token = f"spotwatch-match-{os.getpid()}-{time.monotonic_ns()}"
    p2 = subprocess.Popen([sys.executable, "-c", "import signal,time,sys\n"
                           "signal.signal(signal.SIGUSR2, lambda *a: open(sys.argv[1],'a').write('USR2\\n'))\n"
                           "time.sleep(60)", os.path.join(d.tmp, "two.usr2"), token])
    with open(d.config_path, "a") as f:
        f.write(f'\n[process "one"]\npidfile = {pidfile}\n'
                f'\n[process "two"]\nmatch = {token}\nsignal = SIGUSR2\n')
    try:
        time.sleep(0.3)
        with d:
            d.ctl("fake-notice", "--action", "stop", "--in", "60")
            wait_until(lambda: usr1_count(marker1) == 1, 5, what="SIGUSR1 to the pidfile process")
            wait_until(lambda: os.path.exists(os.path.join(d.tmp, "two.usr2")), 5, what="SIGUSR2 by match")
            d.wait_stderr(r"\[plan-done\]", 5)
            n = d.records("notice")
            check(n and n[0].get("SPOTWATCH_EVENT") == "stop", "stop notice reported with SPOTWATCH_EVENT=stop")
            time.sleep(1.0)
            check(usr1_count(marker1) == 1, "still exactly one SIGUSR1 after 5 more polls")
            check(count_plans(d) == 1, "one plan")
    finally:
        for p in (p1, p2):
            p.kill()
            p.wait()


def test_manual_trigger_wait():
    d = Daemon(fake_metadata="aws")
    p, pidfile, marker = spawn_sleeper(d.tmp)
    hook = write_hook(d.tmp, "slow.sh", "#!/bin/sh\nsleep 0.5\nenv | grep ^SPOTWATCH_ > \"$1.t\"\nmv \"$1.t\" \"$1\"\n")
    out = os.path.join(d.tmp, "manual.env")
    with open(d.config_path, "a") as f:
        f.write(f'\n[process "s"]\npidfile = {pidfile}\n\n[hook "slow"]\nexec = {hook} {out}\n')
    try:
        with d:
            r = d.ctl("trigger", "--wait")
            check(os.path.exists(out), "trigger --wait returned after the hook finished")
            check("hooks_ok" in r.stdout, "trigger --wait prints the summary")
            check(read_env(out).get("SPOTWATCH_EVENT") == "manual", "manual plan: SPOTWATCH_EVENT=manual")
            check(usr1_count(marker) == 1, "manual plan signalled the process")
            r = d.ctl("trigger")
            check("started" in r.stdout, "a second manual trigger after the first finished starts a plan")
            d.wait_stderr(r"(?s)plan-done.*plan-done", 5)
    finally:
        p.kill()
        p.wait()


def test_hook_timeout_kills_group():
    d = Daemon(fake_metadata="aws")
    pids = os.path.join(d.tmp, "pids")
    hook = write_hook(d.tmp, "hang.sh", f"#!/bin/sh\nsleep 300 &\necho $! > {pids}\nsleep 300\n")
    with open(d.config_path, "a") as f:
        f.write(f'\n[hook "hang"]\nexec = {hook}\ntimeout = 500ms\n')
    with d:
        d.ctl("trigger", "--wait")
        rec = d.records("hook")
        check(rec and rec[0].get("SPOTWATCH_TIMED_OUT") == "yes", "hook record says it timed out")
        child = int(open(pids).read())
        wait_until(lambda: not os.path.exists(f"/proc/{child}") or
                   open(f"/proc/{child}/stat").read().split()[2] == "Z", 3, what="grandchild killed")
        check(True, "the hook's background child died with its process group")


DONE_CHILD = r"""
import os, signal, subprocess, sys, time
ctl, sock, pidfile = sys.argv[1:4]
def on_usr1(signum, frame):
    # Checkpoint written: tell the plan, then keep running (no exit).
    subprocess.run([ctl, "--socket", sock, "done"], check=True)
signal.signal(signal.SIGUSR1, on_usr1)
with open(pidfile + ".t", "w") as f:
    f.write(str(os.getpid()))
os.replace(pidfile + ".t", pidfile)
time.sleep(60)
"""


def test_done_ends_the_wait():
    """A process that says `spotwatchctl done` (no --pid: its own PID) ends the plan's wait."""
    from harness import SPOTWATCHCTL
    d = Daemon(fake_metadata="aws")
    pidfile = os.path.join(d.tmp, "done.pid")
    hook = write_hook(d.tmp)
    out = os.path.join(d.tmp, "hook.env")
    with open(d.config_path, "a") as f:
        f.write(f'\n[process "p"]\npidfile = {pidfile}\nwait = 30s\n\n[hook "h"]\nexec = {hook} {out}\n')
    child = subprocess.Popen([sys.executable, "-c", DONE_CHILD, SPOTWATCHCTL, d.socket_path, pidfile])
    try:
        wait_until(lambda: os.path.exists(pidfile), 5, what="pidfile")
        with d:
            t0 = time.monotonic()
            d.ctl("trigger")
            wait_until(lambda: os.path.exists(out), 10, what="the hook after done")
            check(time.monotonic() - t0 < 5, "the hook ran long before wait = 30s ran out")
            p = d.records("process")
            check(len(p) == 1 and p[0].get("SPOTWATCH_STATE") == "done", "process record: done")
            check(child.poll() is None, "the process is still running (done, not exited)")
    finally:
        child.kill()
        child.wait()


def test_seconds_left_per_order_group():
    """SPOTWATCH_SECONDS_LEFT is as of each hook's start, not the plan's."""
    d = Daemon(fake_metadata="aws")
    # Written to a temporary name and renamed: the test waits for the file to exist.
    first = write_hook(d.tmp, "first.sh", "#!/bin/sh\nenv | grep ^SPOTWATCH_ > \"$1.t\"\nmv \"$1.t\" \"$1\"\n"
                       "sleep 2.2\n")
    second = write_hook(d.tmp, "second.sh", "#!/bin/sh\nenv | grep ^SPOTWATCH_ > \"$1.t\"\nmv \"$1.t\" \"$1\"\n")
    a, b = os.path.join(d.tmp, "a.env"), os.path.join(d.tmp, "b.env")
    with open(d.config_path, "a") as f:
        f.write(f'\n[hook "first"]\nexec = {first} {a}\norder = 1\n'
                f'\n[hook "second"]\nexec = {second} {b}\norder = 2\n')
    with d:
        d.ctl("fake-notice", "--in", "60")
        wait_until(lambda: os.path.exists(b), 10, what="the second group's hook")
        la, lb = int(read_env(a)["SPOTWATCH_SECONDS_LEFT"]), int(read_env(b)["SPOTWATCH_SECONDS_LEFT"])
        check(la - lb >= 2, f"order 1 saw {la} s left, order 2 (2.2 s later) saw {lb} s")
        check(read_env(a)["SPOTWATCH_DEADLINE"] == read_env(b)["SPOTWATCH_DEADLINE"], "same deadline for both")


if __name__ == "__main__":
    main([test_trainer_checkpoint_and_hook, test_pidfile_and_match_fast_poll, test_manual_trigger_wait,
          test_hook_timeout_kills_group, test_seconds_left_per_order_group, test_done_ends_the_wait])
