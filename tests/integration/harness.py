# SPDX-License-Identifier: MIT
"""Test harness for spotwatchd integration tests: starts the built daemon with
a generated config in a temporary directory, waits for READY=1 on a real
NOTIFY_SOCKET, drives spotwatchctl, reads stderr records and the journal.

Binaries come from $SPOTWATCHD and $SPOTWATCHCTL (set by meson). Nothing
here talks to any address but loopback.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

SPOTWATCHD = os.environ.get("SPOTWATCHD", "spotwatchd")
SPOTWATCHCTL = os.environ.get("SPOTWATCHCTL", "spotwatchctl")
SOURCE_ROOT = os.environ.get("SOURCE_ROOT", os.path.join(os.path.dirname(__file__), "..", ".."))

# Sanitizer reports must fail a test even when the exit code is hidden.
SANITIZER_RE = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:")


class Failure(Exception):
    pass


CHECKS = 0


def check(cond, what):
    """Assert with a message; prints the check so the log shows progress."""
    global CHECKS
    if not cond:
        raise Failure(what)
    CHECKS += 1
    print("ok -", what, flush=True)


def wait_until(fn, timeout=5.0, interval=0.02, what="condition"):
    """Poll fn() until it returns a truthy value; return it, or raise after timeout."""
    end = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > end:
            raise Failure(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def mkdtemp(prefix="spotwatch-test-"):
    return tempfile.mkdtemp(prefix=prefix)


def have_journal():
    """True inside tests/with-journald.sh (a private, real journald)."""
    return os.environ.get("SPOTWATCH_JOURNALD") == "1"


def journal_records(**match):
    """Records of the private journald matching FIELD=value pairs, as dicts."""
    subprocess.run(["journalctl", "--sync"], check=False, timeout=10)
    args = ["journalctl", "-o", "json", "--no-pager", "SYSLOG_IDENTIFIER=spotwatchd"]
    args += [f"{k}={v}" for k, v in match.items()]
    out = subprocess.run(args, capture_output=True, text=True, timeout=10).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def render_config(daemon_keys, sections):
    lines = ["[daemon]"]
    for k, v in daemon_keys.items():
        lines.append(f"{k} = {v}")
    return "\n".join(lines) + "\n\n" + (sections or "")


class Daemon:
    """A running spotwatchd. Use as a context manager; the exit stops it and
    fails on sanitizer reports in its stderr."""

    def __init__(self, sections="", daemon_keys=None, fake_metadata=None, args=(), config_text=None,
                 env=None, ready_timeout=10.0, wait_ready=True, wrapper=()):
        self.tmp = mkdtemp()
        self.socket_path = os.path.join(self.tmp, "control.sock")
        keys = {
            "cloud": "aws",
            "poll_interval": "200ms",
            "control_socket": self.socket_path,
            "state_dir": os.path.join(self.tmp, "state"),
            "log": "stderr",
        }
        keys.update(daemon_keys or {})
        self.config_path = os.path.join(self.tmp, "spotwatchd.ini")
        with open(self.config_path, "w") as f:
            f.write(config_text if config_text is not None else render_config(keys, sections))
        self.fake_metadata = fake_metadata
        self.args = list(args)
        self.env = env
        self.wrapper = list(wrapper)  # argv prefix that must exec the daemon (same PID)
        self.ready_timeout = ready_timeout
        self.wait_ready = wait_ready
        self.proc = None
        self.notify = None
        self.notify_messages = []
        self.fake_url = None

    # -- lifecycle ---------------------------------------------------------
    def start(self):
        self.stderr_path = os.path.join(self.tmp, "stderr.log")
        self.stdout_path = os.path.join(self.tmp, "stdout.log")
        notify_path = os.path.join(self.tmp, "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(notify_path)
        self.notify.settimeout(0.1)
        # Drain the socket all the time, as systemd does: the kernel queues only
        # a few datagrams, and sd_notify() blocks the daemon when it is full.
        self.notify_lock = threading.Lock()
        self.notify_stop = False
        self.notify_thread = threading.Thread(target=self._notify_reader, daemon=True)
        self.notify_thread.start()
        env = dict(os.environ)
        env["NOTIFY_SOCKET"] = notify_path
        env.update(self.env or {})
        argv = self.wrapper + [SPOTWATCHD, "-c", self.config_path]
        if self.fake_metadata:
            argv.append(f"--fake-metadata={self.fake_metadata}")
        argv += self.args
        self.proc = subprocess.Popen(argv, stdout=open(self.stdout_path, "w"), stderr=open(self.stderr_path, "w"),
                                     stdin=subprocess.DEVNULL, env=env)
        self.pid = self.proc.pid
        if self.wait_ready:
            wait_until(lambda: self.proc.poll() is not None or self.has_notify("READY=1"),
                       self.ready_timeout, what="READY=1")
            if self.proc.poll() is not None:
                raise Failure(f"spotwatchd exited with {self.proc.returncode} before READY=1:\n"
                              + self.stderr_text())
            if self.fake_metadata:
                m = wait_until(lambda: re.search(r"fake metadata service .*?(http://\S+)", self.stdout_text()
                                                 + self.stderr_text()), 5, what="fake URL printed")
                self.fake_url = m.group(1)
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, et, ev, tb):
        if self.proc and self.proc.poll() is None:
            self.stop()
        if self.notify:
            self.notify_stop = True
            self.notify_thread.join(2)
            self.notify.close()
        text = self.stderr_text() if self.proc else ""
        if et is not None:
            sys.stderr.write(f"--- spotwatchd stderr ({self.stderr_path}) ---\n{text[-20000:]}\n---\n")
        if SANITIZER_RE.search(text):
            if et is None:
                raise Failure("sanitizer report in spotwatchd stderr:\n" + text[-20000:])
        elif et is None and os.environ.get("SPOTWATCH_KEEP_TMP") is None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return False

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            # A stop during a plan waits for the plan; a second signal stops at once.
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise Failure(f"spotwatchd did not stop within {timeout}s after {sig}")
        return self.proc.returncode

    # -- sd_notify --------------------------------------------------------
    def _notify_reader(self):
        while not self.notify_stop:
            try:
                data = self.notify.recv(4096)
            except (socket.timeout, BlockingIOError):
                continue
            except OSError:
                return
            with self.notify_lock:
                self.notify_messages.extend(data.decode(errors="replace").split("\n"))

    def read_notify(self):
        with self.notify_lock:
            return list(self.notify_messages)

    def has_notify(self, line):
        return line in self.read_notify()

    # -- output ------------------------------------------------------------
    def stderr_text(self):
        try:
            with open(self.stderr_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stdout_text(self):
        try:
            with open(self.stdout_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_stderr(self, regex, timeout=5.0):
        r = re.compile(regex)
        return wait_until(lambda: r.search(self.stderr_text()), timeout, what=f"stderr /{regex}/")

    def records(self, kind):
        """One-line stderr records of a kind (notice, signal, hook, hook-output, plan-start, plan-done, ...),
        each parsed into a dict of its SPOTWATCH_* fields plus MESSAGE."""
        out = []
        for line in self.stderr_text().splitlines():
            m = re.match(r"spotwatchd\[\d+\]: \[(\S+)\] (.*?)(?: \{(.*)\})?$", line)
            if not m or m.group(1) != kind:
                continue
            rec = {"MESSAGE": m.group(2)}
            for kv in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)', m.group(3) or ""):
                k, v = kv
                if v.startswith('"'):
                    v = json.loads(v)
                rec[k] = v
            out.append(rec)
        return out

    # -- control -------------------------------------------------------------
    def ctl(self, *args, check=True, timeout=30):
        p = subprocess.run([SPOTWATCHCTL, "--socket", self.socket_path, *args], capture_output=True, text=True,
                           timeout=timeout)
        if check and p.returncode != 0:
            raise Failure(f"spotwatchctl {' '.join(args)} failed ({p.returncode}): {p.stdout}{p.stderr}")
        return p


def count_plans(d):
    """Number of plans the daemon started (its [plan-start] records)."""
    return len(d.records("plan-start"))


SLEEPER = r"""
import os, signal, sys, time
marker, pidfile = sys.argv[1], sys.argv[2]
def on_usr1(signum, frame):
    with open(marker, "a") as f:
        f.write("USR1\n")
