#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A fake Azure Instance Metadata Service (Scheduled Events) for tests,
independent of the daemon's own code: Python 3 standard library only,
HTTP/1.1 with keep-alive and a Content-Length on every answer, bound to
127.0.0.1.

As a module:

    fake = FakeAzure(vm_name="my-vm").start()
    eid = fake.add_event("Preempt", not_before=45)      # seconds from now
    fake.add_event("Reboot", resources=["other-vm"])    # another VM's event
    ... fake.requests(path="/metadata/scheduledevents") ... fake.acks ...
    fake.remove_event(eid)
    fake.stop()

As a script, for trying things by hand:

    python3 fake_azure.py --port 8080 --event Preempt --in 60

Rules, as IMDS has them: every request needs "Metadata: true" and an
api-version query argument and must not carry X-Forwarded-For (else 400 with
{"error": "..."}); more than RATE_MAX requests in any one second get 429;
leaf nodes (compute/name, compute/vmId) need format=text.

Served paths:
    GET  /metadata/scheduledevents        {"DocumentIncarnation": N, "Events": [...]}
    POST /metadata/scheduledevents        {"StartRequests": [{"EventId": ...}, ...]}: each EventId must be
                                          a current event (else 400); they become Started with NotBefore "",
                                          the incarnation goes up, the ids are appended to .acks
    GET  /metadata/instance/compute/name  .vm_name (format=text)
    GET  /metadata/instance/compute/vmId  .vm_id (format=text)

.first_call_delay (seconds): the first scheduledevents GET is answered only
after that long, as when the first call switches the service on.

Faults (.fault, settable at any time; they hit scheduledevents GETs after the
header checks): None, "500", "503", "429", "429-once" (the next GET only),
"garbage" (200, not JSON), "bad-types" (200, JSON with mistyped members),
"reset" (close with a TCP RST, no answer).

