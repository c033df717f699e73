/* SPDX-License-Identifier: MIT */
/*
 * test-detect.c - detect.c: detect_from_dmi() on every fixture under
 * tests/integration/dmi/ and on hand-made roots in a temporary directory
 * (single files, trimming, caps, missing and unreadable files, broken
 * roots), and the metadata probes over real loopback TCP against the
 * daemon's fake AWS service, a closed port, a silent server and a small
 * uv_tcp server in this file that answers each path with a canned reply.
 * Everything is closed and the loop must close cleanly.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "detect.h"
#include "fake-server.h"
#include "http.h"
#include "shared/macro.h"
#include "tests.h"
#include "tests-loop.h"

#define WAIT_MS 5000
#define AZURE_TAG "7783-7084-3265-9085-8269-3286-77"

static uv_loop_t loop;
static uv_timer_t tick; /* wakes uv_run(UV_RUN_ONCE) so waits can check their deadline */
static Http *http;

/* ---- files ----------------------------------------------------------------- */

static const char *source_root(void) {
        const char *e = getenv("SOURCE_ROOT");

        return e && *e ? e : "../..";
}

static void fixture_path(char *buf, size_t size, const char *name) {
        int n = snprintf(buf, size, "%s/tests/integration/dmi/%s", source_root(), name);

        ASSERT_TRUE(n > 0 && (size_t) n < size);
}

static void make_tmpdir(char *buf, size_t size) {
        ASSERT_TRUE(size > 32);
        (void) snprintf(buf, size, "/tmp/test-detect-XXXXXX");
        ASSERT_TRUE(mkdtemp(buf));
}

static void path_join(char *buf, size_t size, const char *dir, const char *name) {
        int n = snprintf(buf, size, "%s/%s", dir, name);

        ASSERT_TRUE(n > 0 && (size_t) n < size);
}

static void write_file(const char *dir, const char *name, const char *content, size_t size) {
        char p[512];
        int fd;

        path_join(p, sizeof(p), dir, name);
        fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        ASSERT_TRUE(fd >= 0);
        ASSERT_EQ(write(fd, content, size), (ssize_t) size);
        ASSERT_OK(close(fd));
}

static void write_str(const char *dir, const char *name, const char *content) {
        write_file(dir, name, content, strlen(content));
}

/* Pre-order, so a directory is made enterable before it is read. */
static int chmod_one(const char *p, const struct stat *st, int type, struct FTW *ftw) {
        if (type == FTW_D || type == FTW_DNR)
                (void) chmod(p, 0700);
        return 0;
}

static int rm_one(const char *p, const struct stat *st, int type, struct FTW *ftw) {
        return remove(p) < 0 ? -1 : 0;
}

static void rm_rf(const char *dir) {
        (void) chmod(dir, 0700);
        ASSERT_OK(nftw(dir, chmod_one, 16, FTW_PHYS));
        ASSERT_OK(nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS));
}

/* ---- DMI: fixtures ---------------------------------------------------------- */

typedef struct FixtureCase {
        const char *name;
        int ret;
        CloudKind cloud;
        const char *why;          /* exact, or NULL */
        const char *contains[4];  /* each must be in the why */
} FixtureCase;

static const FixtureCase fixture_cases[] = {
        { "aws-nitro", 1, CLOUD_AWS, "sys_vendor is 'Amazon EC2'" },
        { "aws-xen", 1, CLOUD_AWS, "bios_version is '4.11.amazon' and sys_vendor is 'Xen'" },
        { "gcp", 1, CLOUD_GCP, "sys_vendor is 'Google'" },
        { "azure", 1, CLOUD_AZURE, "chassis_asset_tag is '" AZURE_TAG "', Azure's asset tag" },
        { "alibaba", 1, CLOUD_ALIBABA, "sys_vendor is 'Alibaba Cloud'" },
        { "hyperv-not-azure", 0, _CLOUD_INVALID, NULL,
          { "Microsoft Hyper-V, but chassis_asset_tag is not Azure's", "sys_vendor is 'Microsoft Corporation'",
            "chassis_asset_tag is '2951-4617-4713-7305-1522-3411-36'", "/hyperv-not-azure'" } },
        { "unknown", 0, _CLOUD_INVALID, NULL,
          { "no cloud in the DMI data in '", "sys_vendor is 'QEMU'",
            "product_name is 'Standard PC (Q35 + ICH9, 2009)'", "bios_vendor is 'SeaBIOS'" } },
};

static void test_fixtures(void) {
        for (size_t i = 0; i < ELEMENTSOF(fixture_cases); i++) {
                const FixtureCase *c = &fixture_cases[i];
                char root[512], why[512];
                CloudKind cloud = CLOUD_AUTO;

                fixture_path(root, sizeof(root), c->name);
                fprintf(stderr, "   %s\n", c->name);
                ASSERT_EQ(detect_from_dmi(root, &cloud, why, sizeof(why)), c->ret);
                ASSERT_EQ(cloud, c->cloud);
                fprintf(stderr, "      why: %s\n", why);
                if (c->why)
                        ASSERT_STREQ(why, c->why);
                for (size_t j = 0; j < ELEMENTSOF(c->contains) && c->contains[j]; j++)
                        ASSERT_CONTAINS(why, c->contains[j]);
        }
}

/* ---- DMI: one root per case in a temporary directory ----------------------- */

typedef struct DmiCase {
        const char *files[6][2]; /* name, content */
        int ret;
        CloudKind cloud;
        const char *why; /* exact when ret == 1; else a substring */
} DmiCase;

