/* SPDX-License-Identifier: MIT */
/*
 * action-upload.c - the upload stage of a plan: for each selected [upload],
 * list the source (a file, a directory's regular files, or a glob), keep the
 * newest files, and send them one after the other, newest first, to the
 * destination, skipping those the manifest says are there unchanged. Only
 * file:// exists so far; s3://, gs:// and az:// will be further cases of the
 * switches over UploadScheme below and reuse everything else: listing,
 * selection, the manifest, source change detection, the deadline and the
 * reporting.
 *
 * Everything runs on the loop, without threads and without libuv's
 * threadpool: one uv_idle_t drives the work, at most 4 MiB read (and written
 * or verified) per loop turn, so timers, signals and the control socket are
 * served between chunks however large the file. A copy goes to a temporary
 * file next to its final name, with the source's SHA-256 computed as the data
 * passes; a source that changes while it is read is read again once, then
 * given up ("source changed while being read"); the copy is fsync'ed, read
 * back from storage and compared (size and SHA-256) before it is renamed into
 * place. A copy that fails or is cut off (deadline, close) is unlinked, so
 * the destination only ever holds complete, verified objects.
 *
 * It owns the idle handle, at most one source fd, one temporary file and one
 * directory fd, a 1 MiB buffer and the manifest (state_dir/uploads, a small
 * text file rewritten atomically). It bounds what a source can make it hold
 * (10000 files per [upload], 32768 manifest entries, 8 MiB of manifest). It
 * copies what it needs from the Config, never logs above debug and never
 * decides about the plan: every object is reported, not acted on.
 */
#include <assert.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <signal.h>
#include <inttypes.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "action.h"
#include "credentials.h"
#include "shared/log.h"
#include "store.h"
#include "shared/macro.h"

#define UPLOAD_BUF_SIZE (1024U * 1024U)
/*
 * A loop turn reads (and writes or verifies) at most this much, and starts
 * no further UPLOAD_BUF_SIZE read once it ran this long: the loop's latency
 * bound, whatever the CPU's SHA-256 speed (about 400 MB/s without SHA-NI).
 */
#define UPLOAD_TURN_BYTES (4U * 1024U * 1024U)
#define UPLOAD_TURN_USEC (4 * USEC_PER_MSEC)
/* Objects settled without I/O (skips, failures before the start) per loop turn. */
#define UPLOAD_SETTLE_PER_TURN 64U
#define UPLOAD_TMP_SUFFIX ".spotwatch-tmp-"
#define UPLOAD_DETAIL_MAX 1024U

#define MANIFEST_HEADER "# spotwatchd upload manifest: OBJECT SIZE MTIME_NSEC SHA256\n"
#define MANIFEST_ENTRIES_MAX 32768U
#define MANIFEST_READ_MAX (8U * 1024U * 1024U)
#define MANIFEST_LINE_MAX (16U * 1024U)
/* A completed object is written to the manifest at once only if the last write is this old. */
#define MANIFEST_FLUSH_USEC (1 * USEC_PER_SEC)

#define SHA256_SIZE 32U
#define NSEC_PER_SEC INT64_C(1000000000)

/* ---- types -------------------------------------------------------------- */

typedef struct ManifestEntry {
        char *object;
        uint64_t size;
        int64_t mtime_nsec;
        uint8_t sha256[SHA256_SIZE];
        char *etag;             /* object stores: the object's ETag as verified; NULL for file:// */
        uint64_t seq;           /* write order: when the manifest is full, the lowest go first */
} ManifestEntry;

typedef struct Manifest {
        ManifestEntry *entries; /* after manifest_normalize(): sorted by object, unique */
        size_t n;
        uint64_t next_seq;
} Manifest;

typedef struct UploadItem {
        char *path;             /* the source file, or the [upload]'s source= for an error of the whole */
        const char *name;       /* into @path: the object's name at the destination; NULL for the whole */
        uint64_t size;          /* as listed */
        int64_t mtime_nsec;
        int error;              /* < 0: report as failed with @detail, without trying */
        char *detail;           /* NULL: the default for @error */
} UploadItem;

typedef struct UploadJob {
        char *name;
        char *source;
        char *dest_path;
        char *dest_url;         /* canonical, with a trailing '/': objects are dest_url + escaped name */
        UploadScheme scheme;
        unsigned newest;

        UploadItem *items;      /* newest first, once listed */
        size_t n_items, next;
        bool listed;

        /* s3://, gs://, az:// */
        UploadConfig cfg;       /* deep copy of what the store needs */
        CredProvider *creds;    /* created at the job's first object */
} UploadJob;

typedef enum TransferPhase {
        PHASE_NONE,
        PHASE_CONFIRM,          /* reading the source to confirm the manifest's SHA-256: a skip? */
        PHASE_COPY,             /* source to temporary file, hashing */
        PHASE_VERIFY,           /* reading the temporary file back */
        PHASE_REMOTE,           /* an object store upload is in flight (the loop is not spun) */
        PHASE_CHECK,            /* asking the object store whether the manifest's object is there */
} TransferPhase;

/* The one object in flight. */
typedef struct Transfer {
        TransferPhase phase;
        UploadJob *job;
        UploadItem *item;
        char *object;
        uint64_t start_usec;
        unsigned restarts;

        /* The source, as opened. */
        int src_fd;
        uint64_t size;
        int64_t mtime_nsec;
        dev_t dev;
        ino_t ino;
        uint64_t done;          /* bytes read and hashed: of the source, or of the copy when verifying */
        uint8_t sha256[SHA256_SIZE]; /* PHASE_CONFIRM: the manifest's; later: the source's, as read */

        /* file:// */
        int dir_fd;
        int tmp_fd;
        char tmp_name[NAME_MAX + 1]; /* "" when there is no temporary file (any more) */
        uint64_t wb_off, wb_len; /* the previous turn's range, under writeback */

        /* object stores */
        char *key;              /* prefix + name, unescaped */
        StoreUpload *store;
        StoreCheck *check;
        char etag[128];         /* PHASE_CHECK: the manifest's; after a send: the store's */
        UploadObjectStats stats;
} Transfer;

typedef struct Pending {
        char *object;
        uint64_t size;
        int64_t mtime_nsec;
        uint8_t sha256[SHA256_SIZE];
        char *etag;
} Pending;

struct UploadStage {
        uv_loop_t *loop;
        uv_idle_t idle;
        uv_timer_t throttle;    /* rate_limit: resumes a paused copy */
        unsigned n_handles;     /* open handles; freed when the last is closed */
        UploadStageCallbacks cb;
        void *userdata;
        char *state_dir;        /* NULL: no manifest */
        uint64_t until_usec;
        UploadContext ctx;      /* metadata_url owned */
        const UploadObjectStats *stats; /* set while on_object runs */

        UploadJob *jobs;
        size_t n_jobs, next_job;

        Manifest manifest;      /* as loaded at the start: what can be skipped */
        Pending *pending;       /* objects sent since the last manifest write */
        size_t n_pending;
        uint64_t manifest_written_usec;
        bool manifest_loaded;

        Transfer xfer;
        EVP_MD_CTX *md;
        uint8_t *buf;
        char detail[UPLOAD_DETAIL_MAX];

        unsigned n_ok, n_skipped, n_failed;
        uint64_t bytes;
        bool started, done, closing;
};

/* ---- small helpers -------------------------------------------------------- */

static void *mfree(void *p) {
        free(p);
        return NULL;
}

static int64_t timespec_nsec(const struct timespec *ts) {
        return (int64_t) ts->tv_sec * NSEC_PER_SEC + ts->tv_nsec;
}

static bool deadline_reached(const UploadStage *s) {
        return now_monotonic_usec() >= s->until_usec;
}

/* May this loop turn, begun at @start_usec, having moved @n bytes, read another buffer? */
static bool turn_more(uint64_t start_usec, uint64_t n) {
        return n < UPLOAD_TURN_BYTES && (n == 0 || now_monotonic_usec() - start_usec < UPLOAD_TURN_USEC);
}

/* The bytes a path keeps in an object URL as they are: RFC 3986 pchar and '/'. */
static bool url_plain(unsigned char c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
               (c != '\0' && strchr("-._~/!$&'()*+,;=:@", c));
}

/* @prefix + @s with every other byte %XX-escaped + @suffix, malloc'd. No spaces: manifest-safe. */
static char *url_join(const char *prefix, const char *s, const char *suffix) {
        size_t n = strlen(prefix) + 3 * strlen(s) + strlen(suffix) + 1;
        char *out, *o;

        out = malloc(n);
        if (!out)
                return NULL;
        o = stpcpy(out, prefix);
        for (const unsigned char *p = (const unsigned char *) s; *p; p++)
                if (url_plain(*p))
                        *o++ = (char) *p;
                else
                        o += sprintf(o, "%%%02X", *p);
        (void) stpcpy(o, suffix);
        return out;
}

