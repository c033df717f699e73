/* SPDX-License-Identifier: MIT */
/*
 * detect.c - cloud = auto (see detect.h): a table of DMI rules applied to a
 * few capped reads of small files, then one round of parallel metadata
 * probes through http whose answers are judged by their shape. It logs only
 * at debug level and returns what it found with a reason; manager decides
 * what to do with it and logs it. It owns no uv handle and no fd beyond a
 * call, so a DetectProbe is freed at once.
 */
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "detect.h"
#include "shared/log.h"
#include "shared/parse.h"

/* Larger than any DMI string a firmware writes; a longer file is cut here. */
#define DMI_VALUE_MAX 256
/* The chassis asset tag every Azure VM carries (cloud-init and waagent test for it too). */
#define AZURE_ASSET_TAG "7783-7084-3265-9085-8269-3286-77"

#define PROBE_WHY_MAX 1024
#define PROBE_RESULT_MAX 256
/* Tokens, ids and vmIds are well under this; anything bigger is not an answer we want. */
#define PROBE_MAX_BODY 1024
/* The probe's token is thrown away; ask for little. */
#define AWS_PROBE_TTL_HEADER "X-aws-ec2-metadata-token-ttl-seconds: 60"

/* ---- reasons ---------------------------------------------------------------- */

/* Append to the NUL-terminated @buf; when it does not fit, end @buf with "...". */
_printf_(3, 4) static void why_append(char *buf, size_t size, const char *fmt, ...) {
        size_t len;
        va_list ap;
        int n;

        if (!buf || size == 0)
                return;
        len = strnlen(buf, size);
        if (len >= size - 1)
                return;
        va_start(ap, fmt);
        n = vsnprintf(buf + len, size - len, fmt, ap);
        va_end(ap);
        if (n < 0)
                buf[len] = 0;
        else if ((size_t) n >= size - len && size >= 4)
                memcpy(buf + size - 4, "...", 4);
}

/* ---- DMI -------------------------------------------------------------------- */

typedef enum DmiField {
        DMI_SYS_VENDOR,
        DMI_PRODUCT_NAME,
        DMI_PRODUCT_VERSION,
        DMI_BIOS_VENDOR,
        DMI_BIOS_VERSION,
        DMI_CHASSIS_ASSET_TAG,
        DMI_CHASSIS_VENDOR,
        DMI_BOARD_VENDOR,
        _DMI_FIELD_MAX,
        _DMI_FIELD_INVALID = -EINVAL,
} DmiField;

static const char *const dmi_field_table[_DMI_FIELD_MAX] = {
        [DMI_SYS_VENDOR] = "sys_vendor",
        [DMI_PRODUCT_NAME] = "product_name",
        [DMI_PRODUCT_VERSION] = "product_version",
        [DMI_BIOS_VENDOR] = "bios_vendor",
        [DMI_BIOS_VERSION] = "bios_version",
        [DMI_CHASSIS_ASSET_TAG] = "chassis_asset_tag",
        [DMI_CHASSIS_VENDOR] = "chassis_vendor",
        [DMI_BOARD_VENDOR] = "board_vendor",
};

typedef struct Dmi {
        char value[_DMI_FIELD_MAX][DMI_VALUE_MAX + 1];
        int error[_DMI_FIELD_MAX]; /* 0: read; -ENOENT: missing; else why it could not be read */
} Dmi;

typedef enum DmiMatch {
        DMI_MATCH_EQUAL,
        DMI_MATCH_CONTAINS_NOCASE,
} DmiMatch;

typedef struct DmiTest {
        DmiField field;
        DmiMatch match;
        const char *value; /* NULL: no test */
} DmiTest;

typedef struct DmiRule {
        CloudKind cloud;
        DmiTest test;
        DmiTest also;     /* must hold too, when set */
        const char *note; /* appended to the reason, or NULL */
} DmiRule;