static const DmiCase dmi_cases[] = {
        /* Each piece of evidence on its own. */
        { { { "bios_vendor", "Amazon EC2\n" } }, 1, CLOUD_AWS, "bios_vendor is 'Amazon EC2'" },
        { { { "board_vendor", "Amazon EC2\n" } }, 1, CLOUD_AWS, "board_vendor is 'Amazon EC2'" },
        { { { "chassis_vendor", "Amazon EC2\n" } }, 1, CLOUD_AWS, "chassis_vendor is 'Amazon EC2'" },
        { { { "sys_vendor", "Xen\n" }, { "product_version", "4.2.amazon\n" } }, 1, CLOUD_AWS,
          "product_version is '4.2.amazon' and sys_vendor is 'Xen'" },
        { { { "sys_vendor", "Xen\n" }, { "bios_version", "4.2.Amazon\n" } }, 1, CLOUD_AWS,
          "bios_version is '4.2.Amazon' and sys_vendor is 'Xen'" },
        { { { "product_name", "Google Compute Engine\n" } }, 1, CLOUD_GCP,
          "product_name is 'Google Compute Engine'" },
        { { { "bios_vendor", "Google\n" } }, 1, CLOUD_GCP, "bios_vendor is 'Google'" },
        { { { "chassis_asset_tag", AZURE_TAG "\n" } }, 1, CLOUD_AZURE,
          "chassis_asset_tag is '" AZURE_TAG "', Azure's asset tag" },
        { { { "product_name", "Alibaba Cloud ECS\n" } }, 1, CLOUD_ALIBABA,
          "product_name is 'Alibaba Cloud ECS'" },

        /* Near misses. */
        { { { "sys_vendor", "Xen\n" }, { "bios_version", "4.11\n" } }, 0, _CLOUD_INVALID,
          "sys_vendor is 'Xen', bios_version is '4.11'" },
        { { { "bios_version", "4.11.amazon\n" } }, 0, _CLOUD_INVALID, "bios_version is '4.11.amazon'" },
        { { { "sys_vendor", "Amazon EC2 Inc\n" } }, 0, _CLOUD_INVALID, "sys_vendor is 'Amazon EC2 Inc'" },
        { { { "sys_vendor", "Microsoft Corporation\n" } }, 0, _CLOUD_INVALID,
          "(Microsoft Hyper-V, but chassis_asset_tag is not Azure's): sys_vendor is 'Microsoft Corporation'" },
        { { { "sys_vendor", "Microsoft Corporation\n" }, { "chassis_asset_tag", AZURE_TAG "0\n" } }, 0,
          _CLOUD_INVALID, "chassis_asset_tag is '" AZURE_TAG "0'" },
        { { { "sys_vendor", "\n" } }, 0, _CLOUD_INVALID, ": sys_vendor is ''" },

        /* Blanks around the value go, the rest of a multi-line file too. */
        { { { "sys_vendor", "  Amazon EC2 \t \r\n\n" } }, 1, CLOUD_AWS, "sys_vendor is 'Amazon EC2'" },
        { { { "sys_vendor", "Google" } }, 1, CLOUD_GCP, "sys_vendor is 'Google'" },
        { { { "sys_vendor", "Google\nAmazon EC2\n" } }, 1, CLOUD_GCP, "sys_vendor is 'Google'" },
        /* Unprintable bytes are shown as '?' and match nothing. */
        { { { "sys_vendor", "Goo\x1b[2Jgle\n" } }, 0, _CLOUD_INVALID, "sys_vendor is 'Goo?[2Jgle'" },
        { { { "sys_vendor", "Bad\xff\n" } }, 0, _CLOUD_INVALID, "sys_vendor is 'Bad?'" },

        /* The first rule wins: AWS before GCP. */
        { { { "sys_vendor", "Google\n" }, { "board_vendor", "Amazon EC2\n" } }, 1, CLOUD_AWS,
          "board_vendor is 'Amazon EC2'" },
};

static void test_dmi_cases(void) {
        for (size_t i = 0; i < ELEMENTSOF(dmi_cases); i++) {
                const DmiCase *c = &dmi_cases[i];
                char dir[64], why[512];
                CloudKind cloud = CLOUD_AUTO;

                make_tmpdir(dir, sizeof(dir));
                for (size_t j = 0; j < ELEMENTSOF(c->files) && c->files[j][0]; j++)
                        write_str(dir, c->files[j][0], c->files[j][1]);
                ASSERT_EQ(detect_from_dmi(dir, &cloud, why, sizeof(why)), c->ret);
                ASSERT_EQ(cloud, c->cloud);
                if (c->ret == 1)
                        ASSERT_STREQ(why, c->why);
                else
                        ASSERT_CONTAINS(why, c->why);
                rm_rf(dir);
        }
}

static void test_dmi_missing_and_empty(void) {
        char dir[64], why[512];
        CloudKind cloud = CLOUD_AUTO;

        /* An empty root is not broken: there is just nothing to go on. */
        make_tmpdir(dir, sizeof(dir));
        ASSERT_EQ(detect_from_dmi(dir, &cloud, why, sizeof(why)), 0);
        ASSERT_EQ(cloud, _CLOUD_INVALID);
        ASSERT_CONTAINS(why, "no cloud in the DMI data in '/tmp/test-detect-");
        ASSERT_CONTAINS(why, ": none of sys_vendor, product_name, bios_vendor");

        /* Files it does not read do not count. */
        write_str(dir, "product_serial", "Amazon EC2\n");
        write_str(dir, "board_name", "Google Compute Engine\n");
        ASSERT_EQ(detect_from_dmi(dir, &cloud, why, sizeof(why)), 0);
        ASSERT_CONTAINS(why, "none of");

        /* Any one file is enough; the rest may be missing. */
        write_str(dir, "chassis_vendor", "Alibaba Cloud\n");
        ASSERT_EQ(detect_from_dmi(dir, &cloud, why, sizeof(why)), 1);
        ASSERT_EQ(cloud, CLOUD_ALIBABA);
        ASSERT_STREQ(why, "chassis_vendor is 'Alibaba Cloud'");

        /* NULL why. */
        cloud = CLOUD_AUTO;
        ASSERT_EQ(detect_from_dmi(dir, &cloud, NULL, 0), 1);
        ASSERT_EQ(cloud, CLOUD_ALIBABA);
        rm_rf(dir);
}