signal.signal(signal.SIGUSR1, on_usr1)
with open(pidfile + ".tmp", "w") as f:
    f.write(str(os.getpid()) + "\n")
os.replace(pidfile + ".tmp", pidfile)
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    time.sleep(0.05)
"""


def spawn_sleeper(tmp, name="sleeper", lifetime=120):
    """A real child that appends 'USR1' to its marker file on each SIGUSR1 and
    keeps running. Returns (Popen, pidfile, marker)."""
    pidfile = os.path.join(tmp, f"{name}.pid")
    marker = os.path.join(tmp, f"{name}.usr1")
    p = subprocess.Popen([sys.executable, "-c", SLEEPER, marker, pidfile, str(lifetime)])
    wait_until(lambda: os.path.exists(pidfile), 5, what="sleeper pidfile")
    return p, pidfile, marker


def usr1_count(marker):
    try:
        with open(marker) as f:
            return f.read().count("USR1")
    except FileNotFoundError:
        return 0


def main(tests):
    """Run test functions in order; print a summary line; exit 1 on failure."""
    name = os.path.basename(sys.argv[0]).removesuffix(".py")
    failed = 0
    for t in tests:
        print(f"== {t.__name__}", flush=True)
        try:
            t()
        except Exception as e:  # noqa: BLE001 - report every failure, go on
            failed += 1
            import traceback
            traceback.print_exc()
            print(f"FAIL {t.__name__}: {e}", flush=True)
    print(f"{name}: {len(tests) - failed} tests ok, {failed} failed", flush=True)
    sys.exit(1 if failed else 0)
