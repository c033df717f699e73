#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The Azure Scheduled Events conversation, seen from an independent fake
IMDS (fake_azure.py), then the daemon's own fake end to end.

One daemon runs through the phases in order, polling every 100 ms so that
the 5-requests-per-second ceiling, not the interval, sets the pace; each
phase reads the fake's request log:

  first call   the first scheduledevents GET takes 3 s (request_timeout is
               1 s): no error, no second GET meanwhile, and the name and vmId
               lookups go on beside it
  other VM     a Preempt for another VM's name starts nothing
  reboot       a Reboot for this VM is reported only; when it leaves the
               document before its NotBefore it was cancelled
  preempt      a Preempt served on many polls: one plan, one SIGUSR1, then
               one StartRequests POST with exactly that EventId
  faults       503, garbage, mistyped JSON, a reset: retried with backoff,
               no crash; a 429 pauses every request for about a second
  whole run    "Metadata: true" and an api-version on every request, never
               more than 5 requests in any one-second window, the name and
               vmId fetched once

Then --fake-metadata=azure with spotwatchctl fake-notice --action preempt:
the hook sees SPOTWATCH_EVENT=preempt and SPOTWATCH_CLOUD=azure, and the
acknowledgement is recorded. About 30 s.
"""
import email.utils
import json
import os
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import Daemon, check, count_plans, spawn_sleeper, usr1_count, wait_until  # noqa: E402
from fake_azure import EVENTS_PATH, NAME_PATH, VM_ID_PATH, FakeAzure  # noqa: E402

FIRST_CALL_DELAY = 3.0
EVENTS_API = "2020-07-01"
COMPUTE_API = "2021-02-01"

HOOK = """#!/bin/sh
env | grep '^SPOTWATCH_' | sort > "$1.tmp"
mv "$1.tmp" "$1"
"""


def notice_records(d, event=None, notice_id=None):
    return [r for r in d.records("notice")
            if (event is None or r.get("SPOTWATCH_EVENT") == event)
            and (notice_id is None or r.get("SPOTWATCH_NOTICE_ID") == notice_id)]


def polls(fake, since=None, status=None):
    return [e for e in fake.requests("GET", EVENTS_PATH, since=since) if status is None or e["status"] == status]


def wait_polls(fake, n, since, timeout=10, what="polls"):
    """Wait for n answered scheduledevents GETs that arrived after since."""
    return wait_until(lambda: len([e for e in polls(fake, since) if e["done"]]) >= n and polls(fake, since),
                      timeout, what=what)


def run():
    fake = FakeAzure(vm_name="spotwatch-test-vm").start()
    fake.first_call_delay = FIRST_CALL_DELAY
    tmp = harness.mkdtemp()
    sleeper, pidfile, marker = spawn_sleeper(tmp)
    try:
        sections = f'[process "t"]\npidfile = {pidfile}\nwait = 0\n'
        keys = {"cloud": "azure", "metadata_url": fake.url, "azure_ack": "yes", "poll_interval": "100ms",
                "request_timeout": "1s"}
        with Daemon(sections=sections, daemon_keys=keys) as d:
            phase_first_call(fake, d)
            phase_other_vm(fake, d, marker)
            phase_reboot(fake, d, marker)
            phase_preempt(fake, d, marker)
            phase_faults(fake, d)
            phase_whole_run(fake, d)
            check(d.stop() == 0, "spotwatchd exits 0 on SIGTERM")
    finally:
        fake.stop()
        if sleeper.poll() is None:
            sleeper.send_signal(signal.SIGKILL)
        sleeper.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    phase_fake_metadata()


def phase_first_call(fake, d):
    print(f"-- the first scheduledevents call takes {FIRST_CALL_DELAY} s", flush=True)
    first = wait_until(lambda: polls(fake), 5, what="the first scheduledevents GET")[0]
    done = wait_until(lambda: polls(fake)[0]["done"], FIRST_CALL_DELAY + 5, what="the first call's answer")
    check(done - first["time"] >= FIRST_CALL_DELAY - 0.1,
          f"the first call was answered after {done - first['time']:.2f} s (request_timeout is 1 s)")
    check(polls(fake)[0]["status"] == 200, "and answered 200, not abandoned as a timeout")
    during = [e for e in polls(fake) if e["time"] < done]
    check(len(during) == 1, f"no second scheduledevents GET while the first was running (got {len(during)})")
    side = [e for e in fake.requests("GET") if e["path"] in (NAME_PATH, VM_ID_PATH) and e["time"] < done]
    check({e["path"] for e in side} == {NAME_PATH, VM_ID_PATH} and all(e["status"] == 200 for e in side),
          "the VM name and vmId lookups went on beside it")
    wait_polls(fake, 5, done, what="polling after the first call")
    check("Metadata poll failed" not in d.stderr_text(), "a slow first call is not an error")


def phase_other_vm(fake, d, marker):
    print("-- a Preempt for another VM starts nothing", flush=True)
    eid = fake.add_event("Preempt", not_before=60, resources=["some-other-vm", "spotwatch-test-vm2"])
    t = time.monotonic()
    wait_polls(fake, 6, t, what="6 polls serving the other VM's Preempt")
    check(count_plans(d) == 0, "no plan for another VM's event")
    check(not notice_records(d), "no notice record for it")
    check(usr1_count(marker) == 0, "the registered process was not signalled")
    fake.remove_event(eid)
    t = time.monotonic()
    wait_polls(fake, 2, t, what="polls after it left")
    check(not d.records("cancel"), "another VM's event leaving is not reported as cancelled")


def cancel_reported(d, notice_id):
    """The daemon's [cancel] records for a notice id."""
    return [r for r in d.records("cancel") if r.get("SPOTWATCH_NOTICE_ID") == notice_id]


