#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""bench/upload.py - S3 multipart upload: spotwatchd's uploader against
`aws s3 cp` and `rclone copyto`, all into the same warm Ceph RADOS Gateway
(tests/integration/stores.Rgw, data in RAM) in one run, plus spotwatchd and
`curl -T` into a body-discarding HTTP sink (the client's own cost and the
machine's loopback ceiling).

    bench/upload.py [--sizes 1G,4G] [--runs N] [--rows ID,...] [--no-probe]

--runs defaults to 3 for files up to 1 GiB and 1 above (--quick: 1G, 1 run).
--rows picks rows by id (see ROWS below; e.g. sw-md5,aws,sink-curl).

It prints figures, never fails on a threshold: it exits non-zero only when it
could not run at all (a row that fails is printed as failed, with the error).
Everything binds to and talks to 127.0.0.1 only. Python 3 standard library.

Per run and subject:
  wall        spotwatchd: `spotwatchctl upload` exec to its return (the daemon
              is already running); peers: exec to exit (start-up included)
  client CPU  spotwatchd: utime+stime delta of the daemon (/proc/PID/stat)
              around the ctl command; peers: the child's own rusage from
              wait4() (the same figures as RUSAGE_CHILDREN deltas, but per
              child)
  peak RSS    spotwatchd: VmHWM after the upload (VmRSS before it = idle);
              peers: their VmHWM, sampled every 10 ms until they exit (not
              ru_maxrss: see run_child)
  server CPU  radosgw + ceph-osd + ceph-mon CPU clocks (RGW rows), or this
              process's CPU, which is the sink's threads (sink rows)
  machine     busy CPU-seconds of the whole machine (/proc/stat) in the run;
              "other" = machine - client - server: contention from others
Each figure is the median over the runs. Between RGW runs the object is
deleted and `radosgw-admin gc process --include-all` frees its RAM; runs are
interleaved (round-robin, rotated each round) so drift hits all subjects.
"""
import argparse
import base64
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (sets SPOTWATCHD/SPOTWATCHCTL for the harness, adds tests/integration)
import harness  # noqa: E402
import stores  # noqa: E402

MiB = 1024 * 1024
GiB = 1024 * MiB
BENCH = "upload"

# Targets (printed next to the figures; nothing fails on them).
TARGET_WALL_VS_AWS = 0.65      # spotwatchd wall <= 0.65 x aws s3 cp (same file, same RGW)
TARGET_CPU_PER_GIB = 0.3       # client CPU-s per GiB
TARGET_SINK_MIBPS = 1024       # into the sink, MiB/s

# id, label, where, spec. where: "rgw" or "sink".
ROWS = [
    ("sw-md5", "spotwatchd (checksum=md5, default)", "rgw", {"kind": "sw", "checksum": None}),
    ("sw-none", "spotwatchd (checksum=none)", "rgw", {"kind": "sw", "checksum": "none"}),
    ("sw-crc32c", "spotwatchd (checksum=crc32c)", "rgw", {"kind": "sw", "checksum": "crc32c"}),
    ("aws", "aws s3 cp", "rgw", {"kind": "aws"}),
    ("rclone", "rclone copyto", "rgw", {"kind": "rclone"}),
    ("sink-sw-none-c1", "spotwatchd (none, concurrency=1)", "sink",
     {"kind": "sw", "checksum": "none", "concurrency": 1}),
    ("sink-sw-md5-c1", "spotwatchd (md5, concurrency=1)", "sink",
     {"kind": "sw", "checksum": "md5", "concurrency": 1}),
    ("sink-sw-none-c4", "spotwatchd (none, concurrency=4)", "sink",
     {"kind": "sw", "checksum": "none", "concurrency": 4}),
    ("sink-sw-md5-c4", "spotwatchd (md5, concurrency=4)", "sink",
     {"kind": "sw", "checksum": "md5", "concurrency": 4}),
    ("sink-curl", "curl -T (single PUT)", "sink", {"kind": "curl"}),
]

# What the store checks of what each spotwatchd configuration sends (RGW:
# SigV4, x-amz-content-sha256, Content-MD5; it ignores x-amz-checksum-*).
VERIFIES = {
    "sw-md5": "Content-MD5 per part: RGW checks (BadDigest); part ETag = MD5 sent; HEAD size + ETag",
    "sw-none": "nothing of the bytes: HEAD size + ETag (MD5 of the part ETags RGW gave)",
    "sw-crc32c": "x-amz-checksum-crc32c per part: RGW ignores it; HEAD size + ETag",
    "sink-sw-none-c1": "sink checks nothing",
    "sink-sw-md5-c1": "MD5 computed and sent; sink checks nothing",
    "sink-sw-none-c4": "sink checks nothing",
    "sink-sw-md5-c4": "MD5 computed and sent; sink checks nothing",
    "sink-curl": "nothing",
}


class EchoSink(stores.HttpSink):
    """stores.HttpSink with consistent S3 answers. The plain sink answers part
    ETags "0000...000N" and a fixed HEAD ETag; spotwatchd checks a part's ETag
    against the MD5 it sent (checksum = md5) and the object's ETag against
    MD5-of-part-ETags "-N", and rightly refuses both. This sink still reads
    and discards the bodies without hashing them, but answers a part's ETag
    with the Content-MD5 the client sent (or a made-up hex one without it),
    and HEAD with the size and the multipart ETag those ETags give: a store
    that trusts the client's MD5, at no hashing cost of its own."""

    def __init__(self, port=0):
        super().__init__(port)
        self._echo_parts = {}     # upload id -> {part number: etag hex}
        self._echo_objects = {}   # path -> (size, etag)

    def _answer(self, method, target, hdrs, n):
        u = urllib.parse.urlsplit(target)
        q = dict(urllib.parse.parse_qsl(u.query, keep_blank_values=True))
        path = urllib.parse.unquote(u.path)
        md5 = stores._hget(hdrs, "content-md5")
        if method == "PUT" and "partNumber" in q and "uploadId" in q:
            if md5:
                etag = base64.b64decode(md5).hex()
            else:
                etag = hashlib.md5(f"{q['uploadId']}/{q['partNumber']}/{n}".encode()).hexdigest()
            with self._lock:
                self._echo_parts.setdefault(q["uploadId"], {})[int(q["partNumber"])] = (etag, n)
            return 200, {"ETag": f'"{etag}"'}, b""
        if method == "POST" and "uploadId" in q:
            with self._lock:
                parts = self._echo_parts.pop(q["uploadId"], {})
                self._uploads.pop(q["uploadId"], None)
            h = hashlib.md5(b"".join(bytes.fromhex(parts[k][0]) for k in sorted(parts)))
            etag = f"{h.hexdigest()}-{len(parts)}"
            with self._lock:
                self._echo_objects[path] = (sum(p[1] for p in parts.values()), etag)
            return 200, {"Content-Type": "application/xml"}, (
                f'<?xml version="1.0" encoding="UTF-8"?><CompleteMultipartUploadResult><Key>{path}</Key>'
                f'<ETag>"{etag}"</ETag></CompleteMultipartUploadResult>').encode()
        if method == "PUT" and "partNumber" not in q and not q.get("comp"):
            etag = base64.b64decode(md5).hex() if md5 else self.ETAG.strip('"')
            with self._lock:
                self._echo_objects[path] = (n, etag)
            return 200, {"ETag": f'"{etag}"'}, b""
        if method == "HEAD":
            with self._lock:
                o = self._echo_objects.get(path)
            if o:
                return 200, {"Content-Length": str(o[0]), "ETag": f'"{o[1]}"'}, b""
        if method == "DELETE" and "uploadId" not in q:
            with self._lock:
                self._echo_objects.pop(path, None)
        return super()._answer(method, target, hdrs, n)


# -- small helpers ---------------------------------------------------------------

def parse_size(s):
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", s, re.I)
    if not m:
        raise SystemExit(f"upload.py: bad size {s!r} (e.g. 1G, 512M)")
    mult = {"": 1, "K": 1024, "M": MiB, "G": GiB, "T": 1024 * GiB}[m.group(2).upper()]
    return int(float(m.group(1)) * mult)


def size_name(n):
    for unit, m in (("G", GiB), ("M", MiB), ("K", 1024)):
        if n % m == 0:
            return f"{n // m}{unit}"
    return str(n)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def uptime_line():
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except OSError:
        return "load average: " + loadavg()


def machine_busy_seconds():
    """CPU-seconds the whole machine spent busy (all cores) so far."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def proc_user_sys(pid):
    """(utime, stime) of a process in seconds, from /proc/PID/stat (10 ms ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / hz, int(fields[12]) / hz


def cpu_clock(pid):
    try:
        return common.cpu_seconds_precise(pid)
    except OSError:
        return 0.0


def server_cpu(pids):
    return sum(cpu_clock(p) for p in pids if p)


def write_file(path, size):
    """Fast distinct content: a 16 MiB random block, each MiB stamped with its
    offset (no two MiB alike, nothing compressible, nothing zero)."""
    block = bytearray(os.urandom(16 * MiB))
    with open(path, "wb") as f:
        done = 0
        while done < size:
            n = min(len(block), size - done)
            for off in range(0, n, MiB):
                block[off:off + 8] = (done + off).to_bytes(8, "little")
            f.write(memoryview(block)[:n])
            done += n
        f.flush()
        os.fsync(f.fileno())      # no writeback left to compete with the runs


def warm(path):
    """Read the file once so it is in the page cache; returns seconds taken."""
    t = time.monotonic()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(8 * MiB)
        while f.readinto(buf):
            pass
    return time.monotonic() - t


def cached_fraction(path):
    """Fraction of the file in the page cache (fincore), or None."""
    try:
        out = subprocess.run(["fincore", "-b", "-n", "-o", "RES", path], capture_output=True, text=True,
                             timeout=10).stdout.split()
        return int(out[0]) / os.path.getsize(path)
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def fs_of(path):
    try:
        p = subprocess.run(["df", "--output=fstype,source", path], capture_output=True, text=True, timeout=5)
        fstype, source = p.stdout.splitlines()[1].split()[:2]
        return fstype, source
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return "?", "?"


def version_of(argv):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=peer_env())
        return (p.stdout or p.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def peer_env(extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and not k.startswith("RCLONE_")}
    env["no_proxy"] = env["NO_PROXY"] = "127.0.0.1,localhost"
    env.update(extra or {})
    return env


# -- subjects --------------------------------------------------------------------

class Run(dict):
    """One measurement: wall, cpu, rss_peak (MiB), ... or error."""


def run_child(argv, env, timeout):
    """Run argv; returns Run(wall, cpu, cpu_user, cpu_sys, rss_peak, rc, err)."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    # Read stderr in a thread so a chatty child never blocks; wait4 gives this
    # child's own rusage (it and the descendants it waited for).
    err = []
    reader = threading.Thread(target=lambda: err.append(p.stderr.read()), daemon=True)
    reader.start()
    killer = threading.Timer(timeout, lambda: p.kill())
    killer.start()
    # Peak RSS: the child's VmHWM, sampled until it exits (HWM only grows, so
    # the last sample is the peak but for the last few ms). Not ru_maxrss:
    # subprocess starts children with vfork(), and exec() folds the parent's
    # high-water mark (this Python, ~90 MiB) into the child's ru_maxrss.
    hwm = [0]
    done = threading.Event()

    def poll():
        while not done.is_set():
            try:
                v = common.proc_status_kib(p.pid, "VmHWM")
            except OSError:
                v = None
            if v:
                hwm[0] = max(hwm[0], v)
            done.wait(0.01)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)    # exited, not reaped: the PID stays ours
        wall = time.monotonic() - t0
        done.set()
        poller.join()
        _, status, ru = os.wait4(p.pid, 0)
    finally:
        killer.cancel()
        done.set()
    p.returncode = os.waitstatus_to_exitcode(status)
    reader.join(5)
    text = (err[0] if err else b"").decode(errors="replace")
    return Run(wall=wall, cpu=ru.ru_utime + ru.ru_stime, cpu_user=ru.ru_utime, cpu_sys=ru.ru_stime,
               rss_peak=hwm[0] / 1024, ru_maxrss=ru.ru_maxrss / 1024, rc=p.returncode, stderr=text,
               error=None if p.returncode == 0 else f"exit {p.returncode}: {text.strip()[-600:]}")


def run_spotwatchd(path, endpoint, bucket, keys, checksum, concurrency, server_pids, timeout, deadline="30m"):
    """A fresh daemon (fresh state_dir: nothing skipped), one `spotwatchctl upload`."""
    section = (f'\n[upload "b"]\nsource = {path}\ndestination = s3://{bucket}/bench/\nendpoint = {endpoint}\n'
               f"access_key_id = {keys[0]}\nsecret_access_key = {keys[1]}\n")
    if checksum:
        section += f"checksum = {checksum}\n"
    if concurrency:
        section += f"concurrency = {concurrency}\n"
    d = harness.Daemon(sections=section, fake_metadata="aws",
                       daemon_keys={"poll_interval": "1s", "default_deadline": deadline})
    with d:
        pid = d.pid
        time.sleep(0.2)
        idle_rss = common.proc_status_kib(pid, "VmRSS") / 1024
        idle_hwm = common.proc_status_kib(pid, "VmHWM") / 1024
        s0, us0, m0 = server_cpu(server_pids), proc_user_sys(pid), machine_busy_seconds()
        cc0 = cpu_clock(pid)
        p0 = time.process_time()
        t0 = time.monotonic()
        p = d.ctl("upload", check=False, timeout=timeout)
        wall = time.monotonic() - t0
        p1 = time.process_time()
        cc1 = cpu_clock(pid)
        s1, us1, m1 = server_cpu(server_pids), proc_user_sys(pid), machine_busy_seconds()
        peak = common.proc_status_kib(pid, "VmHWM") / 1024
        recs = d.records("upload")
        r = Run(wall=wall, cpu=(us1[0] - us0[0]) + (us1[1] - us0[1]), cpu_user=us1[0] - us0[0],
                cpu_sys=us1[1] - us0[1], cpu_clock=cc1 - cc0, rss_peak=peak, rss_idle=idle_rss,
                hwm_idle=idle_hwm, server=s1 - s0, machine=m1 - m0, bench_cpu=p1 - p0, rc=p.returncode)
        rec = recs[-1] if recs else {}
        r["record"] = rec
        if p.returncode != 0 or rec.get("SPOTWATCH_STATE") != "sent":
            r["error"] = (rec.get("SPOTWATCH_ERROR") or (p.stdout + p.stderr).strip()[-600:]
                          or d.stderr_text()[-600:])
            r["stderr_tail"] = d.stderr_text()[-2000:]
        else:
            r["error"] = None
            r["mibps_record"] = float(rec.get("SPOTWATCH_MIBPS", "nan"))
            r["parts"] = rec.get("SPOTWATCH_PARTS")
            r["retries"] = rec.get("SPOTWATCH_RETRIES")
        return r


def aws_argv(path, bucket, key, endpoint):
    return ["aws", "s3", "cp", path, f"s3://{bucket}/{key}", "--endpoint-url", endpoint]


def aws_env(keys):
    return peer_env({"AWS_ACCESS_KEY_ID": keys[0], "AWS_SECRET_ACCESS_KEY": keys[1],
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": "/dev/null",
                     "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"})


def rclone_argv(path, bucket, key, endpoint, keys):
    # AWS_CA_BUNDLE is removed by peer_env (the brief's `env -u AWS_CA_BUNDLE`).
    return ["rclone", "copyto", path, f":s3:{bucket}/{key}", "--s3-provider", "Ceph", "--s3-endpoint", endpoint,
            "--s3-access-key-id", keys[0], "--s3-secret-access-key", keys[1]]


def rclone_env(tmp):
    conf = os.path.join(tmp, "rclone.conf")
    if not os.path.exists(conf):
        open(conf, "w").close()
    return peer_env({"RCLONE_CONFIG": conf})


def run_peer(argv, env, server_pids, timeout):
    s0, m0, p0 = server_cpu(server_pids), machine_busy_seconds(), time.process_time()
    r = run_child(argv, env, timeout)
    r["server"] = server_cpu(server_pids) - s0
    r["machine"] = machine_busy_seconds() - m0
    r["bench_cpu"] = time.process_time() - p0
    return r


# -- the probe: what each client sends -----------------------------------------------

def classify_payload(v):
    if not v:
        return "(none)"
    if re.fullmatch(r"[0-9a-f]{64}", v):
        return "SHA-256 of body"
    return v


def probe(rgw, s3, bucket, tmp, have_rclone, rows):
    """Upload a 208 MiB file (above rclone's 200 MiB multipart cutoff) through a
    logging FaultProxy to the RGW with each client; summarise the upload
    requests' integrity headers. Returns {row id: summary string}."""
    size = 208 * MiB
    path = os.path.join(tmp, "probe-208M.bin")
    write_file(path, size)
    warm(path)
    keys = (rgw.access_key, rgw.secret_key)
    out = {}
    px = stores.FaultProxy(rgw.endpoint).start()
    try:
        subjects = [r for r in rows if r[2] == "rgw"]
        for rid, label, _, spec in subjects:
            px.clear_log()
            key = None
            if spec["kind"] == "sw":
                r = run_spotwatchd(path, px.endpoint, bucket, keys, spec.get("checksum"), None, [], 600)
                key = "bench/" + os.path.basename(path)
            elif spec["kind"] == "aws":
                key = "aws/probe.bin"
                r = run_child(aws_argv(path, bucket, key, px.endpoint), aws_env(keys), 600)
            elif spec["kind"] == "rclone":
                if not have_rclone:
                    continue
                key = "rclone/probe.bin"
                r = run_child(rclone_argv(path, bucket, key, px.endpoint, keys), rclone_env(tmp), 600)
            if r.get("error"):
                out[rid] = f"probe failed: {r['error'][:300]}"
            else:
                out[rid] = summarise(px.requests(), size)
            try:
                s3.delete_object(bucket, key)
            except stores.S3Error:
                pass
    finally:
        px.stop()
        os.unlink(path)
    rgw.gc()
    return out


def summarise(log, size):
    puts = [e for e in log if e["method"] == "PUT" and e["body_len"] and e["body_len"] > 64 * 1024]
    if not puts:
        return "no body PUTs seen"
    n = len(puts)
    payloads = sorted({classify_payload(e["headers"].get("x-amz-content-sha256")) for e in puts})
    md5 = sum(1 for e in puts if "content-md5" in e["headers"])
    cks = sorted({k for e in puts for k in e["headers"] if k.startswith("x-amz-checksum") or k == "x-amz-trailer"
                  or k == "x-amz-sdk-checksum-algorithm"})
    enc = sorted({e["headers"].get("content-encoding", "") for e in puts} - {""})
    te = sorted({e["headers"].get("transfer-encoding", "") for e in puts} - {""})
    part = max(e["body_len"] for e in puts)
    meta = sorted({k for e in log for k in e["headers"] if k.startswith("x-amz-meta-")})
    others = {}
    for e in log:
        if e in puts:
            continue
        kind = e["method"] + (" ?uploads" if "uploads" in e["params"] else " ?uploadId" if "uploadId" in e["params"]
                              else "")
        others[kind] = others.get(kind, 0) + 1
    s = (f"{n} body PUT{'s' if n != 1 else ''} of ≤ {size_name(part) if part % MiB == 0 else f'{part / MiB:.1f}M'}; "
         f"x-amz-content-sha256: {', '.join(payloads)}; Content-MD5 on {md5}/{n}")
    if cks:
        s += f"; {', '.join(cks)}"
    if enc:
        s += f"; Content-Encoding {', '.join(enc)}"
    if te:
        s += f"; Transfer-Encoding {', '.join(te)}"
    if meta:
        s += f"; {', '.join(meta)}"
    if others:
        s += "; also " + ", ".join(f"{v}× {k}" for k, v in sorted(others.items()))
    return s


def rgw_checks(summary):
    """What RGW verifies of what the probe saw."""
    if not summary or summary.startswith(("probe failed", "no body")):
        return ""
    checks = []
    if "SHA-256 of body" in summary:
        checks.append("payload SHA-256 (x-amz-content-sha256)")
    if "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" in summary:
        checks.append("chunk signatures")
    m = re.search(r"Content-MD5 on (\d+)/(\d+)", summary)
    if m and int(m.group(1)) > 0:
        checks.append(f"Content-MD5 ({m.group(1)}/{m.group(2)} PUTs)")
    ignored = " (x-amz-checksum-* ignored)" if "x-amz-checksum" in summary else ""
    return ("RGW checks " + " + ".join(checks) if checks else "RGW checks none of the bytes") + ignored


# -- the benchmark ---------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=None, help="comma-separated file sizes (default 1G,4G; --quick 1G)")
    ap.add_argument("--runs", type=int, default=None, help="runs per size (default 3 up to 1 GiB, 1 above)")
    ap.add_argument("--rows", default=None, help="only these row ids: " + ",".join(r[0] for r in ROWS))
    ap.add_argument("--no-probe", action="store_true", help="skip the header probe (what each client sends)")
    ap.add_argument("--quick", action="store_true", help="1G, 1 run")
    a = ap.parse_args()
    quick = a.quick or common.quick()
    sizes = [parse_size(s) for s in (a.sizes or ("1G" if quick else "1G,4G")).split(",") if s.strip()]
    rows = ROWS if not a.rows else [r for r in ROWS if r[0] in a.rows.split(",")]
    if not rows:
        raise SystemExit("upload.py: --rows matched nothing")

    def runs_for(size):
        if a.runs:
            return a.runs
        return 1 if quick or size > GiB else 3

    common.check_binaries()
    missing = [b for b in ("curl", "aws", "radosgw", "radosgw-admin") if shutil.which(b) is None]
    if missing:
        raise common.CannotRun(f"not found: {', '.join(missing)}")
    have_rclone = shutil.which("rclone") is not None

    start_uptime = uptime_line()
    t_start = time.monotonic()
    tmp = common.tmpdir("upload")            # under /tmp
    # Measure one copy of the binaries even if build/ is rebuilt meanwhile.
    bindir = os.path.join(tmp, "bin")
    os.mkdir(bindir)
    built = time.strftime("%H:%M:%S UTC", time.gmtime(os.stat(common.SPOTWATCHD).st_mtime))
    harness.SPOTWATCHD = shutil.copy2(common.SPOTWATCHD, bindir)
    harness.SPOTWATCHCTL = shutil.copy2(common.SPOTWATCHCTL, bindir)
    fstype, fsdev = fs_of(tmp)
    print(f"upload benchmark: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
          f"{platform.release()}; {common.SPOTWATCHD} of {built} (copied)")
    print(f"load at start: {start_uptime}")
    print(f"files in {tmp}: {fstype} on {fsdev} ({'tmpfs: RAM' if fstype == 'tmpfs' else 'disk'}), "
          "written, fsync'ed, then read once into the page cache before the runs", flush=True)

    rgw = None
    sink = None
    results = {}          # (row id, size) -> [Run]
    notes = []
    try:
        files = {}
        for size in sizes:
            p = os.path.join(tmp, f"ckpt-{size_name(size)}.bin")
            t = time.monotonic()
            write_file(p, size)
            tw = time.monotonic() - t
            tr = warm(p)
            files[size] = p
            print(f"  {os.path.basename(p)}: written in {tw:.1f} s, warmed in {tr:.2f} s "
                  f"({size / MiB / tr:.0f} MiB/s from the page cache)", flush=True)

        need_rgw = any(r[2] == "rgw" for r in rows)
        keys = ("BENCHKEY", "BENCHSECRET")
        if need_rgw:
            mem = max(10 * GiB, 2 * max(sizes) + 2 * GiB)
            t = time.monotonic()
            rgw = stores.Rgw(mem_bytes=mem, access_key=keys[0], secret_key=keys[1]).start()
            print(f"RGW: {version_of(['radosgw', '--version'])}, memstore {mem / GiB:.0f} GiB, "
                  f"{rgw.endpoint}, up in {time.monotonic() - t:.1f} s", flush=True)
            s3 = rgw.s3()
            bucket = stores.unique_name("bench")
            s3.create_bucket(bucket)
            pids = [p for p in rgw.pids().values() if p]
            # Warm the gateway's multipart path once (untimed).
            s3.upload_file(bucket, "warmup", files[min(sizes)] if min(sizes) <= 256 * MiB else
                           _small_file(tmp), part_size=8 * MiB, parallel=4)
            s3.delete_object(bucket, "warmup")
            rgw.gc()
        else:
            rgw, s3, bucket, pids = None, None, None, []
        print(f"aws: {version_of(['aws', '--version'])} ({shutil.which('aws')})")
        print(f"rclone: {version_of(['rclone', 'version']) if have_rclone else 'not installed'}")
        print(f"curl: {version_of(['curl', '--version'])}", flush=True)

        if any(r[2] == "sink" for r in rows):
            sink = EchoSink().start()
            # What the plain stores.HttpSink makes of spotwatchd (see EchoSink): one small upload.
            plain = stores.HttpSink().start()
            pf = os.path.join(tmp, "plain-sink-24M.bin")
            write_file(pf, 24 * MiB)
            seen = []
            for ck in ("none", "md5"):
                r = run_spotwatchd(pf, plain.endpoint, "sinkbkt", keys, ck, None, [], 120, deadline="6s")
                seen.append(f"checksum={ck}: " + (f"failed: {r['error']}" if r.get("error") else "sent"))
            plain.stop()
            os.unlink(pf)
            notes.append("spotwatchd into the plain stores.HttpSink (fixed part ETags 000…N and a fixed HEAD ETag; "
                         "24 MiB, 3 parts, 6 s deadline): " + "; ".join(seen) + ". So the sink rows use EchoSink "
                         "(bench/upload.py): the same discarding sink, answering each part's ETag with the "
                         "Content-MD5 sent and HEAD with their multipart ETag")

        probe_out = {}
        if need_rgw and not a.no_probe:
            t = time.monotonic()
            probe_out = probe(rgw, s3, bucket, tmp, have_rclone, rows)
            print(f"(header probe: {time.monotonic() - t:.1f} s)", flush=True)

        floors = {}
        hashes = hash_speeds()
        if any(r[0] == "aws" for r in rows):
            floors["aws --version"] = run_child(["aws", "--version"], aws_env(keys), 60)
        if have_rclone and any(r[0] == "rclone" for r in rows):
            floors["rclone version"] = run_child(["rclone", "version"], rclone_env(tmp), 60)

        for size in sizes:
            path = files[size]
            n_runs = runs_for(size)
            for rnd in range(n_runs):
                order = rows[rnd % len(rows):] + rows[:rnd % len(rows)]
                for rid, label, where, spec in order:
                    if spec["kind"] == "rclone" and not have_rclone:
                        continue
                    cached = cached_fraction(path)
                    if cached is not None and cached < 0.99:
                        warm(path)
                    r = one(rid, where, spec, path, size, rgw, s3, bucket, sink, keys, pids, tmp)
                    r["cached"] = cached
                    results.setdefault((rid, size), []).append(r)
                    status = "FAILED: " + r["error"][:300] if r.get("error") else (
                        f"{r['wall']:.2f} s, {size / MiB / r['wall']:.0f} MiB/s, CPU {r['cpu']:.2f} s, "
                        f"peak RSS {r['rss_peak']:.1f} MiB, server {r.get('server', 0):.2f} s, "
                        f"machine {r.get('machine', 0):.2f} s")
                    print(f"  [{size_name(size)} run {rnd + 1}/{n_runs}] {rid}: {status}", flush=True)
    finally:
        if sink:
            sink.stop()
        if rgw:
            rgw.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    end_uptime = uptime_line()
    print()
    notes += hashes
    print(report(rows, sizes, results, probe_out, floors, notes, have_rclone))
    print()
    print(f"load at start: {start_uptime}")
    print(f"load at end:   {end_uptime}")
    print(f"({time.monotonic() - t_start:.0f} s in all)")
    export_rows(rows, sizes, results)


def hash_speeds():
    """One core's MD5 and SHA-256 rate (openssl speed, 1 MiB blocks, 1 s each):
    the CPU floor of checksum = md5 and of clients that sign the payload."""
    out = []
    for algo in ("md5", "sha256"):
        try:
            p = subprocess.run(["openssl", "speed", "-evp", algo, "-seconds", "1", "-bytes", str(MiB)],
                               capture_output=True, text=True, timeout=30)
            kb = float(p.stdout.strip().splitlines()[-1].split()[-1].rstrip("k"))
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            continue
        mibps = kb * 1000 / MiB
        out.append(f"floor: one core hashes {algo.upper()} at {mibps:.0f} MiB/s (`openssl speed -evp {algo}`, "
                   f"1 MiB blocks), i.e. {1024 / mibps:.2f} CPU-s/GiB for the hash alone")
    return out


def _small_file(tmp):
    p = os.path.join(tmp, "warmup-64M.bin")
    if not os.path.exists(p):
        write_file(p, 64 * MiB)
    return p


def one(rid, where, spec, path, size, rgw, s3, bucket, sink, keys, pids, tmp):
    timeout = max(600, size / (5 * MiB))
    kind = spec["kind"]
    if where == "rgw":
        if kind == "sw":
            key = "bench/" + os.path.basename(path)
            r = run_spotwatchd(path, rgw.endpoint, bucket, keys, spec.get("checksum"), spec.get("concurrency"),
                               pids, timeout)
        elif kind == "aws":
            key = f"aws/{os.path.basename(path)}"
            r = run_peer(aws_argv(path, bucket, key, rgw.endpoint), aws_env(keys), pids, timeout)
        else:
            key = f"rclone/{os.path.basename(path)}"
            r = run_peer(rclone_argv(path, bucket, key, rgw.endpoint, keys), rclone_env(tmp), pids, timeout)
        st, h = s3.head_object(bucket, key)
        if not r.get("error") and (st != 200 or int(h.get("content-length", -1)) != size):
            r["error"] = f"after the upload HEAD gave {st}, {h.get('content-length')} bytes (expected {size})"
        if st == 200:
            s3.delete_object(bucket, key)
        for u in s3.list_multipart_uploads(bucket):
            s3.abort_multipart_upload(bucket, u["Key"], u["UploadId"])
        rgw.gc()
        return r
    # the sink (its threads are this process's CPU)
    if kind == "sw":
        r = run_spotwatchd(path, sink.endpoint, "sinkbkt", keys, spec.get("checksum"), spec.get("concurrency"),
                           [], timeout)
        r["server"] = r["bench_cpu"]
        return r
    r = run_peer(["curl", "-sS", "--fail", "-o", "/dev/null", "-T", path,
                  f"{sink.endpoint}/sinkbkt/curl/{os.path.basename(path)}"], peer_env(), [], timeout)
    r["server"] = r["bench_cpu"]
    return r


# -- output --------------------------------------------------------------------------

def med(rs, k):
    v = [r[k] for r in rs if r.get(k) is not None]
    return common.median(v) if v else None


def f2(v, nd=2):
    return "–" if v is None or v != v else f"{v:.{nd}f}"


def report(rows, sizes, results, probe_out, floors, notes, have_rclone):
    head = ["client", "into", "verifies", "size", "n", "wall s", "MiB/s (wall)", "MiB/s (record)", "client CPU s",
            "CPU s/GiB", "peak RSS MiB (idle)", "server CPU s", "other CPU s", "wall ÷ aws", "wall ÷ rclone",
            "targets"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for size in sizes:
        gib = size / GiB
        aws_w = med(results.get(("aws", size), []), "wall") if ok(results.get(("aws", size))) else None
        rcl_w = med(results.get(("rclone", size), []), "wall") if ok(results.get(("rclone", size))) else None
        for rid, label, where, spec in rows:
            rs = results.get((rid, size))
            into = "RGW" if where == "rgw" else "sink"
            verifies = VERIFIES.get(rid) or rgw_checks(probe_out.get(rid)) or "see the probe below"
            if spec["kind"] == "rclone" and not have_rclone:
                lines.append(f"| {label} | {into} | – | {size_name(size)} | 0 | rclone is not installed "
                             "(apt-get install -y rclone) |" + " |" * (len(head) - 6))
                continue
            if not rs:
                continue
            good = [r for r in rs if not r.get("error")]
            if not good:
                lines.append(f"| {label} | {into} | {verifies} | {size_name(size)} | {len(rs)} | FAILED: "
                             f"{rs[-1]['error'][:400].replace('|', '/')} |" + " |" * (len(head) - 6))
                continue
            wall, cpu = med(good, "wall"), med(good, "cpu")
            peak = med(good, "rss_peak")
            idle = med(good, "rss_idle")
            rec = med(good, "mibps_record")
            server = med(good, "server")
            other = common.median([max(0.0, r["machine"] - r["cpu"] - r.get("server", 0)) for r in good
                                   if r.get("machine") is not None])
            mibps = size / MiB / wall
            is_sw = spec["kind"] == "sw"
            r_aws = wall / aws_w if is_sw and where == "rgw" and aws_w else None
            r_rcl = wall / rcl_w if is_sw and where == "rgw" and rcl_w else None
            targets = []
            if is_sw and where == "rgw":
                targets.append(f"wall ≤ 0.65× aws: {'met' if r_aws is not None and r_aws <= TARGET_WALL_VS_AWS else 'missed'}")
            if is_sw:
                targets.append(f"CPU ≤ {TARGET_CPU_PER_GIB} s/GiB: "
                               f"{'met' if cpu / gib <= TARGET_CPU_PER_GIB else 'missed'}")
            if is_sw and where == "sink":
                targets.append(f"≥ 1 GiB/s: {'met' if mibps >= TARGET_SINK_MIBPS else 'missed'}")
            fail_note = f" ({len(rs) - len(good)} failed)" if len(good) < len(rs) else ""
            server_s = f2(server) + (" (sink)" if where == "sink" else "")
            lines.append("| " + " | ".join([
                label, into, verifies, size_name(size), f"{len(good)}{fail_note}", f2(wall), f"{mibps:.0f}",
                f2(rec, 0) if rec is not None else "–", f2(cpu), f2(cpu / gib), f"{peak:.1f}"
                + (f" ({idle:.1f})" if idle is not None else ""), server_s, f2(other),
                f"{r_aws:.2f}×" if r_aws is not None else "–", f"{r_rcl:.2f}×" if r_rcl is not None else "–",
                "; ".join(targets) or "–"]) + " |")
    out = ["## S3 upload: spotwatchd vs aws s3 cp vs rclone (medians; RGW and sink on this machine)", ""]
    out += lines
    out.append("")
    out.append(f"Targets: spotwatchd wall ≤ {TARGET_WALL_VS_AWS}× aws s3 cp (same file, same RGW, same run); "
               f"client CPU ≤ {TARGET_CPU_PER_GIB} s/GiB; into the sink ≥ 1 GiB/s ({TARGET_SINK_MIBPS} MiB/s). "
               "Figures only: nothing fails on them.")
    out.append("Columns: wall = ctl command (spotwatchd, daemon already running) or exec→exit (peers, start-up "
               "included); MiB/s (record) = the daemon's own SPOTWATCH_MIBPS; client CPU = user+sys; peak RSS = "
               "VmHWM (spotwatchd: idle VmRSS in brackets; peers: sampled every 10 ms); server CPU = radosgw+ceph-osd+ceph-mon "
               "(RGW) or the Python sink's threads; other = machine busy CPU − client − server (other "
               "people's work, the kernel's softirq not charged to a task, the benchmark).")
    if probe_out:
        out.append("")
        out.append("What each client sends (probe: a 208 MiB file through a logging proxy to the RGW, defaults):")
        for rid, label, where, spec in rows:
            if rid in probe_out:
                out.append(f"- {label}: {probe_out[rid]}")
    extra = []
    for size in sizes:
        for rid, label, where, spec in rows:
            rs = [r for r in results.get((rid, size), []) if not r.get("error")]
            if rs and spec["kind"] == "sw":
                extra.append(f"{label} {into_name(where)} {size_name(size)}: parts {rs[0].get('parts')}, retries "
                             f"{','.join(str(r.get('retries')) for r in rs)}; user {f2(med(rs, 'cpu_user'))} + sys "
                             f"{f2(med(rs, 'cpu_sys'))} s (CPU clock {f2(med(rs, 'cpu_clock'))} s); walls "
                             f"{', '.join(f2(r['wall']) for r in rs)}")
            elif rs:
                extra.append(f"{label} {into_name(where)} {size_name(size)}: user {f2(med(rs, 'cpu_user'))} + sys "
                             f"{f2(med(rs, 'cpu_sys'))} s; walls {', '.join(f2(r['wall']) for r in rs)}")
            for r in results.get((rid, size), []):
                if r.get("error"):
                    extra.append(f"{label} {into_name(where)} {size_name(size)} FAILED: {r['error']}")
                    if r.get("stderr_tail"):
                        extra.append("  daemon stderr tail: " + r["stderr_tail"].strip().replace("\n", "\n    "))
    for name, r in floors.items():
        extra.append(f"floor: `{name}` exec→exit {f2(r['wall'])} s, CPU {f2(r['cpu'])} s, peak RSS "
                     f"{r['rss_peak']:.0f} MiB (its start-up is inside every run of that peer)")
    extra += notes
    if extra:
        out.append("")
        out.append("Details:")
        out += [f"- {e}" for e in extra]
    return "\n".join(out)


def into_name(where):
    return "→ RGW" if where == "rgw" else "→ sink"


def ok(rs):
    return bool(rs) and any(not r.get("error") for r in rs)


def export_rows(rows, sizes, results):
    """Key figures as bench/common rows, for bench/run's combined table."""
    path = os.environ.get("BENCH_RESULTS")
    out = []
    for size in sizes:
        gib = size / GiB
        sn = size_name(size)
        aws = [r for r in results.get(("aws", size), []) if not r.get("error")]
        curl = [r for r in results.get(("sink-curl", size), []) if not r.get("error")]
        for rid, label, where, spec in rows:
            rs = [r for r in results.get((rid, size), []) if not r.get("error")]
            if not rs or spec["kind"] != "sw":
                continue
            name = spec.get("checksum") or "md5"
            if where == "rgw":
                out.append(common.row(BENCH, f"{sn} to RGW, checksum={name}: wall", "s", [r["wall"] for r in rs],
                                      peer=[r["wall"] for r in aws] or None, peer_name="aws s3 cp" if aws else "",
                                      target=f"≤ {TARGET_WALL_VS_AWS}× aws"))
                out.append(common.row(BENCH, f"{sn} to RGW, checksum={name}: client CPU per GiB", "s/GiB",
                                      [r["cpu"] / gib for r in rs], peer=[r["cpu"] / gib for r in aws] or None,
                                      peer_name="aws s3 cp" if aws else "", target=f"≤ {TARGET_CPU_PER_GIB} s/GiB"))
            else:
                out.append(common.row(BENCH, f"{sn} into sink, checksum={name}, concurrency={spec['concurrency']}: "
                                      "MiB/s", "MiB/s",
                                      [size / MiB / r["wall"] for r in rs],
                                      peer=[size / MiB / r["wall"] for r in curl] or None,
                                      peer_name="curl -T" if curl else "", target=f"≥ {TARGET_SINK_MIBPS} MiB/s"))
    if path:
        with open(path, "a") as f:
            for r in out:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    try:
        main()
    except common.CannotRun as e:
        print(f"{BENCH}: could not run: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except stores.Unavailable as e:
        print(f"{BENCH}: could not run: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