static void test_dmi_caps(void) {
        char dir[64], why[512], big[4096], small[16];
        CloudKind cloud = CLOUD_AUTO;
        const char *v;

        make_tmpdir(dir, sizeof(dir));

        /* At most 256 bytes of a file are read. */
        memset(big, 'x', sizeof(big));
        memcpy(big, "Google", 6);
        write_file(dir, "sys_vendor", big, sizeof(big));
        ASSERT_EQ(detect_from_dmi(dir, &cloud, why, sizeof(why)), 0);
        v = strstr(why, "sys_vendor is '");
        ASSERT_TRUE(v);
        v += strlen("sys_vendor is '");
        ASSERT_EQ(strcspn(v, "'"), 256);

        /* A NUL ends the value. */
        write_file(dir, "sys_vendor", "Google\0junk\n", 12);
        ASSERT_EQ(detect_from_dmi(dir, &cloud, why, sizeof(why)), 1);
        ASSERT_EQ(cloud, CLOUD_GCP);

        /* A small why buffer is cut with "..." and still terminated. */
        write_str(dir, "sys_vendor", "Amazon EC2\n");
        memset(small, 'Z', sizeof(small));
        ASSERT_EQ(detect_from_dmi(dir, &cloud, small, sizeof(small)), 1);
        ASSERT_EQ(strlen(small), sizeof(small) - 1);
        ASSERT_STREQ(small, "sys_vendor i...");
        ASSERT_EQ(detect_from_dmi(dir, &cloud, small, 1), 1);
        ASSERT_STREQ(small, "");
        rm_rf(dir);
}

static void test_dmi_broken_root(void) {
        char dir[64], p[512], why[64] = "untouched";
        CloudKind cloud = CLOUD_AUTO;

        make_tmpdir(dir, sizeof(dir));

        path_join(p, sizeof(p), dir, "nope");
        ASSERT_ERR(detect_from_dmi(p, &cloud, why, sizeof(why)), ENOENT);
        write_str(dir, "file", "Amazon EC2\n");
        path_join(p, sizeof(p), dir, "file");
        ASSERT_ERR(detect_from_dmi(p, &cloud, why, sizeof(why)), ENOTDIR);
        /* Outputs are left alone on failure. */
        ASSERT_EQ(cloud, CLOUD_AUTO);
        ASSERT_STREQ(why, "untouched");

        /* Every file there but none readable: broken, not "no cloud". */
        path_join(p, sizeof(p), dir, "dirs");
        ASSERT_OK(mkdir(p, 0755));
        {
                char q[600];
                path_join(q, sizeof(q), p, "sys_vendor");
                ASSERT_OK(mkdir(q, 0755));
                path_join(q, sizeof(q), p, "product_name");
                ASSERT_OK(mkfifo(q, 0644)); /* must not block */
        }
        ASSERT_ERR(detect_from_dmi(p, &cloud, why, sizeof(why)), EINVAL);

        /* One readable file is enough to go on; the others are reported. */
        write_str(p, "bios_vendor", "SeaBIOS\n");
        ASSERT_EQ(detect_from_dmi(p, &cloud, why, sizeof(why)), 0);
        {
                char w[512];
                ASSERT_EQ(detect_from_dmi(p, &cloud, w, sizeof(w)), 0);
                ASSERT_CONTAINS(w, "sys_vendor unreadable (not a regular file), "
                                   "product_name unreadable (not a regular file)");
                ASSERT_CONTAINS(w, "bios_vendor is 'SeaBIOS'");
        }
        write_str(p, "board_vendor", "Google\n");
        ASSERT_EQ(detect_from_dmi(p, &cloud, why, sizeof(why)), 1);
        ASSERT_EQ(cloud, CLOUD_GCP);
        ASSERT_STREQ(why, "board_vendor is 'Google'");
        rm_rf(dir);
}

/*
 * Permissions, as an unprivileged user: as root in a child that drops to
 * nobody, so that root's capabilities do not hide the checks.
 */
static void unreadable_checks(const char *dir) {
        char p[512], why[512];
        CloudKind cloud = CLOUD_AUTO;

        /* A root we may not open. */
        path_join(p, sizeof(p), dir, "locked");
        ASSERT_ERR(detect_from_dmi(p, &cloud, why, sizeof(why)), EACCES);
        /* A root we may list but not enter: every file fails the same way. */
        path_join(p, sizeof(p), dir, "noenter");
        ASSERT_ERR(detect_from_dmi(p, &cloud, why, sizeof(why)), EACCES);
        /* One unreadable file among readable ones. */
        path_join(p, sizeof(p), dir, "partial");
        ASSERT_EQ(detect_from_dmi(p, &cloud, why, sizeof(why)), 1);
        ASSERT_EQ(cloud, CLOUD_ALIBABA);
        ASSERT_STREQ(why, "product_name is 'Alibaba Cloud ECS'");
        path_join(p, sizeof(p), dir, "partial-none");
        ASSERT_EQ(detect_from_dmi(p, &cloud, why, sizeof(why)), 0);
        ASSERT_CONTAINS(why, "sys_vendor unreadable (Permission denied), product_name is 'VirtualBox'");
}

