#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""gs:// uploads through GCS's XML API with the VM service account's OAuth
token from the (fake) GCP metadata server.

No local GCS emulator speaks the XML API's multipart uploads (firebase-tools'
storage emulator has only the JSON API; see stores.GcsRecorder), so the store
here is a RECORDING SERVER written from Google's documentation, not Google's
code: it checks the Bearer token and each request's Content-MD5, keeps the
objects, and logs every request. HMAC keys for gs:// go through the same
SigV4 code as s3://, which test_upload_s3.py runs against a real radosgw."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from harness import Daemon, check, main  # noqa: E402
import stores  # noqa: E402
from test_upload_s3 import MiB, write_file  # noqa: E402


def setup(gcs, size, name="model.pt", extra=""):
    d = Daemon(fake_metadata="gcp", daemon_keys={"cloud": "gcp"})
    src = os.path.join(d.tmp, "ckpt")
    os.mkdir(src)
    sha = write_file(os.path.join(src, name), size)
    with open(d.config_path, "a") as f:
        f.write(f'\n[upload "ck"]\nsource = {src}\ndestination = gs://ckpt-bucket/run 7/\n'
                f'endpoint = {gcs.endpoint}\npart_size = 8M\n' + extra)
    return d, sha


def test_service_account_token_multipart():
    token = "ya29.fake-token-one." + "x" * 1500  # real ones run to a few hundred or thousand characters
    with stores.GcsRecorder(token=token) as gcs:
        d, sha = setup(gcs, 20 * MiB)
        with d:
            d.ctl("fake-credentials", "--token", token)
            d.ctl("upload")
            rec = d.records("upload")[0]
            check(rec["SPOTWATCH_STATE"] == "sent" and rec["SPOTWATCH_PARTS"] == "3"
                  and rec["SPOTWATCH_OBJECT"] == "gs://ckpt-bucket/run%207/model.pt",
                  f"sent as 3 parts to {rec['SPOTWATCH_OBJECT']}")
        log = gcs.requests()
        check(all(e["headers"].get("authorization") == "Bearer " + token for e in log),
              f"every request carries the service account's whole token ({len(log)} requests)")
        parts = [e for e in log if e["method"] == "PUT"]
        check(len(parts) == 3 and all("content-md5" in e["headers"] for e in parts), "each part has Content-MD5")
        check(gcs.object_sha256("ckpt-bucket", "run 7/model.pt") == sha, "the object is byte for byte the file")


def test_token_rotation_and_rejection():
    with stores.GcsRecorder(token="tok-a") as gcs:
        d, sha = setup(gcs, 3 * MiB, name="small.bin")
        with d:
            d.ctl("fake-credentials", "--token", "tok-a", "--expires-in", "2")
            d.ctl("upload")
            # The store now wants a new token; the metadata server serves it after the old one expired.
            gcs.token = "tok-b"
            d.ctl("fake-credentials", "--token", "tok-b", "--expires-in", "60")
            import time
            time.sleep(2.5)
            with open(os.path.join(d.tmp, "ckpt", "small.bin"), "ab") as f:
                f.write(b"more")
            d.ctl("upload")
            states = [u["SPOTWATCH_STATE"] for u in d.records("upload")]
            check(states == ["sent", "sent"], f"both uploads went through, the second with the new token ({states})")
            check(gcs.requests()[-1]["headers"]["authorization"] == "Bearer tok-b", "the rotated token was used")
            gcs.token = "tok-c"  # nobody serves this one
            with open(os.path.join(d.tmp, "ckpt", "small.bin"), "ab") as f:
                f.write(b"again")
            n = len(gcs.requests())
            r = d.ctl("upload", check=False)
            rec = d.records("upload")[-1]
            check(r.returncode != 0 and rec["SPOTWATCH_STATE"] == "failed" and "401" in rec["SPOTWATCH_ERROR"],
                  f"a token the store refuses is one clear error: {rec['SPOTWATCH_ERROR']}")
            check(len(gcs.requests()) - n <= 3, f"no retry storm ({len(gcs.requests()) - n} requests)")


if __name__ == "__main__":
    main([test_service_account_token_multipart, test_token_rotation_and_rejection])
