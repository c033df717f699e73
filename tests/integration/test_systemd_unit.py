#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""`meson install` puts the binaries, the unit, the commented default config
and the journal catalog in place, and `systemd-analyze verify` accepts the
installed unit without a single complaint."""
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from harness import check, main, mkdtemp  # noqa: E402

BUILD_ROOT = os.environ.get("BUILD_ROOT", "build")


def install():
    dest = mkdtemp("spotwatch-install-")
    r = subprocess.run(["meson", "install", "-C", BUILD_ROOT, "--destdir", dest, "--no-rebuild", "--quiet"],
                       capture_output=True, text=True, timeout=120)
    check(r.returncode == 0, f"meson install --destdir: {r.stderr.strip()[-300:]}")
    return dest


def find(dest, name):
    for root, _, files in os.walk(dest):
        if name in files:
            return os.path.join(root, name)
    return None


def test_install_layout():
    dest = install()
    try:
        for name in ("spotwatchd", "spotwatchctl", "spotwatchd.service", "spotwatchd.ini", "spotwatchd.catalog"):
            check(find(dest, name) is not None, f"installed {name}")
        unit = open(find(dest, "spotwatchd.service")).read()
        for want in ("Type=notify", "Restart=on-failure", "WatchdogSec=", "OOMScoreAdjust=-",
                     "RuntimeDirectory=spotwatchd", "StateDirectory=spotwatchd", "CPUWeight=", "IOWeight="):
            check(want in unit, f"unit has {want}")
        ini = find(dest, "spotwatchd.ini")
        d = find(dest, "spotwatchd")
        r = subprocess.run([d, "--check-config", "-c", ini], capture_output=True, text=True)
        check(r.returncode == 0, f"installed default config is valid: {r.stdout.strip()} {r.stderr.strip()}")
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def test_systemd_analyze_verify():
    if not shutil.which("systemd-analyze"):
        print("SKIP: systemd-analyze not installed")
        return
    dest = install()
    try:
        unit = find(dest, "spotwatchd.service")
        # verify checks that ExecStart= exists, and the binary is under DESTDIR:
        # point the installed unit's paths into the install tree, nothing else.
        text = open(unit).read()
        for path in set(re.findall(r"(/\S+/spotwatchd(?:\.ini)?)\b", text)):
            text = text.replace(path, dest + path)
        check(f"ExecStart={dest}/" in text, "ExecStart points into the install tree")
        checked = os.path.join(dest, "spotwatchd.service")
        with open(checked, "w") as f:
            f.write(text)
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", checked],
                           capture_output=True, text=True, timeout=60)
        out = (r.stdout + r.stderr).strip()
        # Complaints about other units on this machine are not ours.
        ours = [l for l in out.splitlines() if "spotwatchd" in l]
        check(r.returncode == 0 and not ours, f"systemd-analyze verify is silent about the unit: {out[:500]}")
    finally:
        shutil.rmtree(dest, ignore_errors=True)


if __name__ == "__main__":
    main([test_install_layout, test_systemd_analyze_verify])
