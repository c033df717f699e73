#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Real object stores for the upload tests, and the tools to watch and break
the traffic to them. Python 3.11 standard library only; everything binds to
127.0.0.1 and talks to nothing else.

Stores (each: start()/stop(), a context manager, .endpoint, keys as attributes)

    Rgw         a real Ceph RADOS Gateway (Debian's radosgw, Ceph 16.2): one
                ceph-mon + one ceph-osd (memstore: data in RAM, only what is
                stored) + radosgw (beast), in a temp dir. About 2 s to start
                (19 s with Ceph's default paxos timing: see _conf_text).
                It verifies SigV4, x-amz-content-sha256, Content-MD5
                (400 BadDigest), part ETags (400 InvalidPart) and the 5 MiB
                minimum part (400 EntityTooSmall). It ignores x-amz-checksum-*,
                and its CompleteMultipartUpload answer has an empty <ETag>
                (HEAD has the right one). Rgw.get() shares one cluster: the
                one named by $SPOTWATCH_TEST_RGW, else a private one.
    S3rver      npm @20minutes/s3rver 5.0.0: verifies SigV4 signatures only
                (not payload hashes, Content-MD5 nor part rules; no abort).
    Azurite     Microsoft's Azure Storage emulator (npm azurite, blob only),
                path-style: endpoint http://127.0.0.1:P/devstoreaccount1.
    GcsRecorder a recording server speaking GCS's XML API (no GCS emulator
                speaks it; see its docstring).

Clients (pure Python, for reading back and for setting up)

    S3Client        SigV4, path-style; works against Rgw and S3rver
    AzureBlobClient Shared Key; works against Azurite
    GcsXmlClient    Bearer token, the XML API; works against GcsRecorder

Traffic tools

    FaultProxy  an HTTP/1.1 reverse proxy that logs every request and, by
                rules set while it runs, answers 5xx itself, drops the
                connection mid-body, corrupts a byte or delays
    HttpSink    reads and discards bodies as fast as it can; fakes the S3
                (and GCS XML, and Azure block) upload answers, for benchmarks

npm packages are installed on first use into
${SPOTWATCH_NPM_CACHE:-/var/cache/spotwatchd-tests/npm}/NAME (scripts/deps.sh,
need_npm_packages, does the same ahead of time). When a store cannot run
(packages missing, npm unreachable), start() raises Unavailable with the
reason: a test must fail on it, not skip.

Command line (the shared RGW of scripts/test, and stores by hand):

    stores.py rgw-start DIR [--mem BYTES]   start, daemonised (pids in DIR/run);
                                            prints "ENDPOINT ACCESS SECRET DIR",
                                            the value for $SPOTWATCH_TEST_RGW
    stores.py rgw-stop DIR                  stop it and delete what it made in DIR
    stores.py serve rgw|s3rver|azurite|gcs|sink   run one in the foreground
    stores.py npm-install                   install the npm packages if missing
"""
import base64
import datetime
import errno
import fcntl
import hashlib
import hmac
import http.client
import http.server
import itertools
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET

MiB = 1024 * 1024
GiB = 1024 * MiB

# npm packages: cache sub-directory -> (package name, install spec). Keep in
# step with NPM_PACKAGES in scripts/deps.sh. azurite 3.36 and later need node
# >= 21; 3.35.0 is the newest that runs on node 20.
NPM_PACKAGES = {
    "s3rver": ("@20minutes/s3rver", "@20minutes/s3rver@5.0.0"),
    "azurite": ("azurite", "azurite@3.35.0"),
}

AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public, in its README): not a secret.
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class Unavailable(Exception):
    """A store cannot run here; the message says why and what to install."""


class S3Error(Exception):
    """A store answered an error: .status, .code (the XML <Code>), .body."""

    def __init__(self, status, code, message, body=b""):
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status, self.code, self.message, self.body = status, code, message, body


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------

def free_port():
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unique_name(prefix="t"):
    """A fresh lower-case name, valid as a bucket or container name."""
    return f"{prefix}-{secrets.token_hex(6)}"


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(4 * MiB)
            if not b:
                return h.hexdigest()
            h.update(b)


def make_file(path, size, seed=None):
    """Write size pseudo-random bytes (fast: a 1 MiB random block, varied per
    MiB) to path; returns its sha256 hex."""
    rnd = os.urandom(MiB) if seed is None else hashlib.sha256(str(seed).encode()).digest() * (MiB // 32)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left, i = size, 0
        while left > 0:
            block = struct.pack("<Q", i) + rnd[8:]
            n = min(left, MiB)
            f.write(block[:n])
            h.update(block[:n])
            left -= n
            i += 1
    return h.hexdigest()


def md5_b64(data):
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def _strip_ns(tag):
    return tag.rsplit("}", 1)[-1]


def xml_items(body, tag):
    """Each element named tag (any namespace) in body as a dict of its
    children's texts (child name without namespace -> text)."""
    if not body:
        return []
    root = ET.fromstring(body)
    out = []
    for el in root.iter():
        if _strip_ns(el.tag) == tag:
            out.append({_strip_ns(c.tag): (c.text or "") for c in el})
    return out


def xml_text(body, tag):
    """The text of the first element named tag (any namespace), or None."""
    if not body:
        return None
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    for el in root.iter():
        if _strip_ns(el.tag) == tag:
            return el.text or ""
    return None


def signed_headers(authorization):
    """The SignedHeaders list of a SigV4 Authorization header value."""
    m = re.search(r"SignedHeaders=([^,\s]+)", authorization or "")
    return m.group(1).split(";") if m else []


def _which(*names):
    return [n for n in names if shutil.which(n) is None]


def _pid_alive(pid):
    """True while pid runs (a zombie counts as gone: PID 1 may not reap it soon)."""
    if not pid or pid <= 0:        # never kill(0 or -1, ...): that is a process group / everyone
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _stop_pid(pid, timeout=20.0, sig=signal.SIGTERM):
    """Send sig, wait up to timeout for the process to go, then SIGKILL it."""
    if not _pid_alive(pid):
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    end = time.monotonic() + timeout
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:      # a child of ours
                return
        except ChildProcessError:
            pass
        if not _pid_alive(pid):
            return
        if time.monotonic() > end:
            break
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def rss_bytes(pid):
    """Resident memory of a process (VmRSS), or 0."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# ---------------------------------------------------------------------------
# npm
# ---------------------------------------------------------------------------

def npm_cache_dir():
    """$SPOTWATCH_NPM_CACHE, else /var/cache/spotwatchd-tests/npm when it is
    (or can be made) writable, else ~/.cache/spotwatchd-tests/npm."""
    d = os.environ.get("SPOTWATCH_NPM_CACHE")
    if d:
        return d
    d = "/var/cache/spotwatchd-tests/npm"
    try:
        os.makedirs(d, exist_ok=True)
        if os.access(d, os.W_OK):
            return d
    except OSError:
        pass
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "spotwatchd-tests", "npm")


def npm_package(name):
    """The directory holding node_modules/ for NPM_PACKAGES[name], installed
    there with npm if not yet (under a lock: tests run in parallel). The
    marker file .spotwatch-installed holds the install spec once complete."""
    pkg, spec = NPM_PACKAGES[name]
    d = os.path.join(npm_cache_dir(), name)
    marker = os.path.join(d, ".spotwatch-installed")

    def done():
        try:
            with open(marker) as f:
                return f.read().strip() == spec
        except OSError:
            return False

    if done():
        return d
    missing = _which("node", "npm")
    if missing:
        raise Unavailable(f"{' and '.join(missing)} not found: run `. scripts/deps.sh; need_packages stores`"
                          " (nodejs and npm from Debian, or any node >= 20 with npm on PATH)")
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as e:
        raise Unavailable(f"cannot create the npm cache {d}: {e} (set SPOTWATCH_NPM_CACHE)") from e
    with open(d + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done():
            return d
        pj = os.path.join(d, "package.json")
        if not os.path.exists(pj):
            with open(pj, "w") as f:
                f.write('{"private": true}\n')
        t0 = time.monotonic()
        p = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", spec],
                           cwd=d, capture_output=True, text=True, timeout=600)
        if p.returncode != 0 or not os.path.exists(os.path.join(d, "node_modules", pkg, "package.json")):
            raise Unavailable(f"npm install {spec} into {d} failed ({p.returncode}):\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
        with open(marker, "w") as f:
            f.write(spec + "\n")
        sys.stderr.write(f"stores: installed {spec} into {d} in {time.monotonic() - t0:.1f} s\n")
    return d


# ---------------------------------------------------------------------------
# HTTP clients: S3 (SigV4), Azure Blob (Shared Key), GCS XML (Bearer)
# ---------------------------------------------------------------------------

class Response:
    """An answer: .status, .reason, .headers (names lower-cased), .body (bytes)."""

    def __init__(self, status, reason, headers, body):
        self.status, self.reason, self.headers, self.body = status, reason, headers, body

    @property
    def code(self):
        """The error <Code> of an XML error body, or None."""
        return xml_text(self.body, "Code")

    def __repr__(self):
        return f"<Response {self.status} {self.code or ''} {len(self.body)} bytes>"


class FileRange:
    """A request body read from path[offset:offset+length] (os.pread, never
    all in memory)."""

    def __init__(self, path, offset=0, length=None):
        self.path, self.offset = path, offset
        self.length = os.path.getsize(path) - offset if length is None else length

    def __len__(self):
        return self.length

    def reader(self):
        return _RangeReader(self)

    def digest(self, algo):
        h = hashlib.new(algo)
        r = self.reader()
        while True:
            b = r.read(4 * MiB)
            if not b:
                r.close()
                return h.digest()
            h.update(b)


class _RangeReader:
    def __init__(self, fr):
        self.fd = os.open(fr.path, os.O_RDONLY)
        self.pos, self.end = fr.offset, fr.offset + fr.length

    def read(self, n=-1):
        if n is None or n < 0:
            n = self.end - self.pos
        n = min(n, self.end - self.pos)
        if n <= 0:
            return b""
        b = os.pread(self.fd, n, self.pos)
        self.pos += len(b)
        return b

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _q(s, safe="-_.~"):
    return urllib.parse.quote(s, safe=safe)


class HttpClient:
    """What the store clients share: one fresh connection per request (tests
    want no hidden retries), bodies as bytes or FileRange, streamed answers.
    endpoint: "http://127.0.0.1:PORT[/base/path]"."""

    def __init__(self, endpoint, timeout=300):
        u = urllib.parse.urlsplit(endpoint)
        if u.scheme != "http":
            raise ValueError(f"only http:// endpoints: {endpoint}")
        self.endpoint = endpoint.rstrip("/")
        self.hostname, self.port = u.hostname, u.port or 80
        self.hostport = u.netloc
        self.base_path = u.path.rstrip("/")
        self.timeout = timeout

    def _open(self, method, path_and_query, headers, body):
        """Send; returns (connection, http.client.HTTPResponse)."""
        conn = http.client.HTTPConnection(self.hostname, self.port, timeout=self.timeout, blocksize=1 * MiB)
        data = body
        reader = None
        if isinstance(body, FileRange):
            reader = data = body.reader()
        try:
            conn.request(method, path_and_query, body=data, headers=headers)
            return conn, conn.getresponse()
        except BaseException:
            conn.close()
            raise
        finally:
            if reader:
                reader.close()

    def _exchange(self, method, path_and_query, headers, body, sink=None):
        """Send and read the whole answer (into sink(bytes) when given)."""
        conn, r = self._open(method, path_and_query, headers, body)
        try:
            hdrs = {k.lower(): v for k, v in r.getheaders()}
            if sink is not None and 200 <= r.status < 300:
                while True:
                    b = r.read(1 * MiB)
                    if not b:
                        break
                    sink(b)
                data = b""
            else:
                data = r.read()
            return Response(r.status, r.reason, hdrs, data)
        finally:
            conn.close()


class S3Client(HttpClient):
    """A minimal S3 client: SigV4 (hashlib/hmac), path-style URLs
    (endpoint/bucket/key, every key byte but A-Za-z0-9-_.~/ percent-encoded).

    Bodies given as bytes are signed with their SHA-256; FileRange bodies go
    as UNSIGNED-PAYLOAD unless sign_payload=True. The convenience methods
    raise S3Error on an error answer; request() returns any answer."""

    def __init__(self, endpoint, access_key, secret_key, region="us-east-1", session_token=None, timeout=300):
        super().__init__(endpoint, timeout)
        self.access_key, self.secret_key = access_key, secret_key
        self.region, self.session_token = region, session_token

    # -- signing --------------------------------------------------------------
    def path(self, bucket=None, key=None):
        p = self.base_path + "/"
        if bucket:
            p += _q(bucket)
            if key is not None:
                p += "/" + _q(key, safe="-_.~/")
        return p

    @staticmethod
    def canonical_query(query):
        """query: dict or list of (name, value); "uploads" -> "uploads=". Sorted, encoded."""
        pairs = list(query.items()) if isinstance(query, dict) else list(query or [])
        enc = sorted((_q(str(k)), _q("" if v is None else str(v))) for k, v in pairs)
        return "&".join(f"{k}={v}" for k, v in enc)

    def sign(self, method, path, query_string, headers, payload_hash, when=None):
        """headers (dict) + host, x-amz-date, x-amz-content-sha256, x-amz-security-token
        and Authorization. Signs host, content-md5, content-type and every x-amz-*."""
        t = when or datetime.datetime.now(datetime.timezone.utc)
        amzdate = t.strftime("%Y%m%dT%H%M%SZ")
        day = amzdate[:8]
        h = {k.lower(): str(v) for k, v in headers.items()}
        h["host"] = self.hostport
        h["x-amz-date"] = amzdate
        h["x-amz-content-sha256"] = payload_hash
        if self.session_token:
            h["x-amz-security-token"] = self.session_token
        names = sorted(k for k in h if k in ("host", "content-md5", "content-type") or k.startswith("x-amz-"))
        canon_headers = "".join(f"{k}:{' '.join(h[k].split())}\n" for k in names)
        creq = "\n".join([method, path, query_string, canon_headers, ";".join(names), payload_hash])
        scope = f"{day}/{self.region}/s3/aws4_request"
        sts = "\n".join(["AWS4-HMAC-SHA256", amzdate, scope, hashlib.sha256(creq.encode()).hexdigest()])
        k = ("AWS4" + self.secret_key).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
        h["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
                              f"SignedHeaders={';'.join(names)}, Signature={sig}")
        return h

    def request(self, method, bucket=None, key=None, query=None, headers=None, body=b"",
                sign_payload=None, content_md5=False, sink=None):
        """One signed request; returns a Response (sink(bytes) gets a 2xx body
        instead of .body). content_md5=True adds Content-MD5 of the body."""
        headers = dict(headers or {})
        if body is None:
            body = b""
        if content_md5:
            headers["Content-MD5"] = (base64.b64encode(body.digest("md5")).decode() if isinstance(body, FileRange)
                                      else md5_b64(body))
        if sign_payload is None:
            sign_payload = not isinstance(body, FileRange)
        if not sign_payload:
            payload = "UNSIGNED-PAYLOAD"
        elif isinstance(body, FileRange):
            payload = body.digest("sha256").hex()
        else:
            payload = hashlib.sha256(body).hexdigest()
        path = self.path(bucket, key)
        qs = self.canonical_query(query)
        h = self.sign(method, path, qs, headers, payload)
        if body or method in ("PUT", "POST"):
            h["content-length"] = str(len(body))
        return self._exchange(method, path + ("?" + qs if qs else ""), h, body, sink)

    def _ok(self, r, *statuses):
        if r.status not in (statuses or (200,)) and not (not statuses and 200 <= r.status < 300):
            raise S3Error(r.status, r.code, xml_text(r.body, "Message") or r.reason, r.body)
        return r

    # -- buckets and objects --------------------------------------------------
    def create_bucket(self, bucket):
        r = self.request("PUT", bucket)
        if r.status == 409 and r.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            return r
        return self._ok(r)

    def delete_bucket(self, bucket):
        return self._ok(self.request("DELETE", bucket))

    def put_object(self, bucket, key, data, headers=None, content_md5=False, sign_payload=None):
        """data: bytes or FileRange. Returns the answer's headers (etag, ...)."""
        return self._ok(self.request("PUT", bucket, key, headers=headers, body=data, content_md5=content_md5,
                                     sign_payload=sign_payload)).headers

    def get_object(self, bucket, key):
        return self._ok(self.request("GET", bucket, key)).body

    def get_object_sha256(self, bucket, key):
        """SHA-256 hex of the object, streamed (fine for objects of GiBs)."""
        h = hashlib.sha256()
        self._ok(self.request("GET", bucket, key, sink=h.update))
        return h.hexdigest()

    def get_object_to_file(self, bucket, key, path):
        with open(path, "wb") as f:
            self._ok(self.request("GET", bucket, key, sink=f.write))

    def head_object(self, bucket, key):
        """(status, headers): no exception, 404 is an answer too."""
        r = self.request("HEAD", bucket, key)
        return r.status, r.headers

    def delete_object(self, bucket, key):
        return self._ok(self.request("DELETE", bucket, key))

    def list_objects(self, bucket, prefix=""):
        """Every object under prefix: dicts with Key, Size (int), ETag, LastModified."""
        out, marker = [], ""
        while True:
            q = {"prefix": prefix, "max-keys": "1000"}
            if marker:
                q["marker"] = marker
            r = self._ok(self.request("GET", bucket, query=q))
            items = xml_items(r.body, "Contents")
            for it in items:
                it["Size"] = int(it.get("Size", "0"))
            out += items
            if xml_text(r.body, "IsTruncated") != "true" or not items:
                return out
            marker = xml_text(r.body, "NextMarker") or items[-1]["Key"]

    def list_multipart_uploads(self, bucket, prefix=""):
        """Multipart uploads begun and neither completed nor aborted: dicts with Key, UploadId."""
        q = {"uploads": ""}
        if prefix:
            q["prefix"] = prefix
        r = self._ok(self.request("GET", bucket, query=q))
        return xml_items(r.body, "Upload")

    # -- multipart ------------------------------------------------------------
    def create_multipart_upload(self, bucket, key, headers=None):
        r = self._ok(self.request("POST", bucket, key, query={"uploads": ""}, headers=headers))
        return xml_text(r.body, "UploadId")

    def upload_part(self, bucket, key, upload_id, number, data, content_md5=False, sign_payload=None):
        """Returns the part's ETag (quoted, as the store sent it)."""
        r = self._ok(self.request("PUT", bucket, key, query={"partNumber": number, "uploadId": upload_id},
                                  body=data, content_md5=content_md5, sign_payload=sign_payload))
        return r.headers.get("etag")

    def complete_multipart_upload(self, bucket, key, upload_id, parts):
        """parts: [(number, etag)]. Returns the Response (RGW's <ETag> is empty)."""
        xml = "<CompleteMultipartUpload>" + "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, e in parts) + "</CompleteMultipartUpload>"
        r = self._ok(self.request("POST", bucket, key, query={"uploadId": upload_id}, body=xml.encode()))
        if xml_text(r.body, "Code") and not xml_text(r.body, "Key"):  # an error inside a 200
            raise S3Error(r.status, r.code, xml_text(r.body, "Message") or "", r.body)
        return r

    def abort_multipart_upload(self, bucket, key, upload_id):
        return self._ok(self.request("DELETE", bucket, key, query={"uploadId": upload_id}))

    def list_parts(self, bucket, key, upload_id):
        r = self._ok(self.request("GET", bucket, key, query={"uploadId": upload_id}))
        return xml_items(r.body, "Part")

    def upload_file(self, bucket, key, path, part_size=64 * MiB, parallel=2, content_md5=False):
        """Upload a file: one PUT up to part_size, else multipart with parallel
        parts (each from disk, UNSIGNED-PAYLOAD). Returns the object's ETag from HEAD."""
        size = os.path.getsize(path)
        if size <= part_size:
            self.put_object(bucket, key, FileRange(path), content_md5=content_md5)
        else:
            uid = self.create_multipart_upload(bucket, key)
            ranges = [(i + 1, FileRange(path, off, min(part_size, size - off)))
                      for i, off in enumerate(range(0, size, part_size))]
            etags, errors, lock = {}, [], threading.Lock()
            it = iter(ranges)

            def worker():
                while not errors:
                    with lock:
                        nxt = next(it, None)
                    if nxt is None:
                        return
                    try:
                        etags[nxt[0]] = self.upload_part(bucket, key, uid, nxt[0], nxt[1], content_md5=content_md5)
                    except Exception as e:  # noqa: BLE001 - reported below
                        errors.append(e)

            threads = [threading.Thread(target=worker) for _ in range(max(1, parallel))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                self.abort_multipart_upload(bucket, key, uid)
                raise errors[0]
            self.complete_multipart_upload(bucket, key, uid, sorted(etags.items()))
        st, h = self.head_object(bucket, key)
        if st != 200:
            raise S3Error(st, None, f"HEAD after upload: {st}")
        return h.get("etag")


class AzureBlobClient(HttpClient):
    """A minimal Azure Blob client with Shared Key auth. endpoint is the
    account URL: path-style "http://127.0.0.1:P/devstoreaccount1" (Azurite)."""

    VERSION = "2021-08-06"

    def __init__(self, endpoint, account, key, timeout=300):
        super().__init__(endpoint, timeout)
        self.account, self.key = account, base64.b64decode(key)

    def path(self, container=None, blob=None):
        p = self.base_path + "/"
        if container:
            p += _q(container)
            if blob is not None:
                p += "/" + _q(blob, safe="-_.~/")
        return p

    def sign(self, method, path, query, headers, length):
        h = {k.lower(): str(v) for k, v in headers.items()}
        h["x-ms-date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")
        h.setdefault("x-ms-version", self.VERSION)
        std = ["content-encoding", "content-language", "", "content-md5", "content-type", "date",
               "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range"]
        lines = [method]
        for name in std:
            lines.append((str(length) if length else "") if name == "" else h.get(name, ""))
        canon_h = "".join(f"{k}:{' '.join(h[k].split())}\n" for k in sorted(h) if k.startswith("x-ms-"))
        res = f"/{self.account}{path}"
        for k in sorted({k.lower() for k, _ in query}):
            vals = sorted(str(v) for kk, v in query if kk.lower() == k)
            res += f"\n{k}:{','.join(vals)}"
        sts = "\n".join(lines) + "\n" + canon_h + res
        sig = base64.b64encode(hmac.new(self.key, sts.encode(), hashlib.sha256).digest()).decode()
        h["authorization"] = f"SharedKey {self.account}:{sig}"
        h["host"] = self.hostport
        return h

    def request(self, method, container=None, blob=None, query=None, headers=None, body=b"", sink=None):
        pairs = list(query.items()) if isinstance(query, dict) else list(query or [])
        path = self.path(container, blob)
        h = self.sign(method, path, pairs, headers or {}, len(body))
        if body or method in ("PUT", "POST"):
            h["content-length"] = str(len(body))
        qs = "&".join(f"{_q(str(k))}={_q(str(v))}" for k, v in pairs)
        return self._exchange(method, path + ("?" + qs if qs else ""), h, body, sink)

    def _ok(self, r):
        if not 200 <= r.status < 300:
            raise S3Error(r.status, r.code or r.headers.get("x-ms-error-code"),
                          xml_text(r.body, "Message") or r.reason, r.body)
        return r

    def create_container(self, container):
        r = self.request("PUT", container, query={"restype": "container"})
        if r.status == 409:
            return r
        return self._ok(r)

    def put_blob(self, container, blob, data, content_md5=False):
        h = {"x-ms-blob-type": "BlockBlob"}
        if content_md5:
            h["Content-MD5"] = md5_b64(data)
        return self._ok(self.request("PUT", container, blob, headers=h, body=data)).headers

    def put_block(self, container, blob, block_id, data, content_md5=False):
        """block_id: str or bytes, base64-encoded here."""
        bid = base64.b64encode(block_id.encode() if isinstance(block_id, str) else block_id).decode()
        h = {"Content-MD5": md5_b64(data)} if content_md5 else {}
        self._ok(self.request("PUT", container, blob, query=[("comp", "block"), ("blockid", bid)], headers=h, body=data))
        return bid

    def put_block_list(self, container, blob, block_ids_b64):
        xml = ('<?xml version="1.0" encoding="utf-8"?><BlockList>'
               + "".join(f"<Latest>{b}</Latest>" for b in block_ids_b64) + "</BlockList>")
        return self._ok(self.request("PUT", container, blob, query={"comp": "blocklist"}, body=xml.encode())).headers

    def get_blob(self, container, blob):
        return self._ok(self.request("GET", container, blob)).body

    def get_blob_sha256(self, container, blob):
        h = hashlib.sha256()
        self._ok(self.request("GET", container, blob, sink=h.update))
        return h.hexdigest()

    def get_blob_properties(self, container, blob):
        """(status, headers) of a HEAD."""
        r = self.request("HEAD", container, blob)
        return r.status, r.headers

    def delete_blob(self, container, blob):
        return self._ok(self.request("DELETE", container, blob))

    def list_blobs(self, container, prefix=""):
        """Dicts with Name and Size (int); uncommitted blobs are not listed."""
        out, marker = [], ""
        while True:
            q = [("restype", "container"), ("comp", "list")]
            if prefix:
                q.append(("prefix", prefix))
            if marker:
                q.append(("marker", marker))
            r = self._ok(self.request("GET", container, query=q))
            root = ET.fromstring(r.body)
            for b in root.iter("Blob"):
                size = b.findtext("Properties/Content-Length") or "0"
                out.append({"Name": b.findtext("Name"), "Size": int(size),
                            "Content-MD5": b.findtext("Properties/Content-MD5") or ""})
            marker = root.findtext("NextMarker") or ""
            if not marker:
                return out

    def get_block_list(self, container, blob):
        """{"committed": [(id_b64, size)], "uncommitted": [...]} (blocklisttype=all)."""
        r = self._ok(self.request("GET", container, blob, query=[("comp", "blocklist"), ("blocklisttype", "all")]))
        root = ET.fromstring(r.body)
        out = {"committed": [], "uncommitted": []}
        for kind, tag in (("committed", "CommittedBlocks"), ("uncommitted", "UncommittedBlocks")):
            for el in root.iter(tag):
                for b in el.iter("Block"):
                    out[kind].append((b.findtext("Name"), int(b.findtext("Size") or 0)))
        return out


class GcsXmlClient(HttpClient):
    """A minimal client of GCS's XML API (path-style, Authorization: Bearer)
    with the S3-shaped multipart dialect; for GcsRecorder."""

    def __init__(self, endpoint, token, timeout=300):
        super().__init__(endpoint, timeout)
        self.token = token

    def request(self, method, bucket, key=None, query=None, headers=None, body=b"", sink=None):
        pairs = list(query.items()) if isinstance(query, dict) else list(query or [])
        path = self.base_path + "/" + _q(bucket) + ("/" + _q(key, safe="-_.~/") if key is not None else "")
        qs = "&".join(f"{_q(str(k))}={_q(str(v))}" for k, v in pairs)
        h = {"Host": self.hostport, "Authorization": f"Bearer {self.token}"}
        h.update(headers or {})
        if body or method in ("PUT", "POST"):
            h["Content-Length"] = str(len(body))
        return self._exchange(method, path + ("?" + qs if qs else ""), h, body, sink)

    def _ok(self, r):
        if not 200 <= r.status < 300:
            raise S3Error(r.status, r.code, xml_text(r.body, "Message") or r.reason, r.body)
        return r

    def put_object(self, bucket, key, data, content_md5=True):
        return self._ok(self.request("PUT", bucket, key, body=data,
                                     headers={"Content-MD5": md5_b64(data)} if content_md5 else {})).headers

    def get_object(self, bucket, key):
        return self._ok(self.request("GET", bucket, key)).body

    def head_object(self, bucket, key):
        r = self.request("HEAD", bucket, key)
        return r.status, r.headers

    def create_multipart_upload(self, bucket, key):
        return xml_text(self._ok(self.request("POST", bucket, key, query=[("uploads", "")])).body, "UploadId")

    def upload_part(self, bucket, key, upload_id, number, data, content_md5=True):
        h = {"Content-MD5": md5_b64(data)} if content_md5 else {}
        r = self._ok(self.request("PUT", bucket, key, query=[("partNumber", number), ("uploadId", upload_id)],
                                  headers=h, body=data))
        return r.headers.get("etag")

    def complete_multipart_upload(self, bucket, key, upload_id, parts):
        xml = "<CompleteMultipartUpload>" + "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, e in parts) + "</CompleteMultipartUpload>"
        return self._ok(self.request("POST", bucket, key, query=[("uploadId", upload_id)], body=xml.encode()))

    def abort_multipart_upload(self, bucket, key, upload_id):
        return self._ok(self.request("DELETE", bucket, key, query=[("uploadId", upload_id)]))


# ---------------------------------------------------------------------------
# Ceph RADOS Gateway
# ---------------------------------------------------------------------------

RGW_BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")
_RGW_MADE = ("ceph.conf", "monmap", "mon.a", "osd.0", "run", "log", "rgw", "rgw.env")
_PRIVATE_RGW = None


class Rgw:
    """A real radosgw on 127.0.0.1 (see the module docstring).

        with Rgw() as rgw:                  # or Rgw.get(): shared, see there
            s3 = rgw.s3()                   # S3Client with the default user's keys
            s3.create_bucket("b")

    mem_bytes caps the OSD's memstore (RAM is used only for what is stored;
    a full OSD makes uploads hang silently, so size it above the data, and
    call gc() after deleting big objects). extra_conf: "key = value" lines
    for [global]. Attributes: endpoint, port, access_key, secret_key, dir,
    conf, shared (True for a handle on a cluster this object did not start)."""

    def __init__(self, mem_bytes=6 * GiB, access_key="TESTKEY", secret_key="TESTSECRET", extra_conf="",
                 directory=None):
        self.mem_bytes, self.extra_conf = mem_bytes, extra_conf
        self.access_key, self.secret_key = access_key, secret_key
        self.dir = directory
        self._own_dir = directory is None
        self.conf = None
        self.port = None
        self.endpoint = None
        self.shared = False
        self.started = False
        self.timings = {}
        self._reaper = None

    # -- sharing --------------------------------------------------------------
    @classmethod
    def from_env(cls, value=None):
        """A handle on a running cluster from "ENDPOINT ACCESS SECRET CONFDIR"."""
        value = value or os.environ["SPOTWATCH_TEST_RGW"]
        try:
            endpoint, ak, sk, confdir = value.split()
        except ValueError:
            raise Unavailable(f"SPOTWATCH_TEST_RGW must be 'ENDPOINT ACCESS SECRET CONFDIR', not {value!r}") from None
        r = cls(access_key=ak, secret_key=sk, directory=confdir)
        r._own_dir = False
        r.shared = True
        r.started = True
        r.endpoint = endpoint.rstrip("/")
        r.port = urllib.parse.urlsplit(endpoint).port
        r.conf = os.path.join(confdir, "ceph.conf")
        if not os.path.exists(r.conf):
            raise Unavailable(f"SPOTWATCH_TEST_RGW names {confdir}, which has no ceph.conf")
        return r

    @classmethod
    def get(cls):
        """The shared radosgw: the one named by $SPOTWATCH_TEST_RGW if set,
        else one private to this process, started on first call and stopped at
        exit (or by a reaper process if this one dies without cleaning up).
        Tests sharing one must use their own bucket names (unique_name())."""
        global _PRIVATE_RGW
        if os.environ.get("SPOTWATCH_TEST_RGW"):
            return cls.from_env()
        if _PRIVATE_RGW is None:
            r = cls()
            r.start()
            _PRIVATE_RGW = r
            import atexit
            atexit.register(r.stop)
            if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
        return _PRIVATE_RGW

    # -- lifecycle ------------------------------------------------------------
    def _conf_text(self, fsid, mon_port):
        d = self.dir
        return f"""[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
public addr = 127.0.0.1
cluster addr = 127.0.0.1
public network = 127.0.0.0/8
cluster network = 127.0.0.0/8
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc
ms client mode = crc
run dir = {d}/run
admin socket = {d}/run/$name.asok
log file = {d}/log/$name.log
pid file = {d}/run/$name.pid
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon allow pool delete = true
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1
# A single monitor need not batch map changes for a second (the default):
# each pool and OSD change waits for it, and start-up takes 19 s, not 2.
paxos propose interval = 0.05
paxos min wait = 0.01
{self.extra_conf}
[mon]
mon data = {d}/mon.$id
mon cluster log file = {d}/log/cluster.log
[osd]
osd data = {d}/osd.$id
osd objectstore = memstore
memstore device bytes = {int(self.mem_bytes)}
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{self.port}
rgw data = {d}/rgw
# deleted objects' tails are freed by garbage collection: make it prompt
rgw gc obj min wait = 0
rgw gc processor period = 5
"""

    def _run(self, argv, timeout=60, what=None):
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=timeout)
        if p.returncode != 0:
            raise Unavailable(f"{what or argv[0]} failed ({p.returncode}): {p.stderr[-2000:]}{p.stdout[-500:]}"
                              f"\n(logs in {self.dir}/log)")
        return p.stdout

    def _daemon(self, argv, name):
        """Start a ceph daemon that forks itself into the background; its
        stdout/stderr go to log/NAME.out (never a pipe: the daemon keeps it)."""
        with open(os.path.join(self.dir, "log", name + ".out"), "ab") as out:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=60)
        if p.returncode != 0:
            raise Unavailable(f"{name} failed to start ({p.returncode}); see {self.dir}/log/{name}.out and .log")

    def start(self, reaper=True):
        """Start the cluster (~2 s). reaper=True (the default) also starts a
        watcher process that stops it when this process dies without stop()."""
        if self.started:
            return self
        missing = _which(*RGW_BINARIES)
        if missing:
            raise Unavailable(f"{', '.join(missing)} not found: run `. scripts/deps.sh; need_packages stores` "
                              "(apt-get install --no-install-recommends radosgw ceph-mon ceph-osd)")
        t0 = time.monotonic()
        if self.dir is None:
            self.dir = tempfile.mkdtemp(prefix="spotwatch-rgw-")
        self.dir = os.path.abspath(self.dir)
        if _pid_alive(_read_pid(os.path.join(self.dir, "run", "mon.a.pid"))):
            raise Unavailable(f"a cluster is already running in {self.dir} (rgw-stop it first)")
        for sub in ("mon.a", "osd.0", "run", "log", "rgw"):
            shutil.rmtree(os.path.join(self.dir, sub), ignore_errors=True)
            os.makedirs(os.path.join(self.dir, sub))
        self.started = True   # from here on, stop() cleans up
        try:
            self._start_cluster(t0, reaper)
        except BaseException as e:
            tails = self._log_tails() if isinstance(e, (Unavailable, S3Error, OSError)) else ""
            self.stop()                         # deletes the logs with a temp dir: keep their ends
            if tails:
                raise Unavailable(f"{e}\n{tails}") from e
            raise
        return self

    def _log_tails(self, lines=15):
        out = []
        logdir = os.path.join(self.dir, "log")
        for name in sorted(os.listdir(logdir)) if os.path.isdir(logdir) else []:
            with open(os.path.join(logdir, name), errors="replace") as f:
                tail = f.readlines()[-lines:]
            if tail:
                out.append(f"--- {name} ---\n" + "".join(tail))
        return "\n".join(out)

    def _start_cluster(self, t0, reaper):
        d = self.dir
        mon_port, self.port = free_port(), free_port()
        while self.port == mon_port:
            self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.conf = os.path.join(d, "ceph.conf")
        fsid = str(__import__("uuid").uuid4())
        with open(self.conf, "w") as f:
            f.write(self._conf_text(fsid, mon_port))
        if reaper:
            self._reaper = subprocess.Popen([sys.executable, os.path.abspath(__file__), "rgw-reap", str(os.getpid()), d],
                                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, start_new_session=True)
        c = ["-c", self.conf]
        self._run(["monmaptool", "--create", "--addv", "a", f"[v2:127.0.0.1:{mon_port}]", "--fsid", fsid,
                   os.path.join(d, "monmap")])
        self._run(["ceph-mon", *c, "--mkfs", "-i", "a", "--monmap", os.path.join(d, "monmap")])
        self._daemon(["ceph-mon", *c, "-i", "a"], "mon.a")
        self.timings["mon"] = time.monotonic() - t0
        osd = self._run(["ceph", *c, "--connect-timeout", "30", "osd", "create"], timeout=60, what="ceph osd create").strip()
        if osd != "0":
            raise Unavailable(f"ceph osd create gave id {osd!r}, expected 0")
        self._run(["ceph-osd", *c, "-i", "0", "--mkfs"], what="ceph-osd --mkfs")
        self._daemon(["ceph-osd", *c, "-i", "0"], "osd.0")
        self.timings["osd"] = time.monotonic() - t0
        self._daemon(["radosgw", *c, "-n", "client.rgw"], "client.rgw")
        end = time.monotonic() + 90
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                pid = _read_pid(os.path.join(d, "run", "client.rgw.pid"))
                if time.monotonic() > end or (pid and not _pid_alive(pid)):
                    raise Unavailable(f"radosgw did not come up; see {d}/log/client.rgw.log")
                time.sleep(0.1)
        self.timings["radosgw"] = time.monotonic() - t0
        self.create_user("tester", self.access_key, self.secret_key)
        self.timings["user"] = time.monotonic() - t0
        # Warm-up: the first object write and the first multipart upload each
        # create pools (~2 s each): do both now, not in a test.
        s3 = self.s3()
        b = "rgw-warmup"
        s3.create_bucket(b)
        self.timings["bucket"] = time.monotonic() - t0
        s3.put_object(b, "w", b"warm")
        self.timings["put"] = time.monotonic() - t0
        s3.delete_object(b, "w")
        uid = s3.create_multipart_upload(b, "m")
        s3.abort_multipart_upload(b, "m", uid)
        s3.delete_bucket(b)
        self.timings["ready"] = time.monotonic() - t0
        with open(os.path.join(d, "rgw.env"), "w") as f:
            f.write(self.env_value() + "\n")

    def env_value(self):
        """The value for $SPOTWATCH_TEST_RGW naming this cluster."""
        return f"{self.endpoint} {self.access_key} {self.secret_key} {self.dir}"

    def pids(self):
        """{"mon": pid, "osd": pid, "rgw": pid} of the running daemons."""
        run = os.path.join(self.dir or "", "run")
        return {k: _read_pid(os.path.join(run, f)) for k, f in
                (("rgw", "client.rgw.pid"), ("osd", "osd.0.pid"), ("mon", "mon.a.pid"))}

    def memory(self):
        """Resident bytes of each daemon: {"mon":..., "osd":..., "rgw":...}."""
        return {k: rss_bytes(p) if p else 0 for k, p in self.pids().items()}

    def stop(self):
        """radosgw first, then the OSD, then the monitor (another order costs a
        120 s wait in radosgw's shutdown); then delete what start() made. A
        handle on a shared cluster (Rgw.get() with $SPOTWATCH_TEST_RGW) stops nothing."""
        if self.shared or not self.started:
            return
        self.started = False
        stop_cluster(self.dir, remove=True, remove_dir=self._own_dir)
        if self._reaper is not None:
            _stop_pid(self._reaper.pid, 2)
            try:
                self._reaper.wait(2)
            except subprocess.TimeoutExpired:
                pass
            self._reaper = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    # -- admin ----------------------------------------------------------------
    def admin(self, *args, timeout=60):
        """radosgw-admin -c ceph.conf ARGS...; returns its stdout."""
        return self._run(["radosgw-admin", "-c", self.conf, *args], timeout=timeout, what="radosgw-admin " + args[0])

    def create_user(self, uid, access_key, secret_key, display_name=None):
        """Create a user with these keys; an existing uid gets the key pair added."""
        p = subprocess.run(["radosgw-admin", "-c", self.conf, "user", "create", f"--uid={uid}",
                            f"--display-name={display_name or uid}", f"--access-key={access_key}",
                            f"--secret-key={secret_key}"], capture_output=True, text=True, timeout=60)
        if p.returncode == 0:
            return
        if p.returncode == errno.EEXIST or "exists" in p.stderr:
            self.admin("key", "create", f"--uid={uid}", "--key-type=s3", f"--access-key={access_key}",
                       f"--secret-key={secret_key}")
            return
        raise Unavailable(f"radosgw-admin user create failed ({p.returncode}): {p.stderr}")

    def gc(self):
        """Free deleted objects' space now (radosgw-admin gc process --include-all)."""
        self.admin("gc", "process", "--include-all", timeout=300)

    def s3(self, access_key=None, secret_key=None, endpoint=None, session_token=None):
        """An S3Client for this gateway (default user, or the keys given;
        endpoint= to go through a FaultProxy)."""
        return S3Client(endpoint or self.endpoint, access_key or self.access_key, secret_key or self.secret_key,
                        session_token=session_token)