/* First match wins. Each rule is evidence only that cloud's firmware gives. */
static const DmiRule dmi_rules[] = {
        /* AWS Nitro: Amazon's own firmware names itself everywhere. */
        { CLOUD_AWS, { DMI_SYS_VENDOR, DMI_MATCH_EQUAL, "Amazon EC2" } },
        { CLOUD_AWS, { DMI_BIOS_VENDOR, DMI_MATCH_EQUAL, "Amazon EC2" } },
        { CLOUD_AWS, { DMI_BOARD_VENDOR, DMI_MATCH_EQUAL, "Amazon EC2" } },
        { CLOUD_AWS, { DMI_CHASSIS_VENDOR, DMI_MATCH_EQUAL, "Amazon EC2" } },
        { CLOUD_AWS, { DMI_CHASSIS_ASSET_TAG, DMI_MATCH_EQUAL, "Amazon EC2" } },
        /* AWS on Xen: the vendor is plain Xen, but the firmware is Amazon's build ("4.11.amazon"). */
        { CLOUD_AWS, { DMI_BIOS_VERSION, DMI_MATCH_CONTAINS_NOCASE, "amazon" },
          { DMI_SYS_VENDOR, DMI_MATCH_EQUAL, "Xen" } },
        { CLOUD_AWS, { DMI_PRODUCT_VERSION, DMI_MATCH_CONTAINS_NOCASE, "amazon" },
          { DMI_SYS_VENDOR, DMI_MATCH_EQUAL, "Xen" } },

        { CLOUD_GCP, { DMI_SYS_VENDOR, DMI_MATCH_EQUAL, "Google" } },
        { CLOUD_GCP, { DMI_PRODUCT_NAME, DMI_MATCH_EQUAL, "Google Compute Engine" } },
        { CLOUD_GCP, { DMI_BIOS_VENDOR, DMI_MATCH_EQUAL, "Google" } },
        { CLOUD_GCP, { DMI_BOARD_VENDOR, DMI_MATCH_EQUAL, "Google" } },
        { CLOUD_GCP, { DMI_CHASSIS_VENDOR, DMI_MATCH_EQUAL, "Google" } },

        /* Azure is Hyper-V; only the asset tag tells it from any other Hyper-V guest. */
        { CLOUD_AZURE, { DMI_CHASSIS_ASSET_TAG, DMI_MATCH_EQUAL, AZURE_ASSET_TAG }, {},
          "Azure's asset tag" },

        { CLOUD_ALIBABA, { DMI_SYS_VENDOR, DMI_MATCH_EQUAL, "Alibaba Cloud" } },
        { CLOUD_ALIBABA, { DMI_PRODUCT_NAME, DMI_MATCH_EQUAL, "Alibaba Cloud ECS" } },
        { CLOUD_ALIBABA, { DMI_CHASSIS_VENDOR, DMI_MATCH_EQUAL, "Alibaba Cloud" } },
};

const char *detect_dmi_root(void) {
        const char *e = getenv(DETECT_DMI_ROOT_ENV);

        return isempty(e) ? DETECT_DMI_ROOT_DEFAULT : e;
}

/* The first line of @s, trimmed, with anything but printable ASCII shown as '?'. */
static void dmi_clean(char *s) {
        size_t n;
        char *p;

        s[strcspn(s, "\n")] = 0;
        n = strlen(s);
        while (n > 0 && isspace((unsigned char) s[n - 1]))
                s[--n] = 0;
        for (p = s; isspace((unsigned char) *p); p++)
                ;
        memmove(s, p, strlen(p) + 1);
        for (p = s; *p; p++)
                if ((unsigned char) *p < 0x20 || (unsigned char) *p >= 0x7f)
                        *p = '?';
}

/* Read at most @size - 1 bytes of @name in @dir_fd into @buf. */
static int dmi_read_file(int dir_fd, const char *name, char *buf, size_t size) {
        _cleanup_close_ int fd = -EBADF;
        struct stat st;
        size_t n = 0;

        assert(size > 0);

        /* O_NONBLOCK: a FIFO planted under the root must not hang start-up before the check below. */
        fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EINVAL;

        while (n < size - 1) {
                ssize_t k = read(fd, buf + n, size - 1 - n);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        break;
                n += (size_t) k;
        }
        buf[n] = 0;
        dmi_clean(buf);
        return 0;
}