static void test_dmi_unreadable(void) {
        char dir[64], p[512];
        pid_t pid;
        int status;

        make_tmpdir(dir, sizeof(dir));
        ASSERT_OK(chmod(dir, 0755));

        path_join(p, sizeof(p), dir, "locked");
        ASSERT_OK(mkdir(p, 0755));
        write_str(p, "sys_vendor", "Amazon EC2\n");
        ASSERT_OK(chmod(p, geteuid() == 0 ? 0700 : 0000));

        path_join(p, sizeof(p), dir, "noenter");
        ASSERT_OK(mkdir(p, 0755));
        write_str(p, "sys_vendor", "Amazon EC2\n");
        ASSERT_OK(chmod(p, geteuid() == 0 ? 0744 : 0444));

        path_join(p, sizeof(p), dir, "partial");
        ASSERT_OK(mkdir(p, 0755));
        write_str(p, "sys_vendor", "Alibaba Cloud\n");
        write_str(p, "product_name", "Alibaba Cloud ECS\n");
        {
                char q[600];
                path_join(q, sizeof(q), p, "sys_vendor");
                ASSERT_OK(chmod(q, geteuid() == 0 ? 0600 : 0000));
        }

        path_join(p, sizeof(p), dir, "partial-none");
        ASSERT_OK(mkdir(p, 0755));
        write_str(p, "sys_vendor", "innotek GmbH\n");
        write_str(p, "product_name", "VirtualBox\n");
        {
                char q[600];
                path_join(q, sizeof(q), p, "sys_vendor");
                ASSERT_OK(chmod(q, geteuid() == 0 ? 0600 : 0000));
        }

        if (geteuid() != 0) {
                unreadable_checks(dir);
                rm_rf(dir);
                return;
        }

        pid = fork();
        ASSERT_TRUE(pid >= 0);
        if (pid == 0) {
                if (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0)
                        TEST_FAIL("cannot drop to nobody: %m");
                unreadable_checks(dir);
                _exit(0);
        }
        ASSERT_EQ(waitpid(pid, &status, 0), pid);
        ASSERT_TRUE(WIFEXITED(status));
        ASSERT_EQ(WEXITSTATUS(status), 0);
        rm_rf(dir);
}

static void test_dmi_root_env(void) {
        ASSERT_OK(unsetenv(DETECT_DMI_ROOT_ENV));
        ASSERT_STREQ(detect_dmi_root(), "/sys/class/dmi/id");
        ASSERT_OK(setenv(DETECT_DMI_ROOT_ENV, "", 1));
        ASSERT_STREQ(detect_dmi_root(), "/sys/class/dmi/id");
        ASSERT_OK(setenv(DETECT_DMI_ROOT_ENV, "/tmp/x", 1));
        ASSERT_STREQ(detect_dmi_root(), "/tmp/x");
        ASSERT_OK(unsetenv(DETECT_DMI_ROOT_ENV));
}

/* ---- probes: loop helpers -------------------------------------------------- */

static void run_until(const bool *flag) {
        tests_run_until(&loop, &tick, flag, WAIT_MS);
}

static void run_for(uint64_t ms) {
        tests_run_for(&loop, &tick, ms);
}

typedef struct Outcome {
        bool done;
        unsigned calls;
        CloudKind cloud;
        char why[1024];
        bool free_in_callback;
        DetectProbe **owner; /* set to NULL when the callback frees */
} Outcome;

static void on_probe_done(DetectProbe *p, CloudKind cloud, const char *why, void *userdata) {
        Outcome *o = userdata;

        ASSERT_TRUE(why);
        o->done = true;
        o->calls++;
        o->cloud = cloud;
        (void) snprintf(o->why, sizeof(o->why), "%s", why);
        if (o->free_in_callback) {
                ASSERT_TRUE(o->owner && *o->owner == p);
                *o->owner = detect_probe_free(p);
        }
}

static void all_urls(const char *url, const char *urls[_CLOUD_MAX]) {
        for (CloudKind k = 0; k < _CLOUD_MAX; k++)
                urls[k] = k == CLOUD_AUTO ? NULL : url;
}

/* Run one probe round against @urls to its end; the round is freed after. */
static uint64_t probe(const char *const urls[_CLOUD_MAX], uint64_t timeout_usec, Outcome *o) {
        DetectProbe *p = NULL;
        uint64_t start = uv_hrtime();

        *o = (Outcome) {};
        ASSERT_OK(detect_probe_start(&loop, http, urls, timeout_usec, on_probe_done, o, &p));
        ASSERT_TRUE(p);
        ASSERT_FALSE(o->done);
        run_until(&o->done);
        /* Late answers of cancelled probes must not call again. */
        run_for(50);
        ASSERT_EQ(o->calls, 1);
        fprintf(stderr, "      %s: %s\n", o->cloud >= 0 ? cloud_kind_to_string(o->cloud) : "none", o->why);
        detect_probe_free(p);
        return (uv_hrtime() - start) / 1000000;
}

/* ---- probes: a canned-answer server ------------------------------------------ */

typedef struct Canned {
        const char *method;
        const char *path;   /* exact, with the query */
        const char *answer; /* status line and headers without Content-Length/Connection, then \r\n, body;
                             * NULL: never answer */
} Canned;

typedef struct CannedServer {
        uv_tcp_t listener;
        char url[64];
        const Canned *canned;
        size_t n_canned;
        unsigned requests;
        char heads[8][1024]; /* the request heads, in order of arrival */
} CannedServer;

