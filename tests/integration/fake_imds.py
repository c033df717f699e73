#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A fake AWS instance metadata service (IMDSv2) for tests, independent of the
daemon's own code: Python 3 standard library only, HTTP/1.1 with keep-alive
and a Content-Length on every answer, bound to 127.0.0.1.

As a module:

    fake = FakeImds(max_ttl=3).start()
    fake.notice = ("terminate", "2026-11-27T13:20:00Z")
    ... fake.requests(path="/latest/api/token") ...
    fake.stop()

As a script, for trying things by hand:

    python3 fake_imds.py --port 8080 --notice terminate --in 120

Served paths:
    PUT /latest/api/token                      needs X-aws-ec2-metadata-token-ttl-seconds (1..21600);
                                               grants min(asked, max_ttl) and says so in the same header
    GET /latest/meta-data/instance-id
    GET /latest/meta-data/spot/instance-action 404, or {"action": A, "time": T} while .notice = (A, T)
    GET /latest/meta-data/events/recommendations/rebalance
                                               404, or {"noticeTime": T} while .rebalance = T
    GET /latest/meta-data/events/maintenance/scheduled
                                               the JSON array .maintenance (default []); build its
                                               elements with maintenance_event()
    GET /latest/meta-data/autoscaling/target-lifecycle-state
                                               404 while .asg_state is None (not in an Auto Scaling
                                               group), else that text ("InService", "Terminated")
    GET /latest/meta-data/iam/security-credentials/
                                               the instance role's name .role, or 404 while it is None
    GET /latest/meta-data/iam/security-credentials/ROLE
                                               {"Code": "Success", "LastUpdated", "Type": "AWS-HMAC",
                                               "AccessKeyId", "SecretAccessKey", "Token", "Expiration"}
                                               from .credentials (a dict of the three keys; Token "" for
                                               none), Expiration .credentials_lifetime seconds after the
                                               request; .role_document (a str) replaces the whole answer,
                                               with status .role_status, for tests of bad documents
GETs need a valid, unexpired token (else 401) unless token_mode is "optional"
(IMDSv1 allowed) or "unsupported" (the PUT answers 403, as with IMDSv2 off).

Faults (.fault, settable at any time; they hit spot/instance-action only,
after the token check): None, "500", "503", "429", "garbage" (200, not
JSON), "huge" (200, 10 MiB), "hang" (never answer; close after
.hang_seconds or when the fault changes), "reset" (close with a TCP RST,
no answer), "401-once" (the next instance-action GET answers 401 even with a
valid token, then the fault clears itself), "bad-json-types" (200,
{"action": 5, "time": []}).

The request log (.requests()) is a list of dicts: method, path, headers
(names lower-cased), client_port (the TCP peer port: one per connection),
time (time.monotonic() at arrival), status (int, or "hang"/"reset"), token
(the token header or None) and token_ok.