static const char *dmi_error_string(int error) {
        return error == -EINVAL ? "not a regular file" : strerror(-error);
}

static bool dmi_test_holds(const Dmi *d, const DmiTest *t) {
        const char *v;

        if (d->error[t->field] < 0)
                return false;
        v = d->value[t->field];
        switch (t->match) {
        case DMI_MATCH_EQUAL:
                return streq(v, t->value);
        case DMI_MATCH_CONTAINS_NOCASE:
                return strcasestr(v, t->value);
        }
        return false;
}

static void dmi_describe_seen(const Dmi *d, const char *dmi_root, char *why, size_t why_size) {
        unsigned listed = 0;

        why_append(why, why_size, "no cloud in the DMI data in '%s'", dmi_root);
        if (d->error[DMI_SYS_VENDOR] == 0 && streq(d->value[DMI_SYS_VENDOR], "Microsoft Corporation"))
                why_append(why, why_size, " (Microsoft Hyper-V, but chassis_asset_tag is not Azure's)");

        for (DmiField f = 0; f < _DMI_FIELD_MAX; f++) {
                if (d->error[f] == -ENOENT)
                        continue;
                why_append(why, why_size, "%s", listed++ == 0 ? ": " : ", ");
                if (d->error[f] < 0)
                        why_append(why, why_size, "%s unreadable (%s)", dmi_field_table[f],
                                   dmi_error_string(d->error[f]));
                else
                        why_append(why, why_size, "%s is '%s'", dmi_field_table[f], d->value[f]);
        }
        if (listed == 0)
                why_append(why, why_size, ": none of sys_vendor, product_name, bios_vendor, "
                                          "chassis_asset_tag, ... exist");
}

int detect_from_dmi(const char *dmi_root, CloudKind *ret_cloud, char *ret_why, size_t why_size) {
        _cleanup_close_ int dir_fd = -EBADF;
        int first_error = 0;
        unsigned n_read = 0;
        Dmi d;

        assert(dmi_root);
        assert(ret_cloud);

        dir_fd = open(dmi_root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dir_fd < 0)
                return -errno;

        for (DmiField f = 0; f < _DMI_FIELD_MAX; f++) {
                d.value[f][0] = 0;
                d.error[f] = dmi_read_file(dir_fd, dmi_field_table[f], d.value[f], sizeof(d.value[f]));
                if (d.error[f] == 0) {
                        n_read++;
                        log_debug("detect: %s/%s is '%s'", dmi_root, dmi_field_table[f], d.value[f]);
                } else {
                        log_debug_errno(d.error[f], "detect: %s/%s: %m", dmi_root, dmi_field_table[f]);
                        if (d.error[f] != -ENOENT && first_error == 0)
                                first_error = d.error[f];
                }
        }
        /* A root that is there but where nothing can be read is broken, not "no cloud". */
        if (n_read == 0 && first_error < 0)
                return first_error;

        if (ret_why && why_size > 0)
                ret_why[0] = 0;

        for (size_t i = 0; i < ELEMENTSOF(dmi_rules); i++) {
                const DmiRule *rule = &dmi_rules[i];

                if (!dmi_test_holds(&d, &rule->test))
                        continue;
                if (rule->also.value && !dmi_test_holds(&d, &rule->also))
                        continue;

                why_append(ret_why, why_size, "%s is '%s'", dmi_field_table[rule->test.field],
                           d.value[rule->test.field]);
                if (rule->also.value)
                        why_append(ret_why, why_size, " and %s is '%s'", dmi_field_table[rule->also.field],
                                   d.value[rule->also.field]);
                if (rule->note)
                        why_append(ret_why, why_size, ", %s", rule->note);
                *ret_cloud = rule->cloud;
                return 1;
        }

        dmi_describe_seen(&d, dmi_root, ret_why, why_size);
        *ret_cloud = _CLOUD_INVALID;
        return 0;
}