typedef struct CannedConn {
        uv_tcp_t tcp;
        CannedServer *server;
        char head[4096];
        size_t size;
        bool answered;
        uv_write_t write;
        uv_buf_t out;
        char *reply;
} CannedConn;

static void conn_close_cb(uv_handle_t *h) {
        CannedConn *c = h->data;

        free(c->reply);
        free(c);
}

static void conn_close(CannedConn *c) {
        if (!uv_is_closing((uv_handle_t *) &c->tcp))
                uv_close((uv_handle_t *) &c->tcp, conn_close_cb);
}

static void conn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
        CannedConn *c = h->data;

        *buf = uv_buf_init(c->head + c->size, (unsigned) (sizeof(c->head) - 1 - c->size));
}

static void conn_write_cb(uv_write_t *req, int status) {
        conn_close(req->data);
}

static const char *canned_answer(CannedServer *s, const char *head) {
        char method[16], path[512];

        if (sscanf(head, "%15s %511s", method, path) != 2)
                return "HTTP/1.1 400 Bad Request\r\n\r\n";
        for (size_t i = 0; i < s->n_canned; i++)
                if (streq(s->canned[i].method, method) && streq(s->canned[i].path, path))
                        return s->canned[i].answer;
        return "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnot here";
}

static void conn_read_cb(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
        CannedConn *c = st->data;
        CannedServer *s = c->server;
        const char *answer, *body;

        if (n < 0) {
                conn_close(c);
                return;
        }
        c->size += (size_t) n;
        c->head[c->size] = 0;
        if (c->answered || !strstr(c->head, "\r\n\r\n"))
                return;
        c->answered = true;
        if (s->requests < ELEMENTSOF(s->heads)) {
                size_t k = MIN(c->size, sizeof(s->heads[0]) - 1);
                memcpy(s->heads[s->requests], c->head, k);
                s->heads[s->requests][k] = 0;
        }
        s->requests++;

        answer = canned_answer(s, c->head);
        if (!answer)
                return; /* silent: the client gives up */
        body = strstr(answer, "\r\n\r\n");
        ASSERT_TRUE(body);
        body += 4;
        ASSERT_TRUE(asprintf(&c->reply, "%.*sContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
                             (int) (body - 2 - answer), answer, strlen(body), body) > 0);
        c->out = uv_buf_init(c->reply, (unsigned) strlen(c->reply));
        c->write.data = c;
        if (uv_write(&c->write, st, &c->out, 1, conn_write_cb) < 0)
                conn_close(c);
}

static void on_connection(uv_stream_t *l, int status) {
        CannedServer *s = l->data;
        CannedConn *c;

        ASSERT_OK(status);
        c = calloc(1, sizeof(*c));
        ASSERT_TRUE(c);
        c->server = s;
        ASSERT_OK(uv_tcp_init(&loop, &c->tcp));
        c->tcp.data = c;
        ASSERT_OK(uv_accept(l, (uv_stream_t *) &c->tcp));
        ASSERT_OK(uv_read_start((uv_stream_t *) &c->tcp, conn_alloc_cb, conn_read_cb));
}

static void canned_start(CannedServer *s, const Canned *canned, size_t n) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        struct sockaddr_storage bound;
        int len = sizeof(bound);

        *s = (CannedServer) { .canned = canned, .n_canned = n };
        ASSERT_OK(uv_tcp_init(&loop, &s->listener));
        s->listener.data = s;
        ASSERT_OK(uv_tcp_bind(&s->listener, (const struct sockaddr *) &sa, 0));
        ASSERT_OK(uv_listen((uv_stream_t *) &s->listener, 16, on_connection));
        ASSERT_OK(uv_tcp_getsockname(&s->listener, (struct sockaddr *) &bound, &len));
        (void) snprintf(s->url, sizeof(s->url), "http://127.0.0.1:%u/",
                        ntohs(((struct sockaddr_in *) &bound)->sin_port));
}

static void canned_stop(CannedServer *s) {
        uv_close((uv_handle_t *) &s->listener, NULL);
        run_for(20);
}

/* The request head for @path (request line start, e.g. "GET /x"), or NULL. */
static const char *canned_head(CannedServer *s, const char *start) {
        for (unsigned i = 0; i < MIN(s->requests, ELEMENTSOF(s->heads)); i++)
                if (strncmp(s->heads[i], start, strlen(start)) == 0)
                        return s->heads[i];
        return NULL;
}

#define AWS_PUT "/latest/api/token"
#define GCP_GET "/computeMetadata/v1/instance/id"
#define AZURE_GET "/metadata/instance/compute/vmId?api-version=2021-02-01&format=text"
#define ALI_GET "/latest/meta-data/instance-id"

/* ---- probes: tests ------------------------------------------------------------ */