The HTTP plumbing (server, keep-alive handler, log, faults, tokens, command
line) is fakebase.py's, shared with the other fakes.
"""
import datetime
import json
import secrets
import sys

import fakebase
from fakebase import HUGE_SIZE, rfc3339  # noqa: F401 (part of this module's interface)

TOKEN_PATH = "/latest/api/token"
INSTANCE_ID_PATH = "/latest/meta-data/instance-id"
ACTION_PATH = "/latest/meta-data/spot/instance-action"
REBALANCE_PATH = "/latest/meta-data/events/recommendations/rebalance"
MAINTENANCE_PATH = "/latest/meta-data/events/maintenance/scheduled"
ASG_PATH = "/latest/meta-data/autoscaling/target-lifecycle-state"
ROLES_PATH = "/latest/meta-data/iam/security-credentials/"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
FAULTS = (None, "500", "503", "429", "garbage", "huge", "hang", "reset", "401-once", "bad-json-types")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _event_format(t):
    return f"{t.day:02d} {MONTHS[t.month - 1]} {t.year:04d} {t.hour:02d}:{t.minute:02d}:{t.second:02d} GMT"


def event_time(seconds_from_now=0.0):
    """UTC time as scheduled events write it ("21 Jan 2019 09:00:43 GMT"); English month names whatever
    the locale."""
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds_from_now)
    return _event_format(t)


def maintenance_event(code="instance-retirement", state="active", not_before=None, event_id=None,
                      description="The instance is running on degraded hardware"):
    """One element of events/maintenance/scheduled, as IMDS writes it. not_before defaults to an hour from
    now, event_id to a fresh "instance-event-<17 hex digits>"."""
    if not_before is None:
        not_before = event_time(3600)
    if event_id is None:
        event_id = "instance-event-" + secrets.token_hex(9)[:17]
    nb = datetime.datetime.strptime(not_before, "%d %b %Y %H:%M:%S GMT")
    return {
        "NotBefore": not_before,
        "Code": code,
        "Description": description,
        "EventId": event_id,
        "NotAfter": _event_format(nb + datetime.timedelta(hours=2)),
        "State": state,
    }


class _Handler(fakebase.TokenHandler):
    token_header = TOKEN_HEADER
    missing_token_ok = False
    huge_chunk = b'{"action": "terminate", "padding": "' + b"x" * (64 * 1024)

    def version_string(self):
        return "EC2ws"

    def _put(self, entry):
        fake = self.server.fake
        if self.path != TOKEN_PATH:
            return self._send(405 if self.path.startswith("/latest/meta-data") else 404, "")
        if fake.token_mode == "unsupported":
            return self._send(fake.unsupported_status, "Forbidden")
        return self._grant_token(TTL_HEADER, echo_ttl=True)

    def _get(self, entry):
        fake = self.server.fake
        refused = self._check_token(entry, fake.token_mode == "required")
        if refused is not None:
            return refused

        if self.path == INSTANCE_ID_PATH:
            return self._send(200, fake.instance_id)
        if self.path == ACTION_PATH:
            return self._instance_action(fake)
        if self.path == REBALANCE_PATH:
            t = fake.rebalance
            if t is None:
                return self._send(404, "Not Found")
            return self._send(200, json.dumps({"noticeTime": t}))
        if self.path == MAINTENANCE_PATH:
            return self._send(200, json.dumps(list(fake.maintenance)))
        if self.path == ASG_PATH:
            state = fake.asg_state
            if state is None:
                return self._send(404, "Not Found")
            return self._send(200, state)
        if self.path in (ROLES_PATH, ROLES_PATH.rstrip("/")):
            if fake.role is None:
                return self._send(404, "Not Found")
            return self._send(200, fake.role)
        if fake.role is not None and self.path == ROLES_PATH + fake.role:
            return self._role_document(fake)
        if self.path in ("/latest/meta-data", "/latest/meta-data/"):
            return self._send(200, "instance-id\nspot/\nevents/\n" + ("autoscaling/\n" if fake.asg_state else "")
                              + ("iam/\n" if fake.role is not None else ""))
        return self._send(404, "Not Found")

    def _role_document(self, fake):
        fake.credential_fetches += 1
        if fake.role_document is not None:
            return self._send(fake.role_status, fake.role_document)
        creds = dict(fake.credentials)
        doc = {
            "Code": "Success",
            "LastUpdated": rfc3339(),
            "Type": "AWS-HMAC",
            "AccessKeyId": creds.get("AccessKeyId", ""),
            "SecretAccessKey": creds.get("SecretAccessKey", ""),
            "Token": creds.get("Token") or "",
            "Expiration": rfc3339(fake.credentials_lifetime),
        }
        return self._send(200, json.dumps(doc))

    def _instance_action(self, fake):
        fault = fake.fault
        if fault == "401-once":
            if fake._fire_once("401-once"):
                return self._send(401, "Unauthorized")
            fault = None
        if fault == "bad-json-types":
            return self._send(200, json.dumps({"action": 5, "time": []}))
        status = self._fault(fault)
        if status is not None:
            return status
        notice = fake.notice
        if notice is None:
            return self._send(404, "Not Found")
        action, t = notice
        return self._send(200, json.dumps({"action": action, "time": t}))


class FakeImds(fakebase.TokenFake):
    """The fake service. Attributes may be changed while it runs."""

    name = "fake_imds"
    handler_class = _Handler
    faults = FAULTS
    token_bytes = 42

    def __init__(self, port=0, max_ttl=21600, instance_id="i-0123456789abcdef0", token_mode="required",
                 verbose=False):
        super().__init__(port=port, max_ttl=max_ttl, verbose=verbose)
        self.instance_id = instance_id
        self.token_mode = token_mode      # "required" | "optional" | "unsupported"
        self.unsupported_status = 403     # what the PUT answers when token_mode == "unsupported"
        self.notice = None                # (action, RFC 3339 time) or None
        self.rebalance = None             # RFC 3339 time or None
        self.maintenance = []             # scheduled events: dicts from maintenance_event()
        self.asg_state = None             # target lifecycle state text, or None: 404 (no Auto Scaling group)
        self.role = "spotwatchd-test-role"  # the instance role's name, or None: no instance role (404)
        self.credentials = {"AccessKeyId": "ASIAPYTHONFAKE000001", "SecretAccessKey": "python-fake-secret",
                            "Token": "python-fake-session-token"}
        self.credentials_lifetime = 3600  # seconds from each answer to its Expiration
        self.role_document = None         # a str served instead of the role's document
        self.role_status = 200            # with role_document
        self.credential_fetches = 0       # role documents asked for
        # .fault: one of FAULTS; .hang_seconds, .tokens_granted: see fakebase


def main():
    ap = fakebase.arg_parser("Fake AWS instance metadata service (IMDSv2) on 127.0.0.1.")
    ap.add_argument("--max-ttl", type=int, default=21600, help="longest token TTL granted, in seconds")
    ap.add_argument("--instance-id", default="i-0123456789abcdef0")
    ap.add_argument("--token-mode", choices=("required", "optional", "unsupported"), default="required")
    ap.add_argument("--notice", metavar="ACTION", help="serve a spot notice: terminate, stop or hibernate")
    ap.add_argument("--in", dest="in_seconds", type=float, default=120.0,
                    help="the notice's time, seconds from now (default 120)")
    ap.add_argument("--rebalance", action="store_true", help="serve a rebalance recommendation")
    ap.add_argument("--maintenance", metavar="CODE",
                    help="serve an active scheduled event with this code (e.g. instance-retirement), due in --in")
    ap.add_argument("--asg-state", metavar="STATE", help="serve this target lifecycle state (e.g. Terminated)")
    ap.add_argument("--access-key-id", help="the instance role's access key id")
    ap.add_argument("--secret-access-key", help="the instance role's secret access key")
    ap.add_argument("--session-token", default=None, help="the instance role's session token (default: none)")
    ap.add_argument("--credentials-lifetime", type=int, default=3600,
                    help="seconds from each role document to its Expiration (default 3600)")
    ap.add_argument("--no-role", action="store_true", help="serve no instance role (404)")
    args = fakebase.parse_args(ap, FAULTS, "instance-action")

    fake = FakeImds(port=args.port, max_ttl=args.max_ttl, instance_id=args.instance_id,
                    token_mode=args.token_mode, verbose=not args.quiet)
    if args.notice:
        fake.notice = (args.notice, rfc3339(args.in_seconds))
    if args.rebalance:
        fake.rebalance = rfc3339()
    if args.maintenance:
        fake.maintenance = [maintenance_event(args.maintenance, not_before=event_time(args.in_seconds))]
    fake.asg_state = args.asg_state
    if args.access_key_id or args.secret_access_key:
        fake.credentials = {"AccessKeyId": args.access_key_id or "", "SecretAccessKey": args.secret_access_key or "",
                            "Token": args.session_token or ""}
    fake.credentials_lifetime = args.credentials_lifetime
    if args.no_role:
        fake.role = None
    fake.fault = args.fault
    return fakebase.serve(fake)


if __name__ == "__main__":
    sys.exit(main())