/* mkdir() that is fine with an existing directory, even where we could not create one (EACCES, EROFS). */
static int mkdir_one(const char *p, mode_t mode) {
        struct stat st;
        int r;

        if (mkdir(p, mode) >= 0 || errno == EEXIST)
                return 0;
        r = -errno;
        if (stat(p, &st) >= 0 && S_ISDIR(st.st_mode))
                return 0;
        return r;
}

static int mkdir_parents(const char *dir, mode_t mode) {
        _cleanup_free_ char *p = strdup(dir);
        int r;

        if (!p)
                return -ENOMEM;
        for (char *c = p + 1; *c; c++)
                if (*c == '/') {
                        *c = '\0';
                        r = mkdir_one(p, mode);
                        if (r < 0)
                                return r;
                        *c = '/';
                }
        return mkdir_one(p, mode);
}

static int write_all_at(int fd, const uint8_t *p, size_t n, uint64_t off) {
        while (n > 0) {
                ssize_t k = pwrite(fd, p, n, (off_t) off);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        return -EIO;
                p += k;
                n -= (size_t) k;
                off += (uint64_t) k;
        }
        return 0;
}

static int hex_decode(const char *s, uint8_t *out, size_t n) {
        for (size_t i = 0; i < n; i++) {
                int v = 0;

                for (size_t k = 0; k < 2; k++) {
                        char c = s[2 * i + k];

                        if (c >= '0' && c <= '9')
                                v = v * 16 + (c - '0');
                        else if (c >= 'a' && c <= 'f')
                                v = v * 16 + (c - 'a' + 10);
                        else
                                return -EINVAL;
                }
                out[i] = (uint8_t) v;
        }
        return s[2 * n] == '\0' ? 0 : -EINVAL;
}

static int sha256_init(UploadStage *s) {
        return EVP_DigestInit_ex(s->md, EVP_sha256(), NULL) == 1 ? 0 : -EIO;
}

static int sha256_update(UploadStage *s, const void *p, size_t n) {
        return EVP_DigestUpdate(s->md, p, n) == 1 ? 0 : -EIO;
}

static int sha256_final(UploadStage *s, uint8_t out[static SHA256_SIZE]) {
        unsigned len = 0;

        if (EVP_DigestFinal_ex(s->md, out, &len) != 1 || len != SHA256_SIZE)
                return -EIO;
        return 0;
}

/* ---- the manifest ----------------------------------------------------------
 *
 * state_dir/uploads: one line per object, "OBJECT SIZE MTIME_NSEC SHA256"
 * (objects are URLs with spaces and controls %-escaped), oldest first. It
 * only saves work: a lost or damaged manifest makes the next run send again
 * what it cannot prove unchanged, so garbage lines are ignored, and a stage
 * re-reads it before it writes, merging what it sent, so that two stages (a
 * plan and `spotwatchctl upload`) do not drop each other's entries.
 */

static void manifest_clear(Manifest *m) {
        for (size_t i = 0; i < m->n; i++) {
                free(m->entries[i].object);
                free(m->entries[i].etag);
        }
        free(m->entries);
        *m = (Manifest) {};
}

static int entry_compare_object(const void *a, const void *b) {
        const ManifestEntry *x = a, *y = b;
        int c = strcmp(x->object, y->object);

        /* Newest first among equals, so deduplication keeps the first. */
        if (c != 0)
                return c;
        return x->seq < y->seq ? 1 : x->seq > y->seq ? -1 : 0;
}

static int entry_compare_seq(const void *a, const void *b) {
        const ManifestEntry *x = a, *y = b;

        return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Sort by object, keep the newest entry of each, and only the newest MANIFEST_ENTRIES_MAX. */
static void manifest_normalize(Manifest *m) {
        size_t n = 0;

        if (m->n == 0)
                return;
        qsort(m->entries, m->n, sizeof(ManifestEntry), entry_compare_object);
        for (size_t i = 0; i < m->n; i++) {
                if (n > 0 && streq(m->entries[n - 1].object, m->entries[i].object)) {
                        free(m->entries[i].object);
                        free(m->entries[i].etag);
                        continue;
                }
                m->entries[n++] = m->entries[i];
        }
        m->n = n;

        if (m->n > MANIFEST_ENTRIES_MAX) {
                size_t drop = m->n - MANIFEST_ENTRIES_MAX;

                qsort(m->entries, m->n, sizeof(ManifestEntry), entry_compare_seq);
                for (size_t i = 0; i < drop; i++) {
                        free(m->entries[i].object);
                        free(m->entries[i].etag);
                }
                memmove(m->entries, m->entries + drop, MANIFEST_ENTRIES_MAX * sizeof(ManifestEntry));
                m->n = MANIFEST_ENTRIES_MAX;
                qsort(m->entries, m->n, sizeof(ManifestEntry), entry_compare_object);
        }
}

static int manifest_append(Manifest *m, size_t *allocated, const char *object, uint64_t size,
                           int64_t mtime_nsec, const uint8_t *sha256, const char *etag) {
        ManifestEntry *e;

        if (m->n == *allocated) {
                size_t na = *allocated == 0 ? 64 : *allocated * 2;

                e = reallocarray(m->entries, na, sizeof(ManifestEntry));
                if (!e)
                        return -ENOMEM;
                m->entries = e;
                *allocated = na;
        }
        e = &m->entries[m->n];
        *e = (ManifestEntry) {
                .size = size,
                .mtime_nsec = mtime_nsec,
                .seq = m->next_seq++,
        };
        memcpy(e->sha256, sha256, SHA256_SIZE);
        e->object = strdup(object);
        if (!e->object)
                return -ENOMEM;
        if (etag) {
                e->etag = strdup(etag);
                if (!e->etag) {
                        free(e->object);
                        return -ENOMEM;
                }
        }
        m->n++;
        return 0;
}

/* "OBJECT SIZE MTIME_NSEC SHA256" or "OBJECT SIZE MTIME_NSEC etag:ETAG"; -EINVAL for anything else. */
static int manifest_parse_line(char *line, char **ret_object, uint64_t *ret_size, int64_t *ret_mtime,
                               uint8_t *ret_sha256, char **ret_etag) {
        uint8_t sha256[SHA256_SIZE];
        char *f[4], *end;
        unsigned long long size;
        long long mtime;

        f[0] = line;
        for (size_t n = 1; n < ELEMENTSOF(f); n++) {
                char *sp = strchr(f[n - 1], ' ');

                if (!sp)
                        return -EINVAL;
                *sp = '\0';
                f[n] = sp + 1;
        }
        if (strchr(f[3], ' ') || isempty(f[0]))
                return -EINVAL;
        for (const char *p = f[0]; *p; p++)
                if (iscntrl((unsigned char) *p))
                        return -EINVAL;
        if (!isdigit((unsigned char) f[1][0]) || !(isdigit((unsigned char) f[2][0]) || f[2][0] == '-'))
                return -EINVAL;
        errno = 0;
        size = strtoull(f[1], &end, 10);
        if (errno != 0 || *end != '\0')
                return -EINVAL;
        mtime = strtoll(f[2], &end, 10);
        if (errno != 0 || *end != '\0')
                return -EINVAL;
        *ret_etag = NULL;
        if (strncmp(f[3], "etag:", 5) == 0) {
                if (isempty(f[3] + 5) || strlen(f[3] + 5) >= 128)
                        return -EINVAL;
                memset(sha256, 0, sizeof(sha256));
                *ret_etag = f[3] + 5;
        } else if (hex_decode(f[3], sha256, SHA256_SIZE) < 0)
                return -EINVAL;

        memcpy(ret_sha256, sha256, SHA256_SIZE);
        *ret_object = f[0];
        *ret_size = size;
        *ret_mtime = mtime;
        return 0;
}

static char *manifest_path(const char *dir, const char *suffix) {
        char *p;

        if (asprintf(&p, "%s/%s%s", dir, UPLOAD_MANIFEST_FILE, suffix) < 0)
                return NULL;
        return p;
}

/* Read @dir's manifest (its last 8 MiB, if longer); no file is an empty manifest. */
static int manifest_load(const char *dir, Manifest *ret) {
        _cleanup_free_ char *path = NULL, *buf = NULL;
        _cleanup_close_ int fd = -EBADF;
        size_t len = 0, allocated = 0;
        Manifest m = {};
        struct stat st;
        char *p, *nl;
        int r;

        path = manifest_path(dir, "");
        if (!path)
                return -ENOMEM;
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK);
        if (fd < 0 && errno == ENOENT) {
                *ret = m;
                return 0;
        }
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EBADF;
        if (st.st_size > (off_t) MANIFEST_READ_MAX &&
            lseek(fd, st.st_size - (off_t) MANIFEST_READ_MAX, SEEK_SET) < 0)
                return -errno;

        buf = malloc(MANIFEST_READ_MAX + 1);
        if (!buf)
                return -ENOMEM;
        while (len < MANIFEST_READ_MAX) {
                ssize_t k = read(fd, buf + len, MANIFEST_READ_MAX - len);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        break;
                len += (size_t) k;
        }
        buf[len] = '\0';

        p = buf;
        /* After a seek we may be mid-line: start at the first whole one. */
        if (st.st_size > (off_t) MANIFEST_READ_MAX && (nl = memchr(p, '\n', len)))
                p = nl + 1;
        /* Only whole lines count: a torn last line is ignored. */
        for (; (nl = memchr(p, '\n', len - (size_t) (p - buf))); p = nl + 1) {
                uint8_t sha256[SHA256_SIZE];
                uint64_t size;
                int64_t mtime;
                char *object, *etag;

                *nl = '\0';
                if (*p == '#' || (size_t) (nl - p) > MANIFEST_LINE_MAX || memchr(p, '\0', (size_t) (nl - p)))
                        continue;
                if (manifest_parse_line(p, &object, &size, &mtime, sha256, &etag) < 0)
                        continue;
                r = manifest_append(&m, &allocated, object, size, mtime, sha256, etag);
                if (r < 0) {
                        manifest_clear(&m);
                        return r;
                }
        }
        manifest_normalize(&m);
        *ret = m;
        return 0;
}