def ack_records(d, notice_id):
    """The daemon's [ack] records for a notice id."""
    return [r for r in d.records("ack") if r.get("SPOTWATCH_NOTICE_ID") == notice_id]


def phase_reboot(fake, d, marker):
    print("-- a Reboot for this VM is reported only, and reported cancelled when it goes early", flush=True)
    eid = fake.add_event("Reboot", not_before=600, source="User")
    nid = f"azure:{eid}"
    recs = wait_until(lambda: notice_records(d, "maintenance", nid), 5, what="a maintenance [notice] record")
    check(recs[0].get("SPOTWATCH_CLOUD") == "azure" and recs[0].get("SPOTWATCH_DETAIL") == "Reboot",
          "the notice names the cloud and the EventType")
    check(recs[0].get("SPOTWATCH_STARTS_PLAN") == "no", "a Reboot is reported only")
    t = time.monotonic()
    wait_polls(fake, 5, t, what="5 more polls serving the Reboot")
    check(len(notice_records(d, notice_id=nid)) == 1, "reported once, whatever the number of polls")
    check(count_plans(d) == 0 and usr1_count(marker) == 0, "no plan, no signal")

    fake.remove_event(eid)
    t = time.monotonic()
    wait_polls(fake, 3, t, what="polls after the Reboot left")
    recs = wait_until(lambda: cancel_reported(d, nid), 3, what="a [cancel] record")
    check(len(recs) == 1 and recs[0].get("SPOTWATCH_EVENT") == "maintenance"
          and recs[0].get("SPOTWATCH_CLOUD") == "azure" and recs[0].get("SPOTWATCH_DETAIL") == "Reboot",
          "the Reboot that left before its NotBefore is reported cancelled, once")
    check(count_plans(d) == 0, "a cancellation starts nothing")
    check(not fake.acks, "nothing was acknowledged for a reported-only event")


