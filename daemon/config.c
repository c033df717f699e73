/* SPDX-License-Identifier: MIT */
/*
 * config.c - the ini file into a Config: defaults first, then inih, then one
 * pass of cross-field checks. Every key is a row of config_items[]
 * {section, key, parser, offset}; the typed value parsers live in
 * shared/parse.c. This module owns the file's text only while it loads; it
 * never logs, never touches the daemon's state, and reports the first error
 * as "FILE:LINE: [SECTION] KEY: what is wrong" for its caller to print.
 *
 * Debian 12 ships inih r55, which has pitfalls we work around here rather than
 * expose: the handler returns nonzero on success and gets no line number;
 * lines of 200 bytes or more are split silently into several lines; section
 * names over 49 bytes are cut; a ';' after whitespace starts a comment even
 * inside a value; an indented line continues the previous value. So we parse
 * with ini_parse_stream() and our own reader, which counts lines, rejects long
 * and indented lines, and parses section headers itself.
 */
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <ini.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "config.h"
#include "shared/macro.h"
#include "shared/parse.h"

/* Section names longer than this are cut by inih r55 (MAX_SECTION 50, with the NUL). */
#define INI_SECTION_MAX 49
/* A config file is a few kilobytes; refuse to slurp anything much bigger. */
#define CONFIG_FILE_MAX (1024 * 1024)

#define REASON_MAX 512

typedef enum SectionKind {
        SECTION_NONE,
        SECTION_DAEMON,
        SECTION_PROCESS,
        SECTION_HOOK,
        SECTION_UPLOAD,
        _SECTION_KIND_MAX,
} SectionKind;

static const char *const section_kind_table[_SECTION_KIND_MAX] = {
        [SECTION_NONE] = NULL,
        [SECTION_DAEMON] = "daemon",
        [SECTION_PROCESS] = "process",
        [SECTION_HOOK] = "hook",
        [SECTION_UPLOAD] = "upload",
};

/* What [upload] newest= may be: enough for any checkpoint directory, and the stage's per-[upload] cap. */
#define UPLOAD_NEWEST_MAX 10000

static const char *const upload_scheme_table[_UPLOAD_SCHEME_MAX] = {
        [UPLOAD_FILE] = "file",
        [UPLOAD_S3] = "s3",
        [UPLOAD_GS] = "gs",
        [UPLOAD_AZ] = "az",
};

const char *upload_scheme_to_string(UploadScheme s) {
        if (s < 0 || s >= _UPLOAD_SCHEME_MAX)
                return NULL;
        return upload_scheme_table[s];
}

typedef struct ConfigItem ConfigItem;

/*
 * A value parser: stores @value into @field or returns -errno and writes what
 * is wrong (with the value quoted) into @reason.
 */
typedef int (*ConfigParser)(const ConfigItem *item, const char *value, void *field, char *reason,
                            size_t size);

struct ConfigItem {
        SectionKind section;
        const char *key;
        ConfigParser parse;
        size_t offset;      /* into Config, ProcessConfig, HookConfig or UploadConfig, after @section */
        uint64_t min, max;  /* durations: allowed range in usec */
        bool whole_seconds; /* durations: reject fractions of a second */
};

/* ---- value parsers ------------------------------------------------------ */

static int set_cloud(const ConfigItem *item, const char *value, void *field, char *reason, size_t size) {
        CloudKind k;

        k = cloud_kind_from_string(value);
        if (k < 0) {
                (void) snprintf(reason, size,
                                "unknown cloud '%s' (expected auto, aws, gcp, azure or alibaba)", value);
                return -EINVAL;
        }
        *(CloudKind *) field = k;
        return 0;
}

static int set_log(const ConfigItem *item, const char *value, void *field, char *reason, size_t size) {
        LogTarget t;

        t = log_target_from_string(value);
        if (t < 0) {
                (void) snprintf(reason, size, "unknown log target '%s' (expected auto, journal or stderr)",
                                value);
                return -EINVAL;
        }
        *(LogTarget *) field = t;
        return 0;
}

static int set_duration(const ConfigItem *item, const char *value, void *field, char *reason, size_t size) {
        char a[32], b[32];
        uint64_t usec;
        int r;

        r = parse_duration(value, &usec);
        if (r == -EINVAL) {
                (void) snprintf(reason, size, "invalid duration '%s' (write e.g. 500ms, 2s, 5m)", value);
                return r;
        }
        if (r < 0 || usec < item->min || usec > item->max) {
                (void) snprintf(reason, size, "duration '%s' is out of range, must be between %s and %s",
                                value, format_duration(a, sizeof(a), item->min),
                                format_duration(b, sizeof(b), item->max));
                return -ERANGE;
        }
        if (item->whole_seconds && usec % USEC_PER_SEC != 0) {
                (void) snprintf(reason, size, "duration '%s' is not a whole number of seconds", value);
                return -EINVAL;
        }
        *(uint64_t *) field = usec;
        return 0;
}

static int set_bool(const ConfigItem *item, const char *value, void *field, char *reason, size_t size) {
        bool b;

        if (parse_bool(value, &b) < 0) {
                (void) snprintf(reason, size, "invalid boolean '%s' (expected yes or no)", value);
                return -EINVAL;
        }
        *(bool *) field = b;
        return 0;
}

static int replace_string(char **field, const char *value) {
        char *copy;

        copy = strdup(value);
        if (!copy)
                return -ENOMEM;
        free(*field);
        *field = copy;
        return 0;
}

static int set_string(const ConfigItem *item, const char *value, void *field, char *reason, size_t size) {
        if (isempty(value)) {
                (void) snprintf(reason, size, "empty value");
                return -EINVAL;
        }
        return replace_string(field, value);
}

static int check_absolute_path(const char *value, char *reason, size_t size) {
        if (isempty(value)) {
                (void) snprintf(reason, size, "empty value, an absolute path is needed");
                return -EINVAL;
        }
        if (value[0] != '/') {
                (void) snprintf(reason, size, "path '%s' is not absolute", value);
                return -EINVAL;
        }
        return 0;
}

static int set_path(const ConfigItem *item, const char *value, void *field, char *reason, size_t size) {
        int r;

        r = check_absolute_path(value, reason, size);
        if (r < 0)
                return r;
        return replace_string(field, value);
}

static int set_socket_path(const ConfigItem *item, const char *value, void *field, char *reason,
                           size_t size) {
        size_t max = sizeof(((struct sockaddr_un *) NULL)->sun_path) - 1;
        int r;

        r = check_absolute_path(value, reason, size);
        if (r < 0)
                return r;
        if (strlen(value) > max) {
                (void) snprintf(reason, size,
                                "path '%s' is too long for a unix socket (%zu bytes, at most %zu)", value,
                                strlen(value), max);
                return -EINVAL;
        }
        return replace_string(field, value);
}

