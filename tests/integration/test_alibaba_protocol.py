#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The Alibaba Cloud ECS metadata conversation, seen from an independent fake
(fake_alibaba.py), and the daemon's own --fake-metadata=alibaba end to end.

- Normal mode: instance/spot/termination-time polled every poll_interval on
  one keep-alive connection, no token PUT and no token header, the instance
  id fetched once; a 503 is logged once per streak and backed off; a
  termination time served on 20 polls starts exactly one plan: the real
  child gets one SIGUSR1, the hook sees SPOTWATCH_EVENT=terminate,
  SPOTWATCH_CLOUD=alibaba and SPOTWATCH_DEADLINE = the time served.
- Hardened mode (alibaba_token = yes, token_ttl = 3s): every GET carries a
  valid X-aliyun-ecs-metadata-token, the PUT asks with
  X-aliyun-ecs-metadata-token-ttl-seconds: 3, exactly one PUT per TTL (the
  service sends no TTL back, so the asked one counts: PUTs 2.6-2.8 s apart),
  and a 401 costs one PUT and one retry.
- --fake-metadata=alibaba with spotwatchctl fake-notice, hardened mode, and
  the in-daemon fake's own rules probed by hand.

About 40 s in all.
"""
import http.client
import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fake_alibaba import (INSTANCE_ID_PATH, TERMINATION_PATH, TOKEN_PATH, TTL_HEADER,  # noqa: E402
                          FakeAlibaba, epoch, utc_time)
from harness import Daemon, check, count_plans, main, spawn_sleeper, usr1_count, wait_until  # noqa: E402

TTL = 3
POLL = 0.2

HOOK = """#!/bin/sh
out="$1"
env | grep '^SPOTWATCH_' | sort > "$out.tmp"
mv "$out.tmp" "$out"
"""


def write_hook(tmp):
    path = os.path.join(tmp, "hook.sh")
    with open(path, "w") as f:
        f.write(HOOK)
    os.chmod(path, 0o755)
    return path


def read_env(path):
    with open(path) as f:
        return dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)


def sections_for(tmp, pidfile, out):
    return (f'[process "trainer"]\npidfile = {pidfile}\nwait = 0\n\n'
            f'[hook "record"]\nexec = {write_hook(tmp)} {out}\ntimeout = 5s\n')


def stop_child(p):
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    p.wait()


def test_normal_mode():
    fake = FakeAlibaba(token_mode="optional").start()
    d = Daemon(daemon_keys={"cloud": "alibaba", "metadata_url": fake.url, "poll_interval": "200ms",
                            "request_timeout": "1s", "deadline_margin": "0"})
    sleeper, pidfile, marker = spawn_sleeper(d.tmp)
    out = os.path.join(d.tmp, "hook.env")
    with open(d.config_path, "a") as f:
        f.write(sections_for(d.tmp, pidfile, out))
    try:
        with d:
            print("-- normal mode: the polls", flush=True)
            t0 = wait_until(lambda: fake.requests("GET", TERMINATION_PATH), 5, what="first poll")[0]["time"]
            wait_until(lambda: fake.requests("GET", TERMINATION_PATH, since=t0 + 3.0), 5, what="3 s of polls")
            window = [e for e in fake.requests() if e["time"] < t0 + 3.0]
            polls = [e for e in window if e["path"] == TERMINATION_PATH]
            check(all(e["method"] == "GET" and e["status"] == 404 for e in polls),
                  f"termination-time is polled with GET and answered 404 ({len(polls)} polls)")
            check(13 <= len(polls) <= 17, f"about one poll per 200 ms ({len(polls)} in 3 s)")
            check(not fake.requests("PUT"), "normal mode: no token PUT")
            check(all(e["token"] is None and TTL_HEADER.lower() not in e["headers"] for e in fake.requests()),
                  "normal mode: no token header on any request")
            paths = {e["path"] for e in fake.requests()}
            check(paths == {INSTANCE_ID_PATH, TERMINATION_PATH}, f"only the two paths are asked for: {paths}")
            check(len(fake.requests(path=INSTANCE_ID_PATH)) == 1, "the instance id is fetched once")

            print("-- a 503 streak: logged once, backed off, recovered", flush=True)
            offset = len(d.stderr_text())
            t1 = time.monotonic()
            fake.fault = "503"
            wait_until(lambda: len(fake.requests("GET", TERMINATION_PATH, since=t1)) >= 4, 10,
                       what="4 faulted polls")
            faulted = fake.requests("GET", TERMINATION_PATH, since=t1)
            rate = (len(faulted) - 1) / max(faulted[-1]["time"] - faulted[0]["time"], 0.001)
            check(rate < 3.0, f"polls back off during the fault ({rate:.1f}/s)")
            lines = [line for line in d.stderr_text()[offset:].splitlines() if "termination-time" in line]
            check(len(lines) == 1 and "503" in lines[0], f"the 503 is logged once: {lines}")
            fake.fault = None
            t2 = time.monotonic()
            wait_until(lambda: len([e for e in fake.requests("GET", TERMINATION_PATH, since=t2)
                                    if e["status"] == 404]) >= 5, 10, what="polls at full rate again")
            check(count_plans(d) == 0 and usr1_count(marker) == 0, "no plan, no signal from faults")

            print("-- a termination time served on 20 polls: one plan", flush=True)
            when = utc_time(300)
            t3 = time.monotonic()
            fake.termination_time = when
            wait_until(lambda: len([e for e in fake.requests("GET", TERMINATION_PATH, since=t3)
                                    if e["status"] == 200]) >= 20, 10, what="20 polls serving the time")
            wait_until(lambda: os.path.exists(out), 5, what="the hook")
            check(count_plans(d) == 1, f"exactly one plan for 20 polls (got {count_plans(d)})")
            check(usr1_count(marker) == 1, f"the child got exactly one SIGUSR1 (got {usr1_count(marker)})")
            env = read_env(out)
            check(env.get("SPOTWATCH_EVENT") == "terminate", "hook: SPOTWATCH_EVENT=terminate")
            check(env.get("SPOTWATCH_CLOUD") == "alibaba", "hook: SPOTWATCH_CLOUD=alibaba")
            check(env.get("SPOTWATCH_DEADLINE") == str(epoch(when)),
                  f"hook: SPOTWATCH_DEADLINE={epoch(when)}, the time served ({when})")
            check(env.get("SPOTWATCH_INSTANCE_ID") == fake.instance_id, "hook: the instance id from the service")
            notices = d.records("notice")
            check(len(notices) == 1 and notices[0].get("SPOTWATCH_NOTICE_ID") == f"alibaba:spot:{when}",
                  f"one notice record, id alibaba:spot:{when}")
            ports = {e["client_port"] for e in fake.requests()}
            check(len(ports) <= 2, f"one keep-alive connection (a second only after the 503s): {sorted(ports)}")
            check(d.stop() == 0, "spotwatchd exits 0 on SIGTERM")
    finally:
        fake.stop()
        stop_child(sleeper)


def test_hardened_mode():
    fake = FakeAlibaba(token_mode="required").start()
    d = Daemon(daemon_keys={"cloud": "alibaba", "metadata_url": fake.url, "poll_interval": "200ms",
                            "alibaba_token": "yes", "token_ttl": f"{TTL}s", "request_timeout": "2s"})
    try:
        with d:
            print(f"-- hardened mode: token PUTs with a TTL of {TTL} s, polling every {POLL} s", flush=True)
            first = wait_until(lambda: fake.requests("PUT", TOKEN_PATH), 5, what="first token PUT")[0]
            t0 = first["time"]
            wait_until(lambda: fake.requests("GET", TERMINATION_PATH, since=t0 + 7.3), 10, what="7 s of polls")
            window = [e for e in fake.requests(since=t0) if e["time"] < t0 + 7.0]
            puts = [e for e in window if e["method"] == "PUT"]
            check(all(e["headers"].get(TTL_HEADER.lower()) == str(TTL) for e in puts),
                  f"every PUT asks with {TTL_HEADER}: {TTL}")
            check(all(e["status"] == 200 for e in puts), "every PUT got a token")
            check(len(puts) == 3, f"exactly 3 PUTs in 7 s with a {TTL} s TTL (at "
                  + ", ".join(f"{e['time'] - t0:.2f}" for e in puts) + ")")
            gaps = [b["time"] - a["time"] for a, b in zip(puts, puts[1:])]
            check(all(TTL - 2 * POLL - 0.3 <= g < TTL for g in gaps),
                  "each token is renewed 2.4-3.0 s after the last, before it expires (gaps "
                  + ", ".join(f"{g:.2f}" for g in gaps) + ")")
            gets = [e for e in window if e["method"] == "GET"]
            check(gets and all(e["token"] and e["token_ok"] for e in gets),
                  f"all {len(gets)} GETs carry a valid X-aliyun-ecs-metadata-token")
            check(not [e for e in window if e["status"] == 401], "no 401 while tokens are renewed in time")
            check(len([e for e in gets if e["path"] == TERMINATION_PATH]) >= 30, "termination-time polled")

            print("-- a 401 with a valid token: one PUT, one retry", flush=True)
            puts_before = len(fake.requests("PUT"))
            fake.fault = "401-once"
            e401 = wait_until(lambda: [e for e in fake.requests("GET", TERMINATION_PATH) if e["status"] == 401],
                              5, what="the 401")[0]
            wait_until(lambda: len([e for e in fake.requests("GET", TERMINATION_PATH, since=e401["time"])
                                    if e["status"] == 404]) >= 3, 5, what="polls after the 401")
            after = [e for e in fake.requests(since=e401["time"]) if e["status"] != 401]
            check(after[0]["method"] == "PUT" and after[0]["status"] == 200, "the 401 is followed by a PUT")
            check(after[1]["method"] == "GET" and after[1]["path"] == TERMINATION_PATH and after[1]["status"] == 404,
                  "then the same GET is retried and answered")
            check(after[1]["token"] == fake.tokens_granted[-1][0] != e401["token"], "the retry carries the new token")
            check(len([e for e in fake.requests("PUT") if e["time"] < e401["time"] + 1.0]) == puts_before + 1,
                  "exactly one extra PUT for the 401")
            check(len([e for e in fake.requests() if e["status"] == 401]) == 1, "only one 401 in all")
            check("Metadata poll failed" not in d.stderr_text(), "a 401 fixed by the retry is no error")

            log = fake.requests()
            check(len({e["client_port"] for e in log}) == 1, f"one TCP connection for all {len(log)} requests")
            check(len(fake.requests(path=INSTANCE_ID_PATH)) == 1, "the instance id is fetched once")
            check(d.stop() == 0, "spotwatchd exits 0 on SIGTERM")
    finally:
        fake.stop()


def probe(url, method, path, headers=None):
    host, port = url.removeprefix("http://").split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        c.request(method, path, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


def test_fake_metadata_end_to_end():
    d = Daemon(fake_metadata="alibaba", daemon_keys={"cloud": "alibaba", "poll_interval": "200ms",
                                                     "alibaba_token": "yes", "deadline_margin": "0"})
    sleeper, pidfile, marker = spawn_sleeper(d.tmp)
    out = os.path.join(d.tmp, "hook.env")
    with open(d.config_path, "a") as f:
        f.write(sections_for(d.tmp, pidfile, out))
    try:
        with d:
            print("-- --fake-metadata=alibaba: the fake's own rules", flush=True)
            url = d.fake_url
            check(probe(url, "GET", TERMINATION_PATH)[0] == 404, "no notice: termination-time is 404")
            check(probe(url, "GET", TERMINATION_PATH, {"X-aliyun-ecs-metadata-token": "bogus"})[0] == 401,
                  "a bad token is refused with 401")
            check(probe(url, "PUT", TOKEN_PATH)[0] == 400, "a token PUT without the TTL header is 400")
            check(probe(url, "PUT", TOKEN_PATH, {TTL_HEADER: "0"})[0] == 400, "a TTL of 0 is 400")
            check(probe(url, "PUT", TOKEN_PATH, {TTL_HEADER: "60", "X-Forwarded-For": "10.0.0.1"})[0] == 403,
                  "a token PUT through a proxy is 403")
            status, token = probe(url, "PUT", TOKEN_PATH, {TTL_HEADER: "60"})
            check(status == 200 and re.fullmatch(r"[0-9a-f]{48}", token), "a token PUT gets a token")
            status, iid = probe(url, "GET", INSTANCE_ID_PATH, {"X-aliyun-ecs-metadata-token": token})
            check(status == 200 and iid.startswith("i-"), f"the instance id with that token: {iid}")

            r = d.ctl("fake-notice", "--action", "stop", check=False)
            check(r.returncode != 0 and "terminate" in r.stdout + r.stderr,
                  "fake-notice --action stop is refused and names terminate")

            print("-- fake-notice: the plan runs once", flush=True)
            r = d.ctl("fake-notice", "--action", "terminate", "--in", "300")
            m = re.search(r"time\s+(\S+)", r.stdout)
            check(m is not None, f"fake-notice answers with the time: {r.stdout.strip()}")
            wait_until(lambda: os.path.exists(out), 10, what="the hook")
            status, body = probe(url, "GET", TERMINATION_PATH)
            check(status == 200 and body == m.group(1), f"the fake serves the time without a token: {body}")
            time.sleep(1.5)
            check(count_plans(d) == 1, f"exactly one plan while the notice stays (got {count_plans(d)})")
            check(usr1_count(marker) == 1, f"one SIGUSR1 (got {usr1_count(marker)})")
            env = read_env(out)
            check(env.get("SPOTWATCH_EVENT") == "terminate" and env.get("SPOTWATCH_CLOUD") == "alibaba",
                  "hook: SPOTWATCH_EVENT=terminate, SPOTWATCH_CLOUD=alibaba")
            check(env.get("SPOTWATCH_DEADLINE") == str(epoch(m.group(1))), "hook: SPOTWATCH_DEADLINE as served")
            left = int(env.get("SPOTWATCH_SECONDS_LEFT", "-1"))
            check(290 <= left <= 300, f"hook: SPOTWATCH_SECONDS_LEFT={left}, about 300")
            check(env.get("SPOTWATCH_INSTANCE_ID", "").startswith("i-"), "hook: the fake's instance id")
            check("Metadata poll failed" not in d.stderr_text(), "hardened mode on the fake: no poll errors")
            check(d.stop() == 0, "spotwatchd exits 0 on SIGTERM")
    finally:
        stop_child(sleeper)


if __name__ == "__main__":
    main([test_normal_mode, test_hardened_mode, test_fake_metadata_end_to_end])
