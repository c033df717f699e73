# SPDX-License-Identifier: MIT
"""What the fake metadata servers (fake_imds.py, fake_gcp.py, fake_azure.py,
fake_alibaba.py) share: the HTTP plumbing, none of a cloud's protocol. Like
them it is independent of the daemon's own code: Python 3 standard library
only, bound to 127.0.0.1.

    Server      a ThreadingHTTPServer whose handlers run in daemon threads and
                that stays quiet when a client goes away mid-answer
    Handler     HTTP/1.1 with keep-alive: TCP_NODELAY, open connections
                tracked (Fake._drop_connections), request bodies read, a
                Content-Length on every answer, the request log, and the
                faults the fakes inject alike (500/503/429, garbage, huge,
                hang, reset)
    Fake        start/stop/with, .url and .port, .fault and one-shot faults,
                the thread-safe request log and .requests()
    TokenHandler, TokenFake
                the same plus session tokens as IMDSv2 grants them (AWS,
                and Alibaba's copy of it)
    arg_parser(), parse_args(), serve()
                a fake's command line (its main())
    rfc3339()   a UTC time as "2026-11-27T13:20:00Z"

A fake subclasses Fake (or TokenFake) and Handler (or TokenHandler), and
names its handler in Fake.handler_class. The log is a list of dicts, one per
request, made by Handler._new_entry() (method, path, headers with names
lower-cased, client_port: the TCP peer port, one per connection, time:
time.monotonic() at arrival, status) plus what the fake adds.
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

HUGE_SIZE = 10 * 1024 * 1024


def rfc3339(seconds_from_now=0.0):
    """UTC time seconds_from_now from now, as AWS and Alibaba write it ("2026-11-27T13:20:00Z")."""
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds_from_now)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    # A client that goes away mid-answer is normal here (timeouts, caps, outages): not worth a traceback.
    quiet_errors = (ConnectionError, TimeoutError, OSError)

    def __init__(self, fake, handler_class):
        super().__init__(("127.0.0.1", fake.port), handler_class)
        self.fake = fake

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], self.quiet_errors):
            return
        super().handle_error(request, client_address)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    content_type = "text/plain"     # of answers that name none
    always_headers = ()             # (name, value) pairs that go first on every answer
    garbage_body = "<html><body>\x01 not json {{{ \xff</body></html>"    # the "garbage" fault's
    huge_chunk = b"x" * (64 * 1024)                                      # the "huge" fault's body, repeated

    def setup(self):
        super().setup()
        # Headers and body go out in two writes; without this, Nagle and the
        # client's delayed ACK add 40 ms to some answers.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        fake = self.server.fake
        with fake._lock:
            fake._conns.add(self.connection)

    def finish(self):
        fake = self.server.fake
        with fake._lock:
            fake._conns.discard(self.connection)
        try:
            super().finish()
        except (OSError, ValueError):
            pass

    def log_message(self, fmt, *args):
        fake = self.server.fake
        if fake.verbose:
            sys.stderr.write("%s: %s - %s\n" % (fake.name, self.client_address[1], fmt % args))

    # -- requests and answers -------------------------------------------------
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

    def _send(self, status, body=b"", headers=None, content_type=None):
        """Answer (with a Content-Length, and no body for HEAD); returns status."""
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        for k, v in self.always_headers:
            self.send_header(k, v)
        self.send_header("Content-Type", content_type or self.content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        return status

    # -- the log --------------------------------------------------------------
    def _new_entry(self, path=None, **extra):
        """A log entry for this request: path defaults to the request's, extra adds members."""
        entry = {
            "method": self.command,
            "path": self.path if path is None else path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "client_port": self.client_address[1],
            "time": time.monotonic(),
            "status": None,
        }
        entry.update(extra)
        return entry

    def _log(self, entry):
        self.server.fake._append(entry)

    # -- faults ---------------------------------------------------------------
    def _fault(self, fault):
        """Inject fault if it is one the fakes share: "500", "503", "429" (that status), "garbage" (200,
        .garbage_body), "huge" (200, HUGE_SIZE bytes), "hang", "reset". Returns the status to log, or
        None when fault is None or another one (the caller's to handle)."""
        if fault in ("500", "503", "429"):
            return self._send(int(fault), f"fault {fault}")
        if fault == "garbage":
            return self._send(200, self.garbage_body)
        if fault == "huge":
            return self._huge()
        if fault == "hang":
            return self._hang()
        if fault == "reset":
            return self._reset()
        return None

    def _huge(self):
        """200 with a HUGE_SIZE body of .huge_chunk repeated (the client may hang up first)."""
        self.send_response(200)
        for k, v in self.always_headers:
            self.send_header(k, v)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(HUGE_SIZE))
        self.end_headers()
        chunk = self.huge_chunk
        try:
            sent = 0
            while sent < HUGE_SIZE:
                n = min(len(chunk), HUGE_SIZE - sent)
                self.wfile.write(chunk[:n])
                sent += n
        except OSError:
            self.close_connection = True
        return 200

    def _hang(self):
        """Never answer: close after .hang_seconds, when .fault stops being "hang" or when the fake stops."""
        fake = self.server.fake
        end = time.monotonic() + fake.hang_seconds
        while time.monotonic() < end and fake.fault == "hang" and not fake._stopping.is_set():
            time.sleep(0.02)
        self.close_connection = True
        return "hang"

    def _reset(self):
        """Close the connection with a TCP RST, no answer."""
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
        self.close_connection = True
        return "reset"


