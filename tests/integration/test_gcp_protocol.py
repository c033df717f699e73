#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The GCP metadata conversation, seen from an independent fake metadata
server (fake_gcp.py): "Metadata-Flavor: Google" on every request, a plain
GET first on each watched path, then hanging GETs carrying the ETag of the
previous answer, re-armed at once after a timeout but never in a tight
loop, a change made during an outage delivered by the ETag mismatch and
starting exactly one plan, retries after 503/429/reset never within 100 ms,
one plan while preempted stays TRUE, a new plan for FALSE -> TRUE again,
maintenance-event reported only (or starting the plan when listed in
events), a VM already preempted at start-up, and the daemon's own fake
(--fake-metadata=gcp) end to end with spotwatchctl fake-notice.

The daemons run with gcp_wait = 2s (timeout_sec=2) and poll_interval =
200ms, so the retry backoff is 200, 400, 800 ms... (daemon/provider-gcp.h).
About 35 s in all.
"""
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
from fake_gcp import INSTANCE_ID, MAINTENANCE, PREEMPTED, PREFIX, FakeGcp  # noqa: E402

WAIT = 2          # gcp_wait, seconds
WATCHED = (PREEMPTED, MAINTENANCE)


def notice_records(d, event=None):
    return [r for r in d.records("notice") if event is None or r.get("SPOTWATCH_EVENT") == event]


def gcp_keys(fake, **extra):
    keys = {"cloud": "gcp", "metadata_url": fake.url, "gcp_wait": f"{WAIT}s", "poll_interval": "200ms"}
    keys.update(extra)
    return keys


def timeouts(fake, path, since=None):
    """Hanging GETs on path that waited and were answered 200 (their timeout, or a change)."""
    return [e for e in fake.requests(path=path, since=since) if e["held"] and e["status"] == 200]


def fmt_gaps(gaps):
    return ", ".join(f"{g * 1000:.0f}" for g in gaps) + " ms"


# -- daemon A: one long conversation -------------------------------------------

def run_conversation():
    fake = FakeGcp().start()
    tmp = harness.mkdtemp()
    sleeper, pidfile, marker = spawn_sleeper(tmp)
    try:
        sections = f'[process "t"]\npidfile = {pidfile}\nwait = 0\n'
        with Daemon(sections=sections, daemon_keys=gcp_keys(fake)) as d:
            phase_first_and_rearm(fake, d)
            phase_maintenance_report(fake, d, marker)
            phase_outage(fake, d, marker)
            phase_stays_true(fake, d, marker)
            phase_faults(fake, d, marker)
            phase_preempted_again(fake, d, marker)
            phase_whole_run(fake, d)
            check(d.stop() == 0, "spotwatchd exits 0 on SIGTERM")
    finally:
        fake.stop()
        if sleeper.poll() is None:
            sleeper.send_signal(signal.SIGKILL)
        sleeper.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def phase_first_and_rearm(fake, d):
    print(f"-- plain GET first, then hanging GETs re-armed after each {WAIT} s timeout", flush=True)
    wait_until(lambda: all(len(timeouts(fake, p)) >= 3 for p in WATCHED), 4 * WAIT + 5,
               what="3 timed-out hanging GETs on each watched path")
    for path in WATCHED:
        reqs = fake.requests(path=path)
        first = reqs[0]
        check("wait_for_change" not in first["query"] and not first["query"],
              f"{path}: the first request is a plain GET ({first['query']})")
        check(first["status"] == 200 and first["etag"], f"{path}: answered with an ETag")
        later = [e for e in reqs[1:]]
        check(all(e["query"].get("wait_for_change") == "true" and e["query"].get("timeout_sec") == str(WAIT)
                  for e in later),
              f"{path}: every later request is ?wait_for_change=true&timeout_sec={WAIT} ({len(later)})")
        check(all(e["query"].get("last_etag") == p["etag"] for p, e in zip(reqs, reqs[1:])),
              f"{path}: every hanging GET carries last_etag = the ETag of the previous answer")
        held = [e for e in reqs if e["held"] and e["status"] == 200]
        waits = [e["answered"] - e["time"] for e in held]
        check(all(WAIT - 0.1 <= w <= WAIT + 0.5 for w in waits),
              f"{path}: each hanging GET was held for its {WAIT} s timeout ({fmt_gaps(waits)})")
        # Re-arm: the next request follows each timeout answer at once.
        gaps = [n["time"] - p["answered"] for p, n in zip(reqs, reqs[1:]) if p["answered"]]
        check(all(g < 0.2 for g in gaps), f"{path}: re-armed promptly after each answer ({fmt_gaps(gaps)})")
        # No tight loop: one request per timeout, plus the first GET and the one in flight.
        span = reqs[-1]["time"] - reqs[0]["time"]
        check(len(reqs) <= span / WAIT + 2.5,
              f"{path}: {len(reqs)} requests in {span:.1f} s, no more than one per {WAIT} s timeout")
    check(len(fake.requests(path=INSTANCE_ID)) == 1, "instance/id fetched once")
    check(count_plans(d) == 0 and not notice_records(d), "no notice while preempted = FALSE, maintenance NONE")


def phase_maintenance_report(fake, d, marker):
    print("-- maintenance-event TERMINATE / MIGRATE is reported only; NONE clears it", flush=True)
    fake.set_value(MAINTENANCE, "TERMINATE_ON_HOST_MAINTENANCE")
    recs = wait_until(lambda: notice_records(d, "maintenance"), 5, what="a maintenance [notice] record")
    r = recs[0]
    check(r.get("SPOTWATCH_CLOUD") == "gcp" and r.get("SPOTWATCH_DETAIL") == "TERMINATE_ON_HOST_MAINTENANCE",
          f"reported as maintenance (TERMINATE_ON_HOST_MAINTENANCE) from gcp: {r.get('MESSAGE')}")
    check(r.get("SPOTWATCH_STARTS_PLAN") == "no", "it starts no plan (maintenance is not in events)")
    check(r.get("SPOTWATCH_NOTICE_ID", "").startswith("gcp:maintenance-event:TERMINATE_ON_HOST_MAINTENANCE:"),
          f"its id names the value ({r.get('SPOTWATCH_NOTICE_ID')})")
    # Served again after a timeout: still one record.
    t = time.monotonic()
    wait_until(lambda: [e for e in timeouts(fake, MAINTENANCE, since=t) if e["value"].startswith("TERMINATE")],
               WAIT + 3, what="the value served again after a timeout")
    check(len(notice_records(d, "maintenance")) == 1, "the same maintenance event is reported once")

    fake.set_value(MAINTENANCE, "MIGRATE_ON_HOST_MAINTENANCE")
    recs = wait_until(lambda: [r for r in notice_records(d, "maintenance")
                               if r.get("SPOTWATCH_DETAIL") == "MIGRATE_ON_HOST_MAINTENANCE"], 5,
                      what="a MIGRATE [notice] record")
    check(recs[0].get("SPOTWATCH_STARTS_PLAN") == "no", "MIGRATE_ON_HOST_MAINTENANCE is reported only")
    fake.set_value(MAINTENANCE, "NONE")
    wait_until(lambda: [e for e in fake.requests(path=MAINTENANCE) if e["value"] == "NONE" and e["status"] == 200
                        and e["etag"] == fake.etag(MAINTENANCE)], 5, what="NONE served")
    fake.set_value(MAINTENANCE, "TERMINATE_ON_HOST_MAINTENANCE")
    wait_until(lambda: len([r for r in notice_records(d, "maintenance")
                            if r.get("SPOTWATCH_DETAIL") == "TERMINATE_ON_HOST_MAINTENANCE"]) == 2, 5,
               what="a second TERMINATE record after NONE")
    ids = [r.get("SPOTWATCH_NOTICE_ID") for r in notice_records(d, "maintenance")]
    check(len(set(ids)) == len(ids) == 3, f"after NONE the next maintenance event is a new notice ({ids})")
    fake.set_value(MAINTENANCE, "NONE")
    check(count_plans(d) == 0 and usr1_count(marker) == 0, "no plan and no SIGUSR1 for maintenance events")


def phase_outage(fake, d, marker):
    print("-- preempted flips to TRUE during an outage; the ETag mismatch delivers it afterwards", flush=True)
    before = fake.etag(PREEMPTED)
    t_down = time.monotonic()
    fake.outage(2.0, during=lambda: fake.set_value(PREEMPTED, "TRUE"))
    t_up = time.monotonic()
    wait_until(lambda: usr1_count(marker) >= 1, 10, what="SIGUSR1 after the outage")
    after = [e for e in fake.requests(path=PREEMPTED, since=t_up)]
    first = after[0]
    check(first["query"].get("last_etag") == before,
          "the first request after the outage carries the ETag from before it")
    check(first["status"] == 200 and first["value"] == "TRUE" and not first["held"]
          and first["answered"] - first["time"] < 0.1,
          "and is answered at once with TRUE (the ETag differs)")
    print(f"   outage {t_up - t_down:.1f} s; first request {first['time'] - t_up:.2f} s after it, "
          f"SIGUSR1 delivered", flush=True)
    wait_until(lambda: d.records("plan-done"), 5, what="the plan to finish")
    check(count_plans(d) == 1, f"exactly one plan ({count_plans(d)})")
    check(usr1_count(marker) == 1, "the process got exactly one SIGUSR1")
    rec = notice_records(d, "preempt")[0]
    check(rec.get("SPOTWATCH_CLOUD") == "gcp"
          and rec.get("SPOTWATCH_NOTICE_ID") == "gcp:preempted:" + fake.etag(PREEMPTED),
          f"the notice is preempt from gcp, id gcp:preempted:ETAG ({rec.get('SPOTWATCH_NOTICE_ID')})")
    deadline = int(rec.get("SPOTWATCH_DEADLINE", "0"))
    check(abs(deadline - (time.time() + 30)) <= 5, f"deadline = detection + 30 s ({deadline})")
    plan = d.records("plan-start")[0]
    check(plan.get("SPOTWATCH_INSTANCE_ID") == fake.value(INSTANCE_ID), "the plan knows the instance id")
    check("Metadata poll failed: instance/" in d.stderr_text(), "the outage was logged as a poll failure")


def phase_stays_true(fake, d, marker):
    print("-- preempted stays TRUE over several re-arms: no second plan", flush=True)
    t = time.monotonic()
    wait_until(lambda: len([e for e in timeouts(fake, PREEMPTED, since=t) if e["value"] == "TRUE"]) >= 2,
               3 * WAIT + 3, what="2 timed-out hanging GETs serving TRUE")
    served = [e for e in fake.requests(path=PREEMPTED) if e["value"] == "TRUE"]
    check(len(served) >= 3, f"TRUE served {len(served)} times")
    check(count_plans(d) == 1 and usr1_count(marker) == 1, "still one plan and one SIGUSR1")
    check(len(notice_records(d, "preempt")) == 1, "and one preempt notice record")


def curl_retry(p, n):
    """n is libcurl's own immediate retry of p: a request on a kept-alive connection
    that died without an answer is sent again at once on a new connection
    (RFC 9112 9.3.1.1); the watcher's backoff applies to what fails after it."""
    return p["status"] in ("reset", "dropped") and n["client_port"] != p["client_port"] \
        and n["time"] - p["time"] < 0.1


