#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The peer of the latency and idle benchmarks: the Python loop a user would
write instead of spotwatchd, standard library only (urllib; the SPEC's
peer uses `requests`, which is not in the standard library and is heavier).

    peer_poll.py URL [--interval 1] [--pidfile FILE]

Gets an IMDSv2 token (PUT, 6 h), then every interval (fixed rate, as a
timer would) GETs spot/instance-action and, like spotwatchd's poll cycle,
events/recommendations/rebalance, both with the token. On a 200 from
instance-action whose (action, time) it has not seen, it reads the PID in
--pidfile and sends it SIGUSR1. A 401 refetches the token.
"""
import argparse
import json
import os
import signal
import time
import urllib.error
import urllib.request


def token(base):
    req = urllib.request.Request(base + "/latest/api/token", method="PUT",
                                 headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
    with urllib.request.urlopen(req, timeout=2) as r:
        return r.read().decode()


def get(base, path, tok):
    req = urllib.request.Request(base + path, headers={"X-aws-ec2-metadata-token": tok})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--pidfile")
    args = ap.parse_args()

    tok = token(args.url)
    seen = set()
    next_t = time.monotonic()
    while True:
        try:
            status, body = get(args.url, "/latest/meta-data/spot/instance-action", tok)
            if status == 401:
                tok = token(args.url)
            elif status == 200:
                n = json.loads(body)
                key = (n.get("action"), n.get("time"))
                if key not in seen:
                    seen.add(key)
                    if args.pidfile:
                        with open(args.pidfile) as f:
                            os.kill(int(f.read()), signal.SIGUSR1)
            get(args.url, "/latest/meta-data/events/recommendations/rebalance", tok)
        except (OSError, ValueError):
            pass
        next_t += args.interval
        delay = next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_t = time.monotonic()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
