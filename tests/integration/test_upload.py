#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Uploads (file:// destinations): the plan's last stage sends the newest
checkpoint, verified, with one record per object; `spotwatchctl upload` does
the same by hand and skips what the manifest says is already there."""
import filecmp
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Daemon, check, main, wait_until  # noqa: E402


def setup():
    d = Daemon(fake_metadata="aws")
    src, out = os.path.join(d.tmp, "ck"), os.path.join(d.tmp, "out")
    os.mkdir(src)
    for i, name in enumerate(("old.bin", "new.bin")):
        with open(os.path.join(src, name), "wb") as f:
            f.write(os.urandom(3 * 1024 * 1024 + i))
        t = time.time() - 100 + i * 50
        os.utime(os.path.join(src, name), (t, t))
    with open(d.config_path, "a") as f:
        f.write(f'\n[upload "ck"]\nsource = {src}/*.bin\ndestination = file://{out}/\nnewest = 1\n')
    return d, src, out


def test_plan_uploads_newest():
    d, src, out = setup()
    with d:
        d.ctl("fake-notice", "--in", "60")
        d.wait_stderr(r"\[plan-done\]", 15)
        check(os.listdir(out) == ["new.bin"], "only the newest file (newest = 1) reached the destination")
        check(filecmp.cmp(os.path.join(src, "new.bin"), os.path.join(out, "new.bin"), shallow=False),
              "and it is byte for byte the source")
        up = d.records("upload")
        check(len(up) == 1 and up[0]["SPOTWATCH_STATE"] == "sent" and up[0]["SPOTWATCH_BYTES"] == str(3 * 1024 * 1024 + 1)
              and up[0]["SPOTWATCH_OBJECT"].endswith("/out/new.bin") and up[0].get("SPOTWATCH_MIBPS")
              and up[0]["SPOTWATCH_EVENT"] == "terminate", "one upload record: sent, bytes, object, MiB/s")
        done = d.records("plan-done")[0]
        check(done.get("SPOTWATCH_UPLOADED") == "1" and done.get("SPOTWATCH_UPLOAD_FAILED") == "0",
              "plan-done counts the upload")
        check(os.path.exists(os.path.join(d.tmp, "state", "uploads")), "the manifest is in state_dir")


def test_upload_by_hand():
    d, src, out = setup()
    os.mkdir(out)
    dead_pid = subprocess.Popen(["true"])
    dead_pid.wait()
    stale = os.path.join(out, f".new.bin.spotwatch-tmp-{dead_pid.pid}")
    live = os.path.join(out, f".new.bin.spotwatch-tmp-{os.getpid()}")
    for path in (stale, live):
        open(path, "w").close()
    with d:
        r = d.ctl("upload")
        check("sent" in r.stdout and os.path.exists(os.path.join(out, "new.bin")), "spotwatchctl upload sends")
        r = d.ctl("upload", "ck")
        check("skipped" in r.stdout and "sent               0" in r.stdout,
              "a second upload skips the unchanged file (manifest)")
        with open(os.path.join(src, "new.bin"), "ab") as f:
            f.write(b"more")
        r = d.ctl("upload", "ck")
        check("sent               1" in r.stdout, "a changed file is sent again")
        check(os.path.getsize(os.path.join(out, "new.bin")) == 3 * 1024 * 1024 + 5, "the new version is there")
        r = d.ctl("upload", "nosuch", check=False)
        check(r.returncode == 1 and "no [upload \"nosuch\"]" in r.stderr, "an unknown upload name is an error")
        check(not os.path.exists(stale), "a temporary file a crashed daemon left (dead PID) is removed")
        check(os.path.exists(live), "one whose PID is alive is left alone")
        os.unlink(live)
        check(not [f for f in os.listdir(out) if "spotwatch-tmp" in f], "no temporary files left behind")


def test_failed_upload_by_hand():
    """A destination that cannot be written: each object is reported, the command exits 1."""
    d = Daemon(fake_metadata="aws")
    src = os.path.join(d.tmp, "ck")
    os.mkdir(src)
    with open(os.path.join(src, "a.bin"), "wb") as f:
        f.write(b"x" * 1000)
    blocker = os.path.join(d.tmp, "blocker")
    open(blocker, "w").close()
    with open(d.config_path, "a") as f:
        f.write(f'\n[upload "ck"]\nsource = {src}\ndestination = file://{blocker}/sub/\n')
    with d:
        r = d.ctl("upload", check=False)
        check(r.returncode == 1 and "object" in r.stdout and "failed" in r.stdout and "1 object(s) failed" in r.stderr,
              f"per-object lines and the failure are printed, exit 1: {r.stdout.strip()} / {r.stderr.strip()}")
        up = d.records("upload")
        check(len(up) == 1 and up[0]["SPOTWATCH_STATE"] == "failed" and "Not a directory" in up[0]["SPOTWATCH_ERROR"],
              "the upload record names the reason")


def test_bad_destination():
    d = Daemon(fake_metadata="aws", wait_ready=False)
    with open(d.config_path, "a") as f:
        f.write('\n[upload "s3"]\nsource = /tmp/x\ndestination = s3://Bucket_Name/prefix/\n')
    with d:
        rc = d.proc.wait(10)
        check(rc == 1 and "[upload \"s3\"] destination" in d.stderr_text() and "bucket name" in d.stderr_text(),
              "an invalid s3:// bucket is a clear config error naming file, line and key")


if __name__ == "__main__":
    main([test_plan_uploads_newest, test_upload_by_hand, test_failed_upload_by_hand, test_bad_destination])
