# SPDX-License-Identifier: MIT
"""Shared helpers of the spotwatchd benchmarks: paths to the built binaries,
the test fakes (tests/integration), statistics, the result table and the C
helper. Python 3 standard library only; loopback only.

Benchmarks print figures and never fail on a threshold: they exit non-zero
only when they could not run.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
BUILD = os.environ.get("SPOTWATCH_BUILD", os.path.join(ROOT, "build"))
SPOTWATCHD = os.environ.get("SPOTWATCHD", os.path.join(BUILD, "daemon", "spotwatchd"))
SPOTWATCHCTL = os.environ.get("SPOTWATCHCTL", os.path.join(BUILD, "daemon", "spotwatchctl"))

# The harness reads these at import time.
os.environ.setdefault("SPOTWATCHD", SPOTWATCHD)
os.environ.setdefault("SPOTWATCHCTL", SPOTWATCHCTL)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import fake_imds  # noqa: E402
import harness  # noqa: E402


class CannotRun(Exception):
    """The benchmark could not be run (not: a figure was bad)."""


def check_binaries():
    for b in (SPOTWATCHD, SPOTWATCHCTL):
        if not os.access(b, os.X_OK):
            raise CannotRun(f"{b} is not built (run bench/run, or ninja -C build)")


# -- statistics ---------------------------------------------------------------

def median(xs):
    return statistics.median(xs) if xs else float("nan")


def p90(xs):
    """The 90th percentile, nearest rank (with few samples: close to the max)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(0, min(len(s) - 1, -(-9 * len(s) // 10) - 1))
    return s[k]


def ratio(a, b):
    return a / b if b else float("nan")


# -- results ------------------------------------------------------------------

ROWS = []


def row(bench, metric, unit, values=None, value=None, peer=None, peer_name="", target="", note=""):
    """One figure: values (a list: median and p90 are taken) or a single value;
    peer: the peer's list or single value, measured in the same run."""
    if values is not None:
        med, hi, n = median(values), p90(values), len(values)
    else:
        med, hi, n = value, None, 1
    pmed = None
    if peer is not None:
        pmed = median(peer) if isinstance(peer, list) else peer
    r = {"bench": bench, "metric": metric, "unit": unit, "n": n, "median": med, "p90": hi,
         "peer": peer_name, "peer_median": pmed,
         "ratio": ratio(med, pmed) if pmed is not None else None, "target": target, "note": note}
    ROWS.append(r)
    return r


def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, float) and v != v:
        return "nan"
    if abs(v) >= 100:
        s = f"{v:.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    elif abs(v) >= 1:
        s = f"{v:.2f}"
    else:
        s = f"{v:.3f}"
    return f"{s} {unit}".rstrip()


def table(rows, title=None):
    head = ["benchmark", "metric", "n", "median", "p90", "peer (same run)", "peer median", "ratio", "SPEC target"]
    lines = [[r["bench"], r["metric"], str(r["n"]), fmt(r["median"], r["unit"]), fmt(r["p90"], r["unit"]),
              r["peer"] or "-", fmt(r["peer_median"], r["unit"]),
              "-" if r["ratio"] is None else f"{r['ratio']:.3g}x", r["target"] or "-"] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    out = []
    if title:
        out.append(title)
    out.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    out.append("  ".join("-" * w for w in widths))
    for ln in lines:
        out.append("  ".join(x.ljust(w) for x, w in zip(ln, widths)))
    for r in rows:
        if r["note"]:
            out.append(f"  note ({r['bench']} {r['metric']}): {r['note']}")
    return "\n".join(out)


def finish(bench):
    """Print this benchmark's table; append its rows to $BENCH_RESULTS (JSON lines) for bench/run."""
    print(table([r for r in ROWS if r["bench"] == bench]), flush=True)
    path = os.environ.get("BENCH_RESULTS")
    if path:
        with open(path, "a") as f:
            for r in ROWS:
                f.write(json.dumps(r) + "\n")


def main(bench, fn):
    try:
        fn()
    except CannotRun as e:
        print(f"{bench}: could not run: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except Exception:  # noqa: BLE001 - anything unexpected means it could not run
        import traceback
        traceback.print_exc()
        print(f"{bench}: could not run (see above)", file=sys.stderr, flush=True)
        sys.exit(2)
    finish(bench)


# -- processes ----------------------------------------------------------------

def cpu_seconds_precise(pid):
    """CPU time (user+system, all threads) of another process, with nanosecond
    resolution, from its process CPU-time clock (clock_getcpuclockid())."""
    return time.clock_gettime(((~pid) << 3) | 2)


def proc_stat_cpu_seconds(pid):
    """utime+stime from /proc/PID/stat, in seconds (clock-tick resolution)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def proc_status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def wait_for(fn, timeout, what, interval=0.002):
    end = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > end:
            raise CannotRun(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def build_sigwait(tmp):
    """Compile bench/sigwait.c into tmp; return the binary's path."""
    out = os.path.join(tmp, "sigwait")
    cc = os.environ.get("CC", "cc")
    p = subprocess.run([cc, "-O2", "-Wall", "-o", out, os.path.join(BENCH_DIR, "sigwait.c")],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise CannotRun(f"cannot compile bench/sigwait.c: {p.stderr.strip()}")
    return out


def read_receipts(path, offset=0):
    """Lines 'PID SECONDS' appended by sigwait after offset: (list of (pid, t), new offset)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    out = []
    for line in data[:end].splitlines():
        pid, t = line.split()
        out.append((int(pid), float(t)))
    return out, offset + end


class StampingHandler(fake_imds._Handler):
    """The independent fake's handler, plus a stamp (time.monotonic()) taken
    right after each instance-action answer carrying a notice was written to
    the socket (TCP_NODELAY is set, so it is on its way)."""

    def _instance_action(self, fake):
        notice = fake.notice
        status = super()._instance_action(fake)
        if status == 200 and notice is not None and fake.fault is None:
            t = time.monotonic()
            with fake._lock:
                fake.sent_notices.append((t, notice, self.headers.get("User-Agent", "")))
        return status


def start_fake(stamping=False):
    fake = fake_imds.FakeImds()
    fake.sent_notices = []
    fake.start()
    if stamping:
        # BaseServer makes a handler of this class per connection.
        fake._server.RequestHandlerClass = StampingHandler
    return fake


def tmpdir(prefix):
    return tempfile.mkdtemp(prefix=f"spotwatch-bench-{prefix}-")


def quick():
    return os.environ.get("BENCH_QUICK") == "1" or "--quick" in sys.argv


# Keep GIL hand-offs short so a stamp taken in the fake's thread is not held
# back by the benchmark's own thread.
sys.setswitchinterval(0.0005)
