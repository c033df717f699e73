#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""GCP notice to SIGUSR1, through the hanging GET.

    python3 bench/gcp_latency.py [--quick]      (after ninja -C build; or via bench/run)

SPOTWATCH_BUILD=DIR (default build/) or SPOTWATCHD/SPOTWATCHCTL pick the
binaries. Prints figures; never fails on a threshold.

A child (bench/sigwait.c) blocks SIGUSR1, writes a pidfile and, on each
SIGUSR1, appends the CLOCK_MONOTONIC time of receipt (= time.monotonic()) to
a file. spotwatchd runs with cloud = gcp and gcp_wait = 60s against the
independent fake GCP metadata server (tests/integration/fake_gcp.py), with
`[process] pidfile =` naming the child and `wait = 0`.

Each trial waits until the daemon's hanging GET on instance/preempted is
parked in the fake with the current ETag, sleeps a random 20..120 ms, flips
preempted to TRUE and waits for the child's receipt; then it flips back to
FALSE and waits for the daemon to re-arm. Every FALSE -> TRUE is a new
preemption to the watcher (its notice id carries a count), so one daemon
runs one plan per trial. Two figures per trial:

  flip -> SIGUSR1     from the fake setting TRUE (which wakes the parked GET)
                      to the receipt: the whole path. SPEC: under 10 ms.
  answer -> SIGUSR1   from the fake having written the TRUE answer to the
                      socket (TCP_NODELAY is on) to the receipt: the
                      watcher's own cost.

The fake runs in this Python process, so the first figure includes waking
the fake's handler thread (GIL hand-off) and writing the answer.
"""
import os
import random
import shutil
import subprocess
import sys
import time

import common
import fake_gcp

BENCH = "gcp_latency"
PREEMPTED = fake_gcp.PREEMPTED


def parked(fake):
    """The daemon's latest request on instance/preempted is a hanging GET in flight with the current ETag."""
    reqs = fake.requests(path=PREEMPTED)
    if not reqs:
        return False
    last = reqs[-1]
    return last["status"] is None and last["query"].get("last_etag") == fake.etag(PREEMPTED)


def trials(fake, receipts, n, rng, plans_done, proc):
    """plans_done: None for the peer (it runs no plan; the receipt is enough)."""
    flip_ms, answer_ms = [], []
    common.wait_for(lambda: parked(fake), 10, "the first hanging GET")
    _, offset = common.read_receipts(receipts)
    for i in range(n):
        common.wait_for(lambda: parked(fake), 5, f"a parked GET before trial {i}")
        time.sleep(rng.uniform(0.02, 0.12))
        t_flip = fake.set_value(PREEMPTED, "TRUE")
        etag = fake.etag(PREEMPTED)

        def got():
            nonlocal offset
            if proc() is not None:
                raise common.CannotRun("spotwatchd exited")
            rec, offset2 = common.read_receipts(receipts, offset)
            if rec:
                offset = offset2
                return rec
            return None

        rec = common.wait_for(got, 5, f"SIGUSR1 in trial {i}", interval=0.001)
        t_recv = rec[0][1]
        with fake._lock:
            sent = [a[0] for a in fake.answers if a[1] == PREEMPTED and a[3] == etag]
        if not sent:
            raise common.CannotRun(f"no TRUE answer was stamped in trial {i}")
        flip_ms.append((t_recv - t_flip) * 1e3)
        answer_ms.append((t_recv - sent[0]) * 1e3)
        if plans_done:
            common.wait_for(lambda: plans_done() >= i + 1, 5, f"plan-done of trial {i}")
        fake.set_value(PREEMPTED, "FALSE")
    return flip_ms, answer_ms


def run():
    common.check_binaries()
    n = 10 if common.quick() else 50
    rng = random.Random(20261127)
    tmp = common.tmpdir(BENCH)
    child = None
    fake = fake_gcp.FakeGcp().start()
    try:
        sigwait = common.build_sigwait(tmp)
        pidfile = os.path.join(tmp, "child.pid")
        receipts = os.path.join(tmp, "child.usr1")
        child = subprocess.Popen([sigwait, receipts, pidfile])
        common.wait_for(lambda: os.path.exists(pidfile), 5, "the child's pidfile")
        sections = f'[process "bench"]\npidfile = {pidfile}\nsignal = SIGUSR1\nwait = 0\n'
        keys = {"cloud": "gcp", "metadata_url": fake.url, "gcp_wait": "60s", "poll_interval": "1s"}
        with common.harness.Daemon(sections=sections, daemon_keys=keys) as d:
            flip_ms, answer_ms = trials(fake, receipts, n, rng, lambda: len(d.records("plan-done")), d.proc.poll)
            if len(d.records("plan-start")) != n:
                raise common.CannotRun(f"expected {n} plans, saw {len(d.records('plan-start'))}")
        # The peer, in the same run against a fresh fake: a Python hanging-GET loop.
        fake.stop()
        fake = fake_gcp.FakeGcp().start()
        peer = subprocess.Popen([sys.executable, os.path.join(common.BENCH_DIR, "peer_gcp.py"), fake.url,
                                 "--pidfile", pidfile])
        try:
            p_flip, p_answer = trials(fake, receipts, n, rng, None, peer.poll)
        finally:
            peer.kill()
            peer.wait()
    finally:
        fake.stop()
        if child is not None:
            child.kill()
            child.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    common.row(BENCH, "preempted flipped -> SIGUSR1 (hanging GET)", "ms", values=flip_ms, peer=p_flip,
               peer_name="Python hanging-GET loop", target="< 10 ms")
    common.row(BENCH, "TRUE answer written -> SIGUSR1", "ms", values=answer_ms, peer=p_answer,
               peer_name="Python hanging-GET loop", target="< 2 ms")


if __name__ == "__main__":
    common.main(BENCH, run)
