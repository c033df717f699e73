#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""test_detect - `cloud = auto` picks the right cloud for each DMI fixture and
says why (issue 3, must-show 4).

The daemon runs with `cloud = auto` and SPOTWATCHD_DMI_ROOT pointing at one
of the fixture directories in tests/integration/dmi/ (copies of what each
cloud's firmware puts in /sys/class/dmi/id). The contract under test:

  * found:     an info line exactly "cloud = auto: <cloud> (<why>)", e.g.
               "cloud = auto: aws (sys_vendor is 'Amazon EC2')", then the
               daemon runs (READY=1) and stops cleanly;
  * not found: exit status 1 and an error line
               "cloud = auto: could not tell the cloud: <why>".

A fixture whose cloud has no provider in this build may instead end with
"cloud = <cloud> is not supported by this version" (exit 1), but the
detection line must come first either way.

When DMI names no cloud the daemon probes the metadata services; with
[daemon] metadata_url set it probes every cloud at that one address, so the
probes here only ever reach loopback: fake_imds.py (AWS, IMDSv2), a closed
port, or a socket that never answers. Never 169.254.169.254.
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import Daemon, check, wait_until  # noqa: E402
from fake_imds import TOKEN_PATH, TTL_HEADER, FakeImds  # noqa: E402

DMI_DIR = os.path.join(harness.SOURCE_ROOT, "tests", "integration", "dmi")
PROBE_TIMEOUT = "500ms"

# fixture -> (cloud, why) that detect_from_dmi() must report
FOUND = {
    "aws-nitro": ("aws", "sys_vendor is 'Amazon EC2'"),
    "aws-xen": ("aws", "bios_version is '4.11.amazon' and sys_vendor is 'Xen'"),
    "gcp": ("gcp", "sys_vendor is 'Google'"),
    "azure": ("azure", "chassis_asset_tag is '7783-7084-3265-9085-8269-3286-77', Azure's asset tag"),
    "alibaba": ("alibaba", "sys_vendor is 'Alibaba Cloud'"),
}


def fixture(name):
    path = os.path.join(DMI_DIR, name)
    check(os.path.isfile(os.path.join(path, "sys_vendor")), f"fixture {name} exists")
    return path


def detection_lines(text):
    return [m.group(1) for m in re.finditer(r"^spotwatchd\[\d+\]: \w+: (cloud = auto: .*)$", text, re.M)]


def probe_puts(fake):
    return [r for r in fake.requests(method="PUT", path=TOKEN_PATH) if r["headers"].get(TTL_HEADER.lower()) == "60"]


def closed_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def auto_daemon(dmi_root, metadata_url, wait_ready=True):
    return Daemon(daemon_keys={"cloud": "auto", "metadata_url": metadata_url, "probe_timeout": PROBE_TIMEOUT},
                  env={"SPOTWATCHD_DMI_ROOT": dmi_root}, wait_ready=wait_ready)


def run_found(name, dmi_root, metadata_url, cloud, why_re):
    """Start the daemon; the detection line must name @cloud with a why matching @why_re
    (anchored), then either a clean run or "not supported by this version"."""
    d = auto_daemon(dmi_root, metadata_url, wait_ready=False)
    with d:
        wait_until(lambda: d.proc.poll() is not None or d.has_notify("READY=1"), 10,
                   what=f"{name}: READY=1 or exit")
        text = d.stderr_text()
        lines = detection_lines(text)
        check(len(lines) == 1, f"{name}: one 'cloud = auto' line: {lines}")
        m = re.fullmatch(r"cloud = auto: (\S+) \((.*)\)", lines[0])
        check(m is not None, f"{name}: the line reads 'cloud = auto: <cloud> (<why>)': {lines[0]!r}")
        check(m.group(1) == cloud, f"{name}: detected {m.group(1)!r}, expected {cloud!r}")
        check(re.fullmatch(why_re, m.group(2)) is not None, f"{name}: why {m.group(2)!r} matches /{why_re}/")
        check(re.search(r"^spotwatchd\[\d+\]: info: cloud = auto: ", text, re.M) is not None,
              f"{name}: the detection is logged at info level")
        if d.proc.poll() is None:
            check(d.has_notify("READY=1"), f"{name}: READY=1 after detecting {cloud}")
            status = d.ctl("status").stdout
            check(re.search(rf"^cloud\W+{cloud}\b", status, re.M) is not None,
                  f"{name}: spotwatchctl status says cloud {cloud}")
            check(d.stop() == 0, f"{name}: clean stop")
        else:
            rc = d.proc.returncode
            unsupported = f"cloud = {cloud} is not supported by this version"
            check(rc == 1 and unsupported in text,
                  f"{name}: exit {rc} only as '{unsupported}' (no provider for {cloud} in this build)")
            check(text.index("cloud = auto: ") < text.index(unsupported),
                  f"{name}: the detection line comes before the error")
        return d, text


def run_not_found(name, dmi_root, metadata_url, within):
    d = auto_daemon(dmi_root, metadata_url, wait_ready=False)
    with d:
        start = time.monotonic()
        try:
            rc = d.proc.wait(within)
        except subprocess.TimeoutExpired:
            raise harness.Failure(f"{name}: spotwatchd still runs after {within}s")
        elapsed = time.monotonic() - start
        text = d.stderr_text()
        check(rc == 1, f"{name}: exit status 1 (got {rc}) after {elapsed:.2f}s")
        check(not d.has_notify("READY=1"), f"{name}: never READY=1")
        m = re.search(r"^spotwatchd\[\d+\]: error: cloud = auto: could not tell the cloud: (.*)$", text, re.M)
        check(m is not None, f"{name}: error line 'cloud = auto: could not tell the cloud: <why>'")
        check(not re.search(r"^spotwatchd\[\d+\]: info: cloud = auto: ", text, re.M), f"{name}: no cloud claimed")
        return m.group(1)


# ---- DMI finds the cloud -------------------------------------------------------

def test_dmi_fixtures():
    with FakeImds() as fake:
        for name, (cloud, why) in FOUND.items():
            run_found(name, fixture(name), fake.url, cloud, re.escape(why))
        # DMI decided: no probe was sent (the probe asks for a 60 s token, the AWS watcher for more).
        check(probe_puts(fake) == [], "no metadata probe when DMI names the cloud")


# ---- DMI says nothing: the probes decide ------------------------------------------

def test_probe_finds_aws():
    with FakeImds() as fake:
        for name, root in (("unknown", fixture("unknown")), ("hyperv-not-azure", fixture("hyperv-not-azure"))):
            fake.clear_log()
            why_re = re.escape(f"probe: PUT {fake.url}{TOKEN_PATH} answered 200 with an IMDSv2 session token")
            run_found(f"{name} + fake_imds", root, fake.url, "aws", why_re)
            check(len(probe_puts(fake)) == 1, f"{name}: exactly one AWS probe, a PUT with {TTL_HEADER}: 60")
            gcp = fake.requests(path="/computeMetadata/v1/instance/id")
            check(all(r["headers"].get("metadata-flavor") == "Google" for r in gcp),
                  f"{name}: a GCP probe that got through carries Metadata-Flavor: Google")


def test_no_dmi_root_probes():
    """A machine without DMI data (a container) goes straight to the probes."""
    tmp = harness.mkdtemp()
    try:
        with FakeImds() as fake:
            run_found("no DMI root", os.path.join(tmp, "nope"), fake.url, "aws", r"probe: PUT .*/latest/api/token .*")
        empty = os.path.join(tmp, "empty")
        os.mkdir(empty)
        with FakeImds() as fake:
            run_found("empty DMI root", empty, fake.url, "aws", r"probe: PUT .*")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- nobody: start-up fails and says why ---------------------------------------------

def test_not_found_refused():
    url = f"http://127.0.0.1:{closed_port()}"
    why = run_not_found("unknown + closed port", fixture("unknown"), url, within=10)
    check("sys_vendor is 'QEMU'" in why, "the why names what DMI showed")
    for c in ("aws", "gcp", "azure", "alibaba"):
        check(re.search(rf"\b{c}: (PUT|GET) {re.escape(url)}/\S+: connection refused", why) is not None,
              f"the why says {c}'s probe was refused")

    why = run_not_found("hyperv-not-azure + closed port", fixture("hyperv-not-azure"), url, within=10)
    check("Microsoft Hyper-V, but chassis_asset_tag is not Azure's" in why,
          "plain Hyper-V is not taken for Azure, and the why says so")


def test_not_found_silent():
    """A metadata address that never answers costs one probe_timeout, not more."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(16)  # never accepted: connections complete, no answer ever comes
    url = f"http://127.0.0.1:{s.getsockname()[1]}"
    try:
        start = time.monotonic()
        why = run_not_found("unknown + silent server", fixture("unknown"), url, within=10)
        elapsed = time.monotonic() - start
        check("no answer within 500ms" in why, "the why says the probes timed out")
        check(elapsed < 5, f"gave up after {elapsed:.2f}s (probe_timeout {PROBE_TIMEOUT}, in parallel)")
    finally:
        s.close()


if __name__ == "__main__":
    harness.main([test_dmi_fixtures, test_probe_finds_aws, test_no_dmi_root_probes, test_not_found_refused,
                  test_not_found_silent])