def phase_faults(fake, d, marker):
    print("-- 503, 503, 429, reset, reset: retried with backoff, never within 100 ms, ETag kept", flush=True)
    good = fake.etag(PREEMPTED)
    t = time.monotonic()
    fake.set_faults(["503", "503", "429", "reset", "reset"], paths=[PREEMPTED])
    # The faults begin after the hanging GET in flight (up to 2 s); the backoff adds 0.2 + ... + 3.2 s.
    wait_until(lambda: [e for e in fake.requests(path=PREEMPTED, since=t) if e["status"] == 200], WAIT + 12,
               what="an answer after the faults")
    reqs = fake.requests(path=PREEMPTED, since=t)
    statuses = [e["status"] for e in reqs]
    i = statuses.index(503)
    seq = reqs[i:i + 6]
    check([e["status"] for e in seq] == [503, 503, 429, "reset", "reset", 200], f"the faults, then 200: {statuses}")
    pairs = list(zip(seq, seq[1:]))
    ours = [n["time"] - p["time"] for p, n in pairs if not curl_retry(p, n)]
    n_curl = len(pairs) - len(ours)
    check(n_curl <= 1, f"at most one immediate retry by libcurl on a new connection ({n_curl})")
    check(all(g >= 0.1 for g in ours), f"the watcher's own retries: never within 100 ms ({fmt_gaps(ours)})")
    check(ours == sorted(ours) and ours[0] < ours[-1], f"and they back off ({fmt_gaps(ours)})")
    check(all(e["query"].get("last_etag") == good for e in seq), "every retry carries the last good ETag")
    check(seq[-1]["value"] == "TRUE", "TRUE served again after the faults")
    text = d.stderr_text()
    check("instance/preempted: HTTP 503" in text, "the 503 is logged with what and detail")
    check(count_plans(d) == 1 and usr1_count(marker) == 1, "no second plan after the faults")