static int set_url(const ConfigItem *item, const char *value, void *field, char *reason, size_t size) {
        char **url = field;
        const char *host;
        size_t len;
        char *copy;

        /* Empty means "the cloud's own address". */
        if (isempty(value)) {
                free(*url);
                *url = NULL;
                return 0;
        }

        if (strncmp(value, "http://", 7) == 0)
                host = value + 7;
        else if (strncmp(value, "https://", 8) == 0)
                host = value + 8;
        else {
                (void) snprintf(reason, size, "invalid URL '%s', must start with http:// or https://",
                                value);
                return -EINVAL;
        }
        if (*host == '\0' || *host == '/') {
                (void) snprintf(reason, size, "invalid URL '%s', no host", value);
                return -EINVAL;
        }
        for (const char *p = value; *p; p++)
                if (isspace((unsigned char) *p) || iscntrl((unsigned char) *p)) {
                        (void) snprintf(reason, size, "invalid URL '%s', contains whitespace", value);
                        return -EINVAL;
                }

        /* Providers append absolute paths, so keep the base free of a trailing '/'. */
        len = strlen(value);
        while (len > (size_t) (host - value) + 1 && value[len - 1] == '/')
                len--;
        copy = strndup(value, len);
        if (!copy)
                return -ENOMEM;
        free(*url);
        *url = copy;
        return 0;
}

static void event_kinds_list(char *buf, size_t size) {
        size_t n = 0;

        buf[0] = '\0';
        for (EventKind k = 0; k < _EVENT_MAX; k++) {
                int w = snprintf(buf + n, size - n, "%s%s", k == 0 ? "" : " ", event_kind_to_string(k));

                if (w < 0 || (size_t) w >= size - n)
                        return;
                n += (size_t) w;
        }
}

static int set_events(const ConfigItem *item, const char *value, void *field, char *reason, size_t size) {
        _cleanup_(strv_freep) char **words = NULL;
        unsigned mask = 0;
        char kinds[128];
        int r;

        event_kinds_list(kinds, sizeof(kinds));
        r = split_words(value, &words);
        if (r == -ENOMEM)
                return r;
        if (r < 0) {
                (void) snprintf(reason, size, "invalid list of events '%s'", value);
                return r;
        }
        if (!words[0]) {
                (void) snprintf(reason, size, "empty value, list some of: %s", kinds);
                return -EINVAL;
        }
        for (char **w = words; *w; w++) {
                EventKind k = event_kind_from_string(*w);

                if (k < 0) {
                        (void) snprintf(reason, size, "unknown event '%s' (expected some of: %s)", *w,
                                        kinds);
                        return -EINVAL;
                }
                mask |= EVENT_MASK(k);
        }
        *(unsigned *) field = mask;
        return 0;
}

static int set_signal(const ConfigItem *item, const char *value, void *field, char *reason, size_t size) {
        int sig;

        if (parse_signal(value, &sig) < 0) {
                (void) snprintf(reason, size, "invalid signal '%s' (write e.g. SIGUSR1, USR1 or 10)", value);
                return -EINVAL;
        }
        *(int *) field = sig;
        return 0;
}

static int set_unit(const ConfigItem *item, const char *value, void *field, char *reason, size_t size) {
        (void) snprintf(reason, size, "not supported yet, use pidfile= or match= ('%s')", value);
        return -EOPNOTSUPP;
}

static int set_long(const ConfigItem *item, const char *value, void *field, char *reason, size_t size) {
        long v;
        int r;

        r = parse_int(value, INT_MIN, INT_MAX, &v);
        if (r == -ERANGE) {
                (void) snprintf(reason, size, "integer '%s' is out of range", value);
                return r;
        }
        if (r < 0) {
                (void) snprintf(reason, size, "invalid integer '%s'", value);
                return r;
        }
        *(long *) field = v;
        return 0;
}

static int set_user(const ConfigItem *item, const char *value, void *field, char *reason, size_t size) {
        if (isempty(value)) {
                (void) snprintf(reason, size, "empty value, a user name is needed");
                return -EINVAL;
        }
        errno = 0;
        if (!getpwnam(value)) {
                if (errno == ENOMEM)
                        return -ENOMEM;
                (void) snprintf(reason, size, "unknown user '%s'", value);
                return -ESRCH;
        }
        return replace_string(field, value);
}

static int set_exec(const ConfigItem *item, const char *value, void *field, char *reason, size_t size) {
        _cleanup_(strv_freep) char **argv = NULL;
        char ***ret_argv = field;
        struct stat st;
        int r;

        r = split_words(value, &argv);
        if (r == -ENOMEM)
                return r;
        if (r < 0) {
                (void) snprintf(reason, size, "unterminated quote or trailing backslash in '%s'", value);
                return r;
        }
        if (!argv[0]) {
                (void) snprintf(reason, size, "empty command");
                return -EINVAL;
        }
        if (argv[0][0] != '/') {
                (void) snprintf(reason, size, "'%s' is not an absolute path", argv[0]);
                return -EINVAL;
        }
        if (stat(argv[0], &st) < 0) {
                r = -errno;
                if (r == -ENOENT)
                        (void) snprintf(reason, size, "'%s' does not exist", argv[0]);
                else
                        (void) snprintf(reason, size, "cannot access '%s': %s", argv[0], strerror(-r));
                return r;
        }
        if (!S_ISREG(st.st_mode)) {
                (void) snprintf(reason, size, "'%s' is not a regular file", argv[0]);
                return -EINVAL;
        }
        if (access(argv[0], X_OK) < 0) {
                r = -errno;
                (void) snprintf(reason, size, "'%s' is not executable", argv[0]);
                return r;
        }

        strv_free(*ret_argv);
        *ret_argv = TAKE_PTR(argv);
        return 0;
}

static int set_upload_source(const ConfigItem *item, const char *value, void *field, char *reason,
                             size_t size) {
        int r;

        /* A file, a directory or a glob(3) pattern; whichever, it is resolved when the stage runs. */
        r = check_absolute_path(value, reason, size);
        if (r < 0)
                return r;
        if (strlen(value) >= PATH_MAX) {
                (void) snprintf(reason, size, "path is too long (%zu bytes, at most %d)", strlen(value),
                                PATH_MAX - 1);
                return -ENAMETOOLONG;
        }
        return replace_string(field, value);
}

static int unhex(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -EINVAL;
}

/*
 * The path of a file:// URL: "file:///mnt/backup/" -> "/mnt/backup". An
 * empty host only (file://host/... names another machine), %XX escapes
 * decoded, no query or fragment, trailing '/' dropped (but "/" stays "/").
 */
static int file_url_path(const char *value, char **ret, char *reason, size_t size) {
        _cleanup_free_ char *p = NULL;
        const char *path = value + strlen("file://");
        size_t n = 0;

        if (*path != '/') {
                (void) snprintf(reason, size,
                                "invalid destination '%s', a file:// URL has an empty host and an absolute "
                                "path: write file:///DIR/",
                                value);
                return -EINVAL;
        }
        if (strpbrk(path, "?#")) {
                (void) snprintf(reason, size,
                                "invalid destination '%s', a file:// URL takes no '?' or '#' "
                                "(write them as %%3F and %%23)",
                                value);
                return -EINVAL;
        }

        p = malloc(strlen(path) + 1);
        if (!p)
                return -ENOMEM;
        for (const char *c = path; *c; c++) {
                if (*c == '%') {
                        int hi = unhex(c[1]), lo = hi < 0 ? -EINVAL : unhex(c[2]);

                        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                                (void) snprintf(reason, size,
                                                "invalid destination '%s', bad %%-escape "
                                                "(write %%XX with two hex digits, not %%00)",
                                                value);
                                return -EINVAL;
                        }
                        p[n++] = (char) (hi << 4 | lo);
                        c += 2;
                } else
                        p[n++] = *c;
        }
        while (n > 1 && p[n - 1] == '/')
                n--;
        p[n] = '\0';

        if (n >= PATH_MAX) {
                (void) snprintf(reason, size, "destination path is too long (%zu bytes, at most %d)", n,
                                PATH_MAX - 1);
                return -ENAMETOOLONG;
        }
        *ret = TAKE_PTR(p);
        return 0;
}