/* ---- metadata probes -------------------------------------------------------- */

typedef struct ProbeTry {
        DetectProbe *probe;
        CloudKind cloud;
        HttpRequest *request;
        char *url;
        bool running;
        char result[PROBE_RESULT_MAX]; /* why it was not this cloud, for the summary */
} ProbeTry;

struct DetectProbe {
        uv_loop_t *loop;
        DetectDoneFn done;
        void *userdata;
        uint64_t timeout_usec;
        uint64_t start_msec;
        unsigned running;
        bool finished;
        ProbeTry tries[_CLOUD_MAX];
        char why[PROBE_WHY_MAX];
};

/*
 * Judge a 200 answer. Returns true when it can only have come from this
 * cloud, with @what saying what was in it ("answered 200 with ..."); else
 * false with @what saying what was wrong.
 */
typedef bool (*ProbeJudgeFn)(HttpRequest *r, const char *body, size_t size, char *what, size_t what_size);

typedef struct ProbeSpec {
        const char *method;
        const char *path;
        const char *header; /* one request header, or NULL */
        ProbeJudgeFn judge;
} ProbeSpec;

/* The body, trimmed, into @buf when it is one short line of printable ASCII; else false. */
static bool body_word(const char *body, size_t size, char *buf, size_t buf_size) {
        size_t n;

        if (strlen(body) != size)
                return false;
        while (size > 0 && isspace((unsigned char) body[size - 1]))
                size--;
        while (size > 0 && isspace((unsigned char) *body)) {
                body++;
                size--;
        }
        if (size == 0 || size >= buf_size)
                return false;
        for (n = 0; n < size; n++)
                if ((unsigned char) body[n] <= 0x20 || (unsigned char) body[n] >= 0x7f)
                        return false;
        memcpy(buf, body, size);
        buf[size] = 0;
        return true;
}

static bool only_chars(const char *s, const char *set) {
        return s[strspn(s, set)] == 0;
}

#define HEX_DIGITS "0123456789abcdefABCDEF"

