#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""test_bad_config - bad configuration files make spotwatchd refuse to start.

For each bad ini file in CASES (the same cases as docs/bad-config.md):
`$SPOTWATCHD --check-config -c FILE` exits 1 and prints
"FILE:LINE: [SECTION] KEY: ..." on stderr, and the daemon proper,
`$SPOTWATCHD -c FILE`, exits non-zero with the same message instead of
starting. A valid file and conf/spotwatchd.ini as shipped pass
--check-config. Everything is written under a fresh temporary directory.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE_ROOT = Path(os.environ.get("SOURCE_ROOT", Path(__file__).resolve().parents[2]))

# (name, ini text, expected message after the file's path). @DIR@ is the
# temporary directory, which holds an executable hook.sh and a noexec.sh.
CASES = [
    (
        "unknown section",
        "[daemon]\ncloud = aws\n\n[deamon]\n",
        ':4: [deamon]: unknown section (expected [daemon], [process "NAME"] or [hook "NAME"])',
    ),
    (
        "unknown key",
        "[daemon]\ncolud = aws\n",
        ":2: [daemon] colud: unknown key",
    ),
    (
        "key in the wrong section",
        '[process "trainer"]\npidfile = /run/trainer.pid\npoll_interval = 1s\n',
        ':3: [process "trainer"] poll_interval: unknown key here, it belongs in a [daemon] section',
    ),
    (
        "duplicate key",
        "[daemon]\npoll_interval = 1s\npoll_interval = 2s\n",
        ":3: [daemon] poll_interval: duplicate key, already set on line 2",
    ),
    (
        "duplicate section",
        '[hook "flush"]\nexec = @DIR@/hook.sh\n[hook "flush"]\nexec = @DIR@/hook.sh\n',
        ':3: [hook "flush"]: duplicate section, first on line 1',
    ),
    (
        "bad duration",
        '[hook "flush"]\nexec = @DIR@/hook.sh\ntimeout = abc\n',
        ":3: [hook \"flush\"] timeout: invalid duration 'abc' (write e.g. 500ms, 2s, 5m)",
    ),
    (
        "duration out of range",
        "[daemon]\npoll_interval = 50ms\n",
        ":2: [daemon] poll_interval: duration '50ms' is out of range, must be between 100ms and 1h",
    ),
    (
        "bad enum value",
        "[daemon]\ncloud = aws-us-east-1\n",
        ":2: [daemon] cloud: unknown cloud 'aws-us-east-1' (expected auto, aws, gcp, azure or alibaba)",
    ),
    (
        "bad signal",
        '[process "trainer"]\npidfile = /run/trainer.pid\nsignal = SIGUSR3\n',
        ":3: [process \"trainer\"] signal: invalid signal 'SIGUSR3' (write e.g. SIGUSR1, USR1 or 10)",
    ),
    (
        "bucket name S3 does not allow",
        '[upload "checkpoints"]\nsource = /data/ckpt\ndestination = s3://My_Bucket/ckpt/\n',
        ":3: [upload \"checkpoints\"] destination: invalid destination 's3://My_Bucket/ckpt/', the bucket name "
        "must be 3-63 characters of a-z, 0-9, '-', '.' (write s3://BUCKET/PREFIX/)",
    ),
    (
        "half a key pair",
        '[upload "checkpoints"]\nsource = /data/ckpt\ndestination = s3://bucket/ckpt/\naccess_key_id = AKIAEXAMPLE\n',
        ':1: [upload "checkpoints"] secret_access_key: access_key_id and secret_access_key go together: set both '
        "or neither",
    ),
    (
        "unit= not supported",
        '[process "trainer"]\nunit = trainer.service\n',
        ":2: [process \"trainer\"] unit: not supported yet, use pidfile= or match= ('trainer.service')",
    ),
    (
        "process without pidfile= or match=",
        '[process "trainer"]\nsignal = SIGUSR1\nwait = 60s\n',
        ':1: [process "trainer"]: no pidfile= or match= given, give exactly one',
    ),
    (
        "hook program missing",
        '[hook "flush"]\nexec = /usr/local/bin/no-such-flush --fast\n',
        ":2: [hook \"flush\"] exec: '/usr/local/bin/no-such-flush' does not exist",
    ),
    (
        "hook program not executable",
        '[hook "flush"]\nexec = @DIR@/noexec.sh\n',
        ":2: [hook \"flush\"] exec: '@DIR@/noexec.sh' is not executable",
    ),
    (
        "hook program relative",
        '[hook "flush"]\nexec = flush-checkpoints --fast\n',
        ":2: [hook \"flush\"] exec: 'flush-checkpoints' is not an absolute path",
    ),
    (
        "unknown user",
        '[hook "flush"]\nexec = @DIR@/hook.sh\nuser = no-such-user-spotwatchd\n',
        ":3: [hook \"flush\"] user: unknown user 'no-such-user-spotwatchd'",
    ),
    (
        "';' comment inside quotes",
        '[hook "flush"]\nexec = @DIR@/hook.sh "a ;b"\n',
        ":2: [hook \"flush\"] exec: unterminated quote or trailing backslash in '@DIR@/hook.sh \"a'; "
        "note: ';' after whitespace starts a comment, the rest of the line was ignored",
    ),
    (
        "'#' comment after a value",
        "[daemon]\npoll_interval = 2s  # every two seconds\n",
        ":2: [daemon] poll_interval: invalid duration '2s  # every two seconds' (write e.g. 500ms, 2s, 5m); "
        "note: '#' starts a comment only at the start of a line",
    ),
    (
        "indented continuation line",
        "[daemon]\nevents = terminate stop\n    preempt\n",
        ":3: [daemon]: indented line would continue the value of 'events'; continuation lines are not "
        "supported, remove the leading whitespace ('preempt')",
    ),
    (
        "line too long",
        '[process "trainer"]\nmatch = ' + "x" * 250 + "\n",
        ":2: line is too long (258 bytes, at most 198)",
    ),
    (
        "key before any section",
        "cloud = aws\n[daemon]\n",
        ":1: cloud: key outside of any section, put it under a [section] header ('aws')",
    ),
]