/* The characters of an S3 bucket / Azure container name (lower case, digits, '-', '.'). */
static bool bucket_name_ok(const char *b, size_t n) {
        if (n < 3 || n > 63)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!((b[i] >= 'a' && b[i] <= 'z') || (b[i] >= '0' && b[i] <= '9') || b[i] == '-' ||
                      b[i] == '.' || b[i] == '_'))
                        return false;
        return true;
}

/*
 * "s3://bucket/prefix/", "gs://bucket/prefix/", "az://account/container/prefix/":
 * the bucket (and account) and the key prefix ("" or ending in '/'; a prefix
 * written without the trailing '/' gets one, so objects are prefix/NAME).
 */
static int store_url_parse(UploadConfig *u, UploadScheme scheme, const char *value, char *reason, size_t size) {
        const char *p = value + 5, *slash;
        _cleanup_free_ char *account = NULL, *bucket = NULL, *prefix = NULL;
        size_t n;

        if (strpbrk(p, "?#%\\")) {
                (void) snprintf(reason, size,
                                "invalid destination '%s', write the prefix without '?', '#', '%%' or '\\'",
                                value);
                return -EINVAL;
        }
        if (scheme == UPLOAD_AZ) {
                slash = strchr(p, '/');
                n = slash ? (size_t) (slash - p) : strlen(p);
                if (n < 3 || n > 24 || strspn(p, "abcdefghijklmnopqrstuvwxyz0123456789") < n) {
                        (void) snprintf(reason, size,
                                        "invalid destination '%s', must be az://ACCOUNT/CONTAINER/PREFIX/ with a "
                                        "storage account name of 3-24 lower-case letters and digits",
                                        value);
                        return -EINVAL;
                }
                account = strndup(p, n);
                if (!account)
                        return -ENOMEM;
                p = slash ? slash + 1 : p + n;
        }
        slash = strchr(p, '/');
        n = slash ? (size_t) (slash - p) : strlen(p);
        if (!bucket_name_ok(p, n)) {
                (void) snprintf(reason, size,
                                "invalid destination '%s', the %s name must be 3-63 characters of a-z, 0-9, "
                                "'-', '.' (write %s)",
                                value, scheme == UPLOAD_AZ ? "container" : "bucket",
                                scheme == UPLOAD_AZ ? "az://ACCOUNT/CONTAINER/PREFIX/"
                                : scheme == UPLOAD_GS ? "gs://BUCKET/PREFIX/"
                                                      : "s3://BUCKET/PREFIX/");
                return -EINVAL;
        }
        bucket = strndup(p, n);
        if (!bucket)
                return -ENOMEM;
        p = slash ? slash + 1 : p + n;
        while (*p == '/')
                p++;
        n = strlen(p);
        if (strstr(p, "//") || strstr(p, "/../") || strncmp(p, "../", 3) == 0 || streq(p, "..")) {
                (void) snprintf(reason, size, "invalid destination '%s', the prefix has an empty or '..' part",
                                value);
                return -EINVAL;
        }
        if (n > 512) {
                (void) snprintf(reason, size, "invalid destination '%s', the prefix is longer than 512 bytes", value);
                return -EINVAL;
        }
        if (asprintf(&prefix, "%s%s", p, n > 0 && p[n - 1] != '/' ? "/" : "") < 0)
                return -ENOMEM;

        free(u->account);
        free(u->bucket);
        free(u->prefix);
        u->account = TAKE_PTR(account);
        u->bucket = TAKE_PTR(bucket);
        u->prefix = TAKE_PTR(prefix);
        return 0;
}

static int set_upload_destination(const ConfigItem *item, const char *value, void *field, char *reason,
                                  size_t size) {
        static const struct {
                const char *prefix;
                UploadScheme scheme;
        } stores[] = { { "s3://", UPLOAD_S3 }, { "gs://", UPLOAD_GS }, { "az://", UPLOAD_AZ } };
        UploadConfig *u = container_of((char **) field, UploadConfig, destination);
        _cleanup_free_ char *path = NULL;
        int r;

        if (isempty(value)) {
                (void) snprintf(reason, size,
                                "empty value, a destination URL such as s3://BUCKET/PREFIX/ or file:///DIR/ "
                                "is needed");
                return -EINVAL;
        }
        for (const char *p = value; *p; p++)
                if (iscntrl((unsigned char) *p)) {
                        (void) snprintf(reason, size,
                                        "invalid destination '%s', contains a control character", value);
                        return -EINVAL;
                }
        for (size_t i = 0; i < ELEMENTSOF(stores); i++)
                if (strncmp(value, stores[i].prefix, 5) == 0) {
                        r = store_url_parse(u, stores[i].scheme, value, reason, size);
                        if (r < 0)
                                return r;
                        r = replace_string(&u->destination, value);
                        if (r < 0)
                                return r;
                        u->scheme = stores[i].scheme;
                        return 0;
                }
        if (strncmp(value, "file://", 7) != 0) {
                (void) snprintf(reason, size,
                                "invalid destination '%s', must be s3://BUCKET/PREFIX/, gs://BUCKET/PREFIX/, "
                                "az://ACCOUNT/CONTAINER/PREFIX/ or file:///DIR/",
                                value);
                return -EINVAL;
        }

        r = file_url_path(value, &path, reason, size);
        if (r < 0)
                return r;
        r = replace_string(&u->destination, value);
        if (r < 0)
                return r;
        free(u->dest_path);
        u->dest_path = TAKE_PTR(path);
        u->scheme = UPLOAD_FILE;
        return 0;
}

/* "8M", "64MiB", "1G", "5242880": bytes, binary units. */
static int set_upload_size(const ConfigItem *item, const char *value, void *field, char *reason, size_t size) {
        char *end = NULL;
        unsigned long long v;
        uint64_t mult = 1;

        errno = 0;
        v = strtoull(value, &end, 10);
        if (isempty(value) || !isdigit((unsigned char) value[0]) || errno != 0 || end == value)
                goto bad;
        if (streq(end, "") || streq(end, "B"))
                mult = 1;
        else if (streq(end, "K") || streq(end, "KiB"))
                mult = UINT64_C(1) << 10;
        else if (streq(end, "M") || streq(end, "MiB"))
                mult = UINT64_C(1) << 20;
        else if (streq(end, "G") || streq(end, "GiB"))
                mult = UINT64_C(1) << 30;
        else
                goto bad;
        if (v > item->max / mult || v * mult < item->min) {
                (void) snprintf(reason, size, "size '%s' is out of range, must be between %" PRIu64 " MiB and %" PRIu64
                                " MiB", value, item->min >> 20, item->max >> 20);
                return -ERANGE;
        }
        *(uint64_t *) field = v * mult;
        return 0;
bad:
        (void) snprintf(reason, size, "invalid size '%s', write bytes or a number with K, M or G (e.g. 64M)",
                        value);
        return -EINVAL;
}