def stop_cluster(d, remove=True, remove_dir=False, graceful=False):
    """Stop the daemons of the cluster in d — radosgw, then the OSD, then the
    monitor, each gone before the next (radosgw left alone without its
    monitor waits 120 s in its shutdown) — and delete what Rgw.start() made
    there (everything, with remove_dir). graceful=False (the default) uses
    SIGKILL: the data is thrown away anyway, and SIGTERM costs ~2 s a daemon."""
    run = os.path.join(d, "run")
    for f in ("client.rgw.pid", "osd.0.pid", "mon.a.pid"):
        _stop_pid(_read_pid(os.path.join(run, f)), 20, signal.SIGTERM if graceful else signal.SIGKILL)
    if not remove:
        return
    if remove_dir:
        shutil.rmtree(d, ignore_errors=True)
        return
    for name in _RGW_MADE:
        p = os.path.join(d, name)
        if os.path.isdir(p):
            shutil.rmtree(p, ignore_errors=True)
        elif os.path.exists(p):
            os.unlink(p)
    try:
        os.rmdir(d)
    except OSError:
        pass


def _reap(parent, d):
    """rgw-reap: stop the cluster in d when process parent is gone (and exit
    when the cluster's directory is gone: stopped normally)."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        if not os.path.isdir(d):
            return
        if not _pid_alive(parent):
            stop_cluster(d, remove=True, remove_dir=True)
            return
        time.sleep(0.5)


# ---------------------------------------------------------------------------
# npm stores
# ---------------------------------------------------------------------------

class _NodeStore:
    """A node process in a temp dir, stopped by stop()."""
    name = "node"

    def __init__(self):
        self.dir = None
        self.proc = None
        self.port = None
        self.endpoint = None
        self.log_path = None
        self.start_seconds = None

    def _spawn(self, argv, cwd, ready_re, timeout=30):
        if _which("node"):
            raise Unavailable("node not found: run `. scripts/deps.sh; need_packages stores`")
        t0 = time.monotonic()
        self.dir = tempfile.mkdtemp(prefix=f"spotwatch-{self.name}-")
        self.log_path = os.path.join(self.dir, "log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv(self.dir), cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        rx = re.compile(ready_re)
        end = time.monotonic() + timeout
        while True:
            with open(self.log_path, errors="replace") as f:
                m = rx.search(f.read())
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None or time.monotonic() > end:
                text = open(self.log_path, errors="replace").read()
                self.stop()
                raise Unavailable(f"{self.name} did not start:\n{text[-3000:]}")
            time.sleep(0.05)
        self.start_seconds = time.monotonic() - t0

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        if self.dir and os.environ.get("SPOTWATCH_KEEP_TMP") is None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


class S3rver(_NodeStore):
    """npm @20minutes/s3rver 5.0.0 on 127.0.0.1 (a free port), data in a temp
    dir, credentials S3RVER/S3RVER. It verifies SigV4 header signatures (a
    wrong secret gets 403) but not payload hashes, Content-MD5, part ETags or
    the 5 MiB minimum part; it has no abort and no ListMultipartUploads (501).
    Its listings escape XML twice (a key "a&b" lists as "a&amp;b" after
    parsing). The package has no bin entry, so node runs lib/cli.js's
    parseAsync()."""
    name = "s3rver"
    access_key = secret_key = "S3RVER"

    def start(self):
        cache = npm_package("s3rver")
        cli = os.path.join(cache, "node_modules", "@20minutes", "s3rver", "lib", "cli.js")
        js = (f"require({cli!r}).parseAsync(['node','s3rver',...process.argv.slice(1)])"
              ".catch(e=>{console.error(e);process.exit(1)})")
        self._spawn(lambda d: ["node", "-e", js, "--", "-d", os.path.join(d, "data"), "-a", "127.0.0.1",
                               "-p", "0", "--silent"], cache, r"S3rver listening on 127\.0\.0\.1:(\d+)")
        self.endpoint = f"http://127.0.0.1:{self.port}"
        return self

    def s3(self, access_key=None, secret_key=None, endpoint=None):
        """An S3Client (endpoint= to go through a FaultProxy)."""
        return S3Client(endpoint or self.endpoint, access_key or self.access_key, secret_key or self.secret_key)


class Azurite(_NodeStore):
    """Azurite's blob service (npm azurite 3.35.0, the last for node 20) on
    127.0.0.1 (a free port), data in a temp dir, --loose and
    --skipApiVersionCheck, and --disableTelemetry: without it Azurite sends
    usage data to an Azure endpoint. Path-style: endpoint is
    http://127.0.0.1:P/devstoreaccount1; account and key are the
    well-known development ones."""
    name = "azurite"
    account = AZURITE_ACCOUNT
    key = AZURITE_KEY

    def start(self):
        cache = npm_package("azurite")
        main = os.path.join(cache, "node_modules", "azurite", "dist", "src", "blob", "main.js")
        port = free_port()
        self._spawn(lambda d: ["node", main, "--blobHost", "127.0.0.1", "--blobPort", str(port),
                               "--location", os.path.join(d, "data"), "--debug", os.path.join(d, "debug.log"),
                               "--skipApiVersionCheck", "--loose", "--disableTelemetry"],
                    cache, r"(?:listens on|listening at) http://127\.0\.0\.1:(\d+)")
        self.blob_endpoint = f"http://127.0.0.1:{self.port}"
        self.endpoint = f"{self.blob_endpoint}/{self.account}"
        return self

    @property
    def connection_string(self):
        return (f"DefaultEndpointsProtocol=http;AccountName={self.account};AccountKey={self.key};"
                f"BlobEndpoint={self.endpoint};")

    def client(self, endpoint=None):
        """An AzureBlobClient (endpoint= an account URL, e.g. a FaultProxy's + '/devstoreaccount1')."""
        return AzureBlobClient(endpoint or self.endpoint, self.account, self.key)


# ---------------------------------------------------------------------------
# Raw HTTP/1.1 plumbing for the proxy and the sink
# ---------------------------------------------------------------------------

class _Conn:
    """A socket with a buffered reader."""

    def __init__(self, sock):
        self.sock = sock
        self.rf = sock.makefile("rb", buffering=256 * 1024)

    def read_head(self):
        """(first line, [(name, value)], raw bytes) or None at EOF."""
        raw = []
        line = self.rf.readline(65537)
        while line in (b"\r\n", b"\n"):        # stray CRLF between messages
            line = self.rf.readline(65537)
        if not line:
            return None
        raw.append(line)
        first = line.rstrip(b"\r\n").decode("latin-1")
        hdrs = []
        while True:
            line = self.rf.readline(65537)
            if not line:
                return None
            raw.append(line)
            if line in (b"\r\n", b"\n"):
                break
            k, _, v = line.decode("latin-1").partition(":")
            hdrs.append((k.strip(), v.strip()))
        return first, hdrs, b"".join(raw)

    def send(self, data):
        self.sock.sendall(data)

    def close(self, reset=False):
        try:
            if reset:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.rf.close()
            self.sock.close()
        except OSError:
            pass


def _still_open(sock):
    """False when the peer has closed an idle keep-alive connection."""
    t = sock.gettimeout()
    sock.settimeout(0)         # with a timeout set, Python polls first, whatever the flags
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(t)


def _hget(hdrs, name, default=None):
    name = name.lower()
    for k, v in hdrs:
        if k.lower() == name:
            return v
    return default


class _Server:
    """A listening socket on 127.0.0.1 and a daemon thread per connection."""

    def __init__(self, port=0):
        self._port = port
        self._lsock = None
        self._conns = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.port = None
        self.endpoint = None

    def start(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self._port))
        s.listen(128)
        self._lsock = s
        self.port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True, name=f"{type(self).__name__}-accept").start()
        return self

    def _accept(self):
        while not self._stopping.is_set():
            try:
                c, _ = self._lsock.accept()
            except OSError:
                return
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.add(c)
            threading.Thread(target=self._serve_wrap, args=(c,), daemon=True).start()

    def _serve_wrap(self, c):
        try:
            self.serve(c)
        except (OSError, ValueError):
            pass
        finally:
            with self._lock:
                self._conns.discard(c)
            try:
                c.close()
            except OSError:
                pass

    def serve(self, sock):
        raise NotImplementedError

    def stop(self):
        self._stopping.set()
        if self._lsock:
            try:
                self._lsock.close()
            except OSError:
                pass
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def url(self, path=""):
        return self.endpoint + path


