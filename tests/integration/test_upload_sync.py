#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Continuous sync (sync = continuous): new or changed checkpoints go out in
the background as they appear (inotify), at most sync_rate bytes/s, so that
at a notice only the newest is left for the plan to send."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Daemon, check, main, wait_until  # noqa: E402
import stores  # noqa: E402
from test_upload_s3 import MiB, keys, rgw, new_bucket, write_file  # noqa: E402


def sent(d, name):
    return [u for u in d.records("upload") if u["SPOTWATCH_SOURCE"].endswith("/" + name)
            and u["SPOTWATCH_STATE"] == "sent"]


def test_background_then_notice():
    d = Daemon(fake_metadata="aws")
    src, out = os.path.join(d.tmp, "ck"), os.path.join(d.tmp, "out")
    os.mkdir(src)
    with open(d.config_path, "a") as f:
        f.write(f'\n[upload "ck"]\nsource = {src}/*.pt\ndestination = file://{out}/\nsync = continuous\n')
    with d:
        write_file(os.path.join(src, "step-100.pt"), 4 * MiB)
        wait_until(lambda: sent(d, "step-100.pt"), 15, what="step-100.pt synced in the background")
        check(os.path.exists(os.path.join(out, "step-100.pt")), "a new checkpoint is synced without a notice")
        check(sent(d, "step-100.pt")[0].get("SPOTWATCH_EVENT") in (None, ""), "the record has no notice event")
        write_file(os.path.join(src, "step-200.pt"), 4 * MiB)
        with open(os.path.join(src, "notes.txt"), "w") as f:
            f.write("not a checkpoint")
        wait_until(lambda: sent(d, "step-200.pt"), 15, what="step-200.pt synced")
        check(len(sent(d, "step-100.pt")) == 1, "the first one is not sent again")
        check(not os.path.exists(os.path.join(out, "notes.txt")), "files the glob does not match stay")
        # The trainer writes the last checkpoint as the notice comes: the plan sends only that one.
        write_file(os.path.join(src, "step-300.pt"), 4 * MiB)
        d.ctl("trigger", "--wait", timeout=60)
        done = d.records("plan-done")[0]
        check(done.get("SPOTWATCH_UPLOADED") == "1" and done.get("SPOTWATCH_UPLOAD_SKIPPED") == "2",
              f"at the notice only the newest is left: uploaded {done.get('SPOTWATCH_UPLOADED')}, "
              f"skipped {done.get('SPOTWATCH_UPLOAD_SKIPPED')}")
        check(sorted(os.listdir(out)) == ["step-100.pt", "step-200.pt", "step-300.pt"], "all three are there")
        check(len(sent(d, "step-300.pt")) == 1, "and the newest was sent once")


def test_rate_limited_file_and_s3():
    r = rgw()
    s3 = r.s3()
    bucket = new_bucket(s3)
    d = Daemon(fake_metadata="aws")
    src, out = os.path.join(d.tmp, "ck"), os.path.join(d.tmp, "out")
    os.mkdir(src)
    with open(d.config_path, "a") as f:
        f.write(f'\n[upload "local"]\nsource = {src}\ndestination = file://{out}/\nsync = continuous\n'
                f'sync_rate = 4M\n')
        f.write(f'\n[upload "s3"]\nsource = {src}\ndestination = s3://{bucket}/bg/\nendpoint = {r.endpoint}\n'
                + keys(r.access_key, r.secret_key) + 'sync = continuous\nsync_rate = 4M\npart_size = 8M\n')
    with d:
        sha = write_file(os.path.join(src, "big.bin"), 12 * MiB)
        st = wait_until(lambda: "upload_in_progress" in (x := d.ctl("status").stdout) and x, 15,
                        what="status showing the upload in flight")
        line = [ln for ln in st.splitlines() if ln.startswith("upload_in_progress")][0]
        check("/big.bin" in line and f"/{12 * MiB} bytes" in line,
              f"spotwatchctl status shows the object in flight with bytes done: {line.split(None, 1)[1]}")
        wait_until(lambda: len(sent(d, "big.bin")) == 2, 40, what="big.bin synced to both destinations")
        for u in sent(d, "big.bin"):
            secs = int(u["SPOTWATCH_DURATION_USEC"]) / 1e6
            check(secs >= 2.0, f"{u['SPOTWATCH_UPLOAD']}: 12 MiB at sync_rate = 4M took {secs:.1f} s (at least "
                               f"about 3 s expected; unthrottled it takes well under 1 s)")
    check(s3.get_object_sha256(bucket, "bg/big.bin") == sha, "the S3 copy is identical")


if __name__ == "__main__":
    main([test_background_then_notice, test_rate_limited_file_and_s3])