static int set_upload_concurrency(const ConfigItem *item, const char *value, void *field, char *reason,
                                  size_t size) {
        long v;
        int r;

        r = parse_int(value, 1, UPLOAD_CONCURRENCY_MAX, &v);
        if (r < 0) {
                (void) snprintf(reason, size, "invalid concurrency '%s', must be an integer between 1 and %u", value,
                                UPLOAD_CONCURRENCY_MAX);
                return r;
        }
        *(unsigned *) field = (unsigned) v;
        return 0;
}

static const char *const upload_checksum_table[_UPLOAD_CHECKSUM_MAX] = {
        [UPLOAD_CHECKSUM_MD5] = "md5",
        [UPLOAD_CHECKSUM_CRC32C] = "crc32c",
        [UPLOAD_CHECKSUM_SHA256] = "sha256",
        [UPLOAD_CHECKSUM_NONE] = "none",
};

const char *upload_checksum_to_string(UploadChecksum c) {
        if (c < 0 || c >= _UPLOAD_CHECKSUM_MAX)
                return NULL;
        return upload_checksum_table[c];
}

static int set_upload_checksum(const ConfigItem *item, const char *value, void *field, char *reason,
                               size_t size) {
        for (UploadChecksum c = 0; c < _UPLOAD_CHECKSUM_MAX; c++)
                if (streq(value, upload_checksum_table[c])) {
                        *(UploadChecksum *) field = c;
                        return 0;
                }
        (void) snprintf(reason, size, "invalid checksum '%s', must be one of md5, crc32c, sha256, none", value);
        return -EINVAL;
}

static int set_upload_sync(const ConfigItem *item, const char *value, void *field, char *reason, size_t size) {
        if (streq(value, "notice"))
                *(UploadSync *) field = UPLOAD_SYNC_NOTICE;
        else if (streq(value, "continuous"))
                *(UploadSync *) field = UPLOAD_SYNC_CONTINUOUS;
        else {
                (void) snprintf(reason, size, "invalid sync '%s', must be 'notice' or 'continuous'", value);
                return -EINVAL;
        }
        return 0;
}

/* A secret or key: one line of printable, non-space characters. */
static int set_secret(const ConfigItem *item, const char *value, void *field, char *reason, size_t size) {
        if (isempty(value)) {
                (void) snprintf(reason, size, "empty value");
                return -EINVAL;
        }
        for (const char *p = value; *p; p++)
                if (!isgraph((unsigned char) *p)) {
                        (void) snprintf(reason, size, "contains a space or control character");
                        return -EINVAL;
                }
        return replace_string(field, value);
}

static int set_upload_newest(const ConfigItem *item, const char *value, void *field, char *reason,
                             size_t size) {
        long v;
        int r;

        r = parse_int(value, 1, UPLOAD_NEWEST_MAX, &v);
        if (r == -ERANGE) {
                (void) snprintf(reason, size, "integer '%s' is out of range, must be between 1 and %d",
                                value, UPLOAD_NEWEST_MAX);
                return r;
        }
        if (r < 0) {
                (void) snprintf(reason, size, "invalid integer '%s' (the number of newest files to send)",
                                value);
                return r;
        }
        *(unsigned *) field = (unsigned) v;
        return 0;
}

/* ---- the key table ------------------------------------------------------ */

#define SEC USEC_PER_SEC
#define MSEC USEC_PER_MSEC

static const ConfigItem config_items[] = {
        { SECTION_DAEMON, "cloud", set_cloud, offsetof(Config, cloud) },
        { SECTION_DAEMON, "metadata_url", set_url, offsetof(Config, metadata_url) },
        { SECTION_DAEMON, "poll_interval", set_duration, offsetof(Config, poll_interval_usec), 100 * MSEC,
          3600 * SEC },
        { SECTION_DAEMON, "request_timeout", set_duration, offsetof(Config, request_timeout_usec), 10 * MSEC,
          600 * SEC },
        { SECTION_DAEMON, "events", set_events, offsetof(Config, events_mask) },
        { SECTION_DAEMON, "control_socket", set_socket_path, offsetof(Config, control_socket) },
        { SECTION_DAEMON, "state_dir", set_path, offsetof(Config, state_dir) },
        { SECTION_DAEMON, "log", set_log, offsetof(Config, log) },
        { SECTION_DAEMON, "imds_v1", set_bool, offsetof(Config, imds_v1) },
        /* AWS takes the token TTL in whole seconds, 1..21600. */
        { SECTION_DAEMON, "token_ttl", set_duration, offsetof(Config, token_ttl_usec), 1 * SEC,
          6 * 3600 * SEC, true },
        { SECTION_DAEMON, "deadline_margin", set_duration, offsetof(Config, deadline_margin_usec), 0,
          600 * SEC },
        { SECTION_DAEMON, "default_deadline", set_duration, offsetof(Config, default_deadline_usec), 1 * SEC,
          3600 * SEC },
        { SECTION_DAEMON, "probe_timeout", set_duration, offsetof(Config, probe_timeout_usec), 100 * MSEC,
          10 * SEC },
        { SECTION_DAEMON, "aws_asg", set_bool, offsetof(Config, aws_asg) },
        { SECTION_DAEMON, "gcp_shutdown_script", set_bool, offsetof(Config, gcp_shutdown_script) },
        /* GCP caps timeout_sec of a hanging GET; whole seconds. */
        { SECTION_DAEMON, "gcp_wait", set_duration, offsetof(Config, gcp_wait_usec), 1 * SEC, 3600 * SEC, true },
        { SECTION_DAEMON, "azure_ack", set_bool, offsetof(Config, azure_ack) },
        { SECTION_DAEMON, "alibaba_token", set_bool, offsetof(Config, alibaba_token) },

        { SECTION_PROCESS, "pidfile", set_path, offsetof(ProcessConfig, pidfile) },
        { SECTION_PROCESS, "match", set_string, offsetof(ProcessConfig, match) },
        { SECTION_PROCESS, "unit", set_unit, 0 },
        { SECTION_PROCESS, "signal", set_signal, offsetof(ProcessConfig, signal) },
        { SECTION_PROCESS, "wait", set_duration, offsetof(ProcessConfig, wait_usec), 0, 3600 * SEC },

        { SECTION_HOOK, "exec", set_exec, offsetof(HookConfig, argv) },
        { SECTION_HOOK, "timeout", set_duration, offsetof(HookConfig, timeout_usec), 10 * MSEC, 3600 * SEC },
        { SECTION_HOOK, "order", set_long, offsetof(HookConfig, order) },
        { SECTION_HOOK, "user", set_user, offsetof(HookConfig, user) },

        { SECTION_UPLOAD, "source", set_upload_source, offsetof(UploadConfig, source) },
        { SECTION_UPLOAD, "destination", set_upload_destination, offsetof(UploadConfig, destination) },
        { SECTION_UPLOAD, "newest", set_upload_newest, offsetof(UploadConfig, newest) },
        { SECTION_UPLOAD, "endpoint", set_url, offsetof(UploadConfig, endpoint) },
        { SECTION_UPLOAD, "region", set_secret, offsetof(UploadConfig, region) },
        { SECTION_UPLOAD, "part_size", set_upload_size, offsetof(UploadConfig, part_size), UPLOAD_PART_SIZE_MIN,
          UPLOAD_PART_SIZE_MAX },
        { SECTION_UPLOAD, "concurrency", set_upload_concurrency, offsetof(UploadConfig, concurrency) },
        { SECTION_UPLOAD, "checksum", set_upload_checksum, offsetof(UploadConfig, checksum) },
        { SECTION_UPLOAD, "access_key_id", set_secret, offsetof(UploadConfig, access_key_id) },
        { SECTION_UPLOAD, "secret_access_key", set_secret, offsetof(UploadConfig, secret_access_key) },
        { SECTION_UPLOAD, "session_token", set_secret, offsetof(UploadConfig, session_token) },
        { SECTION_UPLOAD, "account_key", set_secret, offsetof(UploadConfig, account_key) },
        { SECTION_UPLOAD, "sas_token", set_secret, offsetof(UploadConfig, sas_token) },
        { SECTION_UPLOAD, "sync", set_upload_sync, offsetof(UploadConfig, sync) },
        { SECTION_UPLOAD, "sync_rate", set_upload_size, offsetof(UploadConfig, sync_rate), 1024 * 1024,
          UINT64_C(1) << 40 },
};

