#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A fake GCP metadata server for tests, independent of the daemon's own code
(daemon/fake-gcp.c): Python 3 standard library only, HTTP/1.1 with
keep-alive and a Content-Length on every answer, bound to 127.0.0.1.

As a module:

    fake = FakeGcp().start()
    fake.set_value(PREEMPTED, "TRUE")
    ... fake.requests(path=PREEMPTED) ...
    fake.stop()

As a script, for trying things by hand:

    python3 fake_gcp.py --port 8080 [--preempted] [--maintenance TERMINATE_ON_HOST_MAINTENANCE]

Served paths, under /computeMetadata/v1/ (names below are relative to it):
    instance/preempted                   "FALSE" or "TRUE"
    instance/maintenance-event           "NONE", "MIGRATE_ON_HOST_MAINTENANCE", "TERMINATE_ON_HOST_MAINTENANCE"
    instance/id, instance/hostname
    instance/attributes/shutdown-script  404 unless set
As GCP does: a request without "Metadata-Flavor: Google" or with
X-Forwarded-For is answered 403; every answer carries "Metadata-Flavor:
Google" and every value answer an ETag (16 hex digits, new on every change
of the value). ?wait_for_change=true is a hanging GET: answered at once when
last_etag is given and differs from the current ETag, else held until the
value changes or timeout_sec (default and at most .max_wait) passes, when
the unchanged value and ETag are served.

Faults (.fault, with .fault_count = how many requests it hits, None = until
cleared; or .set_faults([...]) for one fault per request, in order; they
hit the paths in .fault_paths, the two watched ones by default, after the
header checks): None, "503", "429", "reset" (close with
a TCP RST, no answer), "hang" (never answer; close after .hang_seconds or
when the fault changes). .outage(seconds, during) closes the listening
socket and every open connection (connections are refused), calls
during() (e.g. to change a value), and listens again on the same port after
the given seconds.

The request log (.requests()) is a list of dicts: method, path (relative to
/computeMetadata/v1/, query removed; the full path for others), query (dict
of the query arguments), headers (names lower-cased), client_port (one per
TCP connection), time (time.monotonic() at arrival), status (int, or
"reset"/"hang"/"dropped"), value and etag (of a 200 answer), held (the
request was a hanging GET that waited), answered (time.monotonic() right
after the answer was written).