class Fake:
    """A fake server on 127.0.0.1: a subclass sets name, handler_class and faults."""

    name = "fake"               # the thread's name and the log lines' prefix
    handler_class = Handler
    server_class = Server
    faults = (None,)            # what set_fault() accepts

    def __init__(self, port=0, verbose=False):
        self.port = port
        self.verbose = verbose
        self.fault = None
        self.hang_seconds = 30.0
        self._log = []
        self._conns = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = None
        self._thread = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle --------------------------------------------------------------
    def _listen(self):
        self._server = self.server_class(self, self.handler_class)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=self.name, daemon=True)
        self._thread.start()

    def _unlisten(self):
        """Close the listening socket (open connections are still served)."""
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None

    def _drop_connections(self):
        """Shut down every open connection."""
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def start(self):
        self._listen()
        return self

    def stop(self):
        self._stopping.set()
        self._unlisten()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    # -- faults -----------------------------------------------------------------
    def _check_fault(self, fault):
        if fault not in self.faults:
            raise ValueError(f"unknown fault {fault!r}")

    def set_fault(self, fault):
        self._check_fault(fault)
        self.fault = fault

    def _fire_once(self, fault):
        """For a one-shot fault: whether .fault is still `fault`, clearing it if so (one request only)."""
        with self._lock:
            fire = self.fault == fault
            if fire:
                self.fault = None
        return fire

    # -- the log ----------------------------------------------------------------
    def _append(self, entry):
        with self._lock:
            self._log.append(entry)

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


# -- session tokens, as IMDSv2 has them -----------------------------------------
class TokenHandler(Handler):
    """A PUT gets a token, a GET may carry one in .token_header. The log entry adds token (the header's
    value or None) and token_ok (None until a sent token is checked). A subclass defines _put(entry) and
    _get(entry), which answer and return the status to log; other methods get 405."""

    token_header = None
    missing_token_ok = None         # token_ok logged for a GET refused for want of a token

    def _entry(self):
        return self._new_entry(token=self.headers.get(self.token_header), token_ok=None)

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

    def _grant_token(self, ttl_header, echo_ttl):
        """The token PUT, its path checked: 403 through a proxy (X-Forwarded-For), 400 unless ttl_header
        asks for 1..21600 seconds, else 200 with a token good for min(asked, .max_ttl) seconds, the
        granted TTL in ttl_header too when echo_ttl."""
        if "X-Forwarded-For" in self.headers:
            return self._send(403, "Forbidden")
        asked = self.headers.get(ttl_header, "")
        if not asked.isdigit() or not 1 <= int(asked) <= 21600:
            return self._send(400, "Bad Request")
        token, granted = self.server.fake._new_token(int(asked))
        return self._send(200, token, {ttl_header: str(granted)} if echo_ttl else None)

    def _check_token(self, entry, required):
        """401 (answered and returned) for a token that is not valid, or for none when required; else
        None. Sets entry["token_ok"]."""
        token = entry["token"]
        if token is not None:
            entry["token_ok"] = self.server.fake._token_valid(token)
            if not entry["token_ok"]:
                return self._send(401, "Unauthorized")
        elif required:
            entry["token_ok"] = self.missing_token_ok
            return self._send(401, "Unauthorized")
        return None


class TokenFake(Fake):
    """A Fake that grants session tokens (.token_bytes random bytes, URL-safe base64)."""

    token_bytes = 32

    def __init__(self, port=0, max_ttl=21600, verbose=False):
        super().__init__(port=port, verbose=verbose)
        self.max_ttl = max_ttl
        self.tokens_granted = []          # (token, granted TTL) in order
        self._tokens = {}

    def _new_token(self, asked_ttl):
        granted = min(asked_ttl, self.max_ttl)
        token = secrets.token_urlsafe(self.token_bytes)
        with self._lock:
            self._tokens[token] = time.monotonic() + granted
            self.tokens_granted.append((token, granted))
        return token, granted

    def _token_valid(self, token):
        with self._lock:
            expiry = self._tokens.get(token)
        return expiry is not None and time.monotonic() < expiry


# -- the command line ------------------------------------------------------------
def arg_parser(description):
    """An ArgumentParser with --port; add the fake's own options, then call parse_args()."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    return ap


def parse_args(ap, faults=None, fault_target=None):
    """Add --fault (choices: faults but None) when faults are given, and --quiet; parse."""
    if faults:
        ap.add_argument("--fault", choices=[f for f in faults if f], help=f"inject a fault into {fault_target}")
    ap.add_argument("--quiet", action="store_true", help="do not log requests")
    return ap.parse_args()


def serve(fake):
    """Start fake, say where, and serve until Ctrl-C; returns the exit status."""
    fake.start()
    print(f"{fake.name}: serving on {fake.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0
