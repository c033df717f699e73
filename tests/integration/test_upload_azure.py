#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""az:// uploads against a real Azurite (stores.Azurite, started here: this
test fails, never skips, when it cannot run). The built daemon sends files
with `spotwatchctl upload`; everything is read back with stores'
AzureBlobClient and compared byte for byte.

  - a small file as one Put Blob and a 40 MiB file as 5 blocks of 8 MiB,
    4 in flight; the manifest's check (HEAD + ETag) skips them next time and
    sends again what left the store
  - SAS auth (an account SAS made here with the development key)
  - bearer auth: the managed identity's token from the daemon's fake Azure
    IMDS (spotwatchctl fake-credentials), against an Azurite with --oauth
    basic, which accepts bearer tokens only over HTTPS: a plain-HTTP ->
    HTTPS forwarder stands between (the daemon's http module trusts only the
    system CA store); a token Azurite refuses is one clear 403 after one
    fetch of fresh credentials
  - a wrong account key: one clear 403 naming the object, nothing committed
  - through stores.FaultProxy: a corrupted block body (Azurite rejects the
    Content-MD5) and 503 ServerBusy answers are retried, the blob is intact
Only 127.0.0.1 is ever contacted.
"""
import base64
import datetime
import hashlib
import hmac
import http.client
import json
import os
import secrets
import select
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(__file__))
import stores  # noqa: E402
from harness import Daemon, check, main  # noqa: E402

MiB = stores.MiB
ACCOUNT = stores.AZURITE_ACCOUNT
KEY = stores.AZURITE_KEY


# ---- Azurite, plain and with HTTPS + OAuth ---------------------------------------------

class AzuriteTls(stores.Azurite):
    """Azurite over HTTPS with a self-signed certificate for 127.0.0.1 and
    --oauth basic (it checks a bearer token's issuer, audience and lifetime,
    not its signature)."""
    name = "azurite-tls"

    def start(self):
        cache = stores.npm_package("azurite")
        main_js = os.path.join(cache, "node_modules", "azurite", "dist", "src", "blob", "main.js")
        port = stores.free_port()

        def argv(d):
            self.cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                            "-out", self.cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                            "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
            return ["node", main_js, "--blobHost", "127.0.0.1", "--blobPort", str(port),
                    "--location", os.path.join(d, "data"), "--skipApiVersionCheck", "--loose",
                    "--disableTelemetry", "--oauth", "basic", "--cert", self.cert, "--key", key]

        self._spawn(argv, cache, r"(?:listens on|listening at) https://127\.0\.0\.1:(\d+)")
        self.blob_endpoint = f"https://127.0.0.1:{self.port}"
        self.endpoint = f"{self.blob_endpoint}/{self.account}"
        return self


class TlsForwarder(stores._Server):
    """Plain HTTP in, TLS (verified against Azurite's certificate) out, byte
    for byte. Counts the requests that carried a bearer token."""
    NEEDLE = b"\r\nAuthorization: Bearer "

    def __init__(self, upstream_port, cafile):
        super().__init__()
        self.upstream_port = upstream_port
        self.ctx = ssl.create_default_context(cafile=cafile)
        # TLS 1.3 servers send session tickets after the handshake: select() then says "readable",
        # recv() eats the ticket and blocks for data that comes only once the request is forwarded.
        self.ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        self.bearer_requests = 0

    def serve(self, csock):
        raw = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=120)
        up = self.ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        tail = b""
        # One thread per connection for both directions: an SSL socket must not be used by two at once.
        try:
            while True:
                ready = [up] if up.pending() else select.select([csock, up], [], [], 120)[0]
                if not ready:
                    return
                if csock in ready:
                    b = csock.recv(256 * 1024)
                    if not b:
                        return
                    scan = tail + b
                    with self._lock:
                        self.bearer_requests += scan.count(self.NEEDLE)
                    tail = scan[-(len(self.NEEDLE) - 1):]
                    up.sendall(b)
                if up in ready:
                    b = up.recv(256 * 1024)
                    if not b:
                        return
                    csock.sendall(b)
        finally:
            try:
                up.close()
            except OSError:
                pass


def account_sas(key=KEY, version="2021-08-06"):
    """An account SAS for the blob service, as "Create an account SAS" says (2020-12-06 and later)."""
    perms, services, types, expiry, proto = "racwdl", "b", "sco", "2099-01-01T00:00:00Z", "https,http"
    sts = f"{ACCOUNT}\n{perms}\n{services}\n{types}\n\n{expiry}\n\n{proto}\n{version}\n\n"
    sig = base64.b64encode(hmac.new(base64.b64decode(key), sts.encode(), hashlib.sha256).digest()).decode()
    q = [("sv", version), ("ss", services), ("srt", types), ("sp", perms), ("se", expiry), ("spr", proto),
         ("sig", sig)]
    return "&".join(f"{k}={urllib.parse.quote(v, safe='')}" for k, v in q)


def jwt(aud="https://storage.azure.com", lifetime=3600):
    """A token shaped like Entra ID's; Azurite's basic OAuth does not check the signature."""
    def b64(o):
        return base64.urlsafe_b64encode(json.dumps(o, separators=(",", ":")).encode()).rstrip(b"=").decode()
    now = int(time.time())
    tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"
    claims = {"aud": aud, "iss": f"https://sts.windows.net/{tenant}/", "iat": now - 60, "nbf": now - 60,
              "exp": now + lifetime, "oid": "11111111-2222-3333-4444-555555555555", "tid": tenant}
    return f"{b64({'alg': 'RS256', 'typ': 'JWT'})}.{b64(claims)}.{secrets.token_urlsafe(32)}"


# ---- helpers -------------------------------------------------------------------------

AZURITE = None


def azurite():
    global AZURITE
    if AZURITE is None:
        AZURITE = stores.Azurite().start()
        print(f"azurite up in {AZURITE.start_seconds:.1f} s at {AZURITE.endpoint}", flush=True)
    return AZURITE


def setup(files, endpoint=None, key=KEY, sas=None, part_size="8M", concurrency=4, fake_metadata="aws",
          daemon_keys=None, container=None, checksum=None):
    """A daemon with one [upload "az"] of the files {name: size} in a fresh container."""
    az = azurite()
    container = container or stores.unique_name("c")
    az.client().create_container(container)
    d = Daemon(fake_metadata=fake_metadata, daemon_keys=daemon_keys)
    src = os.path.join(d.tmp, "ck")
    os.mkdir(src)
    sums = {}
    for name, size in files.items():
        sums[name] = stores.make_file(os.path.join(src, name), size)
    lines = [f'[upload "az"]', f"source = {src}/*.bin", f"destination = az://{ACCOUNT}/{container}/run-1/",
             f"endpoint = {endpoint or az.endpoint}", f"part_size = {part_size}", f"concurrency = {concurrency}"]
    if key:
        lines.append(f"account_key = {key}")
    if sas:
        lines.append(f"sas_token = {sas}")
    if checksum:
        lines.append(f"checksum = {checksum}")
    with open(d.config_path, "a") as f:
        f.write("\n" + "\n".join(lines) + "\n")
    return d, src, container, sums


def stored_sha256(container, name, client=None):
    return (client or azurite().client()).get_blob_sha256(container, f"run-1/{name}")


def records_by_object(d):
    return {r["SPOTWATCH_OBJECT"].rsplit("/", 1)[-1]: r for r in d.records("upload")}


# ---- tests ---------------------------------------------------------------------------

def test_shared_key_blob_and_blocks():
    d, src, container, sums = setup({"small.bin": 3 * MiB + 7, "big.bin": 40 * MiB})
    c = azurite().client()
    with d:
        t0 = time.monotonic()
        r = d.ctl("upload", "az", timeout=120)
        took = time.monotonic() - t0
        check(r.returncode == 0, f"spotwatchctl upload succeeds ({took:.1f} s): {r.stdout.strip()}")
        recs = records_by_object(d)
        check(recs["small.bin"]["SPOTWATCH_STATE"] == "sent" and recs["small.bin"]["SPOTWATCH_PARTS"] == "1"
              and recs["small.bin"]["SPOTWATCH_BYTES"] == str(3 * MiB + 7), "the small file went as one Put Blob")
        check(recs["big.bin"]["SPOTWATCH_STATE"] == "sent" and recs["big.bin"]["SPOTWATCH_PARTS"] == "5"
              and recs["big.bin"]["SPOTWATCH_OBJECT"] == f"az://{ACCOUNT}/{container}/run-1/big.bin",
              "40 MiB went as 5 blocks, the record names az://account/container/key")
        for name in ("small.bin", "big.bin"):
            check(stored_sha256(container, name, c) == sums[name], f"{name} reads back byte for byte")
        bl = c.get_block_list(container, "run-1/big.bin")
        ids = [base64.b64decode(i).decode() for i, _ in bl["committed"]]
        check(ids == [f"spw-{n:011d}" for n in range(1, 6)] and [s for _, s in bl["committed"]] == [8 * MiB] * 5
              and not bl["uncommitted"], f"the block list is committed in order, 8 MiB each: {ids}")
        status, h = c.get_blob_properties(container, "run-1/small.bin")
        check(status == 200 and h.get("content-md5") == base64.b64encode(
            hashlib.md5(open(os.path.join(src, "small.bin"), "rb").read()).digest()).decode(),
              "the Put Blob carried the Content-MD5 the store kept")

        r = d.ctl("upload", "az", timeout=60)
        recs = d.records("upload")[-2:]
        check(all(x["SPOTWATCH_STATE"] == "skipped" for x in recs),
              "the next upload skips both: the store still has them with the same ETag")
        c.delete_blob(container, "run-1/small.bin")
        r = d.ctl("upload", "az", timeout=60)
        recs = records_by_object(d)
        check(recs["small.bin"]["SPOTWATCH_STATE"] == "sent" and recs["big.bin"]["SPOTWATCH_STATE"] == "skipped",
              "a blob deleted from the store is sent again, the other one is skipped")
        check(stored_sha256(container, "small.bin", c) == sums["small.bin"], "and it is back, intact")


def test_sas():
    d, src, container, sums = setup({"a.bin": 12 * MiB + 1}, key=None, sas=account_sas(), part_size="5M",
                                    concurrency=2)
    with d:
        r = d.ctl("upload", "az", timeout=120)
        rec = records_by_object(d)["a.bin"]
        check(r.returncode == 0 and rec["SPOTWATCH_STATE"] == "sent" and rec["SPOTWATCH_PARTS"] == "3",
              f"a SAS token authorises the upload (3 blocks): {r.stdout.strip()}")
        check(stored_sha256(container, "a.bin") == sums["a.bin"], "it reads back byte for byte")


def test_wrong_key():
    wrong = base64.b64encode(secrets.token_bytes(64)).decode()
    with stores.FaultProxy(azurite().blob_endpoint) as px:
        d, src, container, sums = setup({"w.bin": 20 * MiB}, key=wrong, part_size="5M", concurrency=4,
                                        endpoint=px.url("/" + ACCOUNT))
        with d:
            r = d.ctl("upload", "az", check=False, timeout=60)
            rec = records_by_object(d)["w.bin"]
            err = rec.get("SPOTWATCH_ERROR", "")
            check(r.returncode == 1 and rec["SPOTWATCH_STATE"] == "failed", "the upload fails")
            # Azure says AuthenticationFailed, Azurite AuthorizationFailure.
            check(err.startswith(("HTTP 403 AuthenticationFailed: ", "HTTP 403 AuthorizationFailure: "))
                  and f"az://{ACCOUNT}/{container}/run-1/w.bin" in err,
                  f"one clear error that names the object: {err}")
            puts = px.requests(method="PUT")
            check(0 < len(puts) <= 4, f"no retry storm: {len(puts)} PUTs for 4 blocks in flight")
            check(azurite().client().list_blobs(container) == [], "nothing was committed")


def test_md5_mismatch_and_503_retried():
    with stores.FaultProxy(azurite().blob_endpoint) as px:
        d, src, container, sums = setup({"r.bin": 24 * MiB}, part_size="8M", concurrency=2,
                                        endpoint=px.url("/" + ACCOUNT))
        px.add_rule("corrupt", method="PUT", match=("comp=block", "blockid=c3B3LTAwMDAwMDAwMDAy"), count=1)
        px.add_rule("status", method="PUT", match=("comp=block", "blockid=c3B3LTAwMDAwMDAwMDAz"), count=2,
                    status=503, code="ServerBusy")
        with d:
            r = d.ctl("upload", "az", timeout=120)
            rec = records_by_object(d)["r.bin"]
            check(r.returncode == 0 and rec["SPOTWATCH_STATE"] == "sent" and rec["SPOTWATCH_RETRIES"] == "3",
                  f"a corrupted block and two 503s are retried (3 retries): {rec['MESSAGE']}")
            b2 = px.requests(method="PUT", match="blockid=c3B3LTAwMDAwMDAwMDAy")
            check([e["status"] for e in b2] == [400, 201],
                  f"block 2: rejected checksum, then accepted: {[e['status'] for e in b2]}")
            b3 = px.requests(method="PUT", match="blockid=c3B3LTAwMDAwMDAwMDAz")
            check([e["status"] for e in b3] == [503, 503, 201], "block 3: two 503s, then accepted")
            check(stored_sha256(container, "r.bin") == sums["r.bin"], "the blob reads back byte for byte")


def test_source_changing_while_sent():
    """A blob whose file is still being appended to: a single Put Blob is removed again, blocks are never
    committed; tried once more, then reported; sent once the file is still."""
    import threading
    az = azurite()
    with stores.FaultProxy(az.blob_endpoint) as px:
        px.add_rule("delay", method="PUT", count=None, seconds=0.6)
        endpoint = px.endpoint + "/" + ACCOUNT
        for name, size in (("one.bin", 2 * MiB), ("blocks.bin", 20 * MiB)):
            d, src, container, _ = setup({name: size}, endpoint=endpoint)
            path = os.path.join(src, name)
            stop = threading.Event()

            def writer():
                with open(path, "ab") as f:
                    while not stop.wait(0.1):
                        f.write(os.urandom(4096))
                        f.flush()

            with d:
                t = threading.Thread(target=writer)
                t.start()
                try:
                    res = d.ctl("upload", check=False)
                finally:
                    stop.set()
                    t.join()
                rec = d.records("upload")[-1]
                check(res.returncode != 0 and rec["SPOTWATCH_ERROR"] == "source changed while being read",
                      f"{name}: a file that keeps changing is reported: {rec.get('SPOTWATCH_ERROR')}")
                check(not az.client().list_blobs(container), f"{name}: nothing of it is visible in the container")
                d.ctl("upload")
                check(d.records("upload")[-1]["SPOTWATCH_STATE"] == "sent", f"{name}: sent once the file is still")
                sha = stores.file_sha256(path)
            check(stored_sha256(container, name) == sha, f"{name}: the blob is the final file")


def read_back_sha256(client, container, blob):
    """The test's own read-back through TlsForwarder to the HTTPS Azurite: once in a full suite run the
    forwarder's fresh upstream TLS connection was closed by Azurite before any answer (the daemon had
    finished long before), so a read-back that got no answer at all is asked once more. Not the daemon's
    path: its requests are checked by the assertions above."""
    try:
        return client.get_blob_sha256(container, blob)
    except (http.client.RemoteDisconnected, ConnectionResetError) as e:
        print(f"note: read-back got no answer ({e}), asking once more", flush=True)
        return client.get_blob_sha256(container, blob)


def bearer_daemon(fw, container, size):
    d, src, container, sums = setup({"b.bin": size}, key=None, endpoint=fw.url("/" + ACCOUNT), part_size="5M",
                                    fake_metadata="azure", daemon_keys={"cloud": "azure"}, container=container)
    return d, sums


def test_bearer():
    tls = AzuriteTls().start()
    try:
        with TlsForwarder(tls.port, tls.cert) as fw:
            client = stores.AzureBlobClient(fw.url("/" + ACCOUNT), ACCOUNT, KEY)
            container = stores.unique_name("c")
            client.create_container(container)
            d, sums = bearer_daemon(fw, container, 12 * MiB)
            with d:
                d.ctl("fake-credentials", "--token", jwt())
                n0 = fw.bearer_requests
                r = d.ctl("upload", "az", timeout=120)
                rec = records_by_object(d)["b.bin"]
                check(r.returncode == 0 and rec["SPOTWATCH_STATE"] == "sent" and rec["SPOTWATCH_PARTS"] == "3",
                      f"the managed identity's token authorises the upload: {rec['MESSAGE']}")
                check(fw.bearer_requests - n0 >= 5,
                      f"with Authorization: Bearer ({fw.bearer_requests - n0} requests: 3 blocks, list, HEAD)")
                check(read_back_sha256(client, container, "run-1/b.bin") == sums["b.bin"],
                      "it reads back byte for byte (over HTTPS)")

            # A token for another audience: refused, fetched once more, refused again: one error.
            first = sums
            d, sums = bearer_daemon(fw, container, 3 * MiB)
            with d:
                d.ctl("fake-credentials", "--token", jwt(aud="https://example.invalid"))
                n0 = fw.bearer_requests
                r = d.ctl("upload", "az", check=False, timeout=120)
                rec = records_by_object(d)["b.bin"]
                err = rec.get("SPOTWATCH_ERROR", "")
                check(r.returncode == 1 and err.startswith("HTTP 403 AuthenticationFailed: ")
                      and "audience" in err and "managed identity" in err and f"/{container}/run-1/b.bin" in err,
                      f"a refused token is one clear 403: {err}")
                check(fw.bearer_requests - n0 == 2, f"sent twice: once more with a fresh token "
                      f"({fw.bearer_requests - n0} requests)")
                check(read_back_sha256(client, container, "run-1/b.bin") == first["b.bin"],
                      "the blob from before is untouched")
    finally:
        tls.stop()


if __name__ == "__main__":
    try:
        main([test_shared_key_blob_and_blocks, test_sas, test_wrong_key, test_md5_mismatch_and_503_retried,
              test_source_changing_while_sent, test_bearer])
    finally:
        if AZURITE:
            AZURITE.stop()