static bool aws_judge(HttpRequest *r, const char *body, size_t size, char *what, size_t what_size) {
        char token[PROBE_MAX_BODY + 1];

        /* IMDSv2 says how long the token lives; nothing else answers this PUT with that header. */
        if (!http_request_header(r, "X-aws-ec2-metadata-token-ttl-seconds")) {
                why_append(what, what_size,
                           "answered 200 without an X-aws-ec2-metadata-token-ttl-seconds header");
                return false;
        }
        if (!body_word(body, size, token, sizeof(token)) ||
            !only_chars(token, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/.")) {
                why_append(what, what_size, "answered 200 but not with a token");
                return false;
        }
        why_append(what, what_size, "answered 200 with an IMDSv2 session token");
        return true;
}

static bool gcp_judge(HttpRequest *r, const char *body, size_t size, char *what, size_t what_size) {
        const char *flavor = http_request_header(r, "Metadata-Flavor");

        if (!flavor || strcasecmp(flavor, "Google") != 0) {
                why_append(what, what_size, "answered 200 without Metadata-Flavor: Google");
                return false;
        }
        why_append(what, what_size, "answered 200 with Metadata-Flavor: Google");
        return true;
}

static bool is_uuid(const char *s) {
        static const size_t groups[] = { 8, 4, 4, 4, 12 };

        for (size_t i = 0; i < ELEMENTSOF(groups); i++) {
                size_t n = strspn(s, HEX_DIGITS);
                if (n != groups[i])
                        return false;
                s += n;
                if (i + 1 < ELEMENTSOF(groups)) {
                        if (*s != '-')
                                return false;
                        s++;
                }
        }
        return *s == 0;
}

static bool azure_judge(HttpRequest *r, const char *body, size_t size, char *what, size_t what_size) {
        char id[64];

        if (!body_word(body, size, id, sizeof(id)) || !is_uuid(id)) {
                why_append(what, what_size, "answered 200 but not with a vmId (a UUID)");
                return false;
        }
        why_append(what, what_size, "answered 200 with vmId '%s'", id);
        return true;
}

static bool alibaba_judge(HttpRequest *r, const char *body, size_t size, char *what, size_t what_size) {
        char id[64];
        size_t n;

        if (!body_word(body, size, id, sizeof(id)) || strncmp(id, "i-", 2) != 0 || id[2] == 0 ||
            !only_chars(id + 2, "abcdefghijklmnopqrstuvwxyz0123456789")) {
                why_append(what, what_size, "answered 200 but not with an instance id 'i-...'");
                return false;
        }
        n = strlen(id + 2);
        /* AWS ids are "i-" and 8 or 17 hex digits, and AWS serves this path too when IMDSv1 is
         * on; Alibaba's are longer and not all hex ("i-bp67acfmxazb4ph..."). */
        if ((n == 8 || n == 17) && only_chars(id + 2, HEX_DIGITS)) {
                why_append(what, what_size, "answered 200 with an AWS-shaped instance id '%s'", id);
                return false;
        }
        why_append(what, what_size, "answered 200 with instance id '%s'", id);
        return true;
}

static const ProbeSpec probe_specs[_CLOUD_MAX] = {
        [CLOUD_AWS] = { "PUT", "/latest/api/token", AWS_PROBE_TTL_HEADER, aws_judge },
        [CLOUD_GCP] = { "GET", "/computeMetadata/v1/instance/id", "Metadata-Flavor: Google", gcp_judge },
        [CLOUD_AZURE] = { "GET", "/metadata/instance/compute/vmId?api-version=2021-02-01&format=text",
                          "Metadata: true", azure_judge },
        [CLOUD_ALIBABA] = { "GET", "/latest/meta-data/instance-id", NULL, alibaba_judge },
};

static void describe_http_error(int error, uint64_t timeout_usec, char *what, size_t what_size) {
        char d[32];

        switch (error) {
        case -ETIMEDOUT:
                why_append(what, what_size, "no answer within %s",
                           format_duration(d, sizeof(d), timeout_usec > 0 ? timeout_usec : 5 * USEC_PER_SEC));
                break;
        case -ECONNREFUSED:
                why_append(what, what_size, "connection refused");
                break;
        case -EHOSTUNREACH:
                why_append(what, what_size, "host unreachable");
                break;
        case -ECONNRESET:
                why_append(what, what_size, "connection reset");
                break;
        case -EFBIG:
                why_append(what, what_size, "answer over %d bytes", PROBE_MAX_BODY);
                break;
        case -EPROTO:
                why_append(what, what_size, "not an HTTP answer");
                break;
        default:
                why_append(what, what_size, "%s", strerror(-error));
        }
}

/* Stop everything, then tell the owner; that call comes last because it may free @p. */
static void probe_finish(DetectProbe *p, CloudKind cloud) {
        p->finished = true;
        p->running = 0;
        for (CloudKind k = 0; k < _CLOUD_MAX; k++) {
                p->tries[k].request = http_request_free(p->tries[k].request);
                p->tries[k].running = false;
        }

        if (cloud < 0) {
                unsigned listed = 0;

                p->why[0] = 0;
                why_append(p->why, sizeof(p->why), "no metadata service answered like a cloud's");
                for (CloudKind k = 0; k < _CLOUD_MAX; k++) {
                        const ProbeTry *t = &p->tries[k];

                        if (!t->url)
                                continue;
                        why_append(p->why, sizeof(p->why), "%s%s: %s %s: %s", listed++ == 0 ? ": " : "; ",
                                   cloud_kind_to_string(k), probe_specs[k].method, t->url, t->result);
                }
        }
        log_debug("detect: probes done: %s (%s)", strna(cloud_kind_to_string(cloud)), p->why);
        p->done(p, cloud, p->why, p->userdata);
}

static void probe_on_done(HttpRequest *r, int error, long status, const char *body, size_t size,
                          void *userdata) {
        ProbeTry *t = userdata;
        DetectProbe *p = t->probe;
        const ProbeSpec *spec = &probe_specs[t->cloud];
        char what[PROBE_RESULT_MAX] = "";
        bool yes = false;

        assert(t->running);
        assert(p->running > 0);
        t->running = false;
        p->running--;

        if (error < 0)
                describe_http_error(error, p->timeout_usec, what, sizeof(what));
        else if (status != 200)
                why_append(what, sizeof(what), "HTTP %ld", status);
        else
                yes = spec->judge(r, body, size, what, sizeof(what));
        log_debug("detect: %s probe %s %s after %" PRIu64 " ms: %s", cloud_kind_to_string(t->cloud),
                  spec->method, t->url, uv_now(p->loop) - p->start_msec, what);

        if (yes) {
                p->why[0] = 0;
                why_append(p->why, sizeof(p->why), "probe: %s %s %s", spec->method, t->url, what);
                probe_finish(p, t->cloud);
                return;
        }

        t->result[0] = 0;
        why_append(t->result, sizeof(t->result), "%s", what);
        if (p->running == 0)
                probe_finish(p, _CLOUD_INVALID);
}

static int probe_try_start(DetectProbe *p, Http *http, ProbeTry *t, const char *base) {
        const ProbeSpec *spec = &probe_specs[t->cloud];
        const char *headers[] = { spec->header, NULL };
        HttpRequestParams params;
        char name[32];
        size_t n;
        int r;

        /* Paths come with their leading '/'. */
        n = strlen(base);
        while (n > 0 && base[n - 1] == '/')
                n--;
        if (n == 0)
                return -EINVAL;
        if (asprintf(&t->url, "%.*s%s", (int) n, base, spec->path) < 0) {
                t->url = NULL;
                return -ENOMEM;
        }

        (void) snprintf(name, sizeof(name), "detect-%s", cloud_kind_to_string(t->cloud));
        r = http_request_new(http, name, &t->request);
        if (r < 0)
                return r;

        params = (HttpRequestParams) {
                .method = spec->method,
                .url = t->url,
                .headers = headers,
                .timeout_usec = p->timeout_usec,
                .max_body = PROBE_MAX_BODY,
        };
        r = http_request_start(t->request, &params, probe_on_done, t);
        if (r < 0)
                return r;
        t->running = true;
        p->running++;
        return 0;
}

int detect_probe_start(uv_loop_t *loop, Http *http, const char *const urls[_CLOUD_MAX], uint64_t timeout_usec,
                       DetectDoneFn done, void *userdata, DetectProbe **ret) {
        _cleanup_(detect_probe_freep) DetectProbe *p = NULL;
        int r;

        assert(loop);
        assert(http);
        assert(urls);
        assert(done);
        assert(ret);

        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->loop = loop;
        p->done = done;
        p->userdata = userdata;
        p->timeout_usec = timeout_usec;
        p->start_msec = uv_now(loop);

        for (CloudKind k = CLOUD_AUTO + 1; k < _CLOUD_MAX; k++) {
                ProbeTry *t = &p->tries[k];

                t->probe = p;
                t->cloud = k;
                if (isempty(urls[k]))
                        continue;
                r = probe_try_start(p, http, t, urls[k]);
                if (r < 0)
                        return r;
        }
        if (p->running == 0)
                return -EINVAL;

        *ret = TAKE_PTR(p);
        return 0;
}

DetectProbe *detect_probe_free(DetectProbe *p) {
        if (!p)
                return NULL;
        for (CloudKind k = 0; k < _CLOUD_MAX; k++) {
                http_request_free(p->tries[k].request);
                free(p->tries[k].url);
        }
        free(p);
        return NULL;
}