# ---------------------------------------------------------------------------
# FaultProxy
# ---------------------------------------------------------------------------

DEFAULT_ERROR_CODES = {500: "InternalError", 502: "BadGateway", 503: "SlowDown", 429: "SlowDown", 403: "AccessDenied"}


class Rule:
    """A FaultProxy rule (see FaultProxy.add_rule). .hits counts the requests it took."""

    def __init__(self, action, method=None, match=(), count=1, status=503, code=None, after=None, offset=None,
                 seconds=1.0, reset=False, headers=None):
        if action not in ("status", "drop", "corrupt", "delay"):
            raise ValueError(f"unknown action {action}")
        self.action, self.method = action, method
        self.match = (match,) if isinstance(match, str) else tuple(match or ())
        self.count, self.status, self.code = count, status, code
        self.after, self.offset, self.seconds, self.reset = after, offset, seconds, reset
        self.headers = dict(headers or {})
        self.hits = 0

    def matches(self, method, target):
        if self.count is not None and self.hits >= self.count:
            return False
        if self.method and self.method.upper() != method.upper():
            return False
        return all(m in target for m in self.match)

    def __repr__(self):
        return f"<Rule {self.action} {self.method or '*'} {self.match} {self.hits}/{self.count}>"


class FaultProxy(_Server):
    """A loopback HTTP/1.1 reverse proxy in front of a store.

        with FaultProxy(rgw.endpoint) as px:
            px.add_rule("status", method="PUT", match="partNumber=3", status=503)
            ... point the daemon at px.endpoint ...
            px.requests(method="PUT")   # the log

    Requests go upstream byte for byte (Host kept as the client sent it, so
    SigV4 still verifies), with keep-alive, Expect: 100-continue, and bodies
    with Content-Length or chunked. Rules, added or cleared while it runs,
    are tried in order; the first whose method and substrings (all of match,
    in the raw path?query) fit takes the request, for its first `count`
    requests (None: all):

      status   answer `status` (default 503) with an S3-style XML error
               (<Code> from `code`, else SlowDown/InternalError/...) without
               forwarding; the body is read first (with Expect: 100-continue,
               not read, and the connection closes)
      drop     forward the head and `after` bytes of the body (default: half),
               then close both connections (reset=True: with a TCP RST)
      corrupt  flip one byte of the body (at `offset`, default the middle) and
               forward: a store that checks Content-MD5 answers 400 BadDigest
      delay    sleep `seconds`, then forward

    Each request is logged as a dict: method, target (raw path?query), path
    (decoded), query (raw string), params (dict, decoded), headers (dict,
    names lower-cased), body_len (bytes received from the client), status
    (sent to the client; None when dropped), action (None or the rule's),
    conn (a number per client connection), time (time.monotonic()),
    signed_headers (from a SigV4 Authorization, else [])."""

    def __init__(self, upstream, port=0):
        super().__init__(port)
        u = urllib.parse.urlsplit(upstream if "://" in upstream else "http://" + upstream)
        self.upstream = (u.hostname, u.port or 80)
        self._rules = []
        self._log = []
        self._conn_ids = itertools.count(1)

    # -- rules and log ----------------------------------------------------------
    def add_rule(self, action, method=None, match=(), count=1, **kw):
        r = Rule(action, method, match, count, **kw)
        with self._lock:
            self._rules.append(r)
        return r

    def clear_rules(self):
        with self._lock:
            self._rules.clear()

    def _take_rule(self, method, target):
        with self._lock:
            for r in self._rules:
                if r.matches(method, target):
                    r.hits += 1
                    return r
        return None

    def requests(self, method=None, match=()):
        """Logged requests, filtered by method and substrings of the target."""
        match = (match,) if isinstance(match, str) else tuple(match or ())
        with self._lock:
            log = list(self._log)
        return [e for e in log if (not method or e["method"] == method.upper()) and all(m in e["target"] for m in match)]

    def clear_log(self):
        with self._lock:
            self._log.clear()

    # -- serving ----------------------------------------------------------------
    def _error_body(self, rule, n):
        code = rule.code or DEFAULT_ERROR_CODES.get(rule.status, "InternalError")
        return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                f"<Message>injected by FaultProxy</Message><RequestId>faultproxy-{n}</RequestId></Error>").encode()

    def serve(self, csock):
        client = _Conn(csock)
        up = None
        cid = next(self._conn_ids)
        try:
            while not self._stopping.is_set():
                head = client.read_head()
                if head is None:
                    return
                first, hdrs, raw = head
                method, target = first.split(" ", 2)[:2]
                u = urllib.parse.urlsplit(target)
                auth = _hget(hdrs, "authorization", "")
                entry = {"method": method, "target": target, "path": urllib.parse.unquote(u.path),
                         "query": u.query, "params": dict(urllib.parse.parse_qsl(u.query, keep_blank_values=True)),
                         "headers": {k.lower(): v for k, v in hdrs}, "body_len": 0, "status": None,
                         "action": None, "conn": cid, "time": time.monotonic(),
                         "signed_headers": signed_headers(auth) if auth.startswith("AWS4-") else []}
                with self._lock:
                    self._log.append(entry)
                chunked = "chunked" in _hget(hdrs, "transfer-encoding", "").lower()
                length = None if chunked else int(_hget(hdrs, "content-length", "0") or 0)
                expect = _hget(hdrs, "expect", "").lower() == "100-continue"
                rule = self._take_rule(method, target)
                if rule:
                    entry["action"] = rule.action
                if rule and rule.action == "delay":
                    time.sleep(rule.seconds)
                if rule and rule.action == "status":
                    body = self._error_body(rule, len(self._log))
                    close = expect and (chunked or length)
                    if not close:
                        entry["body_len"] = self._relay_body(client, None, chunked, length)
                    extra = "".join(f"{k}: {v}\r\n" for k, v in rule.headers.items())
                    entry["status"] = rule.status     # before the client can see it
                    client.send((f"HTTP/1.1 {rule.status} Injected\r\nContent-Type: application/xml\r\n"
                                 f"Content-Length: {len(body)}\r\n{extra}"
                                 + ("Connection: close\r\n" if close else "") + "\r\n").encode()
                                + (b"" if method == "HEAD" else body))
                    if close:
                        return
                    continue
                if up is not None and not _still_open(up.sock):
                    up.close()           # the store closed it while idle (Azurite: after 5 s)
                    up = None
                if up is None:
                    up = _Conn(socket.create_connection(self.upstream, timeout=300))
                    up.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                up.send(raw)
                if expect and (chunked or length):
                    # Wait for the store's 100 Continue (or its final answer).
                    rhead = up.read_head()
                    if rhead is None:
                        return
                    if not rhead[0].split(" ")[1].startswith("100"):
                        self._relay_response(up, client, method, entry, rhead)
                        return
                    client.send(rhead[2])
                drop = rule.after if rule and rule.action == "drop" else None
                if rule and rule.action == "drop" and drop is None:
                    drop = (length or 0) // 2
                flip = None
                if rule and rule.action == "corrupt":
                    flip = rule.offset if rule.offset is not None else (length or 0) // 2
                n = self._relay_body(client, up, chunked, length, drop, flip)
                entry["body_len"] = n
                if drop is not None:
                    up.close(reset=rule.reset)
                    client.close(reset=rule.reset)
                    return
                st = self._relay_response(up, client, method, entry)
                if st is None or st < 0:
                    return
                if _hget(hdrs, "connection", "").lower() == "close":
                    return
        finally:
            if up is not None:
                up.close()
            client.close()

    def _relay_body(self, src, dst, chunked, length, drop=None, flip=None):
        """Copy a request body from src to dst (None: discard). Stops after
        drop bytes; flips the byte at offset flip. Returns bytes read."""
        done = 0

        def out(b):
            nonlocal done
            if flip is not None and done <= flip < done + len(b):
                b = bytearray(b)
                b[flip - done] ^= 0xFF
            done += len(b)
            if dst is not None:
                dst.send(b)

        if not chunked:
            left = length or 0
            while left > 0:
                want = min(left, 1 * MiB)
                if drop is not None:
                    want = min(want, drop - done)
                    if want <= 0:
                        return done
                b = src.rf.read1(want)
                if not b:
                    raise ConnectionError("client closed mid-body")
                left -= len(b)
                out(b)
            return done
        while True:
            line = src.rf.readline(1024)
            if not line:
                raise ConnectionError("client closed mid-body")
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if dst is not None:
                dst.send(line)
            if size == 0:
                while True:                   # trailers up to the blank line
                    t = src.rf.readline(65537)
                    if dst is not None:
                        dst.send(t)
                    if t in (b"\r\n", b"\n", b""):
                        return done
            left = size
            while left > 0:
                want = min(left, 1 * MiB)
                if drop is not None:
                    want = min(want, drop - done)
                    if want <= 0:
                        return done
                b = src.rf.read1(want)
                if not b:
                    raise ConnectionError("client closed mid-body")
                left -= len(b)
                out(b)
            crlf = src.rf.readline(8)
            if dst is not None:
                dst.send(crlf)

    def _relay_response(self, up, client, method, entry, rhead=None):
        """Copy one answer (after any 1xx) from up to client; its status goes
        into entry before the client can see it. Returns the status, negated
        when the connection must close afterwards (None: upstream closed)."""
        while True:
            if rhead is None:
                rhead = up.read_head()
                if rhead is None:
                    return None
            first, hdrs, raw = rhead
            status = int(first.split(" ")[1])
            if status >= 200:
                entry["status"] = status
            client.send(raw)
            if 100 <= status < 200:
                rhead = None
                continue
            break
        close = _hget(hdrs, "connection", "").lower() == "close"
        if method == "HEAD" or status in (204, 304):
            return -status if close else status
        if "chunked" in _hget(hdrs, "transfer-encoding", "").lower():
            self._relay_body(up, client, True, None)
        elif _hget(hdrs, "content-length") is not None:
            self._relay_body(up, client, False, int(_hget(hdrs, "content-length")))
        else:
            while True:                          # delimited by close
                b = up.rf.read1(1 * MiB)
                if not b:
                    return -status
                client.send(b)
        return -status if close else status


