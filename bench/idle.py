#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Idle cost of polling every second.

spotwatchd (poll_interval = 1s, log = stderr, no [process] or [hook]) and
the peer, bench/peer_poll.py (a Python urllib loop: token, then
instance-action and rebalance every second, as spotwatchd's cycle), run at
the same time against one independent fake IMDS for 60 s (30 s with
--quick), after both have polled a few times (start-up is not counted).

CPU: utime+stime from /proc/PID/stat at both ends of the window (clock
ticks, 10 ms: too coarse for a few ms a minute, so this is printed as-is),
and the process CPU-time clock (clock_getcpuclockid(), nanoseconds, all
threads) sampled every 5 s; each 5 s window is extrapolated to CPU-seconds
per hour (median and p90 over the windows), and so is the whole window.
Memory: VmRSS and VmHWM from /proc/PID/status at the end, and VmRSS split
into RssAnon (private) and RssFile (mostly shared libraries' pages).

SPEC targets: under 0.5 CPU-seconds an hour and under 4 MiB resident.
"""
import os
import signal
import subprocess
import sys
import time

import common

BENCH = "idle"
ACTION = common.fake_imds.ACTION_PATH
STEP = 5.0


def polls(fake, ua, since, until):
    return sum(1 for e in fake.requests(path=ACTION, since=since)
               if e["time"] < until and e["headers"].get("user-agent", "").startswith(ua))


def run():
    common.check_binaries()
    duration = 30.0 if common.quick() else 60.0
    fake = common.start_fake()
    peer = None
    try:
        with common.harness.Daemon(daemon_keys={"poll_interval": "1s", "metadata_url": fake.url}) as d:
            peer = subprocess.Popen([sys.executable, os.path.join(common.BENCH_DIR, "peer_poll.py"), fake.url],
                                    stdin=subprocess.DEVNULL)
            subjects = {"spotwatchd": (d.pid, "spotwatchd/"), "peer": (peer.pid, "Python-urllib/")}
            # Past start-up: both have polled a few times.
            common.wait_for(lambda: all(polls(fake, ua, 0, float("inf")) >= 3 for _, ua in subjects.values()),
                            15, "three polls from each", interval=0.1)
            t0 = time.monotonic()
            stat0 = {k: common.proc_stat_cpu_seconds(pid) for k, (pid, _) in subjects.items()}
            samples = {k: [(t0, common.cpu_seconds_precise(pid))] for k, (pid, _) in subjects.items()}
            end = t0 + duration
            while True:
                now = time.monotonic()
                if now >= end:
                    break
                time.sleep(min(STEP - (now - t0) % STEP, end - now))
                for k, (pid, _) in subjects.items():
                    if (d.proc if k == "spotwatchd" else peer).poll() is not None:
                        raise common.CannotRun(f"{k} exited during the run")
                    samples[k].append((time.monotonic(), common.cpu_seconds_precise(pid)))
            t1 = time.monotonic()
            res = {}
            for k, (pid, ua) in subjects.items():
                s = samples[k]
                windows = [(c2 - c1) / (w2 - w1) * 3600 for (w1, c1), (w2, c2) in zip(s, s[1:]) if w2 - w1 > 1]
                res[k] = {
                    "windows": windows,
                    "total": (s[-1][1] - s[0][1]) / (s[-1][0] - s[0][0]) * 3600,
                    "stat": (common.proc_stat_cpu_seconds(pid) - stat0[k]) / (t1 - t0) * 3600,
                    "rss": common.proc_status_kib(pid, "VmRSS") / 1024,
                    "hwm": common.proc_status_kib(pid, "VmHWM") / 1024,
                    "anon": common.proc_status_kib(pid, "RssAnon") / 1024,
                    "file": common.proc_status_kib(pid, "RssFile") / 1024,
                    "polls": polls(fake, ua, t0, t1),
                }
    finally:
        if peer is not None:
            peer.send_signal(signal.SIGINT)
            try:
                peer.wait(5)
            except subprocess.TimeoutExpired:
                peer.kill()
                peer.wait()
        fake.stop()

    dd, pp = res["spotwatchd"], res["peer"]
    win = f"{len(dd['windows'])} windows of {STEP:.0f} s"
    common.row(BENCH, f"CPU-s/hour (CPU clock, {win})", "s/h", values=dd["windows"], peer=pp["windows"],
               peer_name="Python urllib loop", target="< 0.5 s/h")
    common.row(BENCH, f"CPU-s/hour (CPU clock, whole {t1 - t0:.0f} s)", "s/h", value=dd["total"],
               peer=pp["total"], peer_name="Python urllib loop", target="< 0.5 s/h",
               note=f"instance-action polls in the window: spotwatchd {dd['polls']}, peer {pp['polls']}")
    common.row(BENCH, "CPU-s/hour (/proc/PID/stat utime+stime)", "s/h", value=dd["stat"], peer=pp["stat"],
               peer_name="Python urllib loop", target="< 0.5 s/h",
               note="10 ms clock ticks: over a minute this resolves only ~0.6 s/h steps")
    common.row(BENCH, "VmRSS at end", "MiB", value=dd["rss"], peer=pp["rss"], peer_name="Python urllib loop",
               target="< 4 MiB",
               note=f"spotwatchd RssAnon {dd['anon']:.2f} MiB + RssFile {dd['file']:.2f} MiB; "
                    f"peer RssAnon {pp['anon']:.2f} MiB + RssFile {pp['file']:.2f} MiB")
    common.row(BENCH, "VmHWM (peak RSS)", "MiB", value=dd["hwm"], peer=pp["hwm"], peer_name="Python urllib loop",
               target="< 4 MiB")


if __name__ == "__main__":
    common.main(BENCH, run)
