/* SPDX-License-Identifier: MIT */
/*
 * state.c - persisted plan records (see state.h). A plain append-only text
 * file: small, greppable, and safe against a torn last line (an incomplete
 * line is ignored). It is read once at start-up, bounded in size.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shared/macro.h"
#include "state.h"

/* Only the tail of a long history matters: notices are rare. */
#define STATE_READ_MAX (256 * 1024)

static int mkdir_p(const char *dir, mode_t mode) {
        _cleanup_free_ char *p = strdup(dir);

        if (!p)
                return -ENOMEM;
        for (char *s = p + 1; *s; s++)
                if (*s == '/') {
                        *s = 0;
                        if (mkdir(p, 0755) < 0 && errno != EEXIST)
                                return -errno;
                        *s = '/';
                }
        if (mkdir(p, mode) < 0 && errno != EEXIST)
                return -errno;
        return 0;
}

int state_record(const char *dir, const char *what, const char *id, bool sync) {
        _cleanup_free_ char *path = NULL, *line = NULL;
        _cleanup_close_ int fd = -EBADF;
        int r, n;

        if (strpbrk(id, "\n\r") || strlen(id) >= 160)
                return -EINVAL;
        r = mkdir_p(dir, 0700);
        if (r < 0)
                return r;
        if (asprintf(&path, "%s/%s", dir, STATE_FILE) < 0)
                return -ENOMEM;
        n = asprintf(&line, "%s %s\n", what, id);
        if (n < 0)
                return -ENOMEM;
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return -errno;
        if (write(fd, line, (size_t) n) != n)
                return errno > 0 ? -errno : -EIO;
        if (sync && fsync(fd) < 0)
                return -errno;
        return 0;
}

int state_sync(const char *dir) {
        _cleanup_free_ char *path = NULL;
        _cleanup_close_ int fd = -EBADF;

        if (asprintf(&path, "%s/%s", dir, STATE_FILE) < 0)
                return -ENOMEM;
        fd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
                return -errno;
        if (fsync(fd) < 0)
                return -errno;
        return 0;
}

int state_load(const char *dir, Notice *n, char (*ret_interrupted)[160], unsigned n_interrupted) {
        _cleanup_free_ char *path = NULL, *buf = NULL;
        _cleanup_close_ int fd = -EBADF;
        /* Started ids not yet matched by a "done", most recent last. */
        char open_ids[NOTICE_SEEN_MAX][160];
        unsigned n_open = 0;
        struct stat st;
        ssize_t k;
        size_t len = 0;
        char *p, *nl;

        if (asprintf(&path, "%s/%s", dir, STATE_FILE) < 0)
                return -ENOMEM;
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
                return errno == ENOENT ? 0 : -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EBADF;
        if (st.st_size > STATE_READ_MAX && lseek(fd, st.st_size - STATE_READ_MAX, SEEK_SET) < 0)
                return -errno;
        buf = malloc(STATE_READ_MAX + 1);
        if (!buf)
                return -ENOMEM;
        while (len < STATE_READ_MAX && (k = read(fd, buf + len, STATE_READ_MAX - len)) > 0)
                len += (size_t) k;
        buf[len] = 0;

        p = buf;
        /* After a seek we may be mid-line: skip to the first full one. */
        if (st.st_size > STATE_READ_MAX && (nl = strchr(p, '\n')))
                p = nl + 1;
        for (; (nl = strchr(p, '\n')); p = nl + 1) {
                char *id;
                bool start;

                *nl = 0;
                if (strncmp(p, "start ", 6) == 0)
                        start = true;
                else if (strncmp(p, "done ", 5) == 0)
                        start = false;
                else
                        continue; /* garbage: ignored, never fatal */
                id = strchr(p, ' ') + 1;
                if (isempty(id) || strlen(id) >= 160)
                        continue;
                notice_mark_seen(n, id);
                if (start) {
                        if (n_open == NOTICE_SEEN_MAX) {
                                memmove(open_ids[0], open_ids[1], sizeof(open_ids[0]) * (NOTICE_SEEN_MAX - 1));
                                n_open--;
                        }
                        (void) snprintf(open_ids[n_open++], sizeof(open_ids[0]), "%s", id);
                } else
                        for (unsigned i = 0; i < n_open; i++)
                                if (streq(open_ids[i], id)) {
                                        memmove(open_ids[i], open_ids[i + 1], sizeof(open_ids[0]) * (n_open - i - 1));
                                        n_open--;
                                        break;
                                }
        }
        for (unsigned i = 0; i < n_open && i < n_interrupted; i++)
                memcpy(ret_interrupted[i], open_ids[i], 160);
        return (int) n_open;
}
