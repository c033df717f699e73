#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Self-test of the real-store harness (stores.py), without the daemon: a
real radosgw (Rgw.get(): the shared one named by $SPOTWATCH_TEST_RGW, else a
private one, ~3 s) round-trips small, 20 MiB and multipart objects and
rejects what it must (bad signature, BadDigest, EntityTooSmall); FaultProxy's
status/drop/corrupt/delay rules show in its request log, with keep-alive and
chunked bodies; s3rver, Azurite (npm, installed on first use), GcsRecorder
and HttpSink round-trip too. About 20 s warm. A store that cannot run here
fails its test (stores.Unavailable says what to install): nothing is skipped.
"""
import hashlib
import http.client
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import check  # noqa: E402
from stores import (MiB, AzureBlobClient, Azurite, FaultProxy, FileRange, GcsRecorder, GcsXmlClient,  # noqa: E402
                    HttpSink, Rgw, S3Client, S3Error, S3rver, make_file, md5_b64, unique_name)

ODD_KEY = "dir/sub dir/ä+b=c&d~e%f.bin"


def expect_error(fn, status, code=None):
    """Run fn; return True when it raised S3Error with that status (and code)."""
    try:
        fn()
    except S3Error as e:
        return e.status == status and (code is None or e.code == code)
    return False


def test_rgw_objects():
    t0 = time.monotonic()
    rgw = Rgw.get()
    print(f"# radosgw at {rgw.endpoint} ({'shared' if rgw.shared else 'private'}, {time.monotonic() - t0:.1f} s)")
    s3 = rgw.s3()
    b = unique_name("self")
    s3.create_bucket(b)
    s3.put_object(b, ODD_KEY, b"hello")
    check(s3.get_object(b, ODD_KEY) == b"hello", "RGW: a small object with an odd key (space, +, &, ~, %, UTF-8) round-trips")
    check([o["Key"] for o in s3.list_objects(b, "dir/")] == [ODD_KEY], "RGW: list_objects(prefix) names it")
    big = os.urandom(20 * MiB)
    h = s3.put_object(b, "big", big, content_md5=True)
    check(h.get("etag") == '"%s"' % hashlib.md5(big).hexdigest(), "RGW: a 20 MiB PUT (signed payload + Content-MD5) has the MD5 ETag")
    check(s3.get_object_sha256(b, "big") == hashlib.sha256(big).hexdigest(), "RGW: its streamed SHA-256 matches")
    st, hd = s3.head_object(b, "big")
    check(st == 200 and hd.get("content-length") == str(20 * MiB), "RGW: HEAD gives its size")
    r = s3.request("PUT", b, "md", body=b"abc", headers={"Content-MD5": md5_b64(b"abd")}, sign_payload=False)
    check(r.status == 400 and r.code == "BadDigest", "RGW: a wrong Content-MD5 gets 400 BadDigest")
    bad = S3Client(rgw.endpoint, rgw.access_key, "not-the-secret")
    r = bad.request("PUT", b, "x", body=b"x")
    check(r.status == 403 and r.code == "SignatureDoesNotMatch", "RGW: a wrong secret gets 403 SignatureDoesNotMatch")
    s3.delete_object(b, "big")
    check(s3.head_object(b, "big")[0] == 404, "RGW: deleted object HEADs 404")
    user = unique_name("u")
    rgw.create_user(user, user.upper(), "secret-" + user)
    other = rgw.s3(user.upper(), "secret-" + user)
    ob = unique_name("other")
    other.create_bucket(ob)
    check(other.list_objects(ob) == [], "RGW: create_user gives working keys")
    rgw.gc()
    check(True, "RGW: gc() runs")


def test_rgw_multipart():
    rgw = Rgw.get()
    s3 = rgw.s3()
    b = unique_name("mp")
    s3.create_bucket(b)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "f")
        sha = make_file(path, 12 * MiB + 123)
        etag = s3.upload_file(b, "f", path, part_size=5 * MiB, parallel=2, content_md5=True)
        check(etag.endswith('-3"'), f"RGW: upload_file made 3 parts (ETag {etag})")
        check(s3.get_object_sha256(b, "f") == sha, "RGW: the multipart object reads back byte for byte")
        uid = s3.create_multipart_upload(b, "small")
        e1 = s3.upload_part(b, "small", uid, 1, b"x" * 1000)
        e2 = s3.upload_part(b, "small", uid, 2, b"y" * 1000)
        check(expect_error(lambda: s3.complete_multipart_upload(b, "small", uid, [(1, e1), (2, e2)]), 400, "EntityTooSmall"),
              "RGW: a 1000-byte first part gets 400 EntityTooSmall")
        e1 = s3.upload_part(b, "small", uid, 1, b"z" * (5 * MiB))
        check(expect_error(lambda: s3.complete_multipart_upload(b, "small", uid, [(1, e1), (2, e1)]), 400, "InvalidPart"),
              "RGW: a wrong part ETag gets 400 InvalidPart")
        check([u["UploadId"] for u in s3.list_multipart_uploads(b)] == [uid], "RGW: list_multipart_uploads shows the open one")
        s3.abort_multipart_upload(b, "small", uid)
        check(s3.list_multipart_uploads(b) == [] and s3.head_object(b, "small")[0] == 404,
              "RGW: after abort nothing is left: no upload, no object")


def test_fault_proxy_rgw():
    rgw = Rgw.get()
    with FaultProxy(rgw.endpoint) as px:
        s3 = rgw.s3(endpoint=px.endpoint, session_token="session-token-123")
        b = unique_name("px")
        s3.create_bucket(b)
        e = px.requests("PUT")[-1]
        check(e["headers"].get("x-amz-security-token") == "session-token-123"
              and "x-amz-security-token" in e["signed_headers"],
              "proxy log: x-amz-security-token sent and in SignedHeaders (Host kept: RGW accepted the signature)")
        s3 = rgw.s3(endpoint=px.endpoint)
        px.add_rule("status", method="PUT", match="partNumber=2", status=503)
        px.add_rule("drop", method="PUT", match="partNumber=3", after=100000)
        px.add_rule("corrupt", method="PUT", match="partNumber=4")
        px.add_rule("delay", method="PUT", match="partNumber=5", seconds=0.3)
        uid = s3.create_multipart_upload(b, "obj")
        data = os.urandom(5 * MiB)
        results = {}
        for n in range(1, 6):
            t = time.monotonic()
            try:
                results[n] = s3.upload_part(b, "obj", uid, n, data, content_md5=True, sign_payload=False)
            except S3Error as ex:
                results[n] = (ex.status, ex.code)
            except OSError as ex:
                results[n] = type(ex).__name__
            results[f"t{n}"] = time.monotonic() - t
        log = {int(e["params"]["partNumber"]): e for e in px.requests("PUT", "partNumber=")}
        check(results[1].startswith('"') and log[1]["status"] == 200 and log[1]["action"] is None, "part 1 goes through")
        check(results[2] == (503, "SlowDown") and log[2]["status"] == 503 and log[2]["action"] == "status",
              "status rule: the proxy answers 503 SlowDown itself, logged")
        check(isinstance(results[3], str) and log[3]["status"] is None and log[3]["body_len"] == 100000
              and log[3]["action"] == "drop", f"drop rule: connection closed after 100000 body bytes ({results[3]})")
        check(results[4] == (400, "BadDigest") and log[4]["status"] == 400 and log[4]["action"] == "corrupt",
              "corrupt rule: one flipped byte, RGW answers 400 BadDigest to the Content-MD5")
        check(results[5] == results[1] and results["t5"] >= 0.3 and log[5]["action"] == "delay",
              "delay rule: part 5 answered after the delay")
        r = s3.request("PUT", b, "obj", query={"partNumber": 2, "uploadId": uid}, body=data)
        check(r.status == 200, "rules are spent after their count: part 2 again goes through")
        s3.abort_multipart_upload(b, "obj", uid)
        check(s3.list_multipart_uploads(b) == [], "aborted through the proxy: nothing left")


def test_fault_proxy_http():
    """Keep-alive, Expect: 100-continue and chunked bodies through the proxy (into HttpSink)."""
    with HttpSink() as sink, FaultProxy(sink.endpoint) as px:
        c = http.client.HTTPConnection("127.0.0.1", px.port, timeout=10)
        for i in range(3):
            c.request("PUT", f"/b/k{i}", body=b"x" * (1000 + i), headers={"Expect": "100-continue"})
            r = c.getresponse()
            r.read()
        c.request("PUT", "/b/chunked", body=iter([b"a" * 5000, b"b" * 7000]), encode_chunked=True)
        r = c.getresponse()
        r.read()
        c.close()
        log = px.requests()
        check(len(log) == 4 and len({e["conn"] for e in log}) == 1 and all(e["status"] == 200 for e in log),
              "keep-alive: four requests on one client connection, each 200")
        check(sink.sizes.get("/b/k2") == 1002 and sink.sizes.get("/b/chunked") == 12000 and log[3]["body_len"] == 12000,
              "Content-Length and chunked bodies arrive whole (Expect: 100-continue handled)")


def test_s3rver():
    with S3rver() as s:
        print(f"# s3rver at {s.endpoint} ({s.start_seconds:.1f} s)")
        s3 = s.s3()
        b = unique_name("s3r")
        s3.create_bucket(b)
        data = os.urandom(3 * MiB)
        s3.put_object(b, ODD_KEY, data)
        check(s3.get_object(b, ODD_KEY) == data, "s3rver: put/get round-trips (odd key)")
        r = S3Client(s.endpoint, "S3RVER", "wrong").request("PUT", b, "x", body=b"x")
        check(r.status == 403, "s3rver: a wrong secret gets 403")


def test_azurite():
    with Azurite() as a:
        print(f"# azurite at {a.endpoint} ({a.start_seconds:.1f} s)")
        az = a.client()
        c = unique_name("az")
        az.create_container(c)
        data = os.urandom(2 * MiB)
        az.put_blob(c, ODD_KEY, data, content_md5=True)
        check(az.get_blob(c, ODD_KEY) == data, "Azurite: put/get blob round-trips (odd name)")
        ids = [az.put_block(c, "blocks", f"block-{i:06d}", bytes([i]) * 1000) for i in range(3)]
        bl = az.get_block_list(c, "blocks")
        check(bl["committed"] == [] and [x[0] for x in bl["uncommitted"]] == ids, "Azurite: staged blocks are uncommitted")
        az.put_block_list(c, "blocks", ids)
        bl = az.get_block_list(c, "blocks")
        check([x[0] for x in bl["committed"]] == ids and bl["uncommitted"] == [], "Azurite: committed after Put Block List")
        check(az.get_blob_sha256(c, "blocks") == hashlib.sha256(b"".join(bytes([i]) * 1000 for i in range(3))).hexdigest(),
              "Azurite: the block blob reads back in order")
        check(sorted(x["Name"] for x in az.list_blobs(c)) == sorted([ODD_KEY, "blocks"]), "Azurite: list_blobs")
        r = AzureBlobClient(a.endpoint, a.account, "AAAA" * 22).request("GET", c, "blocks")
        check(r.status == 403, "Azurite: a wrong key gets 403")


def test_gcs_recorder():
    with GcsRecorder(token="tok-1") as g:
        gc = g.client()
        gc.put_object("bkt", ODD_KEY, b"hello")
        check(g.get_object("bkt", ODD_KEY) == b"hello", "GcsRecorder: single PUT stored")
        uid = gc.create_multipart_upload("bkt", "mp")
        p1, p2 = os.urandom(5 * MiB), b"tail"
        e1, e2 = gc.upload_part("bkt", "mp", uid, 1, p1), gc.upload_part("bkt", "mp", uid, 2, p2)
        check(g.uploads() == [("bkt", "mp", uid)], "GcsRecorder: the open upload is listed")
        r = gc.complete_multipart_upload("bkt", "mp", uid, [(1, e1), (2, e2)])
        check(r.status == 200 and g.get_object("bkt", "mp") == p1 + p2 and g.uploads() == [],
              "GcsRecorder: XML multipart (POST ?uploads, PUT ?partNumber&uploadId, POST ?uploadId) round-trips")
        st, h = gc.head_object("bkt", "mp")
        check(st == 200 and h["content-length"] == str(len(p1) + len(p2)) and h["etag"].endswith('-2"'), "GcsRecorder: HEAD")
        r = GcsXmlClient(g.endpoint, "tok-2").request("PUT", "bkt", "x", body=b"x")
        check(r.status == 401 and g.log[-1]["auth_ok"] is False, "GcsRecorder: a wrong Bearer token gets 401, logged")
        r = gc.request("PUT", "bkt", "x", body=b"abc", headers={"Content-MD5": md5_b64(b"abd")})
        check(r.status == 400 and r.code == "BadDigest", "GcsRecorder: a wrong Content-MD5 gets 400 BadDigest")
        uid = gc.create_multipart_upload("bkt", "ab")
        gc.upload_part("bkt", "ab", uid, 1, b"x")
        gc.abort_multipart_upload("bkt", "ab", uid)
        check(g.uploads() == [] and ("bkt", "ab") not in g.objects(), "GcsRecorder: abort leaves nothing")


def test_http_sink():
    with HttpSink() as sink, tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "f")
        make_file(path, 64 * MiB)
        s3 = S3Client(sink.endpoint, "k", "s")
        t = time.monotonic()
        s3.put_object("b", "single", FileRange(path))
        dt = time.monotonic() - t
        check(s3.head_object("b", "single") == (200, {"content-length": str(64 * MiB), "etag": HttpSink.ETAG}),
              f"HttpSink: 64 MiB single PUT discarded ({64 / dt:.0f} MiB/s from Python), HEAD gives its size")
        etag = s3.upload_file("b", "multi", path, part_size=16 * MiB)
        check(etag and sink.sizes["/b/multi"] == 64 * MiB and sink.bytes_received >= 128 * MiB,
              "HttpSink: fake multipart (4 parts) completes, HEAD gives the sum")


if __name__ == "__main__":
    harness.main([test_rgw_objects, test_rgw_multipart, test_fault_proxy_rgw, test_fault_proxy_http,
                  test_s3rver, test_azurite, test_gcs_recorder, test_http_sink])