static void test_probe_fake_aws(void) {
        FakeServer *fake = NULL;
        const char *urls[_CLOUD_MAX];
        char expect[256];
        Outcome o;

        /* The daemon's own fake IMDSv2: only the token PUT answers without a token. */
        ASSERT_OK(fake_server_new(&loop, CLOUD_AWS, "127.0.0.1", 0, &fake));
        all_urls(fake_server_url(fake), urls);
        (void) probe(urls, 2 * USEC_PER_SEC, &o);
        ASSERT_EQ(o.cloud, CLOUD_AWS);
        (void) snprintf(expect, sizeof(expect),
                        "probe: PUT %s/latest/api/token answered 200 with an IMDSv2 session token",
                        fake_server_url(fake));
        ASSERT_STREQ(o.why, expect);

        /* AWS alone. */
        for (CloudKind k = 0; k < _CLOUD_MAX; k++)
                urls[k] = k == CLOUD_AWS ? fake_server_url(fake) : NULL;
        (void) probe(urls, 2 * USEC_PER_SEC, &o);
        ASSERT_EQ(o.cloud, CLOUD_AWS);

        /* Without AWS, nothing else on it looks like a cloud. */
        all_urls(fake_server_url(fake), urls);
        urls[CLOUD_AWS] = NULL;
        (void) probe(urls, 2 * USEC_PER_SEC, &o);
        ASSERT_EQ(o.cloud, _CLOUD_INVALID);
        ASSERT_CONTAINS(o.why, "no metadata service answered like a cloud's: gcp: GET ");
        ASSERT_CONTAINS(o.why, "/computeMetadata/v1/instance/id: HTTP 404; azure: GET ");
        ASSERT_CONTAINS(o.why, "&format=text: HTTP 404; alibaba: GET ");
        /* IMDSv2 serves instance-id only with a token. */
        ASSERT_CONTAINS(o.why, "/latest/meta-data/instance-id: HTTP 401");
        ASSERT_TRUE(!strstr(o.why, "aws:"));
        fake_server_close(fake);
}

static uint16_t closed_port(void) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(sa);
        int fd;

        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ASSERT_TRUE(fd >= 0);
        ASSERT_OK(bind(fd, (struct sockaddr *) &sa, sizeof(sa)));
        ASSERT_OK(getsockname(fd, (struct sockaddr *) &sa, &len));
        ASSERT_OK(close(fd));
        return ntohs(sa.sin_port);
}

static void test_probe_refused(void) {
        const char *urls[_CLOUD_MAX];
        char url[64];
        uint64_t ms;
        Outcome o;

        (void) snprintf(url, sizeof(url), "http://127.0.0.1:%u", closed_port());
        all_urls(url, urls);
        ms = probe(urls, 1 * USEC_PER_SEC, &o);
        ASSERT_EQ(o.cloud, _CLOUD_INVALID);
        ASSERT_TRUE(ms < 1000);
        ASSERT_CONTAINS(o.why, "no metadata service answered like a cloud's: aws: PUT http://127.0.0.1:");
        ASSERT_CONTAINS(o.why, "/latest/api/token: connection refused; gcp: GET ");
        ASSERT_CONTAINS(o.why, "/computeMetadata/v1/instance/id: connection refused; azure: GET ");
        ASSERT_CONTAINS(o.why, AZURE_GET ": connection refused; alibaba: GET ");
        ASSERT_CONTAINS(o.why, ALI_GET ": connection refused");
}

static const Canned silent[] = {
        { "PUT", AWS_PUT, NULL },
        { "GET", GCP_GET, NULL },
        { "GET", AZURE_GET, NULL },
        { "GET", ALI_GET, NULL },
};

static void test_probe_timeout(void) {
        const char *urls[_CLOUD_MAX];
        CannedServer s;
        uint64_t ms;
        Outcome o;

        canned_start(&s, silent, ELEMENTSOF(silent));
        all_urls(s.url, urls);
        ms = probe(urls, 300 * USEC_PER_MSEC, &o);
        ASSERT_EQ(o.cloud, _CLOUD_INVALID);
        ASSERT_TRUE(ms >= 250);
        ASSERT_TRUE(ms < 3000);
        ASSERT_CONTAINS(o.why, "/latest/api/token: no answer within 300ms; gcp:");
        ASSERT_EQ(s.requests, 4);
        canned_stop(&s);
}

typedef struct ProbeCase {
        const char *name;
        Canned canned[4];
        CloudKind cloud;
        const char *why; /* substring */
} ProbeCase;

