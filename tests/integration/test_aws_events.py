#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""AWS notices beyond spot/instance-action, against the independent fake
(fake_imds.py): scheduled maintenance events, the Auto Scaling target
lifecycle state, and stop and hibernate kept verbatim.

- Default events (maintenance not listed), aws_asg = no: an active
  instance-retirement event served from the start is reported by the first
  cycle (SPOTWATCH_EVENT=maintenance, the Code as detail, NotBefore as
  deadline) and starts no plan; canceled and completed events are not
  reported at all; the lifecycle state is never asked for, even while it says
  Terminated. A stop notice runs the plan with SPOTWATCH_EVENT=stop; a
  hibernate notice due in 4 s runs it with SPOTWATCH_EVENT=hibernate and what
  is left of those seconds; a hibernate notice already past still signals the
  process. Then the idle cadence: instance-action every cycle, the rebalance
  recommendation at most every 5 s, the scheduled events once more after
  60 s, and the maintenance event served again is still one notice.
- events += maintenance, aws_asg = yes: the scheduled events are polled every
  cycle and an empty list reports nothing, the lifecycle state answers 404
  (no Auto Scaling group) on every poll without a single error line,
  InService does nothing, an active maintenance event starts a plan, and
  Terminated served on many polls starts exactly one more (id
  aws:asg:terminated:INSTANCE_ID, no deadline from AWS, so default_deadline
  applies).
- --fake-metadata=aws with maintenance in events (so it is polled every
  cycle): spotwatchctl fake-notice --action maintenance and --action
  asg-terminated put the same notices on the daemon's own fake.