def phase_preempted_again(fake, d, marker):
    print("-- FALSE, then TRUE again: a new notice and a new plan", flush=True)
    fake.set_value(PREEMPTED, "FALSE")
    wait_until(lambda: [e for e in fake.requests(path=PREEMPTED) if e["value"] == "FALSE"
                        and e["etag"] == fake.etag(PREEMPTED)], 5, what="FALSE served")
    fake.set_value(PREEMPTED, "TRUE")
    wait_until(lambda: usr1_count(marker) >= 2, 5, what="the second SIGUSR1")
    ids = [r.get("SPOTWATCH_NOTICE_ID") for r in notice_records(d, "preempt")]
    check(len(ids) == 2 and ids[0] != ids[1], f"two preempt notices with distinct ids ({ids})")
    wait_until(lambda: len(d.records("plan-done")) >= 2, 5, what="the second plan to finish")
    check(count_plans(d) == 2 and usr1_count(marker) == 2, "two plans, two SIGUSR1")


def phase_whole_run(fake, d):
    print("-- over the whole run", flush=True)
    log = fake.requests()
    check(all(e["headers"].get("metadata-flavor") == "Google" for e in log),
          f"Metadata-Flavor: Google on every one of {len(log)} requests")
    check(not [e for e in log if e["status"] == 403], "no request was refused")
    check(all("x-forwarded-for" not in e["headers"] for e in log), "no X-Forwarded-For")
    check(len([e for e in log if e["path"] == INSTANCE_ID]) == 1, "instance/id fetched exactly once")
    for path in WATCHED:
        reqs = [e for e in log if e["path"] == path]
        last_good = None
        ok = True
        for e in reqs:
            if last_good is not None and e["query"].get("last_etag") != last_good:
                ok = False
            if e["status"] == 200:
                last_good = e["etag"]
        check(ok, f"{path}: all {len(reqs)} requests carry the ETag of the last good answer")
        after_fail = [n["time"] - p["time"] for p, n in zip(reqs, reqs[1:])
                      if p["status"] != 200 and not curl_retry(p, n)]
        check(all(g >= 0.1 for g in after_fail),
              f"{path}: no retry within 100 ms of a failure ({fmt_gaps(after_fail)}; libcurl's own aside)")
        # A tight loop would be hanging GETs answered at once with nothing new.
        fast = [n for p, n in zip(reqs, reqs[1:]) if p["status"] == 200 and n["status"] == 200
                and n["etag"] == p["etag"] and n["answered"] - n["time"] < 0.1]
        check(not fast, f"{path}: no unchanged answer came back at once ({len(fast)})")


