#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Metadata faults on spot/instance-action, served by the independent fake
(fake_imds.py): 500, 503, 429, a garbage body, a 10 MiB body, an answer that
never comes, a TCP reset, and JSON with the wrong types. For each the daemon
stays alive, starts no plan, logs the error a bounded number of times (once
per streak here, not once per poll), backs off but keeps polling, and polls
at full rate again once the fault is gone. At the end a real notice still
runs the plan.

One daemon runs through all faults (about 30 s): poll_interval = 200ms and
request_timeout = 1s, so the backoff (daemon/provider-aws.h) makes the
faulted polls come 0.4, 0.8, 1.6 ... s apart. rebalance is listed in
[daemon] events, so the rebalance recommendation is polled in every cycle
(not every 5 s) and shows that a failed instance-action does not cut the
cycle short. FAULTS="hang reset" runs a subset.
"""
import os
import shutil
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import Daemon, check, count_plans, spawn_sleeper, usr1_count, wait_until  # noqa: E402
from fake_imds import ACTION_PATH, REBALANCE_PATH, FakeImds, rfc3339  # noqa: E402

FAULTS = tuple(os.environ.get("FAULTS", "500 503 429 garbage huge hang reset bad-json-types").split())
FAULTED_POLLS = 3




def faulted(fake, since):
    """instance-action requests since @since that did not get the normal 404."""
    return [e for e in fake.requests("GET", ACTION_PATH, since=since) if e["status"] != 404]


def cycles(entries):
    """curl itself retries once on a fresh connection when a reused one turns
    out dead ("reset"): requests a few ms apart are one poll cycle."""
    out = []
    for e in entries:
        if not out or e["time"] - out[-1]["time"] > 0.1:
            out.append(e)
    return out


def error_lines(text):
    return [line for line in text.splitlines() if "instance-action" in line]


def one_fault(fake, d, marker, fault):
    print(f"-- fault {fault}", flush=True)
    log_offset = len(d.stderr_text())
    plans = count_plans(d)
    t0 = time.monotonic()
    fake.fault = fault
    wait_until(lambda: len(cycles(faulted(fake, t0))) >= FAULTED_POLLS, 15, what=f"{FAULTED_POLLS} faulted polls")
    t1 = time.monotonic()
    n_faulted = len(cycles(faulted(fake, t0)))
    # Let the last faulted poll end (timeout, cap or reset) before looking at the log.
    end = time.monotonic() + (1.2 if fault == "hang" else 0.3)
    wait_until(lambda: time.monotonic() >= end, 5, what="the last faulted poll to end")

    check(d.proc.poll() is None, f"{fault}: spotwatchd is alive")
    check(d.ctl("status", check=False).returncode == 0, f"{fault}: spotwatchctl status answers")
    check(count_plans(d) == plans and usr1_count(marker) == 0, f"{fault}: no plan, no signal")
    lines = error_lines(d.stderr_text()[log_offset:])
    check(1 <= len(lines) <= 2 and len(lines) < n_faulted,
          f"{fault}: the error is logged {len(lines)} time(s) for {n_faulted} faulted polls")
    if lines:
        print("   ", lines[0].strip(), flush=True)
    polls = cycles(fake.requests("GET", ACTION_PATH, since=t0))
    rate = (len(polls) - 1) / max(polls[-1]["time"] - polls[0]["time"], 0.001)
    check(rate < 3.0, f"{fault}: polls back off ({len(polls)} polls, {rate:.1f}/s, 5/s without backoff)")
    check(fake.requests("GET", REBALANCE_PATH, since=t0),
          f"{fault}: the rest of each cycle still runs (rebalance polled)")

    fake.fault = None
    first_ok = wait_until(lambda: [e for e in fake.requests("GET", ACTION_PATH, since=t1) if e["status"] == 404],
                          10, what="a good poll after the fault")[0]
    check(first_ok["time"] - t1 < 6.0, f"{fault}: polling resumes {first_ok['time'] - t1:.1f} s after the fault ends")
    wait_until(lambda: len(fake.requests("GET", ACTION_PATH, since=first_ok["time"])) >= 5, 3,
               what="polls at the full rate again")
    check(True, f"{fault}: back to 5 polls/s after the first good one")


def run():
    fake = FakeImds().start()
    fake.hang_seconds = 20
    tmp = harness.mkdtemp()
    sleeper, pidfile, marker = spawn_sleeper(tmp)
    try:
        sections = f'[process "t"]\npidfile = {pidfile}\nwait = 0\n'
        # rebalance in events: polled every cycle, so each faulted cycle shows it still runs to its end.
        with Daemon(sections=sections, daemon_keys={"metadata_url": fake.url, "poll_interval": "200ms",
                                                   "request_timeout": "1s", "cloud": "aws",
                                                   "events": "terminate stop hibernate preempt rebalance"}) as d:
            wait_until(lambda: len(fake.requests("GET", ACTION_PATH)) >= 3, 5, what="first polls")
            for fault in FAULTS:
                one_fault(fake, d, marker, fault)

            print("-- after all faults, a notice still runs the plan", flush=True)
            fake.notice = ("terminate", rfc3339(120))
            wait_until(lambda: usr1_count(marker) >= 1, 5, what="SIGUSR1 after the notice")
            wait_until(lambda: count_plans(d) >= 1, 5, what="plan-start record")
            check(count_plans(d) == 1, "exactly one plan started")
            check(usr1_count(marker) == 1, "the registered process got one SIGUSR1")
            check(d.stop() == 0, "spotwatchd exits 0 on SIGTERM")
    finally:
        fake.stop()
        if sleeper.poll() is None:
            sleeper.send_signal(signal.SIGKILL)
        sleeper.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    harness.main([run])
