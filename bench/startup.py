#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Start-up: exec to READY=1 of `spotwatchd -c CONF`.

The config points metadata_url at the independent fake IMDS (FakeImds), logs
to stderr and puts the control socket and state in a temporary directory.
Each run binds a fresh NOTIFY_SOCKET, takes time.monotonic() just before
Popen and again when the READY=1 datagram arrives (a blocking recv, no
polling), then stops the daemon with SIGTERM. Runs are interleaved with the
peer, `python3 -c "import urllib.request"` timed from before Popen to its
exit, and with /bin/true (the floor: what fork+exec+wait from this script
costs). Two warm-up rounds are discarded.

SPEC target: exec to READY=1 in under 20 ms.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import common

BENCH = "startup"


def one_daemon(conf, tmp, notify_path):
    sock_path = os.path.join(tmp, "control.sock")
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    if os.path.exists(notify_path):
        os.unlink(notify_path)
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(notify_path)
    ns.settimeout(10)
    env = dict(os.environ, NOTIFY_SOCKET=notify_path)
    err = open(os.path.join(tmp, "stderr.log"), "w")
    try:
        t0 = time.monotonic()
        p = subprocess.Popen([common.SPOTWATCHD, "-c", conf], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            while True:
                try:
                    data = ns.recv(4096)
                except socket.timeout:
                    raise common.CannotRun("no READY=1 within 10 s: " + open(err.name).read()[-2000:])
                if b"READY=1" in data.split(b"\n"):
                    t1 = time.monotonic()
                    break
        finally:
            p.send_signal(signal.SIGTERM)
            rc = p.wait(10)
        if rc != 0:
            raise common.CannotRun(f"spotwatchd exited {rc}: " + open(err.name).read()[-2000:])
        return t1 - t0
    finally:
        err.close()
        ns.close()


def one_exec(argv):
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    rc = p.wait(30)
    t1 = time.monotonic()
    if rc != 0:
        raise common.CannotRun(f"{argv} exited {rc}")
    return t1 - t0


def run():
    common.check_binaries()
    runs = 10 if common.quick() else 30
    tmp = common.tmpdir(BENCH)
    fake = common.start_fake()
    try:
        conf = os.path.join(tmp, "spotwatchd.ini")
        with open(conf, "w") as f:
            f.write(common.harness.render_config({
                "cloud": "aws",
                "metadata_url": fake.url,
                "poll_interval": "1s",
                "control_socket": os.path.join(tmp, "control.sock"),
                "state_dir": os.path.join(tmp, "state"),
                "log": "stderr",
            }, ""))
        notify_path = os.path.join(tmp, "notify.sock")
        peer_argv = [sys.executable, "-c", "import urllib.request"]
        d, py, tr = [], [], []
        for i in range(runs + 2):
            a = one_daemon(conf, tmp, notify_path)
            b = one_exec(peer_argv)
            c = one_exec(["/bin/true"])
            if i >= 2:
                d.append(a * 1e3)
                py.append(b * 1e3)
                tr.append(c * 1e3)
    finally:
        fake.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    common.row(BENCH, "exec to READY=1", "ms", values=d, peer=py, peer_name='python3 -c "import urllib.request"',
               target="< 20 ms")
    common.row(BENCH, "floor: /bin/true exec to exit", "ms", values=tr,
               note="fork+exec+wait from this script; included in both figures above")


if __name__ == "__main__":
    common.main(BENCH, run)
