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
"""
import argparse
import datetime
import http.server
import json
import secrets
import socket
import socketserver
import struct
import sys
import threading
import time

TOKEN_PATH = "/latest/api/token"
INSTANCE_ID_PATH = "/latest/meta-data/instance-id"
ACTION_PATH = "/latest/meta-data/spot/instance-action"
REBALANCE_PATH = "/latest/meta-data/events/recommendations/rebalance"
MAINTENANCE_PATH = "/latest/meta-data/events/maintenance/scheduled"
ASG_PATH = "/latest/meta-data/autoscaling/target-lifecycle-state"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
FAULTS = (None, "500", "503", "429", "garbage", "huge", "hang", "reset", "401-once", "bad-json-types")
HUGE_SIZE = 10 * 1024 * 1024


def rfc3339(seconds_from_now=0.0):
    """UTC time seconds_from_now from now, as AWS writes it ("2026-11-27T13:20:00Z")."""
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds_from_now)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def event_time(seconds_from_now=0.0):
    """UTC time as scheduled events write it ("21 Jan 2019 09:00:43 GMT"); English month names whatever
    the locale."""
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds_from_now)
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    return f"{t.day:02d} {months[t.month - 1]} {t.year:04d} {t.hour:02d}:{t.minute:02d}:{t.second:02d} GMT"


def maintenance_event(code="instance-retirement", state="active", not_before=None, event_id=None,
                      description="The instance is running on degraded hardware"):
    """One element of events/maintenance/scheduled, as IMDS writes it. not_before defaults to an hour from
    now, event_id to a fresh "instance-event-<17 hex digits>"."""
    if not_before is None:
        not_before = event_time(3600)
    if event_id is None:
        event_id = "instance-event-" + secrets.token_hex(9)[:17]
    nb = datetime.datetime.strptime(not_before, "%d %b %Y %H:%M:%S GMT")
    not_after = nb + datetime.timedelta(hours=2)
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    return {
        "NotBefore": not_before,
        "Code": code,
        "Description": description,
        "EventId": event_id,
        "NotAfter": f"{not_after.day:02d} {months[not_after.month - 1]} {not_after.year:04d} "
                    f"{not_after.hour:02d}:{not_after.minute:02d}:{not_after.second:02d} GMT",
        "State": state,
    }


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # A client that goes away mid-answer is normal here (timeouts, caps).
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, OSError)):
            return
        super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def version_string(self):
        return "EC2ws"

    def setup(self):
        super().setup()
        # Headers and body go out in two writes; without this, Nagle and the
        # client's delayed ACK add 40 ms to some answers.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):
        if self.server.fake.verbose:
            sys.stderr.write("fake_imds: %s - %s\n" % (self.client_address[1], fmt % args))

    # -- plumbing ------------------------------------------------------------
    def _read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _send(self, status, body=b"", headers=None):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        return status

    def _log(self, entry):
        with self.server.fake._lock:
            self.server.fake._log.append(entry)

    def _entry(self):
        return {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "client_port": self.client_address[1],
            "time": time.monotonic(),
            "status": None,
            "token": self.headers.get(TOKEN_HEADER),
            "token_ok": None,
        }

    # -- methods -------------------------------------------------------------
    def do_PUT(self):
        entry = self._entry()
        self._read_body()
        self._log(entry)
        entry["status"] = self._put(entry)

    def do_GET(self):
        entry = self._entry()
        self._log(entry)
        entry["status"] = self._get(entry)

    def _other(self):
        entry = self._entry()
        self._read_body()
        self._log(entry)
        entry["status"] = self._send(405, "Method Not Allowed")

    do_POST = do_DELETE = do_HEAD = do_PATCH = _other

    def _put(self, entry):
        fake = self.server.fake
        if self.path != TOKEN_PATH:
            return self._send(405 if self.path.startswith("/latest/meta-data") else 404, "")
        if fake.token_mode == "unsupported":
            return self._send(fake.unsupported_status, "Forbidden")
        if "X-Forwarded-For" in self.headers:
            return self._send(403, "Forbidden")
        asked = self.headers.get(TTL_HEADER, "")
        if not asked.isdigit() or not 1 <= int(asked) <= 21600:
            return self._send(400, "Bad Request")
        granted = min(int(asked), fake.max_ttl)
        token = secrets.token_urlsafe(42)
        with fake._lock:
            fake._tokens[token] = time.monotonic() + granted
            fake.tokens_granted.append((token, granted))
        return self._send(200, token, {TTL_HEADER: str(granted)})

    def _token_ok(self, token):
        fake = self.server.fake
        with fake._lock:
            expiry = fake._tokens.get(token)
        return expiry is not None and time.monotonic() < expiry

    def _get(self, entry):
        fake = self.server.fake
        token = entry["token"]
        if token is not None:
            entry["token_ok"] = self._token_ok(token)
            if not entry["token_ok"]:
                return self._send(401, "Unauthorized")
        elif fake.token_mode == "required":
            entry["token_ok"] = False
            return self._send(401, "Unauthorized")

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
        if self.path in ("/latest/meta-data", "/latest/meta-data/"):
            return self._send(200, "instance-id\nspot/\nevents/\n" + ("autoscaling/\n" if fake.asg_state else ""))
        return self._send(404, "Not Found")

    def _instance_action(self, fake):
        fault = fake.fault
        if fault == "401-once":
            with fake._lock:
                fire = fake.fault == "401-once"
                if fire:
                    fake.fault = None
            if fire:
                return self._send(401, "Unauthorized")
            fault = None
        if fault in ("500", "503", "429"):
            return self._send(int(fault), f"fault {fault}")
        if fault == "garbage":
            return self._send(200, "<html><body>\x01 not json {{{ \xff</body></html>")
        if fault == "bad-json-types":
            return self._send(200, json.dumps({"action": 5, "time": []}))
        if fault == "huge":
            return self._huge()
        if fault == "hang":
            return self._hang(fake)
        if fault == "reset":
            return self._reset()
        notice = fake.notice
        if notice is None:
            return self._send(404, "Not Found")
        action, t = notice
        return self._send(200, json.dumps({"action": action, "time": t}))

    def _huge(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(HUGE_SIZE))
        self.end_headers()
        chunk = b'{"action": "terminate", "padding": "' + b"x" * (64 * 1024)
        try:
            sent = 0
            while sent < HUGE_SIZE:
                n = min(len(chunk), HUGE_SIZE - sent)
                self.wfile.write(chunk[:n])
                sent += n
        except OSError:
            self.close_connection = True
        return 200

    def _hang(self, fake):
        end = time.monotonic() + fake.hang_seconds
        while time.monotonic() < end and fake.fault == "hang" and not fake._stopping.is_set():
            time.sleep(0.02)
        self.close_connection = True
        return "hang"

    def _reset(self):
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
        self.close_connection = True
        return "reset"


class FakeImds:
    """The fake service. Attributes may be changed while it runs."""

    def __init__(self, port=0, max_ttl=21600, instance_id="i-0123456789abcdef0", token_mode="required",
                 verbose=False):
        self.port = port
        self.max_ttl = max_ttl
        self.instance_id = instance_id
        self.token_mode = token_mode      # "required" | "optional" | "unsupported"
        self.unsupported_status = 403     # what the PUT answers when token_mode == "unsupported"
        self.notice = None                # (action, RFC 3339 time) or None
        self.rebalance = None             # RFC 3339 time or None
        self.maintenance = []             # scheduled events: dicts from maintenance_event()
        self.asg_state = None             # target lifecycle state text, or None: 404 (no Auto Scaling group)
        self.fault = None                 # one of FAULTS
        self.hang_seconds = 30.0
        self.verbose = verbose
        self.tokens_granted = []          # (token, granted TTL) in order
        self._tokens = {}
        self._log = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = None
        self._thread = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self._server = _Server(("127.0.0.1", self.port), _Handler)
        self._server.fake = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake_imds", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stopping.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def set_fault(self, fault):
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        self.fault = fault

    def requests(self, method=None, path=None, since=None):
        """A copy of the request log, optionally filtered; since = a time.monotonic() value."""
        with self._lock:
            log = [dict(e) for e in self._log]
        return [e for e in log
                if (method is None or e["method"] == method)
                and (path is None or e["path"] == path)
                and (since is None or e["time"] >= since)]

    def clear_log(self):
        with self._lock:
            self._log.clear()


def main():
    ap = argparse.ArgumentParser(description="Fake AWS instance metadata service (IMDSv2) on 127.0.0.1.")
    ap.add_argument("--port", type=int, default=0, help="port (default: any free one)")
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
    ap.add_argument("--fault", choices=[f for f in FAULTS if f], help="inject a fault into instance-action")
    ap.add_argument("--quiet", action="store_true", help="do not log requests")
    args = ap.parse_args()

    fake = FakeImds(port=args.port, max_ttl=args.max_ttl, instance_id=args.instance_id,
                    token_mode=args.token_mode, verbose=not args.quiet)
    if args.notice:
        fake.notice = (args.notice, rfc3339(args.in_seconds))
    if args.rebalance:
        fake.rebalance = rfc3339()
    if args.maintenance:
        fake.maintenance = [maintenance_event(args.maintenance, not_before=event_time(args.in_seconds))]
    fake.asg_state = args.asg_state
    fake.fault = args.fault
    fake.start()
    print(f"fake_imds: serving on {fake.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
