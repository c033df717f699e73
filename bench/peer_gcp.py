#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The peer of gcp_latency: the Python loop a user would write instead of
spotwatchd on GCP, standard library only. It watches instance/preempted with
the same hanging GET (wait_for_change, last_etag, Metadata-Flavor: Google) and,
when the value turns TRUE, reads the PID in --pidfile and sends it SIGUSR1.

    peer_gcp.py URL --pidfile FILE [--timeout-sec 60]
"""
import argparse
import os
import signal
import time
import urllib.error
import urllib.parse
import urllib.request

PATH = "/computeMetadata/v1/instance/preempted"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--pidfile", required=True)
    ap.add_argument("--timeout-sec", type=int, default=60)
    args = ap.parse_args()

    etag, value = None, None
    while True:
        # First a plain GET for the value and its ETag, then hanging GETs from that ETag.
        q = {"wait_for_change": "true", "last_etag": etag, "timeout_sec": str(args.timeout_sec)} if etag else {}
        req = urllib.request.Request(f"{args.url}{PATH}" + (f"?{urllib.parse.urlencode(q)}" if q else ""),
                                     headers={"Metadata-Flavor": "Google"})
        try:
            with urllib.request.urlopen(req, timeout=args.timeout_sec + 5) as r:
                new, etag = r.read().decode().strip(), r.headers.get("ETag")
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
            continue
        if new == "TRUE" and value != "TRUE":
            with open(args.pidfile) as f:
                os.kill(int(f.read().strip()), signal.SIGUSR1)
        value = new


if __name__ == "__main__":
    main()
