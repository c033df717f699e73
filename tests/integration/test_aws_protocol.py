#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The AWS IMDSv2 conversation, seen from an independent fake metadata
service (fake_imds.py): a token on every GET, exactly one token PUT per TTL,
one PUT and one retry after a 401, one keep-alive connection for all polls
(each cycle GETs spot/instance-action; with the default [daemon] events the
rebalance recommendation at most every 5 s and the scheduled maintenance
events at most every 60 s, both in the first cycle, always in that order;
the Auto Scaling state only with aws_asg = yes, which is off here), one plan
for a notice served on 20 polls, rebalance reported without a plan on every
poll that serves it, the instance id fetched once.

One daemon runs through the phases in order (about 30 s); each phase reads
the fake's request log.

The token rule under test (daemon/provider-aws.h): a token is fetched again
when less than max(TTL / 10, 2 poll intervals) of it remains. The fake
grants 3 s and the daemon polls every 200 ms, so a PUT follows the previous
one after 2.6-2.8 s: PUTs at about 0, 2.6 and 5.2 s, the 4th not before
7.8 s, hence exactly 3 PUTs in the first 7 s, and never a gap of 3 s or more
(which would let the token expire).
"""
import os
import shutil
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import Daemon, check, count_plans, spawn_sleeper, usr1_count, wait_until  # noqa: E402
from fake_imds import (ACTION_PATH, ASG_PATH, INSTANCE_ID_PATH, MAINTENANCE_PATH, REBALANCE_PATH,  # noqa: E402
                       TOKEN_PATH, FakeImds, rfc3339)

TTL = 3
POLL = 0.2
REBALANCE_EVERY = 5.0    # daemon/provider-aws.h: AWS_REBALANCE_INTERVAL_USEC
MAINTENANCE_EVERY = 60.0  # AWS_MAINTENANCE_INTERVAL_USEC
SLACK = 0.2               # request arrival against cycle start




def notice_records(d, event):
    return [r for r in d.records("notice") if r.get("SPOTWATCH_EVENT") == event]


def run():
    fake = FakeImds(max_ttl=TTL).start()
    tmp = harness.mkdtemp()
    sleeper, pidfile, marker = spawn_sleeper(tmp)
    try:
        sections = f'[process "t"]\npidfile = {pidfile}\nwait = 0\n'
        with Daemon(sections=sections, daemon_keys={"metadata_url": fake.url, "poll_interval": "200ms",
                                                   "cloud": "aws", "request_timeout": "2s"}) as d:
            phase_token_ttl(fake, d)
            phase_401_once(fake, d)
            phase_rebalance(fake, d, marker)
            phase_notice(fake, d, marker)
            phase_whole_run(fake)
            check(d.stop() == 0, "spotwatchd exits 0 on SIGTERM")
    finally:
        fake.stop()
        if sleeper.poll() is None:
            sleeper.send_signal(signal.SIGKILL)
        sleeper.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def phase_token_ttl(fake, d):
    print(f"-- token PUTs with a granted TTL of {TTL} s, polling every {POLL} s", flush=True)
    first = wait_until(lambda: fake.requests("PUT", TOKEN_PATH), 5, what="first token PUT")[0]
    t0 = first["time"]
    wait_until(lambda: fake.requests("GET", ACTION_PATH, since=t0 + 7.3), 10, what="7 s of polling")

    window = [e for e in fake.requests(since=t0) if e["time"] < t0 + 7.0]
    puts = [e for e in window if e["method"] == "PUT"]
    check(all(e["status"] == 200 for e in puts), "every token PUT succeeded")
    check(all(e["headers"].get("x-aws-ec2-metadata-token-ttl-seconds", "").isdigit() for e in puts),
          "every token PUT asks for a TTL")
    check(len(puts) == 3, f"exactly 3 token PUTs in 7 s with a {TTL} s TTL (got {len(puts)} at "
          + ", ".join(f"{e['time'] - t0:.2f}" for e in puts) + ")")
    gaps = [b["time"] - a["time"] for a, b in zip(puts, puts[1:])]
    check(all(TTL - 2 * POLL - 0.3 <= g < TTL for g in gaps),
          "a new token comes 2.4-3.0 s after the last, before it expires (gaps "
          + ", ".join(f"{g:.2f}" for g in gaps) + ")")

    gets = [e for e in window if e["method"] == "GET"]
    check(all(e["token"] and e["token_ok"] for e in gets),
          f"all {len(gets)} GETs carry a valid token")
    check(not [e for e in window if e["status"] == 401], "no 401 while the token is refreshed in time")
    polls = [e for e in gets if e["path"] == ACTION_PATH]
    check(len(polls) >= 25, f"spot/instance-action polled about every 200 ms ({len(polls)} in 7 s)")
    rebalance = [e["time"] - t0 for e in gets if e["path"] == REBALANCE_PATH]
    check(len(rebalance) == 2 and REBALANCE_EVERY - SLACK <= rebalance[1] - rebalance[0] < REBALANCE_EVERY + 1.0,
          "the rebalance recommendation is polled in the first cycle, then every 5 s (at "
          + ", ".join(f"{t:.2f}" for t in rebalance) + ")")
    maintenance = [e for e in gets if e["path"] == MAINTENANCE_PATH]
    check(len(maintenance) == 1, f"the scheduled events are polled once in 7 s, in the first cycle "
          f"(got {len(maintenance)})")
    seq = [e["path"] for e in gets if e["path"] in (ACTION_PATH, REBALANCE_PATH, MAINTENANCE_PATH)]
    cycles = []
    for path in seq:
        if path == ACTION_PATH or not cycles:
            cycles.append([])
        cycles[-1].append(path)
    check(cycles[0] == [ACTION_PATH, REBALANCE_PATH, MAINTENANCE_PATH],
          "the first cycle GETs instance-action, rebalance, scheduled events, one after the other")
    orders = ([ACTION_PATH], [ACTION_PATH, REBALANCE_PATH], [ACTION_PATH, MAINTENANCE_PATH],
              [ACTION_PATH, REBALANCE_PATH, MAINTENANCE_PATH])
    check(all(c in orders for c in cycles), "every cycle starts with instance-action and keeps that order")
    ports = {e["client_port"] for e in fake.requests()}
    check(len(polls) >= 10 and len(ports) == 1,
          f"one TCP connection serves {len(polls)} polls and their token PUTs (ports {sorted(ports)})")


def phase_401_once(fake, d):
    print("-- a 401 on a GET with a valid token: one new token, one retry", flush=True)
    puts_before = len(fake.requests("PUT"))
    fake.fault = "401-once"
    e401 = wait_until(lambda: [e for e in fake.requests("GET", ACTION_PATH) if e["status"] == 401], 5,
                      what="the 401")[0]
    wait_until(lambda: len([e for e in fake.requests("GET", ACTION_PATH, since=e401["time"])
                            if e["status"] == 404]) >= 3, 5, what="polls after the 401")
    after = [e for e in fake.requests(since=e401["time"]) if e["status"] != 401]
    check(after[0]["method"] == "PUT" and after[0]["status"] == 200, "the 401 is followed by a token PUT")
    check(after[1]["method"] == "GET" and after[1]["path"] == ACTION_PATH and after[1]["status"] == 404,
          "then the same GET is retried and answered")
    check(after[1]["token"] == fake.tokens_granted[-1][0] != e401["token"], "the retry carries the new token")
    check(len([e for e in fake.requests("PUT") if e["time"] < e401["time"] + 1.0]) == puts_before + 1,
          "exactly one extra PUT for the 401")
    check(len([e for e in fake.requests() if e["status"] == 401]) == 1, "only one 401 in all")
    check("Metadata poll failed" not in d.stderr_text() and "instance-action" not in d.stderr_text(),
          "a 401 fixed by the retry is no error")


def phase_rebalance(fake, d, marker):
    print("-- a rebalance recommendation is reported and starts no plan", flush=True)
    fake.rebalance = rfc3339()
    # Not in [daemon] events: it is polled every 5 s, so it may take that long to be seen.
    recs = wait_until(lambda: notice_records(d, "rebalance"), REBALANCE_EVERY + 3,
                      what="a rebalance [notice] record")
    check(recs[0].get("SPOTWATCH_CLOUD") == "aws", "the rebalance notice names the cloud")
    check(recs[0].get("SPOTWATCH_NOTICE_ID", "").startswith("aws:rebalance:"),
          "its id is aws:rebalance:TIME")
    # More polls serve it (the first of these is the one that was reported).
    since = fake.requests(path=REBALANCE_PATH)[-1]["time"]

    def served():
        return [e for e in fake.requests("GET", REBALANCE_PATH, since=since) if e["status"] == 200]

    wait_until(lambda: len(served()) >= 3, 2 * REBALANCE_EVERY + 3, what="2 more polls serving the rebalance")
    served = served()
    gaps = [b["time"] - a["time"] for a, b in zip(served, served[1:])]
    check(all(REBALANCE_EVERY - SLACK <= g for g in gaps),
          "the rebalance recommendation is polled at most every 5 s (gaps "
          + ", ".join(f"{g:.2f}" for g in gaps) + ")")
    check(len(notice_records(d, "rebalance")) == 1, "it is reported once while it stays")
    check(count_plans(d) == 0, "no plan for a rebalance recommendation")
    check(usr1_count(marker) == 0, "the registered process was not signalled")
    fake.rebalance = None


def phase_notice(fake, d, marker):
    print("-- a terminate notice served on 20 polls starts exactly one plan", flush=True)
    fake.notice = ("terminate", rfc3339(120))
    wait_until(lambda: len([e for e in fake.requests("GET", ACTION_PATH) if e["status"] == 200]) >= 20, 10,
               what="20 polls serving the notice")
    wait_until(lambda: usr1_count(marker) >= 1, 5, what="SIGUSR1 to the registered process")
    served = [e for e in fake.requests("GET", ACTION_PATH) if e["status"] == 200]
    check(len(served) >= 20, f"the notice was served on {len(served)} consecutive polls")
    check(count_plans(d) == 1, f"exactly one plan started (got {count_plans(d)})")
    check(usr1_count(marker) == 1, f"the process got exactly one SIGUSR1 (got {usr1_count(marker)})")
    recs = notice_records(d, "terminate")
    check(recs and recs[0].get("SPOTWATCH_NOTICE_ID", "").startswith("aws:spot:terminate:"),
          "the notice id is aws:spot:terminate:TIME")
    plan = d.records("plan-start")
    check(plan and plan[0].get("SPOTWATCH_INSTANCE_ID") == fake.instance_id,
          "the plan knows the instance id")


def phase_whole_run(fake):
    print("-- over the whole run", flush=True)
    log = fake.requests()
    gets = [e for e in log if e["method"] == "GET"]
    check(all(e["token"] for e in gets), f"a token on every one of {len(gets)} GETs")
    check(len([e for e in log if e["path"] == INSTANCE_ID_PATH]) == 1, "the instance id was fetched exactly once")
    check(not [e for e in log if e["path"] == ASG_PATH], "aws_asg = no: the Auto Scaling state is never asked for")
    maintenance = [e["time"] for e in log if e["path"] == MAINTENANCE_PATH]
    check(all(b - a >= MAINTENANCE_EVERY - SLACK for a, b in zip(maintenance, maintenance[1:])),
          f"the scheduled events are polled at most every 60 s ({len(maintenance)} times in the run)")
    ports = {e["client_port"] for e in log}
    check(len(ports) == 1, f"one TCP connection for all {len(log)} requests")


if __name__ == "__main__":
    harness.main([run])
