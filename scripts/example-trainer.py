#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""example-trainer - a toy training job that cooperates with spotwatchd.

It fits y = 3x + 1 by stochastic gradient descent on random data and prints
the loss about every half second. It writes its PID to --pidfile at start, so
a [process] section can name it by pidfile. On SIGUSR1 (spotwatchd's default
signal) or SIGTERM it only sets a flag; at the next step boundary it writes a
checkpoint atomically (temporary file in the same directory, flush, fsync,
rename, fsync of the directory), prints "checkpoint written: PATH", removes
its pidfile and exits 0. It also checkpoints and exits 0 after --steps steps.

    [process "trainer"]
    pidfile = /run/example-trainer.pid
    signal = SIGUSR1
    wait = 30s

Plain Python 3 standard library only.
"""

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time

stop_requested = None

# mkstemp() creates 0600 files; give ours the usual 0666 minus umask, so a
# hook or uploader running as another user can read the checkpoint.
_umask = os.umask(0)
os.umask(_umask)
FILE_MODE = 0o666 & ~_umask


def on_signal(signum, frame):
    # Async-signal context: only set a flag; the loop acts on it at a step boundary.
    global stop_requested
    stop_requested = signum


def write_atomically(path, data):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=directory)
    try:
        with os.fdopen(fd, 'w') as f:
            os.fchmod(f.fileno(), FILE_MODE)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # The rename is durable only once the directory is on disk too.
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_checkpoint(directory, step, w, b, loss):
    path = os.path.join(directory, 'checkpoint-%08d.json' % step)
    state = {
        'step': step,
        'weights': {'w': w, 'b': b},
        'loss': loss,
        'time': time.time(),
    }
    write_atomically(path, json.dumps(state, indent=2, sort_keys=True) + '\n')
    return path


def remove_pidfile(path):
    try:
        with open(path) as f:
            if f.read().strip() != str(os.getpid()):
                return  # someone else's by now
        os.unlink(path)
    except FileNotFoundError:
        pass


def main():
    parser = argparse.ArgumentParser(description='Toy training loop that checkpoints on SIGUSR1/SIGTERM.')
    parser.add_argument('--pidfile', required=True, help='write our PID here at start')
    parser.add_argument('--checkpoint-dir', required=True, help='directory for checkpoint files')
    parser.add_argument('--steps', type=int, default=0, help='stop after N steps (0: run until signalled)')
    parser.add_argument('--step-time', type=float, default=0.01, help='seconds one step takes (default 0.01)')
    parser.add_argument('--seed', type=int, default=None, help='random seed')
    args = parser.parse_args()

    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    os.makedirs(args.checkpoint_dir, exist_ok=True)
    write_atomically(args.pidfile, '%d\n' % os.getpid())

    rng = random.Random(args.seed)
    w, b = rng.uniform(-1, 1), rng.uniform(-1, 1)
    lr = 0.05
    loss_avg = None
    step = 0
    last_print = 0.0
    print('training started: pid %d, pidfile %s, checkpoints in %s'
          % (os.getpid(), args.pidfile, args.checkpoint_dir), flush=True)

    try:
        while True:
            if stop_requested is not None or (args.steps and step >= args.steps):
                why = signal.Signals(stop_requested).name if stop_requested is not None else 'steps done'
                path = write_checkpoint(args.checkpoint_dir, step, w, b, loss_avg)
                print('%s at step %d' % (why, step), flush=True)
                print('checkpoint written: %s' % path, flush=True)
                return 0

            # One SGD step on a small random batch of y = 3x + 1 with noise.
            gw = gb = loss = 0.0
            batch = 16
            for _ in range(batch):
                x = rng.uniform(-1, 1)
                y = 3.0 * x + 1.0 + rng.gauss(0, 0.05)
                err = (w * x + b) - y
                loss += err * err
                gw += 2 * err * x
                gb += 2 * err
            w -= lr * gw / batch
            b -= lr * gb / batch
            loss /= batch
            loss_avg = loss if loss_avg is None else 0.9 * loss_avg + 0.1 * loss
            step += 1

            now = time.monotonic()
            if now - last_print >= 0.5:
                print('step %d loss %.6f w %.4f b %.4f' % (step, loss_avg, w, b), flush=True)
                last_print = now
            if args.step_time > 0:
                time.sleep(args.step_time)
    finally:
        remove_pidfile(args.pidfile)


if __name__ == '__main__':
    sys.exit(main())
