/* SPDX-License-Identifier: MIT */
/*
 * replay-main.c - a stand-alone driver for the fuzz targets: feeds
 * LLVMFuzzerTestOneInput() every regular file of each directory given on the
 * command line (in name order) and each file given by name. It lets the seed
 * corpus run as a test with any compiler, and under ASan/UBSan reproduce a
 * crash that libFuzzer found: `fuzz-parse-replay fuzz/crashes/fuzz-parse/`.
 * Each input gets its own allocation of exactly its size, as under libFuzzer.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"

/* Inputs are small; this only protects the test from a stray huge file. */
#define REPLAY_FILE_MAX (16 * 1024 * 1024)

static int replay_file(int dirfd, const char *name, const char *shown) {
        struct stat st;
        uint8_t *buf;
        size_t n = 0;
        int fd;

        fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0) {
                int r = -errno;
                (void) close(fd);
                return r;
        }
        if (!S_ISREG(st.st_mode) || st.st_size > REPLAY_FILE_MAX) {
                (void) close(fd);
                return -EINVAL;
        }
        /* At least one byte, so malloc(0) never makes an empty input look like ENOMEM. */
        buf = malloc(st.st_size > 0 ? (size_t) st.st_size : 1);
        if (!buf) {
                (void) close(fd);
                return -ENOMEM;
        }
        while (n < (size_t) st.st_size) {
                ssize_t k = read(fd, buf + n, (size_t) st.st_size - n);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        break;
                n += (size_t) k;
        }
        (void) close(fd);

        fprintf(stderr, "replay: %s (%zu bytes)\n", shown, n);
        (void) LLVMFuzzerTestOneInput(buf, n);
        free(buf);
        return 0;
}

static int name_cmp(const struct dirent **a, const struct dirent **b) {
        return strcmp((*a)->d_name, (*b)->d_name);
}

static int skip_dots(const struct dirent *d) {
        return d->d_name[0] != '.';
}

static int replay_path(const char *path, unsigned *ret_count) {
        struct dirent **list = NULL;
        struct stat st;
        int n, dirfd, r = 0;

        if (stat(path, &st) < 0)
                return -errno;
        if (!S_ISDIR(st.st_mode)) {
                r = replay_file(AT_FDCWD, path, path);
                if (r >= 0)
                        (*ret_count)++;
                return r;
        }

        dirfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dirfd < 0)
                return -errno;
        n = scandir(path, &list, skip_dots, name_cmp);
        if (n < 0) {
                r = -errno;
                (void) close(dirfd);
                return r;
        }
        for (int i = 0; i < n; i++) {
                char shown[4096];
                struct stat est;

                (void) snprintf(shown, sizeof(shown), "%s/%s", path, list[i]->d_name);
                if (r >= 0 && fstatat(dirfd, list[i]->d_name, &est, 0) == 0 && S_ISREG(est.st_mode)) {
                        r = replay_file(dirfd, list[i]->d_name, shown);
                        if (r >= 0)
                                (*ret_count)++;
                        else
                                fprintf(stderr, "replay: %s: %s\n", shown, strerror(-r));
                }
                free(list[i]);
        }
        free(list);
        (void) close(dirfd);
        return r;
}

int main(int argc, char *argv[]) {
        unsigned count = 0;

        if (argc < 2) {
                fprintf(stderr, "usage: %s CORPUS_DIR|FILE...\n", argv[0]);
                return 2;
        }
        for (int i = 1; i < argc; i++) {
                int r = replay_path(argv[i], &count);
                if (r < 0) {
                        fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(-r));
                        return 1;
                }
        }
        if (count == 0) {
                fprintf(stderr, "replay: no inputs found\n");
                return 1;
        }
        printf("replayed %u inputs without a crash\n", count);
        return 0;
}