# ---------------------------------------------------------------------------
# HttpSink
# ---------------------------------------------------------------------------

class HttpSink(_Server):
    """A loopback HTTP/1.1 server that reads request bodies into a reused
    buffer and throws them away, as fast as Python can (~1 GiB/s here), with
    keep-alive, Expect: 100-continue, Content-Length or chunked. It fakes
    the answers an uploader needs, cheaply (fixed ETags, no checksums):

      S3 / GCS XML   POST ?uploads -> UploadId XML; PUT ?partNumber&uploadId
                     -> ETag; POST ?uploadId -> CompleteMultipartUploadResult;
                     DELETE ?uploadId -> 204; PUT -> 200 + ETag;
                     HEAD -> Content-Length (the size it received) + ETag, or 404;
                     GET ?uploads -> an empty list; other GETs -> 404
      Azure blocks   PUT ?comp=block / ?comp=blocklist / PUT blob -> 201

    .bytes_received, .sizes {path: bytes}, .log [{method, target, body_len, status}]."""

    ETAG = '"5e1f2a3b4c5d6e7f8091a2b3c4d5e6f7"'

    def __init__(self, port=0):
        super().__init__(port)
        self.bytes_received = 0
        self.sizes = {}
        self.log = []
        self._uploads = {}
        self._ids = itertools.count(1)

    def serve(self, sock):
        c = _Conn(sock)
        buf = bytearray(4 * MiB)
        view = memoryview(buf)
        while True:
            head = c.read_head()
            if head is None:
                return
            first, hdrs, _ = head
            method, target = first.split(" ", 2)[:2]
            if _hget(hdrs, "expect", "").lower() == "100-continue":
                c.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            n = 0
            if "chunked" in _hget(hdrs, "transfer-encoding", "").lower():
                while True:
                    size = int(c.rf.readline(1024).split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while c.rf.readline(65537) not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    n += self._discard(c, view, size)
                    c.rf.readline(8)
            else:
                n = self._discard(c, view, int(_hget(hdrs, "content-length", "0") or 0))
            status, extra, body = self._answer(method, target, hdrs, n)
            with self._lock:
                self.bytes_received += n
                self.log.append({"method": method, "target": target, "body_len": n, "status": status})
            reason = {200: "OK", 201: "Created", 204: "No Content", 404: "Not Found"}.get(status, "X")
            h = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in extra.items())
            if "Content-Length" not in extra:
                h += f"Content-Length: {len(body)}\r\n"
            c.send(h.encode() + b"\r\n" + (b"" if method == "HEAD" else body))
            if _hget(hdrs, "connection", "").lower() == "close":
                return

    @staticmethod
    def _discard(c, view, n):
        got_all = 0
        while n > 0:
            got = c.rf.readinto(view[:min(n, len(view))])
            if not got:
                raise ConnectionError("client closed mid-body")
            n -= got
            got_all += got
        return got_all

    def _answer(self, method, target, hdrs, n):
        u = urllib.parse.urlsplit(target)
        q = dict(urllib.parse.parse_qsl(u.query, keep_blank_values=True))
        path = urllib.parse.unquote(u.path)
        xml = {"Content-Type": "application/xml"}
        if method == "POST" and "uploads" in q:
            uid = f"sink-{next(self._ids)}"
            with self._lock:
                self._uploads[uid] = {}
            parts = path.lstrip("/").split("/", 1)
            return 200, xml, (f'<?xml version="1.0" encoding="UTF-8"?><InitiateMultipartUploadResult>'
                              f"<Bucket>{parts[0]}</Bucket><Key>{parts[-1]}</Key><UploadId>{uid}</UploadId>"
                              f"</InitiateMultipartUploadResult>").encode()
        if method == "PUT" and "partNumber" in q and "uploadId" in q:
            with self._lock:
                self._uploads.setdefault(q["uploadId"], {})[q["partNumber"]] = n
            return 200, {"ETag": '"%032x"' % int(q["partNumber"] or 0)}, b""
        if method == "POST" and "uploadId" in q:
            with self._lock:
                parts = self._uploads.pop(q["uploadId"], {})
                self.sizes[path] = sum(parts.values())
            return 200, xml, (f'<?xml version="1.0" encoding="UTF-8"?><CompleteMultipartUploadResult>'
                              f"<Key>{path}</Key><ETag>\"{'0' * 32}-{len(parts)}\"</ETag>"
                              f"</CompleteMultipartUploadResult>").encode()
        if method == "DELETE":
            with self._lock:
                self._uploads.pop(q.get("uploadId"), None)
                if "uploadId" not in q:
                    self.sizes.pop(path, None)
            return 204, {}, b""
        if method == "PUT" and q.get("comp") in ("block", "blocklist"):
            if q.get("comp") == "blocklist":
                with self._lock:
                    self.sizes[path] = self.sizes.get(path + "?blocks", 0)
            else:
                with self._lock:
                    self.sizes[path + "?blocks"] = self.sizes.get(path + "?blocks", 0) + n
            return 201, {"ETag": self.ETAG}, b""
        if method == "PUT":
            with self._lock:
                self.sizes[path] = n
            return (201 if _hget(hdrs, "x-ms-blob-type") else 200), {"ETag": self.ETAG}, b""
        if method == "HEAD":
            with self._lock:
                size = self.sizes.get(path)
            if size is None:
                return 404, {"Content-Length": "0"}, b""
            return 200, {"Content-Length": str(size), "ETag": self.ETAG}, b""
        if method == "GET" and "uploads" in q:
            return 200, xml, b'<?xml version="1.0" encoding="UTF-8"?><ListMultipartUploadsResult></ListMultipartUploadsResult>'
        return 404, xml, b"<Error><Code>NoSuchKey</Code></Error>"