static const ProbeCase probe_cases[] = {
        { "gcp", { { "GET", GCP_GET,
                     "HTTP/1.1 200 OK\r\nMetadata-Flavor: Google\r\nContent-Type: application/text\r\n\r\n"
                     "4520031799277581759" } },
          CLOUD_GCP, GCP_GET " answered 200 with Metadata-Flavor: Google" },
        { "azure", { { "GET", AZURE_GET, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
                                         "02aab8a4-74ef-476e-8182-f6d2ba4166a6" } },
          CLOUD_AZURE, AZURE_GET " answered 200 with vmId '02aab8a4-74ef-476e-8182-f6d2ba4166a6'" },
        { "alibaba", { { "GET", ALI_GET, "HTTP/1.1 200 OK\r\n\r\ni-bp67acfmxazb4ph6ab2c\n" } },
          CLOUD_ALIBABA, ALI_GET " answered 200 with instance id 'i-bp67acfmxazb4ph6ab2c'" },
        { "aws", { { "PUT", AWS_PUT, "HTTP/1.1 200 OK\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n"
                                     "AQAEAFrK3c0VbE8kq_9Q7Zc3JxZ0Yd5bM4Lw-rGt1nQ==" } },
          CLOUD_AWS, AWS_PUT " answered 200 with an IMDSv2 session token" },

        /* The shape decides: near misses are nobody. */
        { "gcp without the answer header",
          { { "GET", GCP_GET, "HTTP/1.1 200 OK\r\n\r\n4520031799277581759" } },
          _CLOUD_INVALID, "gcp: GET %s" GCP_GET ": answered 200 without Metadata-Flavor: Google" },
        { "gcp, wrong flavor",
          { { "GET", GCP_GET, "HTTP/1.1 200 OK\r\nMetadata-Flavor: Amazon\r\n\r\n4520031799277581759" } },
          _CLOUD_INVALID, "answered 200 without Metadata-Flavor: Google" },
        { "azure, not a UUID", { { "GET", AZURE_GET, "HTTP/1.1 200 OK\r\n\r\n<html>hello</html>" } },
          _CLOUD_INVALID, "answered 200 but not with a vmId (a UUID)" },
        { "aws token without the TTL header",
          { { "PUT", AWS_PUT, "HTTP/1.1 200 OK\r\n\r\nAQAEAFrK3c0VbE8kq" } },
          _CLOUD_INVALID, "answered 200 without an X-aws-ec2-metadata-token-ttl-seconds header" },
        { "aws, empty token",
          { { "PUT", AWS_PUT, "HTTP/1.1 200 OK\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n" } },
          _CLOUD_INVALID, "answered 200 but not with a token" },
        /* AWS with IMDSv1 serves instance-id to anyone; that is not Alibaba. */
        { "aws id at the alibaba path", { { "GET", ALI_GET, "HTTP/1.1 200 OK\r\n\r\ni-0123456789abcdef0" } },
          _CLOUD_INVALID, "answered 200 with an AWS-shaped instance id 'i-0123456789abcdef0'" },
        { "old aws id at the alibaba path", { { "GET", ALI_GET, "HTTP/1.1 200 OK\r\n\r\ni-12ab34cd" } },
          _CLOUD_INVALID, "AWS-shaped instance id 'i-12ab34cd'" },
        { "alibaba, no id", { { "GET", ALI_GET, "HTTP/1.1 200 OK\r\n\r\nhello" } },
          _CLOUD_INVALID, "answered 200 but not with an instance id 'i-...'" },
        { "500 everywhere", { { "PUT", AWS_PUT, "HTTP/1.1 500 Oops\r\n\r\n" },
                              { "GET", GCP_GET, "HTTP/1.1 503 Busy\r\nMetadata-Flavor: Google\r\n\r\n" },
                              { "GET", AZURE_GET, "HTTP/1.1 400 Bad\r\n\r\n" },
                              { "GET", ALI_GET, "HTTP/1.1 403 No\r\n\r\n" } },
          _CLOUD_INVALID, "aws: PUT %s" AWS_PUT ": HTTP 500; gcp: GET %s" GCP_GET ": HTTP 503; azure: GET %s"
          AZURE_GET ": HTTP 400; alibaba: GET %s" ALI_GET ": HTTP 403" },
};

/* @why with each %s replaced by @url without its trailing '/'. */
static void expand(char *buf, size_t size, const char *why, const char *url) {
        size_t ulen = strlen(url) - 1, n = 0;

        for (const char *p = why; *p && n + ulen + 1 < size; p++) {
                if (p[0] == '%' && p[1] == 's') {
                        memcpy(buf + n, url, ulen);
                        n += ulen;
                        p++;
                } else
                        buf[n++] = *p;
        }
        buf[n] = 0;
}

static void test_probe_cases(void) {
        for (size_t i = 0; i < ELEMENTSOF(probe_cases); i++) {
                const ProbeCase *c = &probe_cases[i];
                const char *urls[_CLOUD_MAX];
                char expect[1024];
                size_t n = 0;
                CannedServer s;
                Outcome o;

                fprintf(stderr, "   %s\n", c->name);
                while (n < ELEMENTSOF(c->canned) && c->canned[n].method)
                        n++;
                canned_start(&s, c->canned, n);
                all_urls(s.url, urls);
                (void) probe(urls, 2 * USEC_PER_SEC, &o);
                ASSERT_EQ(o.cloud, c->cloud);
                expand(expect, sizeof(expect), c->why, s.url);
                ASSERT_CONTAINS(o.why, expect);
                if (c->cloud >= 0)
                        ASSERT_TRUE(strncmp(o.why, "probe: ", 7) == 0);
                canned_stop(&s);
        }
}

static void test_probe_requests(void) {
        const char *urls[_CLOUD_MAX];
        CannedServer s;
        const char *h;
        Outcome o;

        /* What each probe sends (404 everywhere, so all four run to the end). */
        canned_start(&s, NULL, 0);
        all_urls(s.url, urls); /* with a trailing '/', which must not double */
        (void) probe(urls, 2 * USEC_PER_SEC, &o);
        ASSERT_EQ(o.cloud, _CLOUD_INVALID);
        ASSERT_EQ(s.requests, 4);

        h = canned_head(&s, "PUT " AWS_PUT " HTTP/1.1\r\n");
        ASSERT_TRUE(h);
        ASSERT_CONTAINS(h, "\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n");
        h = canned_head(&s, "GET " GCP_GET " HTTP/1.1\r\n");
        ASSERT_TRUE(h);
        ASSERT_CONTAINS(h, "\r\nMetadata-Flavor: Google\r\n");
        h = canned_head(&s, "GET " AZURE_GET " HTTP/1.1\r\n");
        ASSERT_TRUE(h);
        ASSERT_CONTAINS(h, "\r\nMetadata: true\r\n");
        h = canned_head(&s, "GET " ALI_GET " HTTP/1.1\r\n");
        ASSERT_TRUE(h);
        ASSERT_TRUE(!strstr(h, "Metadata"));
        canned_stop(&s);
}

static const Canned gcp_fast_aws_silent[] = {
        { "PUT", AWS_PUT, NULL },
        { "GET", GCP_GET, "HTTP/1.1 200 OK\r\nMetadata-Flavor: Google\r\n\r\n1" },
};

