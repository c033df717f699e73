#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Notice to SIGUSR1.

A child (bench/sigwait.c) blocks SIGUSR1, writes a pidfile and, on each
SIGUSR1, appends the CLOCK_MONOTONIC time of receipt (= time.monotonic()) to
a file. spotwatchd runs with poll_interval = 1s against the independent fake
IMDS, with `[process] pidfile =` naming the child and `wait = 0`.

Each trial clears the notice, waits for the subject's next poll (answered
404), sleeps a random 50..950 ms after that poll's arrival (the same
sequence of phases for spotwatchd and the peer), then sets a terminate
notice with a time not used before (one plan runs per notice id) and waits
for the child's receipt. Two figures per trial:

  processing  from the fake having written the first 200 answer that carries
              this notice (a handler subclass stamps time.monotonic() right
              after the write; TCP_NODELAY is on) to the receipt: the
              watcher's own cost. SPEC: under 2 ms.
  end to end  from setting the notice to the receipt: about 1000 ms minus
              the phase, plus the processing; its maximum is printed
              against the SPEC bound (within one poll interval plus 2 ms).

Peer: bench/peer_poll.py, a Python urllib loop doing the same job (token,
poll every second, os.kill on a new notice), measured the same way against
its own fake. The two run one after the other, not at the same time.
"""
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import common

BENCH = "latency"
ACTION = common.fake_imds.ACTION_PATH


def trials(fake, subject_ua, receipts, n, seed, plans_done=None, proc=None):
    """Run n trials against one subject; return (processing, end_to_end) lists in ms."""
    proc_ms, e2e_ms = [], []
    rng = random.Random(seed)
    # The subject is polling (and has its token) before the first trial.
    common.wait_for(lambda: any(e["headers"].get("user-agent", "").startswith(subject_ua)
                                for e in fake.requests(path=ACTION)), 10, "the first poll")
    _, offset = common.read_receipts(receipts)
    for i in range(n):
        # Clear the notice, let the subject see that (one poll answered 404), and set the next
        # notice a random 50..950 ms after that poll: the same phases for every subject.
        fake.notice = None
        t_clear = time.monotonic()
        polls = common.wait_for(lambda: [e for e in fake.requests(path=ACTION, since=t_clear)
                                         if e["headers"].get("user-agent", "").startswith(subject_ua)],
                                5, f"a poll after clearing the notice (trial {i})", interval=0.005)
        time.sleep(max(0.0, polls[0]["time"] + rng.uniform(0.05, 0.95) - time.monotonic()))
        # Strictly later each trial and over a second apart in "now + 600 + i", so every id is new.
        notice = ("terminate", common.fake_imds.rfc3339(600 + i))
        t_set = time.monotonic()
        fake.notice = notice

        def got():
            nonlocal offset
            if proc is not None and proc() is not None:
                raise common.CannotRun("the subject exited")
            rec, offset2 = common.read_receipts(receipts, offset)
            if rec:
                offset = offset2
                return rec
            return None

        rec = common.wait_for(got, 5, f"SIGUSR1 in trial {i}", interval=0.005)
        t_recv = rec[0][1]
        with fake._lock:
            sent = [t for t, nt, ua in fake.sent_notices if nt == notice and ua.startswith(subject_ua)]
        if not sent:
            raise common.CannotRun(f"no 200 answer with the notice was stamped in trial {i}")
        proc_ms.append((t_recv - sent[0]) * 1e3)
        e2e_ms.append((t_recv - t_set) * 1e3)
        if plans_done is not None:
            # One plan per notice: the next notice must not arrive while this plan still runs.
            common.wait_for(lambda: plans_done() >= i + 1, 5, f"plan-done of trial {i}")
    fake.notice = None
    return proc_ms, e2e_ms


def start_child(sigwait, tmp, name):
    pidfile = os.path.join(tmp, f"{name}.pid")
    out = os.path.join(tmp, f"{name}.usr1")
    p = subprocess.Popen([sigwait, out, pidfile])
    common.wait_for(lambda: os.path.exists(pidfile), 5, "the child's pidfile")
    return p, pidfile, out


def run():
    common.check_binaries()
    n = 8 if common.quick() else 20
    seed = 20261127
    tmp = common.tmpdir(BENCH)
    children = []
    try:
        sigwait = common.build_sigwait(tmp)

        # -- spotwatchd --------------------------------------------------
        child, pidfile, receipts = start_child(sigwait, tmp, "daemon-child")
        children.append(child)
        fake = common.start_fake(stamping=True)
        try:
            sections = (f'[process "bench"]\npidfile = {pidfile}\nsignal = SIGUSR1\nwait = 0\n')
            with common.harness.Daemon(sections=sections,
                                       daemon_keys={"poll_interval": "1s", "metadata_url": fake.url}) as d:
                d_proc, d_e2e = trials(fake, "spotwatchd/", receipts, n, seed,
                                       plans_done=lambda: len(d.records("plan-done")), proc=d.proc.poll)
                if len(d.records("plan-start")) != n:
                    raise common.CannotRun(f"expected {n} plans, saw {len(d.records('plan-start'))}")
        finally:
            fake.stop()

        # -- peer: the Python loop ---------------------------------------
        child, pidfile, receipts = start_child(sigwait, tmp, "peer-child")
        children.append(child)
        fake = common.start_fake(stamping=True)
        peer = subprocess.Popen([sys.executable, os.path.join(common.BENCH_DIR, "peer_poll.py"), fake.url,
                                 "--pidfile", pidfile])
        try:
            p_proc, p_e2e = trials(fake, "Python-urllib/", receipts, n, seed, proc=peer.poll)
        finally:
            peer.send_signal(signal.SIGINT)
            try:
                peer.wait(5)
            except subprocess.TimeoutExpired:
                peer.kill()
                peer.wait()
            fake.stop()
    finally:
        for c in children:
            c.kill()
            c.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    common.row(BENCH, "200 answer sent -> SIGUSR1 received", "ms", values=d_proc, peer=p_proc,
               peer_name="Python urllib loop", target="< 2 ms")
    common.row(BENCH, "notice set -> SIGUSR1 (1 s poll)", "ms", values=d_e2e, peer=p_e2e,
               peer_name="Python urllib loop", target="<= 1000 + 2 ms")
    common.row(BENCH, "notice set -> SIGUSR1: maximum", "ms", value=max(d_e2e), peer=max(p_e2e),
               peer_name="Python urllib loop", target="<= 1000 + 2 ms")


if __name__ == "__main__":
    common.main(BENCH, run)