static const ManifestEntry *manifest_find(const Manifest *m, const char *object) {
        ManifestEntry key = { .object = (char *) object };
        size_t lo = 0, hi = m->n;

        /* entry_compare_object() orders by seq among equal objects; there are none after normalizing. */
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                int c = strcmp(key.object, m->entries[mid].object);

                if (c == 0)
                        return &m->entries[mid];
                if (c < 0)
                        hi = mid;
                else
                        lo = mid + 1;
        }
        return NULL;
}

/* Write @m to @dir/uploads atomically: a temporary file, fsync, rename, fsync of @dir. */
static int manifest_write(const char *dir, const Manifest *m) {
        _cleanup_free_ char *path = NULL, *tmp = NULL;
        _cleanup_free_ ManifestEntry *order = NULL;
        _cleanup_close_ int dfd = -EBADF;
        FILE *f;
        int fd, r = 0;

        path = manifest_path(dir, "");
        tmp = manifest_path(dir, ".tmp");
        if (!path || !tmp)
                return -ENOMEM;
        if (m->n > 0) {
                order = calloc(m->n, sizeof(ManifestEntry));
                if (!order)
                        return -ENOMEM;
                memcpy(order, m->entries, m->n * sizeof(ManifestEntry));
                qsort(order, m->n, sizeof(ManifestEntry), entry_compare_seq);
        }

        r = mkdir_parents(dir, 0700);
        if (r < 0)
                return r;
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
        if (fd < 0)
                return -errno;
        f = fdopen(fd, "w");
        if (!f) {
                r = -errno;
                (void) close(fd);
                goto fail;
        }
        (void) fputs(MANIFEST_HEADER, f);
        for (size_t i = 0; i < m->n; i++) {
                const ManifestEntry *e = &order[i];

                (void) fprintf(f, "%s %" PRIu64 " %" PRId64 " ", e->object, e->size, e->mtime_nsec);
                if (e->etag)
                        (void) fprintf(f, "etag:%s", e->etag);
                else
                        for (size_t k = 0; k < SHA256_SIZE; k++)
                                (void) fprintf(f, "%02x", e->sha256[k]);
                (void) fputc('\n', f);
        }
        if (fflush(f) != 0 || ferror(f))
                r = errno > 0 ? -errno : -EIO;
        else if (fsync(fileno(f)) < 0)
                r = -errno;
        if (fclose(f) != 0 && r == 0)
                r = errno > 0 ? -errno : -EIO;
        if (r < 0)
                goto fail;

        if (rename(tmp, path) < 0) {
                r = -errno;
                goto fail;
        }
        dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return -errno;
        if (fsync(dfd) < 0)
                return -errno;
        return 0;

fail:
        (void) unlink(tmp);
        return r;
}

/* Merge what this stage sent into the manifest on disk. */
static int manifest_flush(UploadStage *s) {
        Manifest disk = {};
        size_t allocated;
        int r;

        if (!s->state_dir || s->n_pending == 0)
                return 0;

        r = manifest_load(s->state_dir, &disk);
        if (r == -ENOMEM)
                return r;
        /* Otherwise unreadable: start it afresh rather than never record anything again. */

        allocated = disk.n;
        for (size_t i = 0; i < s->n_pending; i++) {
                const Pending *p = &s->pending[i];

                r = manifest_append(&disk, &allocated, p->object, p->size, p->mtime_nsec, p->sha256, p->etag);
                if (r < 0)
                        goto finish;
        }
        manifest_normalize(&disk);
        r = manifest_write(s->state_dir, &disk);
        if (r < 0)
                goto finish;

        for (size_t i = 0; i < s->n_pending; i++) {
                free(s->pending[i].object);
                free(s->pending[i].etag);
        }
        s->n_pending = 0;
        s->manifest_written_usec = now_monotonic_usec();
finish:
        manifest_clear(&disk);
        return r;
}

static void manifest_failed(UploadStage *s, int error, const char *what) {
        char detail[UPLOAD_DETAIL_MAX];

        log_debug_errno(error, "Failed to %s upload manifest in '%s': %m", what, strna(s->state_dir));
        if (s->closing || !s->cb.on_manifest)
                return;
        (void) snprintf(detail, sizeof(detail), "cannot %s the upload manifest %s/%s: %s", what,
                        strna(s->state_dir), UPLOAD_MANIFEST_FILE, strerror(-error));
        s->cb.on_manifest(s, error, detail, s->userdata);
}

/* Remember a sent object; it reaches the disk at the next manifest_flush(). */
static int manifest_record(UploadStage *s, const Transfer *t) {
        Pending *p;

        if (!s->state_dir)
                return 0;
        p = reallocarray(s->pending, s->n_pending + 1, sizeof(Pending));
        if (!p)
                return -ENOMEM;
        s->pending = p;
        p = &s->pending[s->n_pending];
        *p = (Pending) {
                .size = t->size,
                .mtime_nsec = t->mtime_nsec,
        };
        memcpy(p->sha256, t->sha256, SHA256_SIZE);
        p->object = strdup(t->object);
        if (!p->object)
                return -ENOMEM;
        if (t->etag[0]) {
                p->etag = strdup(t->etag);
                if (!p->etag) {
                        free(p->object);
                        return -ENOMEM;
                }
        }
        s->n_pending++;
        return 0;
}

/* ---- listing the source ---------------------------------------------------- */

static void item_done(UploadItem *it) {
        free(it->path);
        free(it->detail);
}

static void job_free_items(UploadJob *j) {
        for (size_t i = 0; i < j->n_items; i++)
                item_done(&j->items[i]);
        j->items = mfree(j->items);
        j->n_items = j->next = 0;
}

static UploadItem *item_new(UploadJob *j, size_t *allocated) {
        UploadItem *it;

        if (j->n_items == *allocated) {
                size_t na = *allocated == 0 ? 16 : *allocated * 2;

                it = reallocarray(j->items, na, sizeof(UploadItem));
                if (!it)
                        return NULL;
                j->items = it;
                *allocated = na;
        }
        it = &j->items[j->n_items++];
        *it = (UploadItem) {};
        return it;
}

static int add_file(UploadJob *j, size_t *allocated, char *path, const struct stat *st) {
        UploadItem *it;

        it = item_new(j, allocated);
        if (!it) {
                free(path);
                return -ENOMEM;
        }
        it->path = path;
        it->name = strrchr(path, '/') + 1;
        it->size = (uint64_t) st->st_size;
        it->mtime_nsec = timespec_nsec(&st->st_mtim);
        return 0;
}

/* An error about @path (a file, or the source as a whole when it is source=): reported as failed. */
_printf_(5, 6) static int add_error(UploadJob *j, size_t *allocated, const char *path, int error,
                                     const char *fmt, ...) {
        UploadItem *it;
        va_list ap;
        int k;

        it = item_new(j, allocated);
        if (!it)
                return -ENOMEM;
        it->error = error;
        it->path = strdup(path);
        if (!it->path) {
                j->n_items--;
                return -ENOMEM;
        }
        va_start(ap, fmt);
        k = vasprintf(&it->detail, fmt, ap);
        va_end(ap);
        if (k < 0)
                it->detail = NULL;
        return 0;
}

/* A regular file, following symlinks (a link to a checkpoint is sent as the checkpoint). */
static int consider(UploadJob *j, size_t *allocated, int dir_fd, const char *name, char *path) {
        struct stat st;

        if (fstatat(dir_fd, name, &st, 0) < 0) {
                int r = -errno;

                /* Gone since it was listed, or a dangling symlink: not a file to send. */
                if (r == -ENOENT) {
                        free(path);
                        return 0;
                }
                r = add_error(j, allocated, path, r, "cannot stat source file: %s", strerror(-r));
                free(path);
                return r;
        }
        if (!S_ISREG(st.st_mode)) {
                free(path);
                return 0;
        }
        return add_file(j, allocated, path, &st);
}