#undef SEC
#undef MSEC

/* ---- loading ------------------------------------------------------------ */

typedef struct LoadState {
        Config *config;
        const char *path;

        /* The file's text, handed to inih one line at a time by read_line(). */
        const char *data;
        size_t size;
        size_t pos;
        unsigned line;
        bool comment_cut; /* inih will cut an inline "; comment" off this line's value */

        /* The section we are in, as parsed by the reader from the header line. */
        SectionKind section;
        size_t index;                                /* into processes[], hooks[] or uploads[] */
        char section_text[INI_MAX_LINE];             /* between the brackets, for messages */
        unsigned key_line[ELEMENTSOF(config_items)]; /* line each key was set on, this section */
        unsigned daemon_line;
        unsigned daemon_key_line[ELEMENTSOF(config_items)];
        char last_key[INI_MAX_LINE];

        int error; /* the first error, -errno */
        char *message;
} LoadState;

/*
 * Record the first error as "FILE:LINE: [SECTION] KEY: what". @section and
 * @key may be NULL. Returns @error, so callers can "return load_error(...)".
 */
_printf_(6, 7) static int load_error(LoadState *s, int error, unsigned line, const char *section,
                                     const char *key, const char *fmt, ...) {
        _cleanup_free_ char *what = NULL;
        char *m = NULL;
        va_list ap;
        int k;

        if (s->error < 0)
                return s->error;
        s->error = error;

        va_start(ap, fmt);
        k = vasprintf(&what, fmt, ap);
        va_end(ap);
        if (k < 0) {
                what = NULL;
                return error;
        }

        if (section && key)
                k = asprintf(&m, "%s:%u: [%s] %s: %s", s->path, line, section, key, what);
        else if (section)
                k = asprintf(&m, "%s:%u: [%s]: %s", s->path, line, section, what);
        else if (key)
                k = asprintf(&m, "%s:%u: %s: %s", s->path, line, key, what);
        else
                k = asprintf(&m, "%s:%u: %s", s->path, line, what);
        if (k < 0)
                return error;

        /* The text is the user's: keep terminal escapes and the like out of our stderr. */
        for (char *p = m; *p; p++)
                if (iscntrl((unsigned char) *p))
                        *p = '?';
        s->message = m;
        return error;
}

static int find_item(SectionKind section, const char *key) {
        for (size_t i = 0; i < ELEMENTSOF(config_items); i++)
                if (config_items[i].section == section && streq(config_items[i].key, key))
                        return (int) i;
        return -ENOENT;
}

static const char *lskip(const char *p) {
        while (*p && isspace((unsigned char) *p))
                p++;
        return p;
}

/* inih's ini_find_chars_or_comment(): the first of @chars, or a ';' that follows whitespace. */
static const char *find_chars_or_comment(const char *p, const char *chars) {
        bool was_space = false;

        while (*p && (!chars || !strchr(chars, *p)) && !(was_space && *p == ';')) {
                was_space = isspace((unsigned char) *p);
                p++;
        }
        return p;
}

static bool section_name_valid(const char *name, size_t n) {
        if (n == 0)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!isalnum((unsigned char) name[i]) && !strchr("-_.:@+", name[i]))
                        return false;
        return true;
}

static int add_process(LoadState *s, const char *name, size_t n) {
        Config *c = s->config;
        ProcessConfig *p;

        p = reallocarray(c->processes, c->n_processes + 1, sizeof(ProcessConfig));
        if (!p)
                return -ENOMEM;
        c->processes = p;
        p = &c->processes[c->n_processes++];
        *p = (ProcessConfig) {
                .signal = SIGUSR1,
                .line = s->line,
        };
        p->name = strndup(name, n);
        if (!p->name)
                return -ENOMEM;
        s->index = c->n_processes - 1;
        return 0;
}

static int add_hook(LoadState *s, const char *name, size_t n) {
        Config *c = s->config;
        HookConfig *h;

        h = reallocarray(c->hooks, c->n_hooks + 1, sizeof(HookConfig));
        if (!h)
                return -ENOMEM;
        c->hooks = h;
        h = &c->hooks[c->n_hooks++];
        *h = (HookConfig) {
                .timeout_usec = CONFIG_DEFAULT_HOOK_TIMEOUT_USEC,
                .line = s->line,
        };
        h->name = strndup(name, n);
        if (!h->name)
                return -ENOMEM;
        s->index = c->n_hooks - 1;
        return 0;
}

static int add_upload(LoadState *s, const char *name, size_t n) {
        Config *c = s->config;
        UploadConfig *u;

        u = reallocarray(c->uploads, c->n_uploads + 1, sizeof(UploadConfig));
        if (!u)
                return -ENOMEM;
        c->uploads = u;
        u = &c->uploads[c->n_uploads++];
        *u = (UploadConfig) {
                .scheme = _UPLOAD_SCHEME_INVALID,
                .line = s->line,
        };
        u->name = strndup(name, n);
        if (!u->name)
                return -ENOMEM;
        s->index = c->n_uploads - 1;
        return 0;
}