def phase_preempt(fake, d, marker):
    print("-- a Preempt for this VM: one plan, one SIGUSR1, then StartRequests with its EventId", flush=True)
    eid = fake.add_event("Preempt", not_before=45)
    nid = f"azure:{eid}"
    not_before = fake.event(eid)["NotBefore"]
    wait_until(lambda: usr1_count(marker) >= 1, 5, what="SIGUSR1 to the registered process")
    post = wait_until(lambda: fake.requests("POST", EVENTS_PATH), 5, what="the StartRequests POST")[0]
    wait_until(lambda: fake.requests("POST", EVENTS_PATH)[0]["done"], 5, what="its answer")
    post = fake.requests("POST", EVENTS_PATH)[0]

    recs = notice_records(d, "preempt", nid)
    check(len(recs) == 1 and recs[0].get("SPOTWATCH_STARTS_PLAN") == "yes", "one preempt notice, starting the plan")
    check(int(recs[0].get("SPOTWATCH_DEADLINE", 0)) == int(email.utils.parsedate_to_datetime(not_before).timestamp()),
          f"its deadline is NotBefore ({not_before})")
    plan = d.records("plan-start")
    check(len(plan) == 1 and plan[0].get("SPOTWATCH_INSTANCE_ID") == fake.vm_id,
          "one plan, and it knows the vmId as the instance id")
    wait_until(lambda: d.records("plan-done"), 5, what="the plan's end")

    check(post["body"] == json.dumps({"StartRequests": [{"EventId": eid}]}, separators=(",", ":")).encode(),
          f"the POST body is exactly {{\"StartRequests\":[{{\"EventId\":\"{eid}\"}}]}} (got {post['body']!r})")
    check(post["headers"].get("metadata") == "true", "the POST carries Metadata: true")
    check(post["headers"].get("content-type") == "application/json", "and Content-Type: application/json")
    check(post["query"].get("api-version") == [EVENTS_API], f"to the same URL, api-version={EVENTS_API}")
    check(post["status"] == 200 and fake.acks == [eid], "the fake took it: the event is Started")
    acks = wait_until(lambda: ack_records(d, nid), 3, what="an [ack] record")
    check(len(acks) == 1 and acks[0].get("SPOTWATCH_ACK") == "sent" and acks[0].get("SPOTWATCH_EVENT") == "preempt",
          "the acknowledgement is recorded once, as sent")

    # Served on (now Started) for more polls: still one plan; then it ends, which is no cancellation.
    t = time.monotonic()
    wait_polls(fake, 8, t, what="8 more polls serving the Started Preempt")
    check(count_plans(d) == 1, f"exactly one plan for the EventId (got {count_plans(d)})")
    check(usr1_count(marker) == 1, f"the process got exactly one SIGUSR1 (got {usr1_count(marker)})")
    check(len(fake.requests("POST")) == 1, "exactly one StartRequests POST")
    fake.remove_event(eid)
    t = time.monotonic()
    wait_polls(fake, 3, t, what="polls after the Preempt ended")
    check(not cancel_reported(d, nid) and len(d.records("ack")) == 1,
          "an acknowledged event that ends is not reported cancelled")


def phase_faults(fake, d):
    print("-- faults: retried with backoff, no crash; a 429 pauses every request", flush=True)
    for fault in ("503", "garbage", "bad-types", "reset"):
        t = time.monotonic()
        fake.fault = fault
        wait_until(lambda: len([e for e in polls(fake, t) if e["done"]]) >= 2, 10, what=f"2 polls with {fault}")
        fake.fault = None
        t2 = time.monotonic()
        wait_until(lambda: [e for e in polls(fake, t2) if e["status"] == 200], 10, what=f"recovery after {fault}")
        check(d.proc.poll() is None, f"alive after {fault}, and polling again")
    check("Metadata poll failed" in d.stderr_text(), "the failures were logged")

    t = time.monotonic()
    fake.fault = "429-once"
    e429 = wait_until(lambda: [e for e in polls(fake, t) if e["status"] == 429], 5, what="a 429")[0]
    nxt = wait_until(lambda: [e for e in fake.requests(since=e429["time"] + 1e-6)], 5, what="the next request")[0]
    check(nxt["time"] - e429["done"] >= 0.9,
          f"after a 429 the next request of any kind waits about a second ({nxt['time'] - e429['done']:.2f} s)")


def phase_whole_run(fake, d):
    print("-- over the whole run", flush=True)
    log = fake.requests()
    check(all(e["headers"].get("metadata") == "true" for e in log), f"Metadata: true on all {len(log)} requests")
    check(all(e["query"].get("api-version") for e in log), "an api-version on every request")
    check(all(e["query"]["api-version"] == [EVENTS_API] for e in log if e["path"] == EVENTS_PATH),
          f"scheduledevents with api-version={EVENTS_API}")
    leafs = [e for e in log if e["path"] in (NAME_PATH, VM_ID_PATH)]
    check(all(e["query"].get("api-version") == [COMPUTE_API] and e["query"].get("format") == ["text"]
              for e in leafs), f"compute/name and compute/vmId with api-version={COMPUTE_API}&format=text")
    check(len([e for e in log if e["path"] == NAME_PATH]) == 1, "the VM name was fetched exactly once")
    check(len([e for e in log if e["path"] == VM_ID_PATH]) == 1, "the vmId was fetched exactly once")
    check(not [e for e in log if "x-forwarded-for" in e["headers"]], "no proxy header")
    worst = fake.max_in_window(1.0, log)
    check(worst <= 5, f"never more than 5 requests in any one-second window over {len(log)} requests "
          f"(at most {worst})")
    check(not [e for e in log if e["status"] == 429 and e["path"] != EVENTS_PATH]
          and len([e for e in log if e["status"] == 429]) == 1, "the only 429 was the injected one")
    duration = log[-1]["time"] - log[0]["time"]
    check(len(polls(fake)) >= 2.5 * duration, f"still about 4 polls a second at poll_interval 100ms "
          f"({len(polls(fake))} in {duration:.1f} s)")