static int list_glob(UploadJob *j, size_t *allocated) {
        glob_t g = {};
        int r = 0, k;

        /* No GLOB_ERR: like a shell, an unreadable directory on the way just matches nothing. */
        k = glob(j->source, GLOB_NOSORT, NULL, &g);
        if (k == GLOB_NOSPACE) {
                globfree(&g);
                return -ENOMEM;
        }
        if (k == GLOB_NOMATCH) {
                _cleanup_free_ char *dir = strndup(j->source, strcspn(j->source, "*?["));
                struct stat st;
                char *slash;

                globfree(&g);
                if (!dir)
                        return -ENOMEM;
                /*
                 * No match is not an error (no checkpoint yet), but a
                 * directory that is not there or cannot be read is.
                 */
                slash = strrchr(dir, '/');
                assert(slash);
                slash[slash == dir ? 1 : 0] = '\0';
                if (stat(dir, &st) < 0)
                        return add_error(j, allocated, j->source, -errno, "cannot read directory '%s': %s",
                                         dir, strerror(errno));
                if (!S_ISDIR(st.st_mode))
                        return add_error(j, allocated, j->source, -ENOTDIR, "'%s' is not a directory", dir);
                if (access(dir, R_OK | X_OK) < 0)
                        return add_error(j, allocated, j->source, -errno, "cannot read directory '%s': %s",
                                         dir, strerror(errno));
                return 0;
        }
        if (k != 0) {
                globfree(&g);
                return add_error(j, allocated, j->source, -EIO, "cannot expand the source pattern");
        }

        for (size_t i = 0; i < g.gl_pathc && r >= 0; i++) {
                char *path = strdup(g.gl_pathv[i]);

                if (!path)
                        r = -ENOMEM;
                else
                        r = consider(j, allocated, AT_FDCWD, g.gl_pathv[i], path);
        }
        globfree(&g);
        return r;
}

/* A directory's regular files (not hidden ones, as a shell's '*'), not recursive. */
static int list_dir(UploadJob *j, size_t *allocated) {
        _cleanup_free_ char *dir = strdup(j->source);
        struct dirent *de;
        size_t n;
        DIR *d;
        int r = 0;

        if (!dir)
                return -ENOMEM;
        for (n = strlen(dir); n > 1 && dir[n - 1] == '/'; n--)
                dir[n - 1] = '\0';

        d = opendir(dir);
        if (!d)
                return add_error(j, allocated, j->source, -errno, "cannot read directory '%s': %s", dir,
                                 strerror(errno));
        while (r >= 0) {
                char *path;

                errno = 0;
                de = readdir(d);
                if (!de) {
                        if (errno != 0)
                                r = add_error(j, allocated, j->source, -errno,
                                              "cannot read directory '%s': %s", dir, strerror(errno));
                        break;
                }
                if (de->d_name[0] == '.')
                        continue;
                if (asprintf(&path, "%s%s%s", dir, streq(dir, "/") ? "" : "/", de->d_name) < 0) {
                        r = -ENOMEM;
                        break;
                }
                if (strlen(path) >= PATH_MAX) {
                        r = add_error(j, allocated, path, -ENAMETOOLONG, "source path is too long");
                        free(path);
                        continue;
                }
                r = consider(j, allocated, dirfd(d), de->d_name, path);
        }
        (void) closedir(d);
        return r;
}

static int item_compare(const void *a, const void *b) {
        const UploadItem *x = a, *y = b;

        /* Errors last (they are reported, whatever newest= says), then newest first, then by path. */
        if ((x->error < 0) != (y->error < 0))
                return x->error < 0 ? 1 : -1;
        if (x->mtime_nsec != y->mtime_nsec)
                return x->mtime_nsec > y->mtime_nsec ? -1 : 1;
        return strcmp(x->path, y->path);
}

static int item_compare_name(const void *a, const void *b) {
        const UploadItem *const *x = a, *const *y = b;
        int c = strcmp((*x)->name, (*y)->name);

        /* Among equal names, the one earlier in the list (the newer) first. */
        return c != 0 ? c : *x < *y ? -1 : 1;
}

/* Mark all but the newest of the files that share a name: they would overwrite each other. */
static int mark_duplicate_names(UploadJob *j, size_t n_files) {
        _cleanup_free_ UploadItem **v = NULL;

        if (n_files < 2)
                return 0;
        v = calloc(n_files, sizeof(UploadItem *));
        if (!v)
                return -ENOMEM;
        for (size_t i = 0; i < n_files; i++)
                v[i] = &j->items[i];
        qsort(v, n_files, sizeof(UploadItem *), item_compare_name);
        for (size_t i = 1, head = 0; i < n_files; i++) {
                if (!streq(v[i]->name, v[head]->name)) {
                        head = i;
                        continue;
                }
                v[i]->error = -EEXIST;
                if (asprintf(&v[i]->detail,
                             "a newer file of the same name, '%s', is sent to the same object",
                             v[head]->path) < 0)
                        v[i]->detail = NULL;
        }
        return 0;
}

/* List the source, newest first, keep newest= of them and at most UPLOAD_FILES_MAX. */
static int job_list(UploadJob *j) {
        size_t allocated = 0, n_files = 0;
        struct stat st;
        int r;

        j->listed = true;
        if (strpbrk(j->source, "*?["))
                r = list_glob(j, &allocated);
        else if (stat(j->source, &st) < 0)
                r = add_error(j, &allocated, j->source, -errno, "cannot read source: %s", strerror(errno));
        else if (S_ISDIR(st.st_mode))
                r = list_dir(j, &allocated);
        else if (S_ISREG(st.st_mode)) {
                char *path = strdup(j->source);

                r = path ? add_file(j, &allocated, path, &st) : -ENOMEM;
        } else
                r = add_error(j, &allocated, j->source, -EINVAL,
                              "source is not a regular file or directory");
        if (r < 0)
                return r;

        if (j->n_items > 1)
                qsort(j->items, j->n_items, sizeof(UploadItem), item_compare);
        while (n_files < j->n_items && j->items[n_files].error == 0)
                n_files++;

        if (j->newest > 0 && n_files > j->newest) {
                /* Not selected: not reported either. */
                size_t drop = n_files - j->newest;

                for (size_t i = j->newest; i < n_files; i++)
                        item_done(&j->items[i]);
                memmove(j->items + j->newest, j->items + n_files,
                        (j->n_items - n_files) * sizeof(UploadItem));
                j->n_items -= drop;
                n_files = j->newest;
        }
        if (n_files > UPLOAD_FILES_MAX) {
                /* Selected but over the cap: reported, so the record says what was not sent. */
                for (size_t i = UPLOAD_FILES_MAX; i < n_files; i++)
                        j->items[i].error = -E2BIG;
                n_files = UPLOAD_FILES_MAX;
        }
        return mark_duplicate_names(j, n_files);
}

/* ---- settling objects -------------------------------------------------------- */

static const char *default_detail(UploadStage *s, int error) {
        if (error == -E2BIG) {
                (void) snprintf(s->detail, sizeof(s->detail),
                                "not sent: more than %u files match, only the newest %u are sent",
                                (unsigned) UPLOAD_FILES_MAX, (unsigned) UPLOAD_FILES_MAX);
                return s->detail;
        }
        if (error == -ETIME)
                return "deadline reached";
        return strerror(-error);
}

/* Count and report one object. The callback may close the stage. */
static void settle(UploadStage *s, const UploadJob *j, const char *source, const char *object,
                   uint64_t bytes, uint64_t duration_usec, bool skipped, int error, const char *detail) {
        if (error < 0)
                s->n_failed++;
        else if (skipped)
                s->n_skipped++;
        else {
                s->n_ok++;
                s->bytes += bytes;
        }
        log_debug("Upload '%s': %s -> %s: %s%s%s", j->name, source, object,
                  error < 0 ? "failed" : skipped ? "skipped" : "sent", error < 0 ? ": " : "",
                  error < 0 ? detail : "");
        if (s->cb.on_object)
                s->cb.on_object(s, j->name, source, object, bytes, duration_usec, skipped, error, detail,
                                s->userdata);
        s->stats = NULL;
}

/* Report @it as failed without trying it. */
static void settle_untried(UploadStage *s, const UploadJob *j, const UploadItem *it, int error,
                           const char *detail) {
        _cleanup_free_ char *object = NULL;

        if (it->name)
                object = url_join(j->dest_url, it->name, "");
        settle(s, j, it->path, object ? object : j->dest_url, it->size, 0, false, error,
               detail ? detail : default_detail(s, error));
}

/* ---- the transfer: source side ---------------------------------------------- */