# -- daemon B: already preempted at start-up, and maintenance in events ---------

def run_preempted_at_start():
    print("-- preempted already TRUE at start-up: the plan starts at once", flush=True)
    fake = FakeGcp()
    fake.set_value(PREEMPTED, "TRUE")
    fake.start()
    tmp = harness.mkdtemp()
    sleeper, pidfile, marker = spawn_sleeper(tmp)
    try:
        sections = f'[process "t"]\npidfile = {pidfile}\nwait = 0\n'
        t0 = time.monotonic()
        with Daemon(sections=sections,
                    daemon_keys=gcp_keys(fake, events="terminate stop hibernate preempt maintenance")) as d:
            wait_until(lambda: usr1_count(marker) >= 1, 5, what="SIGUSR1")
            dt = time.monotonic() - t0
            first = fake.requests(path=PREEMPTED)[0]
            check(not first["query"] and first["value"] == "TRUE", "the first GET (plain) sees TRUE")
            check(dt < 3.0, f"SIGUSR1 {dt:.2f} s after the daemon was started")
            plan = wait_until(lambda: d.records("plan-start"), 2, what="plan-start")[0]
            check(plan.get("SPOTWATCH_EVENT") == "preempt"
                  and plan.get("SPOTWATCH_INSTANCE_ID") == fake.value(INSTANCE_ID),
                  "a preempt plan, with the instance id fetched before the first notice")
            wait_until(lambda: d.records("plan-done"), 5, what="plan-done")

            print("-- with maintenance in events, TERMINATE_ON_HOST_MAINTENANCE starts the plan", flush=True)
            fake.set_value(MAINTENANCE, "TERMINATE_ON_HOST_MAINTENANCE")
            wait_until(lambda: usr1_count(marker) >= 2, 5, what="SIGUSR1 for the maintenance event")
            rec = notice_records(d, "maintenance")[0]
            check(rec.get("SPOTWATCH_STARTS_PLAN") == "yes", "the maintenance notice starts the plan")
            wait_until(lambda: len(d.records("plan-done")) >= 2, 5, what="the second plan to finish")
            check(count_plans(d) == 2 and usr1_count(marker) == 2, "two plans in all")
            check(d.stop() == 0, "spotwatchd exits 0 on SIGTERM")
    finally:
        fake.stop()
        if sleeper.poll() is None:
            sleeper.send_signal(signal.SIGKILL)
        sleeper.wait()
        shutil.rmtree(tmp, ignore_errors=True)