static void test_probe_first_positive(void) {
        const char *urls[_CLOUD_MAX];
        CannedServer s;
        uint64_t ms;
        Outcome o;

        /* A positive answer ends the round at once, without waiting for a silent probe. */
        canned_start(&s, gcp_fast_aws_silent, ELEMENTSOF(gcp_fast_aws_silent));
        all_urls(s.url, urls);
        ms = probe(urls, 3 * USEC_PER_SEC, &o);
        ASSERT_EQ(o.cloud, CLOUD_GCP);
        ASSERT_TRUE(ms < 2000);
        canned_stop(&s);
}

static void test_probe_free(void) {
        const char *urls[_CLOUD_MAX];
        DetectProbe *p = NULL;
        CannedServer s;
        Outcome o = {};

        canned_start(&s, gcp_fast_aws_silent, ELEMENTSOF(gcp_fast_aws_silent));
        all_urls(s.url, urls);

        /* Freed inside the callback. */
        o.free_in_callback = true;
        o.owner = &p;
        ASSERT_OK(detect_probe_start(&loop, http, urls, USEC_PER_SEC, on_probe_done, &o, &p));
        run_until(&o.done);
        ASSERT_TRUE(p == NULL);
        ASSERT_EQ(o.cloud, CLOUD_GCP);
        run_for(50);
        ASSERT_EQ(o.calls, 1);

        /* Freed before anything came back: no callback at all. */
        o = (Outcome) {};
        ASSERT_OK(detect_probe_start(&loop, http, urls, USEC_PER_SEC, on_probe_done, &o, &p));
        p = detect_probe_free(p);
        run_for(100);
        ASSERT_EQ(o.calls, 0);

        /* Freed with one probe still hanging after the others failed. */
        canned_stop(&s);
        canned_start(&s, silent, 1);
        all_urls(s.url, urls);
        o = (Outcome) {};
        ASSERT_OK(detect_probe_start(&loop, http, urls, 5 * USEC_PER_SEC, on_probe_done, &o, &p));
        run_for(100);
        ASSERT_EQ(o.calls, 0);
        p = detect_probe_free(p);
        run_for(50);
        ASSERT_EQ(o.calls, 0);
        canned_stop(&s);

        ASSERT_TRUE(detect_probe_free(NULL) == NULL);
}

static void test_probe_bad_args(void) {
        const char *urls[_CLOUD_MAX] = {};
        DetectProbe *p = NULL;
        Outcome o = {};

        ASSERT_ERR(detect_probe_start(&loop, http, urls, USEC_PER_SEC, on_probe_done, &o, &p), EINVAL);
        urls[CLOUD_AUTO] = "http://127.0.0.1:1"; /* ignored */
        ASSERT_ERR(detect_probe_start(&loop, http, urls, USEC_PER_SEC, on_probe_done, &o, &p), EINVAL);
        urls[CLOUD_GCP] = "ftp://127.0.0.1:1";
        ASSERT_ERR(detect_probe_start(&loop, http, urls, USEC_PER_SEC, on_probe_done, &o, &p), EINVAL);
        urls[CLOUD_GCP] = "///";
        ASSERT_ERR(detect_probe_start(&loop, http, urls, USEC_PER_SEC, on_probe_done, &o, &p), EINVAL);
        /* A bad URL after good ones: the started ones are cancelled without a call. */
        urls[CLOUD_AWS] = "http://127.0.0.1:1";
        urls[CLOUD_GCP] = "http://127.0.0.1:1";
        urls[CLOUD_ALIBABA] = "gopher://127.0.0.1:1";
        ASSERT_ERR(detect_probe_start(&loop, http, urls, USEC_PER_SEC, on_probe_done, &o, &p), EINVAL);
        ASSERT_TRUE(p == NULL);
        run_for(50);
        ASSERT_EQ(o.calls, 0);
}

static void test_probe_after_http_close(void) {
        const char *urls[_CLOUD_MAX];
        CannedServer s;
        DetectProbe *p = NULL;
        Outcome o = {};
        Http *h = NULL;

        /* A round running when http closes never calls back and is freed afterwards. */
        canned_start(&s, silent, ELEMENTSOF(silent));
        all_urls(s.url, urls);
        ASSERT_OK(http_new(&loop, &h));
        ASSERT_OK(detect_probe_start(&loop, h, urls, USEC_PER_SEC, on_probe_done, &o, &p));
        run_for(50);
        http_close(h);
        run_for(50);
        ASSERT_EQ(o.calls, 0);
        p = detect_probe_free(p);

        ASSERT_OK(http_new(&loop, &h));
        http_close(h);
        ASSERT_ERR(detect_probe_start(&loop, h, urls, USEC_PER_SEC, on_probe_done, &o, &p), ESHUTDOWN);
        run_for(20);
        canned_stop(&s);
}

int main(void) {
        RUN(test_fixtures);
        RUN(test_dmi_cases);
        RUN(test_dmi_missing_and_empty);
        RUN(test_dmi_caps);
        RUN(test_dmi_broken_root);
        RUN(test_dmi_unreadable);
        RUN(test_dmi_root_env);

        ASSERT_OK(uv_loop_init(&loop));
        ASSERT_OK(uv_timer_init(&loop, &tick));
        ASSERT_OK(http_new(&loop, &http));

        RUN(test_probe_fake_aws);
        RUN(test_probe_refused);
        RUN(test_probe_timeout);
        RUN(test_probe_cases);
        RUN(test_probe_requests);
        RUN(test_probe_first_positive);
        RUN(test_probe_free);
        RUN(test_probe_bad_args);
        RUN(test_probe_after_http_close);

        http_close(http);
        uv_close((uv_handle_t *) &tick, NULL);
        (void) uv_run(&loop, UV_RUN_DEFAULT);
        ASSERT_EQ(uv_loop_close(&loop), 0);
        fprintf(stderr, "test-detect: ok\n");
        return 0;
}
