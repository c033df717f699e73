/* SPDX-License-Identifier: MIT */
/*
 * fuzz-config.c - config_load() (config.h) on the input as an ini file: the
 * line-counting reader, inih, every key's parser and the cross-field checks.
 * config_load() takes a path, so the input is written to one memfd, made once
 * and rewritten per input, and loaded through /proc/self/fd/N: no disk I/O.
 * Checks that a failure always comes with a message and a success with a
 * Config, as config.h promises.
 */
#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"
#include "fuzz.h"

static int config_fd = -1;
static char config_path[64];

static void write_all(int fd, const uint8_t *data, size_t size) {
        size_t n = 0;

        FUZZ_CHECK(ftruncate(fd, 0) == 0);
        while (n < size) {
                ssize_t k = pwrite(fd, data + n, size - n, (off_t) n);
                if (k < 0 && errno == EINTR)
                        continue;
                FUZZ_CHECK(k > 0);
                n += (size_t) k;
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        Config *c = NULL;
        char *error = NULL;
        int r;

        if (config_fd < 0) {
                config_fd = memfd_create("fuzz-config.ini", MFD_CLOEXEC);
                FUZZ_CHECK(config_fd >= 0);
                (void) snprintf(config_path, sizeof(config_path), "/proc/self/fd/%d", config_fd);
        }
        write_all(config_fd, data, size);

        r = config_load(config_path, &c, &error);
        if (r < 0) {
                FUZZ_CHECK(r == -EINVAL || r == -ENOMEM || r == -EFBIG);
                FUZZ_CHECK(error || r == -ENOMEM);
                FUZZ_CHECK(!c);
        } else {
                FUZZ_CHECK(c);
                FUZZ_CHECK(!error);
                for (size_t i = 0; i < c->n_hooks; i++)
                        FUZZ_CHECK(c->hooks[i].argv && c->hooks[i].argv[0] && c->hooks[i].argv[0][0] == '/');
                for (size_t i = 0; i < c->n_processes; i++)
                        FUZZ_CHECK(!c->processes[i].pidfile != !c->processes[i].match);
        }
        c = config_free(c);
        free(error);
        return 0;
}
