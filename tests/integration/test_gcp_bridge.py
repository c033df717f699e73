#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The GCP shutdown-script bridge with real processes: scripts/gce-shutdown-script
(what GCE runs at the ACPI power-off) and the daemon's own preemption notice
run the plan exactly once between them, in both orders."""
import http.server
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import (Daemon, SOURCE_ROOT, SPOTWATCHCTL, check, count_plans, main,  # noqa: E402
                     spawn_sleeper, usr1_count, wait_until)

SCRIPT = os.path.join(SOURCE_ROOT, "scripts", "gce-shutdown-script")


class Preempted(http.server.BaseHTTPRequestHandler):
    """What the guest sees at the ACPI power-off: preempted = TRUE (with GCP's header check)."""
    def do_GET(self):
        ok = self.headers.get("Metadata-Flavor") == "Google" and self.path.endswith("/instance/preempted")
        body = b"TRUE" if ok else b"forbidden"
        self.send_response(200 if ok else 403)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def run_script(d, metadata_url):
    env = dict(os.environ, SPOTWATCH_METADATA_URL=metadata_url, SPOTWATCHCTL=SPOTWATCHCTL,
               SPOTWATCHCTL_ARGS=f"--socket {d.socket_path}")
    return subprocess.run([SCRIPT], env=env, capture_output=True, text=True, timeout=60)


def setup(hook_seconds):
    d = Daemon(fake_metadata="gcp")
    p, pidfile, marker = spawn_sleeper(d.tmp)
    hook = os.path.join(d.tmp, "hook.sh")
    with open(hook, "w") as f:
        f.write(f"#!/bin/sh\nsleep {hook_seconds}\necho \"$SPOTWATCH_EVENT\" >> {d.tmp}/hook-runs\n")
    os.chmod(hook, 0o755)
    with open(d.config_path, "a") as f:
        f.write(f'\n[process "trainer"]\npidfile = {pidfile}\n\n[hook "h"]\nexec = {hook}\n')
    return d, p, marker


def hook_runs(d):
    try:
        return open(f"{d.tmp}/hook-runs").read().split()
    except FileNotFoundError:
        return []


def test_notice_first():
    for hook_seconds, when in ((2, "while the plan runs"), (0, "after the plan finished")):
        d, p, marker = setup(hook_seconds)
        try:
            with d:
                d.ctl("fake-notice", "--event", "preempt")
                d.wait_stderr(r"\[plan-start\]", 5)
                if hook_seconds == 0:
                    d.wait_stderr(r"\[plan-done\]", 5)
                t0 = time.monotonic()
                r = run_script(d, d.fake_url)
                check(r.returncode == 0, f"notice first, script {when}: it exits 0 ({r.stdout.strip()})")
                check("preempted=TRUE" in r.stdout, "the script saw preempted=TRUE")
                if hook_seconds:
                    check(time.monotonic() - t0 >= 1.0 and hook_runs(d) == ["preempt"],
                          "the script returned only after the plan finished")
                time.sleep(0.5)
                check(count_plans(d) == 1 and usr1_count(marker) == 1 and hook_runs(d) == ["preempt"],
                      f"exactly one plan, one SIGUSR1, one hook run ({when})")
        finally:
            p.kill()
            p.wait()


def test_acpi_first():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Preempted)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        for hook_seconds, when in ((2, "while the plan runs"), (0, "after the plan finished")):
            d, p, marker = setup(hook_seconds)
            try:
                with d:
                    # The guest's shutdown path comes first: the daemon's watcher has
                    # not seen the preemption yet (its fake still says FALSE).
                    proc = subprocess.Popen([SCRIPT], env=dict(os.environ, SPOTWATCH_METADATA_URL=url,
                                                               SPOTWATCHCTL=SPOTWATCHCTL,
                                                               SPOTWATCHCTL_ARGS=f"--socket {d.socket_path}"),
                                            stdout=subprocess.PIPE, text=True)
                    d.wait_stderr(r"\[plan-start\]", 5)
                    if hook_seconds == 0:
                        d.wait_stderr(r"\[plan-done\]", 5)
                    # Now the daemon's own watcher sees the preemption.
                    d.ctl("fake-notice", "--event", "preempt")
                    d.wait_stderr(r"\[notice\] preempt notice.*reported only", 5)
                    out, _ = proc.communicate(timeout=30)
                    check(proc.returncode == 0 and "--event preempt" in out,
                          f"ACPI first, notice {when}: the script ran the plan and exited 0")
                    time.sleep(0.5)
                    check(count_plans(d) == 1 and usr1_count(marker) == 1 and hook_runs(d) == ["preempt"],
                          f"exactly one plan, one SIGUSR1, one hook run ({when})")
            finally:
                p.kill()
                p.wait()
    finally:
        srv.shutdown()


