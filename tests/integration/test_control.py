#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The control socket: status, the raw line protocol from Python, bad
requests, limits, and commands that do not apply."""
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Daemon, check, main, wait_until  # noqa: E402


def raw(path, data, timeout=5):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(path)
    s.sendall(data)
    out = b""
    while not (out.endswith(b"ok\n") or b"\nerror" in b"\n" + out):
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    s.close()
    return out.decode()


def test_status():
    with Daemon(fake_metadata="aws") as d:
        wait_until(lambda: "last_poll_result   ok" in d.ctl("status").stdout, 5, what="first poll ok")
        st = d.ctl("status").stdout
        for key in ("version", "state", "cloud", "metadata_url", "poll_interval", "polls", "last_poll",
                    "instance_id", "fake_metadata"):
            check(f"\n{key} " in "\n" + st, f"status shows {key}")
        check("state              idle" in st, "state idle before any notice")
        check(d.ctl("status", "-c", d.config_path).returncode == 0, "spotwatchctl -c FILE finds the socket")


def test_python_line_protocol():
    with Daemon(fake_metadata="aws") as d:
        out = raw(d.socket_path, b"status\n")
        check(out.endswith("ok\n") and "cloud=aws" in out, "three lines of Python speak the protocol")
        out = raw(d.socket_path, b"ping\nping\nstatus\n")
        check(out.count("ok\n") >= 1, "pipelined requests are answered")


def test_bad_requests():
    with Daemon(fake_metadata="aws") as d:
        cases = [
            (b"nosuch\n", "unknown command 'nosuch'"),
            (b"STATUS\n", "bad request"),
            (b"trigger wait\n", "bad request"),
            (b"trigger bogus=1\n", "unknown argument 'bogus'"),
            (b"fake-notice action=explode\n", "'explode' is not one of"),
            (b"fake-notice in=soon\n", "invalid duration 'soon'"),
            (b"done pid=abc\n", "not a PID"),
            (b"done pid=1\n", "no response plan is running"),
            (b"trigger a=%zz\n", "bad request"),
            (b"x" * 5000 + b"\n", "longer than 4096"),
        ]
        for data, want in cases:
            out = raw(d.socket_path, data)
            check(out.startswith("error") and want in out, f"{data[:30]!r} -> {out.strip()[:80]}")
        r = d.ctl("nosuch", check=False)
        check(r.returncode == 1 and "unknown command" in r.stderr, "spotwatchctl rejects an unknown command")
        # Garbage bytes, NULs, a half line then hang up: the daemon lives on.
        for junk in (b"\x00\xff\xfe\n", b"status", b"\n\n\n"):
            s = socket.socket(socket.AF_UNIX)
            s.connect(d.socket_path)
            s.sendall(junk)
            s.close()
        check(d.ctl("ping").returncode == 0, "daemon alive after garbage")


def test_connection_limit():
    with Daemon(fake_metadata="aws") as d:
        socks = []
        for _ in range(80):
            s = socket.socket(socket.AF_UNIX)
            s.connect(d.socket_path)
            socks.append(s)
        time.sleep(0.3)
        closed = 0
        for s in socks:
            s.settimeout(0.05)
            try:
                if s.recv(10) == b"":
                    closed += 1
            except (socket.timeout, BlockingIOError):
                pass
        check(closed >= 80 - 64, f"connections over the limit of 64 are closed ({closed} closed)")
        for s in socks:
            s.close()
        wait_until(lambda: d.ctl("ping", check=False).returncode == 0, 3, what="ping after the flood")
        check(True, "daemon answers after 80 connections")


def test_not_fake_mode():
    with Daemon(daemon_keys={"metadata_url": "http://127.0.0.1:9"}) as d:
        r = d.ctl("fake-notice", check=False)
        check(r.returncode == 1 and "not in fake-metadata mode" in r.stderr, "fake-notice refused without a fake")


def test_no_daemon():
    from harness import SPOTWATCHCTL
    import subprocess
    r = subprocess.run([SPOTWATCHCTL, "--socket", "/nonexistent/x.sock", "status"], capture_output=True, text=True)
    check(r.returncode == 1 and "is spotwatchd running" in r.stderr, "clear error when no daemon listens")
    r = subprocess.run([SPOTWATCHCTL, "--help"], capture_output=True, text=True)
    check(r.returncode == 0 and "fake-notice" in r.stdout, "spotwatchctl --help")
    r = subprocess.run([SPOTWATCHCTL, "--version"], capture_output=True, text=True)
    check(r.returncode == 0 and r.stdout.startswith("spotwatchctl "), "spotwatchctl --version")


if __name__ == "__main__":
    main([test_status, test_python_line_protocol, test_bad_requests, test_connection_limit, test_not_fake_mode,
          test_no_daemon])