# -- daemon C: --fake-metadata=gcp end to end -------------------------------------

HOOK = """#!/bin/sh
env | grep '^SPOTWATCH_' | sort > "$1.tmp"
mv "$1.tmp" "$1"
"""


def http_get(url, headers=None, timeout=5.0):
    req = urllib.request.Request(url, headers=headers or {})
    t = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(), dict(r.headers), time.monotonic() - t
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace"), dict(e.headers), time.monotonic() - t


def run_fake_metadata():
    print("-- --fake-metadata=gcp: the daemon's own fake, spotwatchctl fake-notice --action preempt", flush=True)
    d = Daemon(fake_metadata="gcp")
    tmp = d.tmp
    sleeper, pidfile, marker = spawn_sleeper(tmp)
    hook = os.path.join(tmp, "hook.sh")
    with open(hook, "w") as f:
        f.write(HOOK)
    os.chmod(hook, 0o755)
    out = os.path.join(tmp, "hook.env")
    with open(d.config_path, "a") as f:
        f.write(f'\n[process "t"]\npidfile = {pidfile}\nwait = 0\n'
                f'\n[hook "record"]\nexec = {hook} {out}\ntimeout = 5s\n')
    try:
        with d:
            base = d.fake_url + PREFIX
            g = {"Metadata-Flavor": "Google"}
            st, body, hdrs, _ = http_get(base + PREEMPTED)
            check(st == 403, f"the fake refuses a request without Metadata-Flavor (HTTP {st})")
            st, body, hdrs, _ = http_get(base + PREEMPTED, {**g, "X-Forwarded-For": "10.0.0.1"})
            check(st == 403, f"and one with X-Forwarded-For (HTTP {st})")
            st, body, hdrs, _ = http_get(base + PREEMPTED, g)
            etag = hdrs.get("ETag")
            check(st == 200 and body == "FALSE" and etag and hdrs.get("Metadata-Flavor") == "Google",
                  f"preempted = FALSE with an ETag and Metadata-Flavor: Google ({etag})")
            st, body, hdrs, dt = http_get(base + PREEMPTED + "?wait_for_change=true&last_etag=x&timeout_sec=5", g)
            check(st == 200 and dt < 1.0, f"a stale last_etag is answered at once ({dt * 1000:.0f} ms)")
            st, body, hdrs, dt = http_get(base + PREEMPTED
                                          + f"?wait_for_change=true&last_etag={etag}&timeout_sec=1", g)
            check(st == 200 and body == "FALSE" and hdrs.get("ETag") == etag and 0.9 <= dt < 3,
                  f"the current ETag is held for timeout_sec=1 ({dt:.2f} s), same value and ETag")
            st, body, hdrs, _ = http_get(base + "instance/attributes/shutdown-script", g)
            check(st == 404, "no shutdown-script attribute unless set")
            st, body, hdrs, _ = http_get(base + INSTANCE_ID, g)
            check(st == 200 and body.isdigit(), f"instance/id {body}")

            r = d.ctl("fake-notice", "--action", "terminate", check=False)
            check(r.returncode != 0 and "preempt, maintenance, migrate" in (r.stdout + r.stderr),
                  "fake-notice --action terminate is refused with GCP's event words")
            t0 = time.monotonic()
            d.ctl("fake-notice", "--action", "preempt")
            wait_until(lambda: usr1_count(marker) >= 1, 5, what="SIGUSR1")
            print(f"   fake-notice -> SIGUSR1 in {(time.monotonic() - t0) * 1000:.0f} ms", flush=True)
            wait_until(lambda: os.path.exists(out), 5, what="the hook's output")
            with open(out) as f:
                env = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
            check(env.get("SPOTWATCH_EVENT") == "preempt", "hook got SPOTWATCH_EVENT=preempt")
            check(env.get("SPOTWATCH_CLOUD") == "gcp", "hook got SPOTWATCH_CLOUD=gcp")
            check(env.get("SPOTWATCH_INSTANCE_ID", "").isdigit(), "hook got the fake's SPOTWATCH_INSTANCE_ID")
            left = int(env.get("SPOTWATCH_SECONDS_LEFT", "-1"))
            check(25 <= left <= 30, f"SPOTWATCH_SECONDS_LEFT={left}: GCP's 30 s")
            st, body, hdrs, _ = http_get(base + PREEMPTED, g)
            check(body == "TRUE" and hdrs.get("ETag") != etag, "the fake now serves TRUE with a new ETag")
            wait_until(lambda: d.records("plan-done"), 5, what="plan-done")
            time.sleep(0.5)
            check(count_plans(d) == 1 and usr1_count(marker) == 1, "exactly one plan")
            # Stopping closes the fake with the daemon's hanging GETs still parked in it.
            check(d.stop() == 0, "spotwatchd exits 0 on SIGTERM with hanging GETs parked")
    finally:
        if sleeper.poll() is None:
            sleeper.send_signal(signal.SIGKILL)
        sleeper.wait()


if __name__ == "__main__":
    harness.main([run_conversation, run_preempted_at_start, run_fake_metadata])