/* A "[...]" line; @inner is the @n bytes between the brackets. */
static int enter_section(LoadState *s, const char *inner, size_t n) {
        const char *word_end, *rest, *end = inner + n, *name;
        SectionKind kind = SECTION_NONE;
        size_t name_len;
        int r;

        (void) snprintf(s->section_text, sizeof(s->section_text), "%.*s", (int) n, inner);
        s->section = SECTION_NONE;
        s->last_key[0] = '\0';
        memset(s->key_line, 0, sizeof(s->key_line));

        if (n == 0)
                return load_error(s, -EINVAL, s->line, "", NULL, "empty section name");
        if (n > INI_SECTION_MAX)
                return load_error(s, -EINVAL, s->line, s->section_text, NULL,
                                  "section header is too long (%zu bytes, at most %d)", n, INI_SECTION_MAX);

        for (word_end = inner; word_end < end && !isspace((unsigned char) *word_end) && *word_end != '"';
             word_end++)
                ;
        for (SectionKind k = SECTION_DAEMON; k < _SECTION_KIND_MAX; k++)
                if (strlen(section_kind_table[k]) == (size_t) (word_end - inner) &&
                    memcmp(section_kind_table[k], inner, (size_t) (word_end - inner)) == 0)
                        kind = k;
        for (rest = word_end; rest < end && isspace((unsigned char) *rest); rest++)
                ;

        switch (kind) {
        case SECTION_NONE:
        case _SECTION_KIND_MAX:
                return load_error(s, -EINVAL, s->line, s->section_text, NULL,
                                  "unknown section (expected [daemon], [process \"NAME\"] "
                                  "or [hook \"NAME\"])");

        case SECTION_DAEMON:
                if (rest != end)
                        return load_error(s, -EINVAL, s->line, s->section_text, NULL,
                                          "the daemon section takes no name, write [daemon]");
                if (s->daemon_line > 0)
                        return load_error(s, -EINVAL, s->line, s->section_text, NULL,
                                          "duplicate section, first on line %u", s->daemon_line);
                s->daemon_line = s->line;
                s->section = SECTION_DAEMON;
                return 0;

        case SECTION_PROCESS:
        case SECTION_HOOK:
        case SECTION_UPLOAD:
                break;
        }

        if (rest == end)
                return load_error(s, -EINVAL, s->line, s->section_text, NULL,
                                  "missing name, write [%s \"NAME\"]", section_kind_table[kind]);
        if (end - rest < 2 || rest[0] != '"' || end[-1] != '"')
                return load_error(s, -EINVAL, s->line, s->section_text, NULL,
                                  "the name must be in double quotes, write [%s \"NAME\"]",
                                  section_kind_table[kind]);
        name = rest + 1;
        name_len = (size_t) (end - rest) - 2;
        if (name_len == 0)
                return load_error(s, -EINVAL, s->line, s->section_text, NULL, "empty %s name",
                                  section_kind_table[kind]);
        if (!section_name_valid(name, name_len))
                return load_error(s, -EINVAL, s->line, s->section_text, NULL,
                                  "invalid name '%.*s' (use letters, digits and - _ . : @ +)",
                                  (int) name_len, name);

        if (kind == SECTION_PROCESS) {
                for (size_t i = 0; i < s->config->n_processes; i++) {
                        const ProcessConfig *p = &s->config->processes[i];

                        if (strlen(p->name) == name_len && memcmp(p->name, name, name_len) == 0)
                                return load_error(s, -EINVAL, s->line, s->section_text, NULL,
                                                  "duplicate section, first on line %u", p->line);
                }
                r = add_process(s, name, name_len);
        } else if (kind == SECTION_UPLOAD) {
                for (size_t i = 0; i < s->config->n_uploads; i++) {
                        const UploadConfig *u = &s->config->uploads[i];

                        if (strlen(u->name) == name_len && memcmp(u->name, name, name_len) == 0)
                                return load_error(s, -EINVAL, s->line, s->section_text, NULL,
                                                  "duplicate section, first on line %u", u->line);
                }
                r = add_upload(s, name, name_len);
        } else {
                for (size_t i = 0; i < s->config->n_hooks; i++) {
                        const HookConfig *h = &s->config->hooks[i];

                        if (strlen(h->name) == name_len && memcmp(h->name, name, name_len) == 0)
                                return load_error(s, -EINVAL, s->line, s->section_text, NULL,
                                                  "duplicate section, first on line %u", h->line);
                }
                r = add_hook(s, name, name_len);
        }
        if (r < 0)
                return load_error(s, r, s->line, NULL, NULL, "out of memory");

        /* From here on, messages use the canonical spelling. */
        (void) snprintf(s->section_text, sizeof(s->section_text), "%s \"%.*s\"", section_kind_table[kind],
                        (int) name_len, name);
        s->section = kind;
        return 0;
}

/*
 * Check one line before inih sees it, with inih's own rules, so that every
 * mistake gets a message of ours (inih only reports a line number) and none
 * of r55's pitfalls passes silently.
 */
static int check_line(LoadState *s, const char *line) {
        const char *p = line, *q, *end, *rest;
        char text[INI_MAX_LINE];
        size_t len;

        s->comment_cut = false;

        /* inih skips a UTF-8 byte order mark on the first line. */
        if (s->line == 1 && strncmp(p, "\xEF\xBB\xBF", 3) == 0)
                p += 3;
        q = lskip(p);
        for (len = strlen(q); len > 0 && isspace((unsigned char) q[len - 1]); len--)
                ;
        (void) snprintf(text, sizeof(text), "%.*s", (int) len, q);

        /* Blank lines and comments. */
        if (*q == '\0' || *q == ';' || *q == '#')
                return 0;

        /*
         * inih appends an indented line to the value of the key before it
         * (Python configparser style), and parses it as a line of its own
         * only if no key came yet in this section. Both are confusing, so no
         * content line may be indented.
         */
        if (q > p) {
                const char *section = s->section != SECTION_NONE ? s->section_text : NULL;

                if (!isempty(s->last_key))
                        return load_error(s, -EINVAL, s->line, section, NULL,
                                          "indented line would continue the value of '%s'; "
                                          "continuation lines are not supported, "
                                          "remove the leading whitespace ('%s')",
                                          s->last_key, text);
                return load_error(s, -EINVAL, s->line, section, NULL,
                                  "indented line; remove the leading whitespace ('%s')", text);
        }

        if (*q == '[') {
                end = find_chars_or_comment(q + 1, "]");
                if (*end != ']')
                        return load_error(s, -EINVAL, s->line, NULL, NULL,
                                          "missing ']' in section header ('%s')", text);
                /* inih ignores whatever follows the ']'; we allow only a comment there. */
                rest = lskip(end + 1);
                if (*rest != '\0' && *rest != ';' && *rest != '#')
                        return load_error(s, -EINVAL, s->line, NULL, NULL,
                                          "unexpected text after ']' in section header ('%s')", text);
                return enter_section(s, q + 1, (size_t) (end - q - 1));
        }

        end = find_chars_or_comment(q, "=:");
        if (*end != '=' && *end != ':') {
                if (s->section == SECTION_NONE)
                        return load_error(s, -EINVAL, s->line, NULL, NULL,
                                          "expected a [section] header or 'key = value' ('%s')", text);
                return load_error(s, -EINVAL, s->line, s->section_text, NULL,
                                  "expected 'key = value' ('%s')", text);
        }
        if (end == q)
                return load_error(s, -EINVAL, s->line, s->section != SECTION_NONE ? s->section_text : NULL,
                                  NULL, "missing key name before '%c' ('%s')", *end, text);

        s->comment_cut = *find_chars_or_comment(end + 1, NULL) == ';';
        return 0;
}

/* inih's reader callback, an fgets() over our copy of the file; NULL ends the parse. */
static char *read_line(char *str, int num, void *stream) {
        LoadState *s = stream;
        const char *start, *nl;
        size_t len, text_len;

        if (s->error < 0 || s->pos >= s->size)
                return NULL;

        start = s->data + s->pos;
        nl = memchr(start, '\n', s->size - s->pos);
        len = nl ? (size_t) (nl - start) + 1 : s->size - s->pos;
        text_len = nl ? len - 1 : len;
        s->pos += len;
        s->line++;

        if (memchr(start, '\0', len)) {
                (void) load_error(s, -EINVAL, s->line, NULL, NULL, "line contains a NUL byte");
                return NULL;
        }
        /*
         * inih reads into a buffer of @num bytes and would split a longer
         * line silently into several. Counting the newline and the NUL, a
         * line may have at most num - 2 bytes.
         */
        if (num < 3 || text_len > (size_t) num - 2) {
                (void) load_error(s, -EINVAL, s->line, NULL, NULL,
                                  "line is too long (%zu bytes, at most %d)", text_len, num - 2);
                return NULL;
        }

        memcpy(str, start, len);
        str[len] = '\0';
        if (check_line(s, str) < 0)
                return NULL;
        return str;
}