About 90 s, most of it waiting for the second scheduled-events poll.
"""
import datetime
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fake_imds import (ACTION_PATH, ASG_PATH, INSTANCE_ID_PATH, MAINTENANCE_PATH, REBALANCE_PATH,  # noqa: E402
                       FakeImds, event_time, maintenance_event, rfc3339)
from harness import Daemon, check, count_plans, main, spawn_sleeper, usr1_count, wait_until  # noqa: E402

REBALANCE_EVERY = 5.0     # daemon/provider-aws.h: AWS_REBALANCE_INTERVAL_USEC
MAINTENANCE_EVERY = 60.0  # AWS_MAINTENANCE_INTERVAL_USEC
SLACK = 0.2               # request arrival against cycle start

HOOK = """#!/bin/sh
out="$1"
n=1
while [ -e "$out.$n" ]; do n=$((n + 1)); done
env | grep '^SPOTWATCH_' | sort > "$out.tmp"
mv "$out.tmp" "$out.$n"
"""


def write_hook(tmp):
    path = os.path.join(tmp, "hook.sh")
    with open(path, "w") as f:
        f.write(HOOK)
    os.chmod(path, 0o755)
    return path


def hook_envs(out):
    """The environments the hook saw, one dict per run, in order."""
    envs = []
    n = 1
    while os.path.exists(f"{out}.{n}"):
        with open(f"{out}.{n}") as f:
            envs.append(dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line))
        n += 1
    return envs


def event_epoch(t):
    return int(datetime.datetime.strptime(t, "%d %b %Y %H:%M:%S GMT")
               .replace(tzinfo=datetime.timezone.utc).timestamp())


def notices(d, event=None):
    return [r for r in d.records("notice") if event is None or r.get("SPOTWATCH_EVENT") == event]


def polls_since(fake, path, since, status=None):
    return [e for e in fake.requests("GET", path, since=since) if status is None or e["status"] == status]


def wait_polls(fake, path, n, status=None, timeout=10):
    t = time.monotonic()
    wait_until(lambda: len(polls_since(fake, path, t, status)) >= n, timeout, what=f"{n} polls of {path}")


def plans_done(d):
    return len(d.records("plan-done"))


def start(fake, keys):
    d = Daemon(daemon_keys={"cloud": "aws", "metadata_url": fake.url, "poll_interval": "200ms",
                            "request_timeout": "1s", "deadline_margin": "0", **keys})
    sleeper, pidfile, marker = spawn_sleeper(d.tmp)
    out = os.path.join(d.tmp, "hook.env")
    with open(d.config_path, "a") as f:
        f.write(f'[process "trainer"]\npidfile = {pidfile}\nwait = 0\n\n'
                f'[hook "record"]\nexec = {write_hook(d.tmp)} {out}\ntimeout = 5s\n')
    return d, sleeper, marker, out


def stop_child(p):
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    p.wait()


def cycles_of(fake):
    """The GETs of each poll cycle, in order (a cycle starts with instance-action); the last may be unfinished."""
    cycles = []
    for e in fake.requests("GET"):
        if e["path"] == INSTANCE_ID_PATH:
            continue
        if e["path"] == ACTION_PATH or not cycles:
            cycles.append([])
        cycles[-1].append(e["path"])
    return cycles


def test_reported_events_and_verbatim_actions():
    fake = FakeImds().start()
    fake.asg_state = "Terminated"  # served, but aws_asg = no: never asked for
    # Served from the start: the first cycle polls every endpoint, later ones the
    # scheduled events only every 60 s (maintenance is not in [daemon] events).
    ev = maintenance_event("instance-retirement", "active", not_before=event_time(3600))
    fake.maintenance = [ev,
                        maintenance_event("system-reboot", "canceled"),
                        maintenance_event("instance-stop", "completed", not_before=event_time(-86400))]
    d, sleeper, marker, out = start(fake, {"aws_asg": "no"})
    try:
        with d:
            print("-- an active maintenance event is reported, not acted on", flush=True)
            first = wait_until(lambda: polls_since(fake, MAINTENANCE_PATH, 0, 200), 10,
                               what="the first scheduled-events poll")[0]
            recs = wait_until(lambda: notices(d, "maintenance"), 5, what="the maintenance notice")
            check(len(recs) == 1, f"one maintenance notice record (got {len(recs)})")
            r = recs[0]
            check(r.get("SPOTWATCH_NOTICE_ID") == f"aws:maintenance:{ev['EventId']}",
                  f"its id is aws:maintenance:{ev['EventId']}")
            check(r.get("SPOTWATCH_DETAIL") == "instance-retirement", "its detail is the Code")
            check(r.get("SPOTWATCH_DEADLINE") == str(event_epoch(ev["NotBefore"])),
                  f"its deadline is NotBefore ({ev['NotBefore']})")
            check(r.get("SPOTWATCH_STARTS_PLAN") == "no", "reported only: maintenance is not in [daemon] events")
            check(count_plans(d) == 0 and usr1_count(marker) == 0, "no plan, no signal")

            print("-- canceled and completed events are ignored", flush=True)
            check(len(notices(d)) == 1, f"no record for them ({len(notices(d))} notice records in all)")

            print("-- stop is kept verbatim", flush=True)
            fake.notice = ("stop", rfc3339(120))
            wait_until(lambda: plans_done(d) >= 1, 10, what="the stop plan to finish")
            envs = hook_envs(out)
            check(len(envs) == 1 and envs[0].get("SPOTWATCH_EVENT") == "stop", "hook: SPOTWATCH_EVENT=stop")
            check(notices(d, "stop")[0].get("SPOTWATCH_DETAIL", "stop") == "stop", "the notice is a stop notice")
            check(usr1_count(marker) == 1, "the process was signalled for the stop")

            print("-- hibernate 4 s ahead: the plan starts with what is left", flush=True)
            fake.notice = ("hibernate", rfc3339(4))
            wait_until(lambda: plans_done(d) >= 2, 10, what="the hibernate plan to finish")
            envs = hook_envs(out)
            check(len(envs) == 2 and envs[1].get("SPOTWATCH_EVENT") == "hibernate",
                  "hook: SPOTWATCH_EVENT=hibernate")
            left = int(envs[1].get("SPOTWATCH_SECONDS_LEFT", "-1"))
            check(0 <= left <= 4, f"hook: SPOTWATCH_SECONDS_LEFT={left}, what is left of 4 s")
            check(usr1_count(marker) == 2, "the process was signalled for the hibernation")

            print("-- hibernate already past: the process is still signalled", flush=True)
            fake.notice = ("hibernate", rfc3339(-30))
            wait_until(lambda: plans_done(d) >= 3, 10, what="the late hibernate plan to finish")
            check(usr1_count(marker) == 3, "the process got its SIGUSR1 although the time has passed")
            check(count_plans(d) == 3, f"three plans in all (got {count_plans(d)})")

            print("-- default events: scheduled events every 60 s, rebalance every 5 s", flush=True)
            second = wait_until(lambda: polls_since(fake, MAINTENANCE_PATH, first["time"] + 1, 200),
                                MAINTENANCE_EVERY + 15, what="the next scheduled-events poll")[0]
            span = second["time"] - first["time"]
            check(MAINTENANCE_EVERY - SLACK <= span < MAINTENANCE_EVERY + 5,
                  f"the scheduled events are polled again {span:.1f} s after the first time")
            recs = notices(d, "maintenance")
            check(len(recs) == 1, f"the same maintenance event served again is still one record (got {len(recs)})")
            rebalance = [e["time"] for e in fake.requests("GET", REBALANCE_PATH) if e["time"] <= second["time"]]
            gaps = [b - a for a, b in zip(rebalance, rebalance[1:])] or [0.0]
            check(len(rebalance) >= span / (REBALANCE_EVERY + 1) and all(g >= REBALANCE_EVERY - SLACK for g in gaps),
                  f"the rebalance recommendation is polled every 5 s ({len(rebalance)} times in {span:.0f} s, "
                  f"gaps {min(gaps):.2f}..{max(gaps):.2f} s)")
            actions = polls_since(fake, ACTION_PATH, first["time"])
            check(len(actions) >= span / 0.2 / 2, f"instance-action is polled every cycle ({len(actions)} times)")
            check(all(c[0] == ACTION_PATH for c in cycles_of(fake)), "every cycle starts with instance-action")

            check(not fake.requests(path=ASG_PATH), "aws_asg = no: the lifecycle state was never asked for")
            check("Metadata poll failed" not in d.stderr_text(), "no poll errors")
            check(d.stop() == 0, "spotwatchd exits 0 on SIGTERM")
    finally:
        fake.stop()
        stop_child(sleeper)


def test_asg_and_acted_maintenance():
    fake = FakeImds().start()
    d, sleeper, marker, out = start(fake, {"aws_asg": "yes", "default_deadline": "60s",
                                           "events": "terminate stop hibernate preempt maintenance"})
    try:
        with d:
            print("-- not in an Auto Scaling group: 404, quietly", flush=True)
            wait_polls(fake, ASG_PATH, 10, status=404)
            cycles = cycles_of(fake)[:-1]
            check(all(c[-1] == ASG_PATH for c in cycles), "the lifecycle state comes last in each cycle")
            check(all(MAINTENANCE_PATH in c for c in cycles),
                  f"maintenance is in events: the scheduled events are polled in each of {len(cycles)} cycles")
            check(not notices(d), "an empty list of scheduled events reports nothing")
            text = d.stderr_text()
            check("target-lifecycle-state" not in text and "Metadata poll failed" not in text,
                  "404 on the lifecycle state logs nothing")

            print("-- InService: nothing", flush=True)
            fake.asg_state = "InService"
            wait_polls(fake, ASG_PATH, 5, status=200)
            check(not notices(d) and count_plans(d) == 0, "InService: no notice, no plan")

            print("-- maintenance listed in events: it starts a plan", flush=True)
            ev = maintenance_event("system-maintenance", "active", not_before=event_time(600))
            fake.maintenance = [ev]
            wait_until(lambda: plans_done(d) >= 1, 10, what="the maintenance plan to finish")
            env = hook_envs(out)[0]
            check(env.get("SPOTWATCH_EVENT") == "maintenance", "hook: SPOTWATCH_EVENT=maintenance")
            check(env.get("SPOTWATCH_DEADLINE") == str(event_epoch(ev["NotBefore"])), "hook: deadline = NotBefore")
            check(usr1_count(marker) == 1, "one SIGUSR1 for the maintenance")

            print("-- Terminated on many polls: one plan", flush=True)
            fake.asg_state = "Terminated"
            t = time.monotonic()
            wait_polls(fake, ASG_PATH, 15, status=200)
            wait_until(lambda: plans_done(d) >= 2, 10, what="the ASG plan to finish")
            served = polls_since(fake, ASG_PATH, t, 200)
            check(len(served) >= 15, f"Terminated served on {len(served)} polls")
            check(count_plans(d) == 2, f"exactly one plan for it (plans in all: {count_plans(d)})")
            check(usr1_count(marker) == 2, f"exactly one more SIGUSR1 (got {usr1_count(marker)})")
            recs = notices(d, "terminate")
            check(len(recs) == 1 and recs[0].get("SPOTWATCH_NOTICE_ID", "").startswith("aws:asg:terminated:"),
                  "one terminate notice, id aws:asg:terminated:INSTANCE_ID")
            check(recs[0].get("SPOTWATCH_DETAIL") == "Terminated", "its detail is the lifecycle state")
            check("SPOTWATCH_DEADLINE" not in recs[0], "AWS gives no deadline with it")
            env = hook_envs(out)[1]
            left = int(env.get("SPOTWATCH_SECONDS_LEFT", "-1"))
            check(env.get("SPOTWATCH_EVENT") == "terminate" and 55 <= left <= 60,
                  f"hook: SPOTWATCH_EVENT=terminate with default_deadline (60 s) to go ({left} s left)")
            check("Metadata poll failed" not in d.stderr_text(), "no poll errors in the whole run")
            check(d.stop() == 0, "spotwatchd exits 0 on SIGTERM")
    finally:
        fake.stop()
        stop_child(sleeper)


def test_fake_metadata_words():
    # With maintenance in events the scheduled events are polled every cycle, not every 60 s.
    d = Daemon(fake_metadata="aws", daemon_keys={"poll_interval": "200ms", "aws_asg": "yes",
                                                 "events": "terminate stop hibernate preempt maintenance"})
    sleeper, pidfile, marker = spawn_sleeper(d.tmp)
    with open(d.config_path, "a") as f:
        f.write(f'[process "trainer"]\npidfile = {pidfile}\nwait = 0\n')
    try:
        with d:
            print("-- --fake-metadata=aws: maintenance and asg-terminated", flush=True)
            r = d.ctl("fake-notice", "--action", "bogus", check=False)
            check(r.returncode != 0 and "maintenance" in r.stdout + r.stderr
                  and "asg-terminated" in r.stdout + r.stderr, "an unknown word is refused with the list")
            d.ctl("fake-notice", "--action", "maintenance", "--in", "3600")
            recs = wait_until(lambda: notices(d, "maintenance"), 5, what="the maintenance notice")
            check(recs[0].get("SPOTWATCH_DETAIL") == "instance-retirement"
                  and recs[0].get("SPOTWATCH_NOTICE_ID", "").startswith("aws:maintenance:instance-event-"),
                  "an active instance-retirement event with a fresh EventId")
            check(recs[0].get("SPOTWATCH_STARTS_PLAN") == "yes", "listed in events: it starts the plan")
            wait_until(lambda: plans_done(d) >= 1, 10, what="the first maintenance plan to finish")
            d.ctl("fake-notice", "--action", "maintenance", "--in", "7200")
            recs = wait_until(lambda: len(notices(d, "maintenance")) >= 2 and notices(d, "maintenance"), 5,
                              what="the second maintenance notice")
            check(recs[0]["SPOTWATCH_NOTICE_ID"] != recs[1]["SPOTWATCH_NOTICE_ID"], "each one is a new event")
            wait_until(lambda: plans_done(d) >= 2, 10, what="the second maintenance plan to finish")
            check(count_plans(d) == 2 and usr1_count(marker) == 2, "one plan for each maintenance event")
            d.ctl("fake-notice", "--action", "asg-terminated")
            wait_until(lambda: usr1_count(marker) >= 3, 5, what="SIGUSR1 for asg-terminated")
            time.sleep(1.0)
            check(count_plans(d) == 3 and usr1_count(marker) == 3, "asg-terminated: exactly one plan")
            check(notices(d, "terminate")[0].get("SPOTWATCH_NOTICE_ID", "").startswith("aws:asg:terminated:"),
                  "its notice is aws:asg:terminated:TIME")
            check("Metadata poll failed" not in d.stderr_text(), "no poll errors")
            check(d.stop() == 0, "spotwatchd exits 0 on SIGTERM")
    finally:
        stop_child(sleeper)


if __name__ == "__main__":
    main([test_reported_events_and_verbatim_actions, test_asg_and_acted_maintenance, test_fake_metadata_words])