The HTTP plumbing (server, keep-alive handler, log, faults, command line) is
fakebase.py's, shared with the other fakes.
"""
import hashlib
import sys
import threading
import time
import urllib.parse

import fakebase

PREFIX = "/computeMetadata/v1/"
PREEMPTED = "instance/preempted"
MAINTENANCE = "instance/maintenance-event"
INSTANCE_ID = "instance/id"
HOSTNAME = "instance/hostname"
SHUTDOWN_SCRIPT = "instance/attributes/shutdown-script"
FAULTS = (None, "503", "429", "reset", "hang")
MAINTENANCE_VALUES = ("NONE", "MIGRATE_ON_HOST_MAINTENANCE", "TERMINATE_ON_HOST_MAINTENANCE")


class _Server(fakebase.Server):
    # An outage closes connections under the handlers' feet.
    quiet_errors = fakebase.Server.quiet_errors + (ValueError,)


class _Handler(fakebase.Handler):
    content_type = "text/html; charset=UTF-8"
    always_headers = (("Metadata-Flavor", "Google"),)

    def version_string(self):
        return "Metadata Server for VM"

    # -- plumbing ------------------------------------------------------------
    def _send(self, status, body=b"", headers=None, content_type=None):
        entry = getattr(self, "_entry_now", None)
        if entry is not None:
            entry["status"] = status
        super()._send(status, body, headers, content_type)
        if entry is not None:
            entry["answered"] = time.monotonic()
            if status == 200:
                self.server.fake._on_answered(entry)
        return status

    def _entry(self):
        split = urllib.parse.urlsplit(self.path)
        return self._new_entry(
            path=split.path[len(PREFIX):] if split.path.startswith(PREFIX) else split.path,
            query=dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True)),
            value=None, etag=None, held=False, answered=None)

    def _logged(self, answer):
        """Log the request, then answer(fake, entry), which returns the status to log."""
        entry = self._entry()
        self._log(entry)
        self._entry_now = entry
        try:
            entry["status"] = answer(self.server.fake, entry)
        finally:
            self._entry_now = None

    # -- methods -------------------------------------------------------------
    def do_GET(self):
        self._logged(self._get)

    def _other(self):
        self._read_body()
        self._logged(lambda fake, entry: self._send(405, "Method Not Allowed"))

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _other

    def _get(self, fake, entry):
        if "X-Forwarded-For" in self.headers:
            return self._send(403, "Your client does not have permission to get URL from this server.")
        if self.headers.get("Metadata-Flavor") != "Google":
            return self._send(403, "Your client does not have permission to get URL from this server. "
                                   "Missing Metadata-Flavor:Google header.")
        if not urllib.parse.urlsplit(self.path).path.startswith(PREFIX):
            return self._send(404, "Not Found")
        key = entry["path"]
        status = self._fault(fake._take_fault(key))
        if status is not None:
            return status

        q = entry["query"]
        with fake._cond:
            if key not in fake._values:
                pass
            elif q.get("wait_for_change") == "true":
                try:
                    timeout = min(float(q.get("timeout_sec", fake.max_wait)), fake.max_wait)
                except ValueError:
                    return self._send(400, "Invalid timeout_sec")
                current = fake._etags[key]
                last = q.get("last_etag")
                # A stale ETag means the client missed a change: it gets the value at once.
                if last is None or last == current:
                    entry["held"] = True
                    epoch = fake._epoch
                    fake._cond.wait_for(lambda: fake._etags.get(key) != current or fake._epoch != epoch
                                        or fake._stopping.is_set(), max(timeout, 0.0))
                    if fake._epoch != epoch or fake._stopping.is_set():
                        entry["status"] = "dropped"
                        self.close_connection = True
                        return "dropped"
            value = fake._values.get(key)
            etag = fake._etags.get(key)
        if value is None:
            return self._send(404, "Not Found")
        entry["value"] = value
        entry["etag"] = etag
        return self._send(200, value, {"ETag": etag}, content_type="application/text")

    # The log shows these while they last.
    def _hang(self):
        self._entry_now["status"] = "hang"
        return super()._hang()

    def _reset(self):
        self._entry_now["status"] = "reset"
        return super()._reset()


class FakeGcp(fakebase.Fake):
    """The fake server. Values and faults may be changed while it runs."""

    name = "fake_gcp"
    handler_class = _Handler
    server_class = _Server
    faults = FAULTS

    def __init__(self, port=0, instance_id="4520031799277581759", hostname="vm-1.c.project.internal",
                 verbose=False):
        super().__init__(port=port, verbose=verbose)
        self.max_wait = 3600.0
        self.fault_count = None
        self.fault_paths = (PREEMPTED, MAINTENANCE)
        # .fault: one of FAULTS; .hang_seconds: see fakebase
        self._fault_queue = []
        self.flips = []            # (time.monotonic(), path, value, etag) for every change
        self.answers = []          # (answered, path, value, etag, client_port) of every 200
        self._values = {}
        self._etags = {}
        self._changes = 0
        self._epoch = 0
        self._cond = threading.Condition(self._lock)
        for path, value in ((PREEMPTED, "FALSE"), (MAINTENANCE, "NONE"), (INSTANCE_ID, instance_id),
                            (HOSTNAME, hostname)):
            self.set_value(path, value)

    # -- lifecycle -------------------------------------------------------------
    def _unlisten(self):
        """Close the listening socket and every connection; wake held requests (they drop)."""
        super()._unlisten()
        with self._cond:
            self._epoch += 1
            self._cond.notify_all()
        self._drop_connections()

    def outage(self, seconds, during=None):
        """Refuse connections for `seconds` (dropping those open); call during() meanwhile."""
        self._unlisten()
        t_end = time.monotonic() + seconds
        if during:
            during()
        time.sleep(max(0.0, t_end - time.monotonic()))
        self._listen()

    # -- values ------------------------------------------------------------------
    def set_value(self, path, value):
        """Serve `value` (None: 404) at `path`; a change gets a new ETag and wakes
        hanging GETs. Returns the flip time (time.monotonic())."""
        with self._cond:
            if path in self._values and self._values[path] == value:
                return None
            self._changes += 1
            if value is None:
                self._values.pop(path, None)
                self._etags.pop(path, None)
            else:
                self._values[path] = value
                self._etags[path] = hashlib.sha256(f"{path}\0{value}\0{self._changes}".encode()).hexdigest()[:16]
            t = time.monotonic()
            self.flips.append((t, path, value, self._etags.get(path)))
            self._cond.notify_all()
            return t

    def value(self, path):
        with self._lock:
            return self._values.get(path)

    def etag(self, path):
        with self._lock:
            return self._etags.get(path)

    # -- faults ------------------------------------------------------------------
    def set_fault(self, fault, count=None, paths=None):
        self._check_fault(fault)
        with self._lock:
            self.fault = fault
            self.fault_count = count
            if paths is not None:
                self.fault_paths = tuple(paths)

    def set_faults(self, faults, paths=None):
        """Hit the next len(faults) requests to .fault_paths with these faults, in order."""
        for f in faults:
            self._check_fault(f)
        with self._lock:
            self._fault_queue = list(faults)
            if paths is not None:
                self.fault_paths = tuple(paths)

    def _take_fault(self, path):
        with self._lock:
            if path not in self.fault_paths:
                return None
            if self._fault_queue:
                return self._fault_queue.pop(0)
            if self.fault is None:
                return None
            fault = self.fault
            if self.fault_count is not None:
                self.fault_count -= 1
                if self.fault_count <= 0:
                    self.fault = None
                    self.fault_count = None
            return fault

    def _on_answered(self, entry):
        with self._lock:
            self.answers.append((entry["answered"], entry["path"], entry["value"], entry["etag"],
                                 entry["client_port"]))

    # -- the log -------------------------------------------------------------------
    def requests(self, path=None, since=None):
        """A copy of the request log, optionally filtered; since = a time.monotonic() value."""
        return super().requests(path=path, since=since)


def main():
    ap = fakebase.arg_parser("Fake GCP metadata server on 127.0.0.1.")
    ap.add_argument("--preempted", action="store_true", help="serve instance/preempted = TRUE")
    ap.add_argument("--maintenance", choices=MAINTENANCE_VALUES, default="NONE")
    ap.add_argument("--shutdown-script", metavar="FILE", help="serve this file as the shutdown-script attribute")
    args = fakebase.parse_args(ap)

    fake = FakeGcp(port=args.port, verbose=not args.quiet)
    if args.preempted:
        fake.set_value(PREEMPTED, "TRUE")
    fake.set_value(MAINTENANCE, args.maintenance)
    if args.shutdown_script:
        with open(args.shutdown_script) as f:
            fake.set_value(SHUTDOWN_SCRIPT, f.read())
    return fakebase.serve(fake)


if __name__ == "__main__":
    sys.exit(main())
