#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A fake Alibaba Cloud ECS metadata service for tests, independent of the
daemon's own code: Python 3 standard library only, HTTP/1.1 with keep-alive
and a Content-Length on every answer, bound to 127.0.0.1.

As a module:

    fake = FakeAlibaba(token_mode="required").start()
    fake.termination_time = utc_time(300)
    ... fake.requests(path=TERMINATION_PATH) ...
    fake.stop()

As a script, for trying things by hand:

    python3 fake_alibaba.py --port 8080 --terminate-in 300

Served paths:
    PUT /latest/api/token          needs X-aliyun-ecs-metadata-token-ttl-seconds (1..21600, else 400),
                                   refused with 403 when X-Forwarded-For is present; the token is good
                                   for min(asked, max_ttl) seconds. The answer carries no TTL header.
    GET /latest/meta-data/instance-id
    GET /latest/meta-data/instance/spot/termination-time
                                   404, or the text .termination_time ("2026-11-27T13:20:00Z")

Access modes (token_mode), as ECS's HttpTokens setting:
    "optional"  (ECS's default) a GET without a token is served; a GET with an
                X-aliyun-ecs-metadata-token header needs a valid, unexpired token, else 401
    "required"  (hardened mode enforced) every GET needs a valid token, else 401

Faults (.fault, settable at any time; they hit termination-time only, after
the token check): None, "500", "503", "429", "garbage" (200, not a time),
"huge" (200, 10 MiB), "hang" (never answer; close after .hang_seconds or when
the fault changes), "reset" (close with a TCP RST, no answer), "401-once"
(the next termination-time GET answers 401 even with a valid token, then the
fault clears itself).

The request log (.requests()) is a list of dicts: method, path, headers
(names lower-cased), client_port (the TCP peer port: one per connection),
time (time.monotonic() at arrival), status (int, or "hang"/"reset"), token
(the token header or None) and token_ok (None when no token was sent).

The HTTP plumbing (server, keep-alive handler, log, faults, tokens, command
line) is fakebase.py's, shared with the other fakes.
"""
import datetime
import sys

import fakebase
from fakebase import HUGE_SIZE  # noqa: F401 (part of this module's interface)

TOKEN_PATH = "/latest/api/token"
INSTANCE_ID_PATH = "/latest/meta-data/instance-id"
TERMINATION_PATH = "/latest/meta-data/instance/spot/termination-time"
TTL_HEADER = "X-aliyun-ecs-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aliyun-ecs-metadata-token"
FAULTS = (None, "500", "503", "429", "garbage", "huge", "hang", "reset", "401-once")
TOKEN_MODES = ("optional", "required")

# UTC time seconds_from_now from now, as termination-time writes it ("2026-11-27T13:20:00Z").
utc_time = fakebase.rfc3339


def epoch(utc):
    """Unix seconds of a "2026-11-27T13:20:00Z" time."""
    t = datetime.datetime.strptime(utc, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    return int(t.timestamp())


class _Handler(fakebase.TokenHandler):
    token_header = TOKEN_HEADER
    garbage_body = "<html><body>\x01 not a time</body></html>"
    huge_chunk = b"2026-11-27T13:20:00Z" * 4096

    def version_string(self):
        return "Tengine"

    def _put(self, entry):
        if self.path != TOKEN_PATH:
            return self._send(405 if self.path.startswith("/latest/meta-data") else 404, "")
        return self._grant_token(TTL_HEADER, echo_ttl=False)

    def _get(self, entry):
        fake = self.server.fake
        refused = self._check_token(entry, fake.token_mode == "required")
        if refused is not None:
            return refused

        if self.path == INSTANCE_ID_PATH:
            return self._send(200, fake.instance_id)
        if self.path == TERMINATION_PATH:
            return self._termination_time(fake)
        if self.path in ("/latest/meta-data", "/latest/meta-data/"):
            return self._send(200, "instance/\ninstance-id\n")
        return self._send(404, "Not Found")

    def _termination_time(self, fake):
        fault = fake.fault
        if fault == "401-once":
            if fake._fire_once("401-once"):
                return self._send(401, "Unauthorized")
            fault = None
        status = self._fault(fault)
        if status is not None:
            return status
        t = fake.termination_time
        if t is None:
            return self._send(404, "Not Found")
        return self._send(200, t)


class FakeAlibaba(fakebase.TokenFake):
    """The fake service. Attributes may be changed while it runs."""

    name = "fake_alibaba"
    handler_class = _Handler
    faults = FAULTS

    def __init__(self, port=0, token_mode="optional", max_ttl=21600, instance_id="i-bp1test00000000000a",
                 verbose=False):
        if token_mode not in TOKEN_MODES:
            raise ValueError(f"unknown token_mode {token_mode!r}")
        super().__init__(port=port, max_ttl=max_ttl, verbose=verbose)
        self.token_mode = token_mode
        self.instance_id = instance_id
        self.termination_time = None      # "2026-11-27T13:20:00Z" or None
        # .fault: one of FAULTS; .hang_seconds, .tokens_granted: see fakebase


def main():
    ap = fakebase.arg_parser("Fake Alibaba Cloud ECS metadata service on 127.0.0.1.")
    ap.add_argument("--token-mode", choices=TOKEN_MODES, default="optional")
    ap.add_argument("--max-ttl", type=int, default=21600, help="longest token lifetime, in seconds")
    ap.add_argument("--instance-id", default="i-bp1test00000000000a")
    ap.add_argument("--terminate-in", type=float, metavar="SECONDS",
                    help="serve a termination-time this many seconds from now")
    args = fakebase.parse_args(ap, FAULTS, "termination-time")

    fake = FakeAlibaba(port=args.port, token_mode=args.token_mode, max_ttl=args.max_ttl,
                       instance_id=args.instance_id, verbose=not args.quiet)
    if args.terminate_in is not None:
        fake.termination_time = utc_time(args.terminate_in)
    fake.fault = args.fault
    return fakebase.serve(fake)


if __name__ == "__main__":
    sys.exit(main())