static void transfer_release(UploadStage *s, Transfer *t) {
        t->store = store_upload_free(t->store);
        t->check = store_check_free(t->check);
        t->key = mfree(t->key);
        if (t->tmp_name[0] && t->dir_fd >= 0 && unlinkat(t->dir_fd, t->tmp_name, 0) < 0 && errno != ENOENT)
                log_debug_errno(errno, "Failed to remove '%s/%s': %m", t->job->dest_path, t->tmp_name);
        t->tmp_name[0] = '\0';
        t->src_fd = safe_close(t->src_fd);
        t->tmp_fd = safe_close(t->tmp_fd);
        t->dir_fd = safe_close(t->dir_fd);
        t->phase = PHASE_NONE;
}

/*
 * The object is settled: remove what is left of it and report. @bytes is
 * the source's size. Safe against the callback closing the stage.
 */
static void transfer_end(UploadStage *s, bool skipped, int error, const char *detail) {
        Transfer *t = &s->xfer;
        _cleanup_free_ char *object = TAKE_PTR(t->object);
        const UploadJob *j = t->job;
        const UploadItem *it = t->item;
        uint64_t duration = now_monotonic_usec() - t->start_usec, bytes = t->size;
        UploadObjectStats stats = t->stats;

        assert(t->phase != PHASE_NONE);
        if (!skipped && error == 0 && stats.parts == 0)
                stats.parts = 1; /* a file:// copy */
        transfer_release(s, t);

        if (error == 0 && !skipped && s->n_pending > 0 &&
            now_monotonic_usec() - s->manifest_written_usec >= MANIFEST_FLUSH_USEC) {
                int r = manifest_flush(s);

                if (r < 0)
                        manifest_failed(s, r, "write");
                if (s->closing)
                        return;
        }
        s->stats = &stats;
        settle(s, j, it->path, object, bytes, duration, skipped, error, detail);
}

_printf_(3, 4) static void transfer_fail(UploadStage *s, int error, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        (void) vsnprintf(s->detail, sizeof(s->detail), fmt, ap);
        va_end(ap);
        transfer_end(s, false, error, s->detail);
}