static void *section_base(LoadState *s) {
        switch (s->section) {
        case SECTION_DAEMON:
                return s->config;
        case SECTION_PROCESS:
                return &s->config->processes[s->index];
        case SECTION_HOOK:
                return &s->config->hooks[s->index];
        case SECTION_UPLOAD:
                return &s->config->uploads[s->index];
        case SECTION_NONE:
        case _SECTION_KIND_MAX:
                break;
        }
        return NULL;
}

/* inih's handler: called for each "key = value" line. Returns nonzero on success (inih's convention). */
static int handle_key(void *user, const char *section, const char *name, const char *value) {
        LoadState *s = user;
        const ConfigItem *item;
        char reason[REASON_MAX] = "";
        const char *hint = "";
        const char *v;
        int i, r;

        if (s->error < 0)
                return 0;

        if (s->section == SECTION_NONE) {
                (void) load_error(s, -EINVAL, s->line, NULL, name,
                                  "key outside of any section, put it under a [section] header ('%s')",
                                  value);
                return 0;
        }

        i = find_item(s->section, name);
        if (i < 0) {
                for (SectionKind k = SECTION_DAEMON; k < _SECTION_KIND_MAX; k++)
                        if (find_item(k, name) >= 0) {
                                (void) load_error(s, -EINVAL, s->line, s->section_text, name,
                                                  "unknown key here, it belongs in %s [%s%s] section",
                                                  k == SECTION_UPLOAD ? "an" : "a", section_kind_table[k],
                                                  k == SECTION_DAEMON ? "" : " \"NAME\"");
                                return 0;
                        }
                (void) load_error(s, -EINVAL, s->line, s->section_text, name, "unknown key");
                return 0;
        }
        item = &config_items[i];

        if (s->key_line[i] > 0) {
                (void) load_error(s, -EINVAL, s->line, s->section_text, name,
                                  "duplicate key, already set on line %u", s->key_line[i]);
                return 0;
        }
        s->key_line[i] = s->line;
        if (s->section == SECTION_DAEMON)
                s->daemon_key_line[i] = s->line;

        r = item->parse(item, value, (char *) section_base(s) + item->offset, reason, sizeof(reason));
        if (r == -ENOMEM) {
                (void) load_error(s, r, s->line, s->section_text, name, "out of memory");
                return 0;
        }
        if (r < 0) {
                /* Point at the two comment rules people trip over. */
                if (s->comment_cut)
                        hint = "; note: ';' after whitespace starts a comment, "
                               "the rest of the line was ignored";
                else
                        for (v = value; *v; v++)
                                if (*v == '#' && v > value && isspace((unsigned char) v[-1])) {
                                        hint = "; note: '#' starts a comment only at the start of a line";
                                        break;
                                }
                (void) load_error(s, -EINVAL, s->line, s->section_text, name, "%s%s", reason, hint);
                return 0;
        }

        (void) snprintf(s->last_key, sizeof(s->last_key), "%s", name);
        return 1;
}

/* The cross-field checks, once the whole file is read. */
/* What only some destinations take, and keys that come in pairs. */
static int check_upload(LoadState *s, const UploadConfig *u, const char *section) {
        static const struct {
                const char *key;
                size_t offset;
                unsigned schemes; /* 1 << UploadScheme */
        } only[] = {
#define STORES ((1U << UPLOAD_S3) | (1U << UPLOAD_GS) | (1U << UPLOAD_AZ))
                { "endpoint", offsetof(UploadConfig, endpoint), STORES },
                { "region", offsetof(UploadConfig, region), (1U << UPLOAD_S3) | (1U << UPLOAD_GS) },
                { "access_key_id", offsetof(UploadConfig, access_key_id), (1U << UPLOAD_S3) | (1U << UPLOAD_GS) },
                { "secret_access_key", offsetof(UploadConfig, secret_access_key),
                  (1U << UPLOAD_S3) | (1U << UPLOAD_GS) },
                { "session_token", offsetof(UploadConfig, session_token), (1U << UPLOAD_S3) | (1U << UPLOAD_GS) },
                { "account_key", offsetof(UploadConfig, account_key), 1U << UPLOAD_AZ },
                { "sas_token", offsetof(UploadConfig, sas_token), 1U << UPLOAD_AZ },
#undef STORES
        };
        const char *scheme = upload_scheme_to_string(u->scheme);

        for (size_t i = 0; i < ELEMENTSOF(only); i++)
                if (*(char *const *) ((const char *) u + only[i].offset) && !(only[i].schemes & (1U << u->scheme)))
                        return load_error(s, -EINVAL, u->line, section, only[i].key,
                                          "not used with a %s:// destination", scheme);
        if (u->scheme == UPLOAD_FILE && (u->part_size || u->concurrency || u->checksum != UPLOAD_CHECKSUM_MD5))
                return load_error(s, -EINVAL, u->line, section,
                                  u->part_size ? "part_size" : u->concurrency ? "concurrency" : "checksum",
                                  "not used with a file:// destination (it is always verified with SHA-256)");
        if (!!u->access_key_id != !!u->secret_access_key)
                return load_error(s, -EINVAL, u->line, section,
                                  u->access_key_id ? "secret_access_key" : "access_key_id",
                                  "access_key_id and secret_access_key go together: set both or neither");
        if (u->session_token && !u->access_key_id)
                return load_error(s, -EINVAL, u->line, section, "session_token",
                                  "a session_token needs access_key_id and secret_access_key");
        if (u->account_key && u->sas_token)
                return load_error(s, -EINVAL, u->line, section, "sas_token",
                                  "set account_key or sas_token, not both");
        if (u->account_key) {
                size_t n = strlen(u->account_key);

                if (n % 4 != 0 || strspn(u->account_key,
                                         "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") != n)
                        return load_error(s, -EINVAL, u->line, section, "account_key",
                                          "not a base64 storage account key");
        }
        if (u->sas_token && u->sas_token[0] == '?')
                return load_error(s, -EINVAL, u->line, section, "sas_token",
                                  "write the SAS token without the leading '?'");
        if (u->scheme == UPLOAD_AZ &&
            (u->checksum == UPLOAD_CHECKSUM_CRC32C || u->checksum == UPLOAD_CHECKSUM_SHA256))
                return load_error(s, -EINVAL, u->line, section, "checksum",
                                  "az:// destinations take checksum = md5 or none");
        if (u->scheme == UPLOAD_FILE && u->sync == UPLOAD_SYNC_CONTINUOUS)
                return 0;
        return 0;
}

