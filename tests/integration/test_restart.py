#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Exactly once across a restart: a notice still served after spotwatchd
restarts does not start its plan again (state_dir/plans), and a plan cut
short by a stop is reported at the next start, not re-run. Uses the
independent fake IMDS, whose notice survives the daemon."""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from harness import Daemon, check, count_plans, main, spawn_sleeper, usr1_count, wait_until  # noqa: E402
from fake_imds import ACTION_PATH, FakeImds, rfc3339  # noqa: E402


def daemon(fake, state, sections):
    return Daemon(sections=sections, daemon_keys={"metadata_url": fake.url, "state_dir": state})


def test_no_second_plan_after_restart():
    fake = FakeImds().start()
    tmp = harness.mkdtemp()
    state = os.path.join(tmp, "state")
    p, pidfile, marker = spawn_sleeper(tmp)
    sections = f'[process "s"]\npidfile = {pidfile}\n'
    try:
        fake.notice = ("terminate", rfc3339(120))
        with daemon(fake, state, sections) as d:
            d.wait_stderr(r"\[plan-done\]", 5)
            check(usr1_count(marker) == 1, "first daemon: one plan, one SIGUSR1")
        check("start aws:spot:terminate:" in open(os.path.join(state, "plans")).read(),
              "the plan is recorded in state_dir/plans")
        with daemon(fake, state, sections) as d:
            n = len(fake.requests("GET", ACTION_PATH))
            wait_until(lambda: len(fake.requests("GET", ACTION_PATH)) >= n + 5, 5, what="5 polls")
            check(count_plans(d) == 0, "restarted daemon: the same notice starts no plan")
            check(usr1_count(marker) == 1, "still exactly one SIGUSR1 in all")
    finally:
        p.kill()
        p.wait()
        fake.stop()


def test_interrupted_plan_reported_not_rerun():
    fake = FakeImds().start()
    tmp = harness.mkdtemp()
    state = os.path.join(tmp, "state")
    hook = os.path.join(tmp, "slow.sh")
    with open(hook, "w") as f:
        f.write(f"#!/bin/sh\necho run >> {tmp}/runs\nsleep 30\n")
    os.chmod(hook, 0o755)
    sections = f'[hook "slow"]\nexec = {hook}\ntimeout = 60s\n'
    try:
        fake.notice = ("stop", rfc3339(100))
        with daemon(fake, state, sections) as d:
            wait_until(lambda: os.path.exists(f"{tmp}/runs"), 5, what="the slow hook to start")
            d.proc.send_signal(signal.SIGTERM)
            d.wait_stderr(r"stopping once the response plan has finished", 5)
            check(d.proc.poll() is None, "first SIGTERM mid-plan: the daemon waits for the plan")
            check(d.stop() == 0, "second SIGTERM: it stops at once, exit 0")
            done = d.records("plan-done")
            check(len(done) == 1 and done[0].get("SPOTWATCH_ABORTED") == "yes",
                  "the interrupted plan is recorded as aborted")
        with daemon(fake, state, sections) as d:
            d.wait_stderr(r"interrupted by a stop or crash; it is not run again", 5)
            time.sleep(1)
            check(count_plans(d) == 0, "restart: the interrupted plan is not run again")
            check(open(f"{tmp}/runs").read().count("run") == 1, "the hook ran once in all")
    finally:
        fake.stop()


def test_stop_finishes_the_plan():
    """A stop during a plan (a shutdown during a preemption) finishes the plan first,
    extending systemd's stop timeout, then exits."""
    fake = FakeImds().start()
    tmp = harness.mkdtemp()
    hook = os.path.join(tmp, "slow.sh")
    with open(hook, "w") as f:
        f.write(f"#!/bin/sh\nsleep 1.5\necho done >> {tmp}/done\n")
    os.chmod(hook, 0o755)
    try:
        fake.notice = ("terminate", rfc3339(60))
        with daemon(fake, os.path.join(tmp, "state"), f'[hook "slow"]\nexec = {hook}\n') as d:
            d.wait_stderr(r"\[plan-start\]", 5)
            d.proc.send_signal(signal.SIGTERM)
            rc = d.proc.wait(15)
            check(rc == 0, "exit 0 after the plan")
            check(os.path.exists(f"{tmp}/done"), "the hook ran to its end")
            done = d.records("plan-done")
            check(len(done) == 1 and "SPOTWATCH_ABORTED" not in done[0], "plan-done, not aborted")
            ext = [m for m in d.read_notify() if m.startswith("EXTEND_TIMEOUT_USEC=")]
            check(ext and 60e6 <= int(ext[0].split("=")[1]) <= 66e6,
                  f"EXTEND_TIMEOUT_USEC covers the deadline: {ext}")
            check("STOPPING=1" in d.read_notify(), "STOPPING=1")
    finally:
        fake.stop()


def test_stop_extends_for_a_notice_without_deadline():
    """A notice that carries no deadline (a rebalance the config acts on) works to
    default_deadline: the stop timeout is extended to cover that, not 5 s."""
    fake = FakeImds().start()
    tmp = harness.mkdtemp()
    hook = os.path.join(tmp, "slow.sh")
    with open(hook, "w") as f:
        f.write("#!/bin/sh\nsleep 1\n")
    os.chmod(hook, 0o755)
    try:
        fake.rebalance = rfc3339(0)
        d = Daemon(sections=f'[hook "slow"]\nexec = {hook}\n',
                   daemon_keys={"metadata_url": fake.url, "events": "terminate rebalance",
                                "default_deadline": "90s", "state_dir": os.path.join(tmp, "state")})
        with d:
            d.wait_stderr(r"\[plan-start\]", 5)
            d.proc.send_signal(signal.SIGTERM)
            check(d.proc.wait(15) == 0, "exit 0 after the plan")
            ext = [m for m in d.read_notify() if m.startswith("EXTEND_TIMEOUT_USEC=")]
            check(ext and 90e6 <= int(ext[0].split("=")[1]) <= 96e6,
                  f"EXTEND_TIMEOUT_USEC covers default_deadline (90s): {ext}")
    finally:
        fake.stop()


if __name__ == "__main__":
    main([test_no_second_plan_after_restart, test_interrupted_plan_reported_not_rerun,
          test_stop_finishes_the_plan, test_stop_extends_for_a_notice_without_deadline])