def test_plain_shutdown():
    d, p, marker = setup(0)
    try:
        with d:
            r = run_script(d, d.fake_url)  # the fake says preempted = FALSE
            check(r.returncode == 0 and "--event shutdown" in r.stdout, "not preempted: --event shutdown")
            check(hook_runs(d) == ["shutdown"], "the plan ran with SPOTWATCH_EVENT=shutdown")
    finally:
        p.kill()
        p.wait()


def test_instance_shutdown_script_as_hook():
    """gcp_shutdown_script = yes: at the preemption the daemon runs the instance's own
    shutdown-script (from the metadata server) as a hook, with the SPEC environment."""
    from fake_gcp import FakeGcp, PREEMPTED, SHUTDOWN_SCRIPT
    fake = FakeGcp().start()
    try:
        d = Daemon(daemon_keys={"cloud": "gcp", "metadata_url": fake.url, "gcp_shutdown_script": "yes"})
        out = os.path.join(d.tmp, "script.out")
        fake.set_value(SHUTDOWN_SCRIPT, f"#!/bin/sh\necho \"$SPOTWATCH_EVENT $SPOTWATCH_CLOUD\" > {out}\n")
        with d:
            fake.set_value(PREEMPTED, "TRUE")
            wait_until(lambda: os.path.exists(out), 10, what="the instance's shutdown-script")
            check(open(out).read().split() == ["preempt", "gcp"], "it ran with SPOTWATCH_EVENT=preempt (gcp)")
            d.wait_stderr(r"\[plan-done\]", 5)
            hooks = d.records("hook")
            check(len(hooks) == 1 and hooks[0]["SPOTWATCH_HOOK"] == "gce-shutdown-script"
                  and hooks[0]["SPOTWATCH_EXIT_STATUS"] == "0", "hook record for gce-shutdown-script, exit 0")
        # The bridge itself as the instance's shutdown-script: run as a hook it must not
        # wait for the plan it is part of.
        d = Daemon(daemon_keys={"cloud": "gcp", "metadata_url": fake.url, "gcp_shutdown_script": "yes"})
        fake.set_value(PREEMPTED, "FALSE")
        fake.set_value(SHUTDOWN_SCRIPT, open(SCRIPT).read())
        with d:
            t0 = time.monotonic()
            fake.set_value(PREEMPTED, "TRUE")
            d.wait_stderr(r"\[plan-done\]", 10)
            hooks = d.records("hook")
            check(time.monotonic() - t0 < 5 and len(hooks) == 1 and hooks[0]["SPOTWATCH_EXIT_STATUS"] == "0",
                  "the bridge run as the instance's script returns at once, exit 0")
        # With no attribute at all, no extra hook.
        d = Daemon(daemon_keys={"cloud": "gcp", "metadata_url": fake.url, "gcp_shutdown_script": "yes"})
        fake.set_value(PREEMPTED, "FALSE")
        fake.set_value(SHUTDOWN_SCRIPT, None)
        with d:
            fake.set_value(PREEMPTED, "TRUE")
            d.wait_stderr(r"\[plan-done\]", 10)
            check(d.records("hook") == [], "no shutdown-script attribute: no extra hook")
    finally:
        fake.stop()


if __name__ == "__main__":
    main([test_notice_first, test_acpi_first, test_plain_shutdown, test_instance_shutdown_script_as_hook])