/* Open the source and start hashing it; -EBADF when it is no regular file any more. */
static int source_open(UploadStage *s, Transfer *t) {
        struct stat st;
        int r;

        t->src_fd = safe_close(t->src_fd);
        /* O_NONBLOCK: should it have become a FIFO since it was listed, open() must not hang. */
        t->src_fd = open(t->item->path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (t->src_fd < 0)
                return -errno;
        if (fstat(t->src_fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EBADF;
        (void) posix_fadvise(t->src_fd, 0, 0, POSIX_FADV_SEQUENTIAL);

        t->size = (uint64_t) st.st_size;
        t->mtime_nsec = timespec_nsec(&st.st_mtim);
        t->dev = st.st_dev;
        t->ino = st.st_ino;
        t->done = 0;
        r = sha256_init(s);
        if (r < 0)
                return r;
        return 0;
}

/*
 * Read and hash the next bytes of the source: > 0 bytes, 0 at the end,
 * -EBUSY when it grew past the size it had when it was opened.
 */
static ssize_t source_read(UploadStage *s, Transfer *t, size_t n) {
        ssize_t k;
        int r;

        do
                k = read(t->src_fd, s->buf, n);
        while (k < 0 && errno == EINTR);
        if (k < 0)
                return -errno;
        if ((uint64_t) k > t->size - t->done)
                return -EBUSY;
        r = sha256_update(s, s->buf, (size_t) k);
        if (r < 0)
                return r;
        t->done += (uint64_t) k;
        return k;
}

/* At the end of the source: -EBUSY if it is not what it was when opened (a trainer still writing). */
static int source_check(Transfer *t) {
        struct stat st;

        if (fstat(t->src_fd, &st) < 0)
                return -errno;
        if (t->done != t->size || (uint64_t) st.st_size != t->size ||
            timespec_nsec(&st.st_mtim) != t->mtime_nsec)
                return -EBUSY;
        return 0;
}

/* ---- the transfer: file:// ---------------------------------------------------- */

/* The manifest says the object was sent: is it still at the destination, at its size? */
static bool file_present(const UploadJob *j, const UploadItem *it, uint64_t size) {
        _cleanup_free_ char *path = NULL;
        struct stat st;

        if (asprintf(&path, "%s/%s", j->dest_path, it->name) < 0 || strlen(path) >= PATH_MAX)
                return false;
        return lstat(path, &st) >= 0 && S_ISREG(st.st_mode) && (uint64_t) st.st_size == size;
}

static void file_begin(UploadStage *s, Transfer *t);
static void remote_begin(UploadStage *s, Transfer *t);

/* Start sending @t to its destination, whatever kind it is. */
static void transfer_send(UploadStage *s, Transfer *t) {
        switch (t->job->scheme) {
        case UPLOAD_FILE:
                file_begin(s, t);
                return;
        case UPLOAD_S3:
        case UPLOAD_GS:
        case UPLOAD_AZ:
                remote_begin(s, t);
                return;
        case _UPLOAD_SCHEME_MAX:
        case _UPLOAD_SCHEME_INVALID:
                break;
        }
        assert(false);
}

/* The source changed while it was read: read it again once, then give up. */
static void file_changed(UploadStage *s, Transfer *t) {
        int r;

        if (t->restarts > 0) {
                transfer_end(s, false, -EBUSY, "source changed while being read");
                return;
        }
        t->restarts++;
        if (ftruncate(t->tmp_fd, 0) < 0) {
                r = -errno;
                transfer_fail(s, r, "cannot truncate '%s/%s': %s", t->job->dest_path, t->tmp_name,
                              strerror(-r));
                return;
        }
        t->wb_off = t->wb_len = 0;
        /* Open it again: a trainer may have replaced it by a rename. */
        r = source_open(s, t);
        if (r < 0)
                transfer_fail(s, r, "cannot open source: %s", strerror(-r));
}

/* Write this turn's range back now; wait for the previous turn's and drop it from the page cache. */
static void file_writeback(Transfer *t, uint64_t off, uint64_t len) {
        /*
         * So the fsync at the end has little left to do (it runs on the
         * loop), dirty pages do not pile up, and the read-back of the
         * verification comes from storage, not from our own cache. Errors
         * are for the fsync to report.
         */
        (void) sync_file_range(t->tmp_fd, (off_t) off, (off_t) len, SYNC_FILE_RANGE_WRITE);
        if (t->wb_len > 0) {
                (void) sync_file_range(t->tmp_fd, (off_t) t->wb_off, (off_t) t->wb_len,
                                       SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                                               SYNC_FILE_RANGE_WAIT_AFTER);
                (void) posix_fadvise(t->tmp_fd, (off_t) t->wb_off, (off_t) t->wb_len, POSIX_FADV_DONTNEED);
        }
        t->wb_off = off;
        t->wb_len = len;
}

static void file_copy_finish(UploadStage *s, Transfer *t) {
        int r;

        r = source_check(t);
        if (r == -EBUSY) {
                file_changed(s, t);
                return;
        }
        if (r < 0) {
                transfer_fail(s, r, "cannot stat source: %s", strerror(-r));
                return;
        }
        r = sha256_final(s, t->sha256);
        if (r < 0) {
                transfer_fail(s, r, "SHA-256 computation failed");
                return;
        }
        t->src_fd = safe_close(t->src_fd);

        if (fsync(t->tmp_fd) < 0) {
                r = -errno;
                transfer_fail(s, r, "cannot sync '%s/%s': %s", t->job->dest_path, t->tmp_name, strerror(-r));
                return;
        }
        (void) posix_fadvise(t->tmp_fd, 0, 0, POSIX_FADV_DONTNEED);

        r = sha256_init(s);
        if (r < 0) {
                transfer_fail(s, r, "SHA-256 computation failed");
                return;
        }
        t->done = 0;
        t->phase = PHASE_VERIFY;
}

static void idle_cb(uv_idle_t *idle);

/* Back from a callback: let the idle handle drive the stage again. */
static void stage_wake(UploadStage *s) {
        if (!s->closing && !s->done)
                (void) uv_idle_start(&s->idle, idle_cb);
}

static void throttle_cb(uv_timer_t *timer) {
        UploadStage *s = container_of(timer, UploadStage, throttle);

        stage_wake(s);
}

/* Continuous sync's rate limit: true (and the copy paused) while ahead of it. */
static bool file_throttled(UploadStage *s, Transfer *t) {
        uint64_t elapsed = now_monotonic_usec() - t->start_usec, allowed;

        if (s->ctx.rate_limit == 0)
                return false;
        allowed = (uint64_t) ((double) s->ctx.rate_limit * (double) elapsed / (double) USEC_PER_SEC);
        if (t->done < allowed)
                return false;
        (void) uv_idle_stop(&s->idle);
        (void) uv_timer_start(&s->throttle, throttle_cb,
                              (uint64_t) ((double) (t->done - allowed) * 1000.0 / (double) s->ctx.rate_limit) + 1,
                              0);
        return true;
}

static void file_copy_step(UploadStage *s, Transfer *t) {
        uint64_t start = now_monotonic_usec(), off = t->done, n = 0;
        int r;

        if (file_throttled(s, t))
                return;

        while (turn_more(start, n)) {
                ssize_t k = source_read(s, t, MIN(UPLOAD_BUF_SIZE, UPLOAD_TURN_BYTES - n));

                if (k == -EBUSY) {
                        file_changed(s, t);
                        return;
                }
                if (k < 0) {
                        transfer_fail(s, (int) k, "cannot read source: %s", strerror((int) -k));
                        return;
                }
                if (k == 0) {
                        file_copy_finish(s, t);
                        return;
                }
                r = write_all_at(t->tmp_fd, s->buf, (size_t) k, off + n);
                if (r < 0) {
                        transfer_fail(s, r, "cannot write '%s/%s': %s", t->job->dest_path, t->tmp_name,
                                      strerror(-r));
                        return;
                }
                n += (uint64_t) k;
        }
        file_writeback(t, off, n);
}

/* The copy reads back as the source read: put it in place. */
static void file_commit(UploadStage *s, Transfer *t) {
        const char *dir = t->job->dest_path, *name = t->item->name;
        int r;

        if (renameat(t->dir_fd, t->tmp_name, t->dir_fd, name) < 0) {
                r = -errno;
                transfer_fail(s, r, "cannot rename '%s/%s' to '%s': %s", dir, t->tmp_name, name,
                              strerror(-r));
                return;
        }
        t->tmp_name[0] = '\0';
        if (fsync(t->dir_fd) < 0) {
                /* In place and complete, but maybe not durable: not recorded as sent. */
                r = -errno;
                transfer_fail(s, r, "cannot sync directory '%s': %s", dir, strerror(-r));
                return;
        }

        r = manifest_record(s, t);
        if (r < 0)
                manifest_failed(s, r, "record in");
        if (s->closing)
                return;
        transfer_end(s, false, 0, NULL);
}

static void file_verify_step(UploadStage *s, Transfer *t) {
        uint64_t start = now_monotonic_usec(), n = 0;
        uint8_t sha256[SHA256_SIZE];
        struct stat st;
        int r;

        for (;;) {
                ssize_t k;

                if (!turn_more(start, n))
                        return; /* more next turn */

                do
                        k = pread(t->tmp_fd, s->buf, MIN(UPLOAD_BUF_SIZE, UPLOAD_TURN_BYTES - n),
                                  (off_t) t->done);
                while (k < 0 && errno == EINTR);
                if (k < 0) {
                        r = -errno;
                        transfer_fail(s, r, "cannot read back '%s/%s': %s", t->job->dest_path, t->tmp_name,
                                      strerror(-r));
                        return;
                }
                if (k == 0)
                        break;
                if ((uint64_t) k > t->size - t->done) {
                        transfer_end(s, false, -EIO,
                                     "verification failed: the copy is longer than the source");
                        return;
                }
                r = sha256_update(s, s->buf, (size_t) k);
                if (r < 0) {
                        transfer_fail(s, r, "SHA-256 computation failed");
                        return;
                }
                t->done += (uint64_t) k;
                n += (uint64_t) k;
        }

        r = sha256_final(s, sha256);
        if (r < 0) {
                transfer_fail(s, r, "SHA-256 computation failed");
                return;
        }
        if (fstat(t->tmp_fd, &st) < 0) {
                r = -errno;
                transfer_fail(s, r, "cannot stat '%s/%s': %s", t->job->dest_path, t->tmp_name, strerror(-r));
                return;
        }
        if (t->done != t->size || (uint64_t) st.st_size != t->size ||
            memcmp(sha256, t->sha256, SHA256_SIZE) != 0) {
                transfer_end(s, false, -EIO,
                             "verification failed: the copy read back differs from the source");
                return;
        }
        file_commit(s, t);
}

/* Start the copy: destination directory, source, temporary file. */
/*
 * A daemon that crashed mid-copy left ".NAME.spotwatch-tmp-PID" behind: remove
 * the ones of @prefix whose PID no longer exists (a live PID, even of another
 * program, is left alone). Best effort; errors are ignored.
 */
static void remove_stale_tmp(int dir_fd, const char *prefix, size_t prefix_len) {
        DIR *d;
        struct dirent *de;
        int fd;

        fd = openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return;
        d = fdopendir(fd);
        if (!d) {
                (void) close(fd);
                return;
        }
        while ((de = readdir(d))) {
                char *end;
                long pid;

                if (strncmp(de->d_name, prefix, prefix_len) != 0)
                        continue;
                errno = 0;
                pid = strtol(de->d_name + prefix_len, &end, 10);
                if (errno != 0 || *end != 0 || pid <= 0 || pid == (long) getpid() || pid > INT32_MAX)
                        continue;
                if (kill((pid_t) pid, 0) < 0 && errno == ESRCH)
                        (void) unlinkat(dirfd(d), de->d_name, 0);
        }
        closedir(d);
}

static void file_begin(UploadStage *s, Transfer *t) {
        const char *dir = t->job->dest_path, *name = t->item->name;
        char suffix[64];
        struct stat st;
        size_t keep;
        int r;

        t->phase = PHASE_COPY;
        t->restarts = 0;
        t->wb_off = t->wb_len = 0;

        r = mkdir_parents(dir, 0755);
        if (r < 0) {
                transfer_fail(s, r, "cannot create destination directory '%s': %s", dir, strerror(-r));
                return;
        }
        t->dir_fd = safe_close(t->dir_fd);
        t->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (t->dir_fd < 0) {
                r = -errno;
                transfer_fail(s, r, "cannot open destination directory '%s': %s", dir, strerror(-r));
                return;
        }

        r = source_open(s, t);
        if (r == -EBADF) {
                transfer_end(s, false, r, "source is no longer a regular file");
                return;
        }
        if (r < 0) {
                transfer_fail(s, r, "cannot open source: %s", strerror(-r));
                return;
        }
        if (fstatat(t->dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) >= 0 && st.st_dev == t->dev &&
            st.st_ino == t->ino) {
                transfer_end(s, false, -EINVAL, "source and destination are the same file");
                return;
        }

        /* ".NAME.spotwatch-tmp-PID", with NAME cut so that it fits in NAME_MAX. */
        r = snprintf(suffix, sizeof(suffix), "%s%d", UPLOAD_TMP_SUFFIX, (int) getpid());
        assert(r > 0 && (size_t) r < sizeof(suffix));
        keep = MIN(strlen(name), NAME_MAX - 1 - (size_t) r);
        t->tmp_name[0] = '.';
        memcpy(t->tmp_name + 1, name, keep);
        memcpy(t->tmp_name + 1 + keep, suffix, (size_t) r + 1);
        remove_stale_tmp(t->dir_fd, t->tmp_name, 1 + keep + strlen(UPLOAD_TMP_SUFFIX));

        t->tmp_fd = openat(t->dir_fd, t->tmp_name,
                           O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0644);
        if (t->tmp_fd < 0) {
                r = -errno;
                if (r == -EEXIST)
                        /* Not ours to remove: another stage of this daemon may be writing it. */
                        (void) snprintf(s->detail, sizeof(s->detail),
                                        "temporary file '%s/%s' exists: another upload of it is running, or "
                                        "one that crashed left it",
                                        dir, t->tmp_name);
                else
                        (void) snprintf(s->detail, sizeof(s->detail), "cannot create '%s/%s': %s", dir,
                                        t->tmp_name, strerror(-r));
                t->tmp_name[0] = '\0';
                transfer_end(s, false, r, s->detail);
                return;
        }

        /* Reserve the space now: a full disk fails here, not after gigabytes. */
        if (t->size > 0 && fallocate(t->tmp_fd, FALLOC_FL_KEEP_SIZE, 0, (off_t) t->size) < 0 &&
            (errno == ENOSPC || errno == EDQUOT || errno == EFBIG)) {
                r = -errno;
                transfer_fail(s, r, "cannot write %" PRIu64 " bytes to '%s': %s", t->size, dir,
                              strerror(-r));
                return;
        }
}

/* ---- the transfer: scheme independent ------------------------------------ */

static void confirm_step(UploadStage *s, Transfer *t) {
        uint64_t start = now_monotonic_usec(), n = 0;
        uint8_t sha256[SHA256_SIZE];
        int r;

        for (;;) {
                ssize_t k;

                if (!turn_more(start, n))
                        return; /* more next turn */
                k = source_read(s, t, MIN(UPLOAD_BUF_SIZE, UPLOAD_TURN_BYTES - n));

                if (k == -EBUSY)
                        break;
                if (k < 0) {
                        transfer_fail(s, (int) k, "cannot read source: %s", strerror((int) -k));
                        return;
                }
                if (k == 0) {
                        r = source_check(t);
                        if (r < 0 && r != -EBUSY) {
                                transfer_fail(s, r, "cannot stat source: %s", strerror(-r));
                                return;
                        }
                        if (r == 0) {
                                r = sha256_final(s, sha256);
                                if (r < 0) {
                                        transfer_fail(s, r, "SHA-256 computation failed");
                                        return;
                                }
                                if (memcmp(sha256, t->sha256, SHA256_SIZE) == 0) {
                                        transfer_end(s, true, 0, NULL);
                                        return;
                                }
                        }
                        break;
                }
                n += (uint64_t) k;
        }

        /* Changed, or not what was sent: send it. */
        transfer_send(s, t);
}

/* ---- the transfer: object stores ------------------------------------------------ */

static int job_creds(UploadStage *s, UploadJob *j) {
        if (j->creds)
                return 0;
        if (!s->ctx.http)
                return -EOPNOTSUPP;
        return cred_provider_new(s->loop, s->ctx.http, &j->cfg, s->ctx.cloud, s->ctx.metadata_url,
                                 s->ctx.request_timeout_usec, &j->creds);
}

static StoreParams remote_params(UploadStage *s, Transfer *t) {
        return (StoreParams) {
                .loop = s->loop,
                .http = s->ctx.http,
                .upload = &t->job->cfg,
                .creds = t->job->creds,
                .key = t->key,
                .fd = t->src_fd,
                .size = t->size,
                .until_usec = s->until_usec,
                .rate_limit = s->ctx.rate_limit,
        };
}


static void remote_sent(StoreUpload *u, int error, const char *detail, const StoreResult *res, void *userdata) {
        UploadStage *s = userdata;
        Transfer *t = &s->xfer;
        int r;

        assert(t->store == u);
        t->store = store_upload_free(t->store);
        t->stats.parts = res->parts;
        t->stats.retries += res->retries;
        stage_wake(s);

        /*
         * The store checks the source against what it read before it lets the
         * object become visible (store.h); a change after that only makes the
         * manifest's mtime differ, so the next run sends the file again.
         */
        if (error == -EBUSY && t->restarts == 0) {
                /* The source changed under the upload (the store kept nothing): once more. */
                t->restarts++;
                remote_begin(s, t);
                return;
        }
        if (error < 0) {
                transfer_fail(s, error, "%s", detail ? detail : strerror(-error));
                return;
        }
        (void) snprintf(t->etag, sizeof(t->etag), "%s", res->etag);
        r = manifest_record(s, t);
        if (r < 0)
                manifest_failed(s, r, "record in");
        if (s->closing)
                return;
        transfer_end(s, false, 0, NULL);
}

static void remote_begin(UploadStage *s, Transfer *t) {
        StoreParams p;
        int r;

        t->phase = PHASE_REMOTE;
        t->etag[0] = '\0';
        r = job_creds(s, t->job);
        if (r < 0) {
                transfer_fail(s, r, "cannot set up credentials: %s", strerror(-r));
                return;
        }
        r = source_open(s, t);
        if (r == -EBADF) {
                transfer_end(s, false, r, "source is no longer a regular file");
                return;
        }
        if (r < 0) {
                transfer_fail(s, r, "cannot open source: %s", strerror(-r));
                return;
        }
        p = remote_params(s, t);
        r = store_upload_start(&p, remote_sent, s, &t->store);
        if (r < 0)
                transfer_fail(s, r, "cannot start the upload: %s", strerror(-r));
}

static void remote_checked(StoreCheck *c, int result, const char *detail, void *userdata) {
        UploadStage *s = userdata;
        Transfer *t = &s->xfer;

        t->check = store_check_free(t->check);
        stage_wake(s);
        if (result > 0) {
                transfer_end(s, true, 0, NULL);
                return;
        }
        if (result < 0)
                log_debug("Upload '%s': cannot tell whether %s is already there (%s), sending it", t->job->name,
                          t->object, strna(detail));
        remote_begin(s, t);
}

/* The manifest says this object went out unchanged: is it still in the store, the same? */
static void remote_check(UploadStage *s, Transfer *t, const char *etag) {
        StoreParams p;
        int r;

        t->phase = PHASE_CHECK;
        r = job_creds(s, t->job);
        if (r < 0) {
                transfer_fail(s, r, "cannot set up credentials: %s", strerror(-r));
                return;
        }
        p = remote_params(s, t);
        p.fd = -EBADF;
        r = store_check_start(&p, etag, remote_checked, s, &t->check);
        if (r < 0)
                remote_begin(s, t);
}

static void transfer_step(UploadStage *s) {
        Transfer *t = &s->xfer;

        switch (t->phase) {
        case PHASE_CONFIRM:
                confirm_step(s, t);
                return;
        case PHASE_COPY:
                file_copy_step(s, t);
                return;
        case PHASE_VERIFY:
                file_verify_step(s, t);
                return;
        case PHASE_REMOTE:
        case PHASE_CHECK:
                /* Driven by the store's callbacks: do not spin the loop meanwhile. */
                (void) uv_idle_stop(&s->idle);
                return;
        case PHASE_NONE:
                break;
        }
        assert(false);
}

/* Settle @it without I/O, or start its transfer. */
static void item_begin(UploadStage *s, UploadJob *j, UploadItem *it) {
        Transfer *t = &s->xfer;
        const ManifestEntry *e;
        int r;

        if (it->error < 0) {
                settle_untried(s, j, it, it->error, it->detail);
                return;
        }
        if (deadline_reached(s)) {
                settle_untried(s, j, it, -ETIME, NULL);
                return;
        }

        assert(t->phase == PHASE_NONE);
        *t = (Transfer) {
                .job = j,
                .item = it,
                .start_usec = now_monotonic_usec(),
                .size = it->size,
                .src_fd = -EBADF,
                .dir_fd = -EBADF,
                .tmp_fd = -EBADF,
        };
        t->object = url_join(j->dest_url, it->name, "");
        if (j->scheme != UPLOAD_FILE && asprintf(&t->key, "%s%s", j->cfg.prefix, it->name) < 0)
                t->key = NULL;
        if (!t->object || (j->scheme != UPLOAD_FILE && !t->key)) {
                t->object = mfree(t->object);
                settle_untried(s, j, it, -ENOMEM, NULL);
                return;
        }

        /*
         * Listed with the size and mtime the manifest has, and still at the
         * destination: read it to confirm the checksum before skipping.
         */
        e = manifest_find(&s->manifest, t->object);
        if (e && e->size == it->size && e->mtime_nsec == it->mtime_nsec) {
                bool present = false;

                switch (j->scheme) {
                case UPLOAD_FILE:
                        present = file_present(j, it, e->size);
                        break;
                case UPLOAD_S3:
                case UPLOAD_GS:
                case UPLOAD_AZ:
                        if (e->etag) {
                                remote_check(s, t, e->etag);
                                return;
                        }
                        break;
                case _UPLOAD_SCHEME_MAX:
                case _UPLOAD_SCHEME_INVALID:
                        assert(false);
                }
                if (present) {
                        t->phase = PHASE_CONFIRM;
                        memcpy(t->sha256, e->sha256, SHA256_SIZE);
                        r = source_open(s, t);
                        if (r == -EBADF)
                                transfer_end(s, false, r, "source is no longer a regular file");
                        else if (r < 0)
                                transfer_fail(s, r, "cannot open source: %s", strerror(-r));
                        else if (t->size != e->size || t->mtime_nsec != e->mtime_nsec)
                                /* Changed since it was listed: no skip. */
                                goto send;
                        return;
                }
        }

send:
        transfer_send(s, t);
}

/* ---- the stage --------------------------------------------------------------- */

static void stage_finish(UploadStage *s) {
        int r;

        r = manifest_flush(s);
        if (r < 0)
                manifest_failed(s, r, "write");
        if (s->closing)
                return;

        s->done = true;
        (void) uv_idle_stop(&s->idle);
        if (s->cb.on_done)
                s->cb.on_done(s, s->n_ok, s->n_skipped, s->n_failed, s->bytes, s->userdata);
}

/* Settle or start the next object; list the next [upload] when one is done. */
static void stage_next(UploadStage *s) {
        UploadJob *j;
        int r;

        for (;;) {
                if (s->next_job >= s->n_jobs) {
                        stage_finish(s);
                        return;
                }
                j = &s->jobs[s->next_job];
                if (!j->listed) {
                        r = job_list(j);
                        if (r < 0) {
                                /* Not even the error could be recorded: report the source as a whole. */
                                job_free_items(j);
                                s->next_job++;
                                settle(s, j, j->source, j->dest_url, 0, 0, false, r,
                                       "cannot list the source");
                                return;
                        }
                }
                if (j->next < j->n_items)
                        break;
                job_free_items(j);
                s->next_job++;
        }

        item_begin(s, j, &j->items[j->next++]);
}

static void idle_cb(uv_idle_t *idle) {
        UploadStage *s = container_of(idle, UploadStage, idle);
        unsigned budget = UPLOAD_SETTLE_PER_TURN;

        if (!s->manifest_loaded) {
                int r = 0;

                s->manifest_loaded = true;
                if (s->state_dir)
                        r = manifest_load(s->state_dir, &s->manifest);
                if (r < 0)
                        manifest_failed(s, r, "read");
        }

        while (!s->closing && !s->done) {
                if (s->xfer.phase != PHASE_NONE) {
                        /* Checked before every chunk: the deadline cuts the object in flight. */
                        if (s->xfer.phase == PHASE_REMOTE || s->xfer.phase == PHASE_CHECK) {
                                transfer_step(s); /* the store keeps the deadline itself */
                                return;
                        }
                        if (deadline_reached(s))
                                transfer_end(s, false, -ETIME, "deadline reached");
                        else {
                                transfer_step(s);
                                return;
                        }
                } else if (budget-- == 0)
                        return;
                else
                        stage_next(s);
        }
}

static void upload_config_done(UploadConfig *c) {
        free(c->account);
        free(c->bucket);
        free(c->prefix);
        free(c->endpoint);
        free(c->region);
        free(c->access_key_id);
        free(c->secret_access_key);
        free(c->session_token);
        free(c->account_key);
        free(c->sas_token);
        free(c->name);
        free(c->destination);
}

static void job_done(UploadJob *j) {
        cred_provider_free(j->creds);
        upload_config_done(&j->cfg);
        job_free_items(j);
        free(j->name);
        free(j->source);
        free(j->dest_path);
        free(j->dest_url);
}

static UploadStage *upload_stage_free(UploadStage *s) {
        if (!s)
                return NULL;

        for (size_t i = 0; i < s->n_jobs; i++)
                job_done(&s->jobs[i]);
        free(s->jobs);
        manifest_clear(&s->manifest);
        for (size_t i = 0; i < s->n_pending; i++) {
                free(s->pending[i].object);
                free(s->pending[i].etag);
        }
        free(s->pending);
        free((char *) s->ctx.metadata_url);
        free(s->xfer.key);
        free(s->xfer.object);
        EVP_MD_CTX_free(s->md);
        free(s->buf);
        free(s->state_dir);
        free(s);
        return NULL;
}

static void handle_close_cb(uv_handle_t *handle) {
        UploadStage *s = handle->data;

        if (--s->n_handles == 0)
                upload_stage_free(s);
}

static int strdup_opt(char **to, const char *from) {
        if (!from)
                return 0;
        *to = strdup(from);
        return *to ? 0 : -ENOMEM;
}

/* What a store needs of the [upload], owned by the job (the Config may be reloaded meanwhile). */
static int store_config_copy(UploadConfig *to, const UploadConfig *from) {
        *to = (UploadConfig) {
                .scheme = from->scheme,
                .part_size = from->part_size,
                .concurrency = from->concurrency,
                .checksum = from->checksum,
                .sync = from->sync,
                .sync_rate = from->sync_rate,
                .line = from->line,
        };
        if (strdup_opt(&to->name, from->name) < 0 || strdup_opt(&to->destination, from->destination) < 0 ||
            strdup_opt(&to->account, from->account) < 0 || strdup_opt(&to->bucket, from->bucket) < 0 ||
            strdup_opt(&to->prefix, from->prefix ? from->prefix : "") < 0 ||
            strdup_opt(&to->endpoint, from->endpoint) < 0 || strdup_opt(&to->region, from->region) < 0 ||
            strdup_opt(&to->access_key_id, from->access_key_id) < 0 ||
            strdup_opt(&to->secret_access_key, from->secret_access_key) < 0 ||
            strdup_opt(&to->session_token, from->session_token) < 0 ||
            strdup_opt(&to->account_key, from->account_key) < 0 || strdup_opt(&to->sas_token, from->sas_token) < 0)
                return -ENOMEM;
        return 0;
}

static int job_copy(UploadJob *to, const UploadConfig *from) {
        int r;

        if (!from->name || !from->source || (from->scheme == UPLOAD_FILE && !from->dest_path))
                return -EINVAL;
        to->name = strdup(from->name);
        to->source = strdup(from->source);
        to->dest_path = strdup(from->dest_path ? from->dest_path : "");
        if (!to->name || !to->source || !to->dest_path)
                return -ENOMEM;
        to->scheme = from->scheme;
        to->newest = from->newest;

        switch (from->scheme) {
        case UPLOAD_FILE:
                if (from->dest_path[0] != '/' || strlen(from->dest_path) >= PATH_MAX)
                        return -EINVAL;
                to->dest_url = url_join("file://", from->dest_path, streq(from->dest_path, "/") ? "" : "/");
                if (!to->dest_url)
                        return -ENOMEM;
                return 0;
        case UPLOAD_S3:
        case UPLOAD_GS:
        case UPLOAD_AZ: {
                _cleanup_free_ char *prefix = NULL;

                if (!from->bucket || (from->scheme == UPLOAD_AZ && !from->account))
                        return -EINVAL;
                r = store_config_copy(&to->cfg, from);
                if (r < 0)
                        return r;
                prefix = store_object_url(&to->cfg, to->cfg.prefix);
                if (!prefix)
                        return -ENOMEM;
                to->dest_url = TAKE_PTR(prefix);
                return 0;
        }
        case _UPLOAD_SCHEME_MAX:
        case _UPLOAD_SCHEME_INVALID:
                break;
        }
        return -EINVAL;
}

int upload_stage_new(uv_loop_t *loop, const UploadConfig *uploads, size_t n_uploads, const char *only,
                     const char *state_dir, const UploadContext *ctx, uint64_t until_usec,
                     const UploadStageCallbacks *cb, void *userdata, UploadStage **ret) {
        size_t n = 0;
        UploadStage *s;
        int r;

        assert(loop);
        assert(uploads || n_uploads == 0);
        assert(ret);

        for (size_t i = 0; i < n_uploads; i++)
                if (!only || (uploads[i].name && streq(uploads[i].name, only)))
                        n++;
        if (only && n == 0)
                return -ENOENT;

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->loop = loop;
        s->until_usec = until_usec;
        if (cb)
                s->cb = *cb;
        s->userdata = userdata;
        s->xfer = (Transfer) {
                .src_fd = -EBADF,
                .dir_fd = -EBADF,
                .tmp_fd = -EBADF,
        };

        if (ctx) {
                s->ctx = *ctx;
                s->ctx.metadata_url = NULL;
                if (ctx->metadata_url) {
                        s->ctx.metadata_url = strdup(ctx->metadata_url);
                        if (!s->ctx.metadata_url) {
                                r = -ENOMEM;
                                goto fail;
                        }
                }
        }
        if (state_dir) {
                s->state_dir = strdup(state_dir);
                if (!s->state_dir) {
                        r = -ENOMEM;
                        goto fail;
                }
        }
        s->md = EVP_MD_CTX_new();
        s->buf = malloc(UPLOAD_BUF_SIZE);
        if (!s->md || !s->buf) {
                r = -ENOMEM;
                goto fail;
        }

        if (n > 0) {
                s->jobs = calloc(n, sizeof(UploadJob));
                if (!s->jobs) {
                        r = -ENOMEM;
                        goto fail;
                }
                for (size_t i = 0; i < n_uploads; i++) {
                        if (only && !(uploads[i].name && streq(uploads[i].name, only)))
                                continue;
                        r = job_copy(&s->jobs[s->n_jobs++], &uploads[i]);
                        if (r < 0)
                                goto fail;
                }
        }

        /* The last step: from here on the stage holds a handle and is freed only by its close callback. */
        r = uv_idle_init(loop, &s->idle);
        if (r < 0)
                goto fail;
        s->idle.data = s;
        (void) uv_timer_init(loop, &s->throttle);
        s->throttle.data = s;
        s->n_handles = 2;

        *ret = s;
        return 0;

fail:
        upload_stage_free(s);
        return r;
}

int upload_stage_start(UploadStage *s) {
        assert(s);

        if (s->started || s->closing)
                return -EBUSY;
        s->started = true;
        return uv_idle_start(&s->idle, idle_cb);
}

void upload_stage_close(UploadStage *s) {
        int r;

        if (!s)
                return;
        assert(!s->closing);

        s->closing = true;
        if (s->xfer.phase != PHASE_NONE) {
                s->xfer.object = mfree(s->xfer.object);
                transfer_release(s, &s->xfer);
        }
        /* What was sent stays recorded. No callbacks any more: only a debug message if that fails. */
        r = manifest_flush(s);
        if (r < 0)
                manifest_failed(s, r, "write");
        uv_close((uv_handle_t *) &s->idle, handle_close_cb);
        uv_close((uv_handle_t *) &s->throttle, handle_close_cb);
}

const UploadObjectStats *upload_stage_object_stats(UploadStage *s) {
        return s ? s->stats : NULL;
}

const char *upload_stage_progress(UploadStage *s, uint64_t *ret_done, uint64_t *ret_size) {
        const Transfer *t = &s->xfer;

        if (t->phase == PHASE_NONE || !t->object)
                return NULL;
        *ret_size = t->size;
        if (t->phase == PHASE_REMOTE)
                *ret_done = store_upload_progress(t->store);
        else if (t->phase == PHASE_COPY)
                *ret_done = t->done;
        else
                *ret_done = 0;
        return t->object;
}