VALID = """\
[daemon]
cloud = aws
metadata_url = http://127.0.0.1:1
poll_interval = 500ms
events = terminate stop preempt
control_socket = @DIR@/control.sock
state_dir = @DIR@/state
log = stderr

[process "trainer"]
pidfile = @DIR@/trainer.pid
signal = SIGUSR1
wait = 20s

[hook "flush"]
exec = @DIR@/hook.sh --fast "two words"
timeout = 10s
order = 10
"""

failures = 0


def fail(what):
    global failures
    failures += 1
    print(f"  FAIL: {what}")


def run(argv, timeout=10):
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return e


def expect_rejected(spotwatchd, path, expected, daemon_too=True):
    """--check-config (exit 1) and the daemon proper (non-zero) both print @expected."""
    want = f"{path}{expected}"

    r = run([spotwatchd, "--check-config", "-c", path])
    if isinstance(r, subprocess.TimeoutExpired):
        fail("--check-config did not exit within 10s")
    else:
        if r.returncode != 1:
            fail(f"--check-config exited {r.returncode}, expected 1")
        if want not in r.stderr:
            fail(f"--check-config stderr lacks\n    {want!r}\n  got\n    {r.stderr!r}")

    if not daemon_too:
        return
    r = run([spotwatchd, "-c", path])
    if isinstance(r, subprocess.TimeoutExpired):
        fail("the daemon started on a bad config (still running after 10s)")
        return
    if r.returncode == 0:
        fail("the daemon exited 0 on a bad config")
    if want not in r.stderr:
        fail(f"daemon stderr lacks\n    {want!r}\n  got\n    {r.stderr!r}")


def expect_valid(spotwatchd, path):
    r = run([spotwatchd, "--check-config", "-c", path])
    if isinstance(r, subprocess.TimeoutExpired):
        fail("--check-config did not exit within 10s")
    elif r.returncode != 0:
        fail(f"--check-config exited {r.returncode}, expected 0; stderr: {r.stderr!r}")


def main():
    spotwatchd = os.environ.get("SPOTWATCHD")
    if not spotwatchd:
        sys.exit("test_bad_config: set SPOTWATCHD to the spotwatchd binary")

    tmp = Path(tempfile.mkdtemp(prefix="test_bad_config."))
    n = 0
    try:
        script = "#!/bin/sh\nexit 0\n"
        (tmp / "hook.sh").write_text(script)
        (tmp / "hook.sh").chmod(0o755)
        (tmp / "noexec.sh").write_text(script)
        (tmp / "noexec.sh").chmod(0o644)

        def write(name, text):
            p = tmp / name
            p.write_text(text.replace("@DIR@", str(tmp)))
            return str(p)

        for i, (name, ini, expected) in enumerate(CASES):
            print(f"case {i + 1}: {name}")
            before = failures
            path = write(f"case-{i + 1}.ini", ini)
            expect_rejected(spotwatchd, path, expected.replace("@DIR@", str(tmp)))
            n += failures == before

        print("case: missing file")
        before = failures
        missing = str(tmp / "no-such.ini")
        expect_rejected(spotwatchd, missing, ": No such file or directory")
        n += failures == before

        print("case: a valid file with every section")
        before = failures
        expect_valid(spotwatchd, write("valid.ini", VALID))
        n += failures == before

        print("case: conf/spotwatchd.ini as shipped")
        before = failures
        shipped = SOURCE_ROOT / "conf" / "spotwatchd.ini"
        if not shipped.is_file():
            fail(f"{shipped} not found (set SOURCE_ROOT)")
        else:
            expect_valid(spotwatchd, str(shipped))
        n += failures == before
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    total = len(CASES) + 3
    if failures:
        print(f"test_bad_config: {total - n} of {total} cases failed")
        sys.exit(1)
    print(f"test_bad_config: {n} cases ok")


if __name__ == "__main__":
    main()