The request log (.requests()) is a list of dicts: method, path (without the
query), query (dict of lists, as urllib.parse.parse_qs gives it), headers
(names lower-cased), body (bytes), client_port, time (time.monotonic() at
arrival), done (time.monotonic() when answered, or None), status (int, or
"reset").
"""
import argparse
import email.utils
import http.server
import json
import socket
import struct
import sys
import threading
import time
import urllib.parse
import uuid

EVENTS_PATH = "/metadata/scheduledevents"
NAME_PATH = "/metadata/instance/compute/name"
VM_ID_PATH = "/metadata/instance/compute/vmId"
RATE_MAX = 5
EVENT_TYPES = ("Preempt", "Terminate", "Reboot", "Redeploy", "Freeze")
FAULTS = (None, "500", "503", "429", "429-once", "garbage", "bad-types", "reset")


def rfc1123(seconds_from_now=0.0):
    """Wall-clock time seconds_from_now from now, as Azure writes NotBefore ("Mon, 19 Sep 2016 18:29:47 GMT")."""
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


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

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):
        if self.server.fake.verbose:
            sys.stderr.write("fake_azure: %s - %s\n" % (self.client_address[1], fmt % args))

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

    def _send(self, status, body=b"", content_type="application/json; charset=utf-8"):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return status

    def _error(self, status, message, **extra):
        return self._send(status, json.dumps({"error": message, **extra}))

    def _reset(self):
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
        self.close_connection = True
        return "reset"

    # -- methods -------------------------------------------------------------
    def _handle(self):
        fake = self.server.fake
        url = urllib.parse.urlsplit(self.path)
        body = self._read_body() if self.command in ("POST", "PUT", "PATCH") else b""
        entry = {
            "method": self.command,
            "path": url.path,
            "query": urllib.parse.parse_qs(url.query, keep_blank_values=True),
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
            "client_port": self.client_address[1],
            "time": time.monotonic(),
            "done": None,
            "status": None,
        }
        with fake._lock:
            # Sliding window over every request that arrived, throttled ones included.
            recent = [t for t in fake._arrivals if entry["time"] - t < 1.0]
            throttled = len(recent) >= RATE_MAX
            fake._arrivals = recent + [entry["time"]]
            fake._log.append(entry)
        if throttled:
            entry["status"] = self._error(429, "Too many requests")
        else:
            entry["status"] = self._route(fake, entry, url)
        entry["done"] = time.monotonic()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    def _route(self, fake, entry, url):
        q = entry["query"]
        if not url.path.startswith("/metadata/"):
            return self._error(404, "Not found")
        if "x-forwarded-for" in entry["headers"]:
            return self._error(400, "Bad request. Requests through a proxy are not allowed.")
        if entry["headers"].get("metadata", "").lower() != "true":
            return self._error(400, "Bad request. Required metadata header not specified")
        if not q.get("api-version", [""])[0]:
            return self._error(400, "Bad request. api-version was not specified in the request. For more "
                               "information refer to aka.ms/azureimds",
                               **{"newest-versions": ["2023-07-01", "2021-12-13", "2021-02-01"]})
        if url.path == EVENTS_PATH:
            if self.command == "GET":
                return self._document(fake)
            if self.command == "POST":
                return self._start_requests(fake, entry["body"])
            return self._error(405, "Method not allowed")
        if url.path in (NAME_PATH, VM_ID_PATH):
            if self.command != "GET":
                return self._error(405, "Method not allowed")
            if q.get("format", [""])[0] != "text":
                return self._error(400, "Bad request. Leaf nodes only support text format.")
            return self._send(200, fake.vm_name if url.path == NAME_PATH else fake.vm_id, "text/plain; charset=utf-8")
        return self._error(404, "Not found")

    def _document(self, fake):
        with fake._lock:
            first = not fake._first_call_done
            fake._first_call_done = True
        if first and fake.first_call_delay > 0:
            end = time.monotonic() + fake.first_call_delay
            while time.monotonic() < end and not fake._stopping.is_set():
                time.sleep(0.02)
        fault = fake.fault
        if fault == "429-once":
            with fake._lock:
                fire = fake.fault == "429-once"
                if fire:
                    fake.fault = None
            fault = "429" if fire else None
        if fault in ("500", "503"):
            return self._error(int(fault), "Internal error")
        if fault == "429":
            return self._error(429, "Too many requests")
        if fault == "garbage":
            return self._send(200, "<html><body>\x01 not json {{{ \xff</body></html>", "text/html")
        if fault == "bad-types":
            return self._send(200, json.dumps({"DocumentIncarnation": "x", "Events": {"EventId": 5}}))
        if fault == "reset":
            return self._reset()
        return self._send(200, json.dumps(fake.document()))

    def _start_requests(self, fake, body):
        try:
            doc = json.loads(body)
            ids = [r["EventId"] for r in doc["StartRequests"]]
            if not ids or not all(isinstance(i, str) for i in ids):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return self._error(400, "Bad request. Invalid request body.")
        with fake._lock:
            known = {e["EventId"]: e for e in fake._events}
            if not all(i in known for i in ids):
                return self._error(400, "Bad request. Invalid or unknown EventId.")
            for i in ids:
                known[i]["EventStatus"] = "Started"
                known[i]["NotBefore"] = ""
                fake.acks.append(i)
            fake.incarnation += 1
        return self._send(200, "")


class FakeAzure:
    """The fake service. Attributes and events may be changed while it runs."""

    def __init__(self, port=0, vm_name="spotwatch-test-vm", vm_id="7a5e0c3e-1f2b-4c4d-8e9f-0a1b2c3d4e5f",
                 verbose=False):
        self.port = port
        self.vm_name = vm_name
        self.vm_id = vm_id
        self.first_call_delay = 0.0
        self.fault = None
        self.incarnation = 1
        self.acks = []                    # EventIds from StartRequests, in order
        self.verbose = verbose
        self._events = []
        self._first_call_done = False
        self._arrivals = []
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
                                        name="fake_azure", daemon=True)
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

    # -- events ----------------------------------------------------------------
    def add_event(self, event_type, not_before=60.0, resources=None, event_id=None, status="Scheduled",
                  source="Platform", duration=-1, description=""):
        """Serve a new event; not_before is seconds from now, or a string as served (e.g. ""). Returns its id."""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown EventType {event_type!r}")
        event_id = event_id or str(uuid.uuid4()).upper()
        ev = {
            "EventId": event_id,
            "EventStatus": status,
            "EventType": event_type,
            "ResourceType": "VirtualMachine",
            "Resources": list(resources) if resources is not None else [self.vm_name],
            "NotBefore": not_before if isinstance(not_before, str) else rfc1123(not_before),
            "Description": description,
            "EventSource": source,
            "DurationInSeconds": duration,
        }
        with self._lock:
            self._events.append(ev)
            self.incarnation += 1
        return event_id

    def remove_event(self, event_id):
        with self._lock:
            self._events = [e for e in self._events if e["EventId"] != event_id]
            self.incarnation += 1

    def clear_events(self):
        with self._lock:
            self._events = []
            self.incarnation += 1

    def event(self, event_id):
        with self._lock:
            for e in self._events:
                if e["EventId"] == event_id:
                    return dict(e)
        return None

    def document(self):
        with self._lock:
            return {"DocumentIncarnation": self.incarnation, "Events": [dict(e) for e in self._events]}

    def set_fault(self, fault):
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        self.fault = fault

    # -- log ---------------------------------------------------------------------
    def requests(self, method=None, path=None, since=None):
        """A copy of the request log, optionally filtered; since = a time.monotonic() value."""
        with self._lock:
            log = [dict(e) for e in self._log]
        return [e for e in log
                if (method is None or e["method"] == method)
                and (path is None or e["path"] == path)
                and (since is None or e["time"] >= since)]

    def max_in_window(self, window=1.0, log=None):
        """The most requests that arrived within any `window` seconds."""
        times = sorted(e["time"] for e in (log if log is not None else self.requests()))
        best, j = 0, 0
        for i, t in enumerate(times):
            while t - times[j] >= window:
                j += 1
            best = max(best, i - j + 1)
        return best


def main():
    ap = argparse.ArgumentParser(description="Fake Azure IMDS (Scheduled Events) on 127.0.0.1.")
    ap.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    ap.add_argument("--vm-name", default="spotwatch-test-vm")
    ap.add_argument("--event", choices=EVENT_TYPES, help="serve an event for this VM")
    ap.add_argument("--in", dest="in_seconds", type=float, default=60.0, help="its NotBefore, seconds from now")
    ap.add_argument("--first-call-delay", type=float, default=0.0, help="seconds the first call takes")
    ap.add_argument("--fault", choices=[f for f in FAULTS if f], help="inject a fault into scheduledevents")
    ap.add_argument("--quiet", action="store_true", help="do not log requests")
    args = ap.parse_args()

    fake = FakeAzure(port=args.port, vm_name=args.vm_name, verbose=not args.quiet)
    fake.first_call_delay = args.first_call_delay
    fake.fault = args.fault
    if args.event:
        fake.add_event(args.event, args.in_seconds)
    fake.start()
    print(f"fake_azure: serving on {fake.url}", flush=True)
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