def get(url, headers):
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def phase_fake_metadata():
    print("-- --fake-metadata=azure end to end", flush=True)
    d = Daemon(fake_metadata="azure", daemon_keys={"cloud": "azure", "azure_ack": "yes", "poll_interval": "1s"})
    hook = os.path.join(d.tmp, "hook.sh")
    out = os.path.join(d.tmp, "hook.env")
    with open(hook, "w") as f:
        f.write(HOOK)
    os.chmod(hook, 0o755)
    with open(d.config_path, "a") as f:
        f.write(f'\n[hook "record"]\nexec = {hook} {out}\ntimeout = 5s\n')
    with d:
        base = d.fake_url
        # The daemon's fake keeps IMDS's rules. It also answers 429 above 5 requests a second, and the
        # daemon polls it too: let the daemon's start-up lookups pass, then go slowly.
        time.sleep(1.0)
        url = f"{base}{EVENTS_PATH}?api-version={EVENTS_API}"
        for path, headers, what, needle in (
                (url, {}, "without Metadata: true", "metadata header"),
                (url, {"Metadata": "true", "X-Forwarded-For": "10.0.0.1"}, "through a proxy", "proxy"),
                (f"{base}{EVENTS_PATH}", {"Metadata": "true"}, "without an api-version", "api-version"),
                (f"{base}{NAME_PATH}?api-version={COMPUTE_API}", {"Metadata": "true"}, "for a leaf without "
                 "format=text", "text")):
            status, body = get(path, headers)
            check(status == 400 and needle in json.loads(body)["error"],
                  f"the daemon's fake answers 400 {what} (got {status} {body[:80]!r})")
            time.sleep(0.5)
        status, body = get(url, {"Metadata": "true"})
        doc = json.loads(body)
        check(status == 200 and doc["Events"] == [] and isinstance(doc["DocumentIncarnation"], int),
              "and a document with no events")

        bad = d.ctl("fake-notice", "--action", "stop", check=False)
        check(bad.returncode != 0 and "preempt, terminate, reboot, redeploy, freeze" in bad.stdout + bad.stderr,
              "fake-notice names Azure's events when given another")
        d.ctl("fake-notice", "--action", "preempt", "--in", "60")
        wait_until(lambda: os.path.exists(out), 10, what="the hook's output")
        with open(out) as f:
            env = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
        check(env.get("SPOTWATCH_EVENT") == "preempt", "hook got SPOTWATCH_EVENT=preempt")
        check(env.get("SPOTWATCH_CLOUD") == "azure", "hook got SPOTWATCH_CLOUD=azure")
        check(env.get("SPOTWATCH_INSTANCE_ID") == "5c0f2a57-7e3d-4c1e-9a3b-0fa4e5d6c7b8",
              "hook got the fake's vmId as SPOTWATCH_INSTANCE_ID")
        notice = notice_records(d, "preempt")
        check(len(notice) == 1 and notice[0].get("SPOTWATCH_NOTICE_ID", "").startswith("azure:"),
              "one preempt notice with an azure:EVENTID id")
        wait_until(lambda: d.records("plan-done"), 10, what="the plan's end")
        acks = wait_until(lambda: ack_records(d, notice[0]["SPOTWATCH_NOTICE_ID"]), 5, what="an [ack] record")
        check(acks[0].get("SPOTWATCH_ACK") == "sent", "the daemon's fake took the StartRequests")
        # After it the fake serves the event as Started; it is still the same notice.
        time.sleep(2.5)
        check(count_plans(d) == 1, "exactly one plan")
        check(not d.records("cancel"), "and nothing reported cancelled")
        check(d.stop() == 0, "spotwatchd exits 0 on SIGTERM")


if __name__ == "__main__":
    harness.main([run])
