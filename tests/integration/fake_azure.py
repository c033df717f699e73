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

The HTTP plumbing (server, keep-alive handler, log, command line) is
fakebase.py's, shared with the other fakes.
"""
import email.utils
import json
import sys
import time
import urllib.parse
import uuid

import fakebase

EVENTS_PATH = "/metadata/scheduledevents"
NAME_PATH = "/metadata/instance/compute/name"
VM_ID_PATH = "/metadata/instance/compute/vmId"
RATE_MAX = 5
EVENT_TYPES = ("Preempt", "Terminate", "Reboot", "Redeploy", "Freeze")
FAULTS = (None, "500", "503", "429", "429-once", "garbage", "bad-types", "reset")


def rfc1123(seconds_from_now=0.0):
    """Wall-clock time seconds_from_now from now, as Azure writes NotBefore ("Mon, 19 Sep 2016 18:29:47 GMT")."""
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


class _Handler(fakebase.Handler):
    content_type = "application/json; charset=utf-8"

    def _error(self, status, message, **extra):
        return self._send(status, json.dumps({"error": message, **extra}))

    # -- methods -------------------------------------------------------------
    def _handle(self):
        fake = self.server.fake
        url = urllib.parse.urlsplit(self.path)
        body = self._read_body() if self.command in ("POST", "PUT", "PATCH") else b""
        entry = self._new_entry(path=url.path, query=urllib.parse.parse_qs(url.query, keep_blank_values=True),
                                body=body, done=None)
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
            return self._send(200, fake.vm_name if url.path == NAME_PATH else fake.vm_id,
                              content_type="text/plain; charset=utf-8")
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
            fault = "429" if fake._fire_once("429-once") else None
        if fault in ("500", "503"):
            return self._error(int(fault), "Internal error")
        if fault == "429":
            return self._error(429, "Too many requests")
        if fault == "garbage":
            return self._send(200, self.garbage_body, content_type="text/html")
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


class FakeAzure(fakebase.Fake):
    """The fake service. Attributes and events may be changed while it runs."""

    name = "fake_azure"
    handler_class = _Handler
    faults = FAULTS

    def __init__(self, port=0, vm_name="spotwatch-test-vm", vm_id="7a5e0c3e-1f2b-4c4d-8e9f-0a1b2c3d4e5f",
                 verbose=False):
        super().__init__(port=port, verbose=verbose)
        self.vm_name = vm_name
        self.vm_id = vm_id
        self.first_call_delay = 0.0
        self.incarnation = 1
        self.acks = []                    # EventIds from StartRequests, in order
        # .fault: one of FAULTS: see fakebase
        self._events = []
        self._first_call_done = False
        self._arrivals = []

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

    # -- log ---------------------------------------------------------------------
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
    ap = fakebase.arg_parser("Fake Azure IMDS (Scheduled Events) on 127.0.0.1.")
    ap.add_argument("--vm-name", default="spotwatch-test-vm")
    ap.add_argument("--event", choices=EVENT_TYPES, help="serve an event for this VM")
    ap.add_argument("--in", dest="in_seconds", type=float, default=60.0, help="its NotBefore, seconds from now")
    ap.add_argument("--first-call-delay", type=float, default=0.0, help="seconds the first call takes")
    args = fakebase.parse_args(ap, FAULTS, "scheduledevents")

    fake = FakeAzure(port=args.port, vm_name=args.vm_name, verbose=not args.quiet)
    fake.first_call_delay = args.first_call_delay
    fake.fault = args.fault
    if args.event:
        fake.add_event(args.event, args.in_seconds)
    return fakebase.serve(fake)


if __name__ == "__main__":
    sys.exit(main())