# ---------------------------------------------------------------------------
# GcsRecorder
# ---------------------------------------------------------------------------

_CRC32C_TABLE = None


def crc32c(data, crc=0):
    """CRC-32C (Castagnoli), pure Python: about 10 MiB/s, for small test data."""
    global _CRC32C_TABLE
    if _CRC32C_TABLE is None:
        t = []
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            t.append(c)
        _CRC32C_TABLE = t
    t = _CRC32C_TABLE
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


class _GcsHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, status, body=b"", headers=None):
        self.send_response(status)
        h = {"Content-Type": "application/xml; charset=UTF-8"} if body else {}
        h.update(headers or {})
        h.setdefault("Content-Length", str(len(body)))
        for k, v in h.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        return status

    def _error(self, status, code, message):
        return self._send(status, (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                                   f"<Message>{message}</Message></Error>").encode())

    def _body_to(self, f):
        """Read the body into file f (or discard with None): (length, md5 digest, crc32c or None)."""
        rec = self.server.rec
        want_crc = rec.crc32c or "crc32c=" in (self.headers.get("x-goog-hash") or "")
        md5, crc, n = hashlib.md5(), 0, 0

        def take(b):
            nonlocal crc, n
            md5.update(b)
            if want_crc:
                crc = crc32c(b, crc)
            n += len(b)
            if f is not None:
                f.write(b)

        if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                while size:
                    b = self.rfile.read(min(size, MiB))
                    if not b:
                        raise ConnectionError("short body")
                    size -= len(b)
                    take(b)
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                b = self.rfile.read(min(left, MiB))
                if not b:
                    raise ConnectionError("short body")
                left -= len(b)
                take(b)
        return n, md5.digest(), (crc if want_crc else None)

    def _check_digests(self, md5, crc):
        """None, or the error already sent for a Content-MD5 / x-goog-hash mismatch."""
        cm = self.headers.get("Content-MD5")
        if cm is not None and cm.strip() != base64.b64encode(md5).decode():
            return self._error(400, "BadDigest", "The Content-MD5 you specified did not match what was received.")
        for item in (self.headers.get("x-goog-hash") or "").split(","):
            k, _, v = item.strip().partition("=")
            if k == "md5" and v != base64.b64encode(md5).decode():
                return self._error(400, "BadDigest", "The MD5 in x-goog-hash did not match what was received.")
            if k == "crc32c" and v != base64.b64encode(struct.pack(">I", crc)).decode():
                return self._error(400, "BadDigest", "The CRC32C in x-goog-hash did not match what was received.")
        return None

    def _handle(self):
        rec = self.server.rec
        u = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(u.query, keep_blank_values=True))
        path = urllib.parse.unquote(u.path).lstrip("/")
        bucket, _, key = path.partition("/")
        entry = {"method": self.command, "target": self.path, "bucket": bucket, "key": key, "params": q,
                 "headers": {k.lower(): v for k, v in self.headers.items()}, "body_len": 0, "status": None,
                 "time": time.monotonic()}
        with rec._lock:
            rec.log.append(entry)
        status = self._route(entry, bucket, key, q)
        entry["status"] = status

    def _route(self, entry, bucket, key, q):
        """PUT, GET, HEAD and DELETE (POST: do_POST)."""
        rec = self.server.rec
        m = self.command
        tmp = tempfile.NamedTemporaryFile(dir=rec.dir, delete=False) if m == "PUT" else None
        try:
            n, md5, crc = self._body_to(tmp)
            entry["body_len"] = n
        except BaseException:
            if tmp:
                tmp.close()
                os.unlink(tmp.name)
            raise
        if tmp:
            tmp.close()
        try:
            auth = self.headers.get("Authorization") or ""
            if auth != f"Bearer {rec.token}":
                entry["auth_ok"] = False
                return self._error(401, "AuthenticationRequired" if not auth else "InvalidAuthentication",
                                   "Bearer token missing or not the expected one")
            entry["auth_ok"] = True
            if not bucket:
                return self._error(400, "InvalidURI", "path-style /BUCKET/OBJECT only")
            if m == "PUT" and "partNumber" in q:
                err = self._check_digests(md5, crc)
                if err:
                    return err
                return self._put_part(bucket, key, q, tmp.name, n, md5)
            if m == "PUT" and key:
                err = self._check_digests(md5, crc)
                if err:
                    return err
                rec._store(bucket, key, tmp.name, n, f'"{md5.hex()}"', md5, crc, 1)
                return self._send(200, headers={"ETag": f'"{md5.hex()}"', **rec._hash_headers(bucket, key)})
            if m == "DELETE" and "uploadId" in q:
                with rec._lock:
                    up = rec._uploads.pop(q["uploadId"], None)
                if up is None:
                    return self._error(404, "NoSuchUpload", "no such upload")
                for p in up["parts"].values():
                    os.unlink(p[0])
                return self._send(204)
            if m == "GET" and "uploads" in q:
                with rec._lock:
                    ups = [(uid, u["key"]) for uid, u in rec._uploads.items() if u["bucket"] == bucket]
                return self._send(200, ("<?xml version='1.0' encoding='UTF-8'?><ListMultipartUploadsResult>"
                                        + "".join(f"<Upload><Key>{_xml_escape(k)}</Key><UploadId>{uid}</UploadId></Upload>"
                                                  for uid, k in ups) + "</ListMultipartUploadsResult>").encode())
            if m == "GET" and "uploadId" in q:
                with rec._lock:
                    up = rec._uploads.get(q["uploadId"])
                    parts = sorted(up["parts"].items()) if up else []
                if up is None:
                    return self._error(404, "NoSuchUpload", "no such upload")
                return self._send(200, ("<?xml version='1.0' encoding='UTF-8'?><ListPartsResult>" + "".join(
                    f"<Part><PartNumber>{nr}</PartNumber><ETag>\"{p[2].hex()}\"</ETag><Size>{p[1]}</Size></Part>"
                    for nr, p in parts) + "</ListPartsResult>").encode())
            if m in ("GET", "HEAD") and key:
                with rec._lock:
                    obj = rec._objects.get((bucket, key))
                if obj is None:
                    return self._error(404, "NoSuchKey", "The specified key does not exist.")
                h = {"ETag": obj["etag"], "Content-Length": str(obj["size"]), "x-goog-stored-content-length":
                     str(obj["size"]), "x-goog-generation": str(obj["generation"]),
                     "x-goog-component-count": str(obj["components"]), **rec._hash_headers(bucket, key)}
                if m == "HEAD":
                    return self._send(200, headers=h)
                self.send_response(200)
                for k, v in h.items():
                    self.send_header(k, v)
                self.end_headers()
                with open(obj["path"], "rb") as f:
                    shutil.copyfileobj(f, self.wfile, MiB)
                return 200
            if m == "GET" and not key:
                prefix = q.get("prefix", "")
                with rec._lock:
                    objs = sorted((k, o) for (b, k), o in rec._objects.items() if b == bucket and k.startswith(prefix))
                return self._send(200, ("<?xml version='1.0' encoding='UTF-8'?><ListBucketResult><Name>" + bucket
                                        + "</Name>" + "".join(f"<Contents><Key>{_xml_escape(k)}</Key><Size>{o['size']}"
                                                              f"</Size><ETag>{o['etag']}</ETag></Contents>"
                                                              for k, o in objs)
                                        + "</ListBucketResult>").encode())
            if m == "DELETE" and key:
                with rec._lock:
                    obj = rec._objects.pop((bucket, key), None)
                if obj is None:
                    return self._error(404, "NoSuchKey", "The specified key does not exist.")
                os.unlink(obj["path"])
                return self._send(204)
            return self._error(501, "NotImplemented", f"GcsRecorder does not do {m} {self.path}")
        finally:
            if tmp is not None and os.path.exists(tmp.name) and not rec._owns(tmp.name):
                os.unlink(tmp.name)

    def _put_part(self, bucket, key, q, path, n, md5):
        rec = self.server.rec
        try:
            nr = int(q["partNumber"])
        except ValueError:
            nr = 0
        if not 1 <= nr <= 10000:
            return self._error(400, "InvalidArgument", "partNumber must be 1..10000")
        with rec._lock:
            up = rec._uploads.get(q.get("uploadId"))
            if up is None or up["bucket"] != bucket or up["key"] != key:
                return self._error(404, "NoSuchUpload", "no such upload")
            old = up["parts"].get(nr)
            up["parts"][nr] = (path, n, md5)
            rec._owned.add(path)
        if old:
            rec._owned.discard(old[0])
            os.unlink(old[0])
        return self._send(200, headers={"ETag": f'"{md5.hex()}"'})

    def _complete(self, bucket, key, uid, entry):
        rec = self.server.rec
        body = entry.get("_body", b"")
        try:
            parts = [(int(p["PartNumber"]), p["ETag"].strip()) for p in xml_items(body, "Part")]
        except (ET.ParseError, KeyError, ValueError):
            return self._error(400, "MalformedXML", "bad CompleteMultipartUpload")
        with rec._lock:
            up = rec._uploads.get(uid)
        if up is None or up["bucket"] != bucket or up["key"] != key:
            return self._error(404, "NoSuchUpload", "no such upload")
        if not parts:
            return self._error(400, "MalformedXML", "no parts")
        if [p[0] for p in parts] != sorted({p[0] for p in parts}):
            return self._error(400, "InvalidPartOrder", "parts must be in ascending order")
        for i, (nr, etag) in enumerate(parts):
            have = up["parts"].get(nr)
            if have is None or etag.strip('"') != have[2].hex():
                return self._error(400, "InvalidPart", f"part {nr} missing or its ETag does not match")
            if i < len(parts) - 1 and have[1] < 5 * MiB:
                return self._error(400, "EntityTooSmall", f"part {nr} is under 5 MiB")
        out = tempfile.NamedTemporaryFile(dir=rec.dir, delete=False)
        crc = 0
        md5s = b""
        with out:
            for nr, _ in parts:
                p = up["parts"][nr]
                md5s += p[2]
                with open(p[0], "rb") as f:
                    while True:
                        b = f.read(MiB)
                        if not b:
                            break
                        out.write(b)
                        if rec.crc32c:
                            crc = crc32c(b, crc)
        size = sum(up["parts"][nr][1] for nr, _ in parts)
        etag = f'"{hashlib.md5(md5s).hexdigest()}-{len(parts)}"'
        with rec._lock:
            rec._uploads.pop(uid, None)
        for p in up["parts"].values():
            rec._owned.discard(p[0])
            os.unlink(p[0])
        rec._store(bucket, key, out.name, size, etag, None, crc if rec.crc32c else None, len(parts))
        return self._send(200, (f"<?xml version='1.0' encoding='UTF-8'?><CompleteMultipartUploadResult>"
                                f"<Location>{rec.endpoint}/{bucket}/{_xml_escape(key)}</Location><Bucket>{bucket}</Bucket>"
                                f"<Key>{_xml_escape(key)}</Key><ETag>{etag}</ETag></CompleteMultipartUploadResult>").encode())

    def do_PUT(self):
        self._handle()

    def do_GET(self):
        self._handle()

    def do_HEAD(self):
        self._handle()

    def do_DELETE(self):
        self._handle()

    def do_POST(self):
        # POST bodies here are small XML (Complete) or empty (?uploads): keep them in memory.
        n = int(self.headers.get("Content-Length") or 0)
        if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
        else:
            data = self.rfile.read(n) if n else b""
        self._handle_post(data)

    def _handle_post(self, data):
        rec = self.server.rec
        u = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(u.query, keep_blank_values=True))
        path = urllib.parse.unquote(u.path).lstrip("/")
        bucket, _, key = path.partition("/")
        entry = {"method": "POST", "target": self.path, "bucket": bucket, "key": key, "params": q,
                 "headers": {k.lower(): v for k, v in self.headers.items()}, "body_len": len(data),
                 "status": None, "time": time.monotonic(), "_body": data}
        with rec._lock:
            rec.log.append(entry)
        auth = self.headers.get("Authorization") or ""
        if auth != f"Bearer {rec.token}":
            entry["auth_ok"] = False
            entry["status"] = self._error(401, "AuthenticationRequired" if not auth else "InvalidAuthentication",
                                          "Bearer token missing or not the expected one")
            return
        entry["auth_ok"] = True
        if "uploads" in q and key:
            uid = rec._new_upload(bucket, key)
            entry["status"] = self._send(200, (
                f"<?xml version='1.0' encoding='UTF-8'?><InitiateMultipartUploadResult "
                f"xmlns='http://s3.amazonaws.com/doc/2006-03-01/'><Bucket>{bucket}</Bucket>"
                f"<Key>{_xml_escape(key)}</Key><UploadId>{uid}</UploadId></InitiateMultipartUploadResult>").encode())
        elif "uploadId" in q and key:
            entry["status"] = self._complete(bucket, key, q["uploadId"], entry)
            entry.pop("_body", None)
        else:
            entry["status"] = self._error(501, "NotImplemented", f"GcsRecorder does not do POST {self.path}")


