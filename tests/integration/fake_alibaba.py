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
"""
import argparse
import datetime
import http.server
import secrets
import socket
import struct
import sys
import threading
import time

TOKEN_PATH = "/latest/api/token"
INSTANCE_ID_PATH = "/latest/meta-data/instance-id"
TERMINATION_PATH = "/latest/meta-data/instance/spot/termination-time"
TTL_HEADER = "X-aliyun-ecs-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aliyun-ecs-metadata-token"
FAULTS = (None, "500", "503", "429", "garbage", "huge", "hang", "reset", "401-once")
TOKEN_MODES = ("optional", "required")
HUGE_SIZE = 10 * 1024 * 1024


def utc_time(seconds_from_now=0.0):
    """UTC time seconds_from_now from now, as termination-time writes it ("2026-11-27T13:20:00Z")."""
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds_from_now)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch(utc):
    """Unix seconds of a "2026-11-27T13:20:00Z" time."""
    t = datetime.datetime.strptime(utc, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    return int(t.timestamp())


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
        return "Tengine"

    def setup(self):
        super().setup()
        # Headers and body go out in two writes; without this, Nagle and the
        # client's delayed ACK add 40 ms to some answers.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):
        if self.server.fake.verbose:
            sys.stderr.write("fake_alibaba: %s - %s\n" % (self.client_address[1], fmt % args))

    # -- plumbing ------------------------------------------------------------
    def _read_body(self):
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

    def _log(self, entry):
        with self.server.fake._lock:
            self.server.fake._log.append(entry)

    # -- methods -------------------------------------------------------------
    def do_PUT(self):
        entry = self._entry()
        self._read_body()
        self._log(entry)
        entry["status"] = self._put()

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

    def _put(self):
        fake = self.server.fake
        if self.path != TOKEN_PATH:
            return self._send(405 if self.path.startswith("/latest/meta-data") else 404, "")
        if "X-Forwarded-For" in self.headers:
            return self._send(403, "Forbidden")
        asked = self.headers.get(TTL_HEADER, "")
        if not asked.isdigit() or not 1 <= int(asked) <= 21600:
            return self._send(400, "Bad Request")
        granted = min(int(asked), fake.max_ttl)
        token = secrets.token_urlsafe(32)
        with fake._lock:
            fake._tokens[token] = time.monotonic() + granted
            fake.tokens_granted.append((token, granted))
        return self._send(200, token)

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
            return self._send(401, "Unauthorized")

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
            return self._send(200, "<html><body>\x01 not a time</body></html>")
        if fault == "huge":
            return self._huge()
        if fault == "hang":
            return self._hang(fake)
        if fault == "reset":
            return self._reset()
        t = fake.termination_time
        if t is None:
            return self._send(404, "Not Found")
        return self._send(200, t)

    def _huge(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(HUGE_SIZE))
        self.end_headers()
        chunk = b"2026-11-27T13:20:00Z" * 4096
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


class FakeAlibaba:
    """The fake service. Attributes may be changed while it runs."""

    def __init__(self, port=0, token_mode="optional", max_ttl=21600, instance_id="i-bp1test00000000000a",
                 verbose=False):
        if token_mode not in TOKEN_MODES:
            raise ValueError(f"unknown token_mode {token_mode!r}")
        self.port = port
        self.token_mode = token_mode
        self.max_ttl = max_ttl
        self.instance_id = instance_id
        self.termination_time = None      # "2026-11-27T13:20:00Z" or None
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
                                        name="fake_alibaba", daemon=True)
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
    ap = argparse.ArgumentParser(description="Fake Alibaba Cloud ECS metadata service on 127.0.0.1.")
    ap.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    ap.add_argument("--token-mode", choices=TOKEN_MODES, default="optional")
    ap.add_argument("--max-ttl", type=int, default=21600, help="longest token lifetime, in seconds")
    ap.add_argument("--instance-id", default="i-bp1test00000000000a")
    ap.add_argument("--terminate-in", type=float, metavar="SECONDS",
                    help="serve a termination-time this many seconds from now")
    ap.add_argument("--fault", choices=[f for f in FAULTS if f], help="inject a fault into termination-time")
    ap.add_argument("--quiet", action="store_true", help="do not log requests")
    args = ap.parse_args()

    fake = FakeAlibaba(port=args.port, token_mode=args.token_mode, max_ttl=args.max_ttl,
                       instance_id=args.instance_id, verbose=not args.quiet)
    if args.terminate_in is not None:
        fake.termination_time = utc_time(args.terminate_in)
    fake.fault = args.fault
    fake.start()
    print(f"fake_alibaba: serving on {fake.url}", flush=True)
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
