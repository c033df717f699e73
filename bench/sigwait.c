/* SPDX-License-Identifier: MIT */
/*
 * sigwait.c - a tiny benchmark child that times the receipt of SIGUSR1.
 *
 *     sigwait OUTFILE PIDFILE [TOKEN...]
 *
 * It blocks SIGUSR1, writes its PID to PIDFILE (atomically, via a rename),
 * then loops: sigwaitinfo() for SIGUSR1, read CLOCK_MONOTONIC at once, and
 * append one line "PID SECONDS" to OUTFILE with a single O_APPEND write
 * (atomic, so a thousand of these can share the file). It never exits on
 * its own; the benchmark ends it with SIGTERM or SIGKILL. Extra arguments
 * are ignored: they are there for `[process] match =` to find.
 *
 * CLOCK_MONOTONIC is the clock of Python's time.monotonic() on Linux, and is
 * shared by all processes of a machine, so the stamps compare directly with
 * the benchmark's own. Built by the benchmarks with cc into a temporary
 * directory.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
        char tmp[4096], line[64];
        struct timespec ts;
        sigset_t set;
        int fd, n;

        if (argc < 3) {
                fprintf(stderr, "usage: sigwait OUTFILE PIDFILE [TOKEN...]\n");
                return 2;
        }

        sigemptyset(&set);
        sigaddset(&set, SIGUSR1);
        if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
                return 1;

        /* Open once: a receipt then costs one clock read and one write. */
        fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) {
                perror(argv[1]);
                return 1;
        }

        (void) snprintf(tmp, sizeof(tmp), "%s.tmp", argv[2]);
        {
                FILE *f = fopen(tmp, "we");
                if (!f || fprintf(f, "%d\n", (int) getpid()) < 0 || fclose(f) != 0 || rename(tmp, argv[2]) < 0) {
                        perror(argv[2]);
                        return 1;
                }
        }

        for (;;) {
                if (sigwaitinfo(&set, NULL) < 0) {
                        if (errno == EINTR)
                                continue;
                        return 1;
                }
                (void) clock_gettime(CLOCK_MONOTONIC, &ts);
                n = snprintf(line, sizeof(line), "%d %lld.%09ld\n", (int) getpid(), (long long) ts.tv_sec,
                             ts.tv_nsec);
                if (write(fd, line, (size_t) n) != n)
                        return 1;
        }
}