static int check_config(LoadState *s) {
        const Config *c = s->config;
        char a[32], b[32];
        int r;

        for (size_t i = 0; i < c->n_processes; i++) {
                const ProcessConfig *p = &c->processes[i];
                char section[INI_MAX_LINE];

                (void) snprintf(section, sizeof(section), "process \"%s\"", p->name);
                if (p->pidfile && p->match)
                        return load_error(s, -EINVAL, p->line, section, NULL,
                                          "pidfile= and match= are mutually exclusive, give only one");
                if (!p->pidfile && !p->match)
                        return load_error(s, -EINVAL, p->line, section, NULL,
                                          "no pidfile= or match= given, give exactly one");
        }

        for (size_t i = 0; i < c->n_hooks; i++) {
                const HookConfig *h = &c->hooks[i];
                char section[INI_MAX_LINE];

                (void) snprintf(section, sizeof(section), "hook \"%s\"", h->name);
                if (!h->argv)
                        return load_error(s, -EINVAL, h->line, section, NULL, "no exec= given");
        }

        for (size_t i = 0; i < c->n_uploads; i++) {
                const UploadConfig *u = &c->uploads[i];
                char section[INI_MAX_LINE];

                (void) snprintf(section, sizeof(section), "upload \"%s\"", u->name);
                if (!u->source)
                        return load_error(s, -EINVAL, u->line, section, NULL, "no source= given");
                if (!u->destination)
                        return load_error(s, -EINVAL, u->line, section, NULL, "no destination= given");
                r = check_upload(s, u, section);
                if (r < 0)
                        return r;
        }

        if (c->deadline_margin_usec >= c->default_deadline_usec) {
                int margin = find_item(SECTION_DAEMON, "deadline_margin");
                int deadline = find_item(SECTION_DAEMON, "default_deadline");
                bool at_margin;

                assert(margin >= 0 && deadline >= 0);
                at_margin = s->daemon_key_line[margin] > 0;
                return load_error(s, -EINVAL,
                                  at_margin ? s->daemon_key_line[margin] : s->daemon_key_line[deadline],
                                  "daemon", at_margin ? "deadline_margin" : "default_deadline",
                                  "deadline_margin (%s) must be shorter than default_deadline (%s)",
                                  format_duration(a, sizeof(a), c->deadline_margin_usec),
                                  format_duration(b, sizeof(b), c->default_deadline_usec));
        }

        return 0;
}

static int hook_compare(const void *a, const void *b) {
        const HookConfig *x = a, *y = b;

        /* Lines are unique, so this is a stable sort by order. */
        if (x->order != y->order)
                return x->order < y->order ? -1 : 1;
        return x->line < y->line ? -1 : x->line > y->line;
}

static int read_file(const char *path, char **ret, size_t *ret_size) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ char *buf = NULL;
        size_t n = 0, allocated = 0;
        struct stat st;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (S_ISDIR(st.st_mode))
                return -EISDIR;

        /* Not st_size: the file may be a pipe (-c <(...)). */
        for (;;) {
                ssize_t k;

                if (n == allocated) {
                        char *nb;

                        if (allocated > CONFIG_FILE_MAX)
                                return -EFBIG;
                        allocated = allocated == 0 ? 4096 : allocated * 2;
                        nb = realloc(buf, allocated + 1);
                        if (!nb)
                                return -ENOMEM;
                        buf = nb;
                }
                k = read(fd, buf + n, allocated - n);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        break;
                n += (size_t) k;
        }
        if (n > CONFIG_FILE_MAX)
                return -EFBIG;

        buf[n] = '\0';
        *ret = TAKE_PTR(buf);
        *ret_size = n;
        return 0;
}

int config_new_default(Config **ret) {
        _cleanup_(config_freep) Config *c = NULL;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        *c = (Config) {
                .cloud = CLOUD_AUTO,
                .poll_interval_usec = 1 * USEC_PER_SEC,
                .request_timeout_usec = 2 * USEC_PER_SEC,
                .events_mask = EVENT_MASK_DEFAULT,
                .log = LOG_TARGET_AUTO,
                .imds_v1 = false,
                .token_ttl_usec = 6 * 3600 * USEC_PER_SEC,
                .deadline_margin_usec = 2 * USEC_PER_SEC,
                .default_deadline_usec = 120 * USEC_PER_SEC,
                .probe_timeout_usec = 1 * USEC_PER_SEC,
                .gcp_wait_usec = 60 * USEC_PER_SEC,
        };
        c->control_socket = strdup(CONFIG_DEFAULT_CONTROL_SOCKET);
        if (!c->control_socket)
                return -ENOMEM;
        c->state_dir = strdup(CONFIG_DEFAULT_STATE_DIR);
        if (!c->state_dir)
                return -ENOMEM;

        *ret = TAKE_PTR(c);
        return 0;
}

int config_load(const char *path, Config **ret, char **ret_error) {
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_free_ char *data = NULL, *message = NULL;
        LoadState s = {};
        size_t size = 0;
        int r;

        if (isempty(path)) {
                if (ret_error)
                        *ret_error = strdup("empty configuration file path");
                return -EINVAL;
        }

        r = config_new_default(&c);
        if (r < 0)
                goto fail_plain;
        c->path = strdup(path);
        if (!c->path) {
                r = -ENOMEM;
                goto fail_plain;
        }

        r = read_file(path, &data, &size);
        if (r < 0)
                goto fail_plain;

        s = (LoadState) {
                .config = c,
                .path = path,
                .data = data,
                .size = size,
        };
        r = ini_parse_stream(read_line, &s, handle_key, &s);
        if (s.error == 0) {
                /* check_line() mirrors inih's syntax rules, so these are only a safety net. */
                if (r == -2)
                        (void) load_error(&s, -ENOMEM, s.line, NULL, NULL, "out of memory");
                else if (r > 0)
                        (void) load_error(&s, -EINVAL, (unsigned) r, NULL, NULL, "syntax error");
                else if (r < 0)
                        (void) load_error(&s, -EIO, s.line, NULL, NULL, "cannot parse (inih error %d)", r);
        }
        if (s.error == 0)
                (void) check_config(&s);
        message = TAKE_PTR(s.message);
        if (s.error < 0) {
                if (ret_error)
                        *ret_error = message ? TAKE_PTR(message) : strdup("out of memory");
                return s.error;
        }

        if (c->n_hooks > 1)
                qsort(c->hooks, c->n_hooks, sizeof(HookConfig), hook_compare);

        if (ret)
                *ret = TAKE_PTR(c);
        return 0;

fail_plain:
        if (ret_error) {
                int k;

                if (r == -EFBIG)
                        k = asprintf(ret_error, "%s: file is too large (more than %d bytes)", path,
                                     CONFIG_FILE_MAX);
                else
                        k = asprintf(ret_error, "%s: %s", path, strerror(-r));
                if (k < 0)
                        *ret_error = NULL;
        }
        return r;
}

Config *config_free(Config *c) {
        if (!c)
                return NULL;

        free(c->path);
        free(c->metadata_url);
        free(c->control_socket);
        free(c->state_dir);

        for (size_t i = 0; i < c->n_processes; i++) {
                free(c->processes[i].name);
                free(c->processes[i].pidfile);
                free(c->processes[i].match);
        }
        free(c->processes);

        for (size_t i = 0; i < c->n_hooks; i++) {
                free(c->hooks[i].name);
                strv_free(c->hooks[i].argv);
                free(c->hooks[i].user);
        }
        free(c->hooks);

        for (size_t i = 0; i < c->n_uploads; i++) {
                free(c->uploads[i].name);
                free(c->uploads[i].source);
                free(c->uploads[i].destination);
                free(c->uploads[i].dest_path);
                free(c->uploads[i].account);
                free(c->uploads[i].bucket);
                free(c->uploads[i].prefix);
                free(c->uploads[i].endpoint);
                free(c->uploads[i].region);
                free(c->uploads[i].access_key_id);
                free(c->uploads[i].secret_access_key);
                free(c->uploads[i].session_token);
                free(c->uploads[i].account_key);
                free(c->uploads[i].sas_token);
        }
        free(c->uploads);

        free(c);
        return NULL;
}