def _xml_escape(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class GcsRecorder:
    """A RECORDING SERVER for GCS's XML API — not Google's code, and not an
    emulator of all of GCS. No local GCS emulator speaks the XML API's
    multipart upload: firebase-tools' storage emulator implements only the
    JSON and Firebase APIs (every other route answers 501) and downloads a
    Java rules runtime at start-up; fake-gcs-server is a Go binary, not on
    npm or in Debian. So this implements, from Google's public documentation
    (cloud.google.com/storage/docs/multipart-uploads and the XML API pages),
    what an uploader uses, path-style (http://127.0.0.1:P/BUCKET/OBJECT):

      PUT object          single upload; ETag "md5hex"
      POST ?uploads       InitiateMultipartUploadResult with an UploadId
      PUT ?partNumber=N&uploadId=ID   a part; ETag "md5hex"
      POST ?uploadId=ID   CompleteMultipartUpload: parts ascending (else 400
                          InvalidPartOrder), ETags matching (400 InvalidPart),
                          all but the last >= 5 MiB (400 EntityTooSmall);
                          ETag "md5-of-md5s-N" (Google's real one differs)
      DELETE ?uploadId=ID abort (204); GET ?uploads lists open uploads;
      GET ?uploadId=ID lists parts
      HEAD / GET / DELETE object, GET bucket?prefix= (ListBucketResult)

    Every request must carry "Authorization: Bearer <token>" (else 401); a
    Content-MD5 or x-goog-hash md5=/crc32c= that does not match the body gets
    400 BadDigest. Buckets exist as soon as named. Objects and parts live in
    files in a temp dir. HEAD/GET give x-goog-hash (md5 for single uploads;
    crc32c too when crc32c=True or the upload sent one — pure Python, slow:
    keep such objects to a few MiB). .log has one dict per request (method,
    target, bucket, key, params, headers, body_len, status, auth_ok).
    .token may be changed while it runs (token rotation)."""

    def __init__(self, token="test-gcs-token", crc32c=False, port=0):
        self.token, self.crc32c, self._port = token, crc32c, port
        self.log = []
        self._lock = threading.Lock()
        self._objects = {}
        self._uploads = {}
        self._owned = set()
        self._gen = itertools.count(1)
        self.dir = None
        self._server = None
        self.endpoint = None

    def start(self):
        self.dir = tempfile.mkdtemp(prefix="spotwatch-gcs-")
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", self._port), _GcsHandler)
        srv.daemon_threads = True
        srv.rec = self
        self._server = srv
        self.port = srv.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=srv.serve_forever, daemon=True, name="GcsRecorder").start()
        return self

    def stop(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def client(self, token=None, endpoint=None):
        return GcsXmlClient(endpoint or self.endpoint, token or self.token)

    # -- inspection -------------------------------------------------------------
    def requests(self, method=None, match=()):
        match = (match,) if isinstance(match, str) else tuple(match or ())
        with self._lock:
            log = list(self.log)
        return [e for e in log if (not method or e["method"] == method.upper()) and all(m in e["target"] for m in match)]

    def objects(self, bucket=None):
        """{(bucket, key): {"size", "etag", "path", "components", ...}}."""
        with self._lock:
            return {k: dict(v) for k, v in self._objects.items() if bucket is None or k[0] == bucket}

    def object_path(self, bucket, key):
        return self._objects[(bucket, key)]["path"]

    def get_object(self, bucket, key):
        with open(self.object_path(bucket, key), "rb") as f:
            return f.read()

    def object_sha256(self, bucket, key):
        return file_sha256(self.object_path(bucket, key))

    def uploads(self, bucket=None):
        """Open (neither completed nor aborted) multipart uploads: [(bucket, key, upload_id)]."""
        with self._lock:
            return [(u["bucket"], u["key"], uid) for uid, u in self._uploads.items() if bucket is None or u["bucket"] == bucket]

    # -- internals ----------------------------------------------------------------
    def _new_upload(self, bucket, key):
        uid = "gcs-" + secrets.token_hex(12)
        with self._lock:
            self._uploads[uid] = {"bucket": bucket, "key": key, "parts": {}}
        return uid

    def _owns(self, path):
        with self._lock:
            return path in self._owned

    def _store(self, bucket, key, path, size, etag, md5, crc, components):
        with self._lock:
            old = self._objects.get((bucket, key))
            self._objects[(bucket, key)] = {"path": path, "size": size, "etag": etag, "md5": md5, "crc32c": crc,
                                           "components": components, "generation": next(self._gen)}
            self._owned.add(path)
            if old:
                self._owned.discard(old["path"])
        if old and old["path"] != path:
            os.unlink(old["path"])
        return True

    def _hash_headers(self, bucket, key):
        with self._lock:
            o = self._objects.get((bucket, key))
        if not o:
            return {}
        hs = []
        if o["crc32c"] is not None:
            hs.append("crc32c=" + base64.b64encode(struct.pack(">I", o["crc32c"])).decode())
        if o["md5"] is not None:
            hs.append("md5=" + base64.b64encode(o["md5"]).decode())
        return {"x-goog-hash": ",".join(hs)} if hs else {}


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------

def _cli(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="stores.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("rgw-start", help="start a radosgw cluster in DIR, daemonised; print the SPOTWATCH_TEST_RGW value")
    p.add_argument("dir")
    p.add_argument("--mem", type=int, default=6 * GiB, help="memstore bytes (default 6 GiB)")
    p = sub.add_parser("rgw-stop", help="stop the cluster in DIR and delete what rgw-start made there")
    p.add_argument("dir")
    p = sub.add_parser("rgw-reap")
    p.add_argument("pid", type=int)
    p.add_argument("dir")
    p = sub.add_parser("serve", help="run a store in the foreground until interrupted")
    p.add_argument("what", choices=["rgw", "s3rver", "azurite", "gcs", "sink"])
    sub.add_parser("npm-install", help="install the npm packages into the cache if missing")
    a = ap.parse_args(argv)
    if a.cmd == "rgw-start":
        os.makedirs(a.dir, exist_ok=True)
        r = Rgw(mem_bytes=a.mem, directory=a.dir)
        r._own_dir = False
        try:
            r.start(reaper=False)
        except Unavailable as e:
            print(f"rgw-start: {e}", file=sys.stderr)
            return 2
        print(r.env_value(), flush=True)
        print(f"rgw-start: ready in {r.timings['ready']:.1f} s", file=sys.stderr)
        return 0
    if a.cmd == "rgw-stop":
        stop_cluster(os.path.abspath(a.dir), remove=True, remove_dir=False)
        return 0
    if a.cmd == "rgw-reap":
        _reap(a.pid, a.dir)
        return 0
    if a.cmd == "npm-install":
        for name in NPM_PACKAGES:
            print(npm_package(name))
        return 0
    if a.cmd == "serve":
        store = {"rgw": Rgw, "s3rver": S3rver, "azurite": Azurite, "gcs": GcsRecorder, "sink": HttpSink}[a.what]()
        with store:
            info = [store.endpoint]
            for attr in ("access_key", "secret_key", "account", "key", "token"):
                if hasattr(store, attr):
                    info.append(f"{attr}={getattr(store, attr)}")
            print(" ".join(info), flush=True)
            try:
                signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
