/* SPDX-License-Identifier: MIT */
/*
 * test-store-azure.c - the Azure Blob backend. Offline: the Shared Key
 * string to sign and signature against Microsoft's documented example and
 * fixed vectors (computed independently with Python's hmac), URLs, block
 * ids, the block list, error answers, the HTTP date. Online, when Azurite
 * answers on 127.0.0.1 ($SPOTWATCH_AZURITE_URL, default
 * http://127.0.0.1:10000/devstoreaccount1; else that part is skipped with a
 * message, the integration test starts its own): real uploads through
 * store_upload_start() on a real loop with a real file - a single Put Blob,
 * 40 MiB as 5 blocks with 4 in flight, read back byte for byte; SAS; a
 * wrong key (one clear 403); a byte changed while it is sent (Md5Mismatch,
 * hashed again and retried); the deadline; store_check_start().
 *
 * The backend's static helpers are tested by including its source; the
 * linker then takes store_azure_ops from here and not from the library.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store-azure.c"

#include "tests-loop.h"
#include "tests.h"

#define MIB (1024U * 1024U)
#define RUN_ENV(fn, e)                                                         \
        do {                                                                   \
                fprintf(stderr, "== %s (Azurite)\n", #fn);                     \
                fn(e);                                                         \
        } while (0)
#define AZURITE_ACCOUNT "devstoreaccount1"
/* Azurite's well-known development key (public, in its README): not a secret. */
#define AZURITE_KEY \
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

/* ---- offline ------------------------------------------------------------------------ */

static void test_http_date(void) {
        char d[128];

        az_http_date(UINT64_C(784111777) * USEC_PER_SEC + 999999, d);
        ASSERT_STREQ(d, "Sun, 06 Nov 1994 08:49:37 GMT");
        az_http_date(UINT64_C(1735689599) * USEC_PER_SEC, d);
        ASSERT_STREQ(d, "Tue, 31 Dec 2024 23:59:59 GMT");
}

static void sign_with_azurite_key(const char *sts, char sig[static 45]) {
        _cleanup_free_ uint8_t *key = NULL;
        size_t n = 0;

        ASSERT_OK(store_base64_decode(AZURITE_KEY, &key, &n));
        ASSERT_EQ(n, 64);
        ASSERT_OK(az_sign(key, n, sts, sig));
}

/* The example of "Authorize with Shared Key" (Blob service, GET container metadata). */
static void test_string_to_sign_doc_example(void) {
        const char *ms[] = { "x-ms-date:Sun, 11 Oct 2009 21:49:13 GMT", "x-ms-version:2009-09-19", NULL };
        const char *query[] = { "comp:metadata", "restype:container", "timeout:20", NULL };
        AzSignInput in = {
                .verb = "GET",
                .ms_headers = ms,
                .resource = "/myaccount/myaccount/mycontainer",
                .query = query,
        };
        _cleanup_free_ char *sts = NULL;
        char sig[45];

        ASSERT_OK(az_string_to_sign(&in, &sts));
        ASSERT_STREQ(sts, "GET\n\n\n\n\n\n\n\n\n\n\n\n"
                          "x-ms-date:Sun, 11 Oct 2009 21:49:13 GMT\nx-ms-version:2009-09-19\n"
                          "/myaccount/myaccount/mycontainer\ncomp:metadata\nrestype:container\ntimeout:20");
        sign_with_azurite_key(sts, sig);
        ASSERT_STREQ(sig, "Su5rvibNeMxB7A4I87rOtEgCDtdICsL8v5H+yJs0W+M=");
}

/* A Put Block as this backend sends it: length, Content-MD5, the block id decoded in the resource. */
static void test_string_to_sign_put_block(void) {
        const char *ms[] = { "x-ms-date:Sun, 06 Nov 1994 08:49:37 GMT", "x-ms-version:" AZ_VERSION, NULL };
        const char *query[] = { "blockid:c3B3LTAwMDAwMDAwMDAx", "comp:block", NULL };
        _cleanup_free_ char *sts = NULL, *url = NULL, *resource = NULL;
        UploadConfig c = {
                .scheme = UPLOAD_AZ,
                .account = (char *) AZURITE_ACCOUNT,
                .bucket = (char *) "ck",
                .endpoint = (char *) "http://127.0.0.1:10000/devstoreaccount1/",
        };
        AzSignInput in = {
                .verb = "PUT",
                .content_length = 4194304,
                .content_md5 = "Q2hlY2sgSW50ZWdyaXR5IQ==",
                .ms_headers = ms,
                .query = query,
        };
        char sig[45];

        ASSERT_OK(az_urls(&c, "run 42/model.pt", &url, &resource));
        ASSERT_STREQ(url, "http://127.0.0.1:10000/devstoreaccount1/ck/run%2042/model.pt");
        ASSERT_STREQ(resource, "/devstoreaccount1/devstoreaccount1/ck/run%2042/model.pt");
        in.resource = resource;
        ASSERT_OK(az_string_to_sign(&in, &sts));
        ASSERT_STREQ(sts, "PUT\n\n\n4194304\nQ2hlY2sgSW50ZWdyaXR5IQ==\n\n\n\n\n\n\n\n"
                          "x-ms-date:Sun, 06 Nov 1994 08:49:37 GMT\nx-ms-version:2021-08-06\n"
                          "/devstoreaccount1/devstoreaccount1/ck/run%2042/model.pt\n"
                          "blockid:c3B3LTAwMDAwMDAwMDAx\ncomp:block");
        sign_with_azurite_key(sts, sig);
        ASSERT_STREQ(sig, "edB+MHJi1bOGveyLJSoh5ne/bR605g5geXx6vKCB8uo=");
}

static void test_urls(void) {
        _cleanup_free_ char *url = NULL, *resource = NULL;
        UploadConfig c = {
                .scheme = UPLOAD_AZ,
                .account = (char *) "acct",
                .bucket = (char *) "ckpt",
        };

        ASSERT_OK(az_urls(&c, "run-42/a+b.pt", &url, &resource));
        ASSERT_STREQ(url, "https://acct.blob.core.windows.net/ckpt/run-42/a%2Bb.pt");
        ASSERT_STREQ(resource, "/acct/ckpt/run-42/a%2Bb.pt");
}

static void test_block_ids(void) {
        static const unsigned cases[] = { 0, 1, 9, 10, 99, 12345, AZ_BLOCKS_MAX - 1 };
        char id[AZ_BLOCK_ID_LEN + 1];
        _cleanup_free_ uint8_t *raw = NULL;
        size_t n = 0;

        az_block_id(0, id);
        ASSERT_STREQ(id, "c3B3LTAwMDAwMDAwMDAx");
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char want[32];

                az_block_id(cases[i], id);
                ASSERT_EQ(strlen(id), AZ_BLOCK_ID_LEN);
                ASSERT_TRUE(!strchr(id, '='));
                ASSERT_OK(store_base64_decode(id, &raw, &n));
                ASSERT_EQ(n, AZ_BLOCK_ID_RAW);
                (void) snprintf(want, sizeof(want), "spw-%011u", cases[i] + 1);
                ASSERT_TRUE(memcmp(raw, want, n) == 0);
                free(raw);
                raw = NULL;
        }
}

static void test_block_list(void) {
        AzOp op = { .n_blocks = 3 };

        ASSERT_OK(build_block_list(&op));
        ASSERT_STREQ(op.block_list, "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<BlockList>"
                                    "<Latest>c3B3LTAwMDAwMDAwMDAx</Latest>"
                                    "<Latest>c3B3LTAwMDAwMDAwMDAy</Latest>"
                                    "<Latest>c3B3LTAwMDAwMDAwMDAz</Latest></BlockList>\n");
        ASSERT_EQ(op.block_list_size, strlen(op.block_list));
        free(op.block_list);
}

static void test_parse_error(void) {
        static const struct {
                const char *body;
                const char *code, *message;
        } cases[] = {
                { "\xEF\xBB\xBF<?xml version=\"1.0\" encoding=\"utf-8\"?><Error>"
                  "<Code>AuthenticationFailed</Code><Message>Server failed to authenticate the request."
                  "\nRequestId:1b2c\nTime:2024-01-01T00:00:00Z</Message>"
                  "<AuthenticationErrorDetail>sig</AuthenticationErrorDetail></Error>",
                  "AuthenticationFailed", "Server failed to authenticate the request. sig" },
                { "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>AuthenticationFailed</Code>"
                  "<Message>Server failed to authenticate the request.</Message>"
                  "<AuthenticationErrorDetail>Invalid token audience.</AuthenticationErrorDetail></Error>",
                  "AuthenticationFailed",
                  "Server failed to authenticate the request. Invalid token audience." },
                { "<?xml version=\"1.0\"?><Error><Code>Md5Mismatch</Code><Message>The MD5 value "
                  "specified in the request did not match with the MD5 value calculated by the server."
                  "</Message></Error>",
                  "Md5Mismatch",
                  "The MD5 value specified in the request did not match with the MD5 value calculated by "
                  "the server." },
                { "<Error><Nested><Code>x</Code></Nested><Code>ServerBusy</Code></Error>", "ServerBusy",
                  "" },
                { "not xml at all", "", "" },
                { "<Error><Code>Truncated", "", "" },
                { "", "", "" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char code[128], message[320];

                az_parse_error(NULL, cases[i].body, strlen(cases[i].body), code, sizeof(code), message,
                               sizeof(message));
                ASSERT_STREQ(code, cases[i].code);
                ASSERT_STREQ(message, cases[i].message);
        }
}

static void test_classify(void) {
        ASSERT_TRUE(az_md5_rejected(400, "Md5Mismatch", ""));
        ASSERT_TRUE(az_md5_rejected(400, "InvalidOperation", "Provided contentMD5 doesn't match."));
        ASSERT_FALSE(az_md5_rejected(400, "InvalidOperation", "The size of the request body mismatches"));
        ASSERT_FALSE(az_md5_rejected(403, "Md5Mismatch", ""));
        ASSERT_TRUE(az_retryable(0, 503));
        ASSERT_TRUE(az_retryable(0, 500));
        ASSERT_TRUE(az_retryable(0, 429));
        ASSERT_TRUE(az_retryable(-ETIMEDOUT, 0));
        ASSERT_TRUE(az_retryable(-ECONNRESET, 0));
        ASSERT_FALSE(az_retryable(0, 404));
        ASSERT_FALSE(az_retryable(0, 409));
        ASSERT_FALSE(az_retryable(-ENODATA, 0));
}

/* ---- against Azurite ------------------------------------------------------------------ */

typedef struct Env {
        uv_loop_t loop;
        uv_timer_t tick;
        Http *http;
        char *endpoint;     /* http://127.0.0.1:PORT/devstoreaccount1 */
        char container[64];
        char dir[64];
} Env;

typedef struct Outcome {
        bool done;
        int error;
        char detail[1024];
        StoreResult res;
        StoreUpload *u;
} Outcome;

static void upload_done(StoreUpload *u, int error, const char *detail, const StoreResult *res,
                        void *userdata) {
        Outcome *o = userdata;

        ASSERT_TRUE(u == o->u);
        ASSERT_FALSE(o->done);
        o->done = true;
        o->error = error;
        (void) snprintf(o->detail, sizeof(o->detail), "%s", strna(detail));
        o->res = *res;
}

/* A request signed with the account key, outside the backend: creating the container, reading back. */
typedef struct Raw {
        bool done;
        int error;
        long status;
        char *body;
        size_t size;
} Raw;

static void raw_done(HttpRequest *r, int error, long status, const char *body, size_t size, void *userdata) {
        Raw *x = userdata;

        x->done = true;
        x->error = error;
        x->status = status;
        x->body = malloc(size + 1);
        ASSERT_TRUE(x->body);
        memcpy(x->body, body, size);
        x->size = size;
}

static void raw_request(Env *e, const char *verb, const char *path_query, const char *path,
                        const char *const *query, Raw *ret) {
        _cleanup_free_ char *url = NULL, *resource = NULL, *sts = NULL, *a1 = NULL, *a2 = NULL, *a3 = NULL;
        char date[128], ms_date[192], sig[45];
        const char *ms[] = { ms_date, "x-ms-version:" AZ_VERSION, NULL };
        AzSignInput in = { .verb = verb, .ms_headers = ms, .query = query };
        HttpRequest *r = NULL;

        az_http_date(now_realtime_usec(), date);
        (void) snprintf(ms_date, sizeof(ms_date), "x-ms-date:%s", date);
        ASSERT_TRUE(asprintf(&url, "%s%s", e->endpoint, path_query) > 0);
        ASSERT_TRUE(asprintf(&resource, "/" AZURITE_ACCOUNT "/" AZURITE_ACCOUNT "%s", path) > 0);
        in.resource = resource;
        ASSERT_OK(az_string_to_sign(&in, &sts));
        sign_with_azurite_key(sts, sig);
        ASSERT_TRUE(asprintf(&a1, "x-ms-date: %s", date) > 0);
        ASSERT_TRUE(asprintf(&a2, "x-ms-version: %s", AZ_VERSION) > 0);
        ASSERT_TRUE(asprintf(&a3, "Authorization: SharedKey " AZURITE_ACCOUNT ":%s", sig) > 0);
        {
                const char *headers[] = { a1, a2, a3, NULL };
                HttpRequestParams p = {
                        .method = verb,
                        .url = url,
                        .headers = headers,
                        .timeout_usec = 60 * USEC_PER_SEC,
                        .max_body = 256 * MIB,
                };

                *ret = (Raw) {};
                ASSERT_OK(http_request_new(e->http, "raw", &r));
                ASSERT_OK(http_request_start(r, &p, raw_done, ret));
                tests_run_until(&e->loop, &e->tick, &ret->done, 60000);
                http_request_free(r);
        }
}

static bool azurite_reachable(const char *endpoint) {
        struct sockaddr_in sa = { .sin_family = AF_INET };
        unsigned port = 0;
        int fd, r;

        /* Only loopback: never send anything elsewhere. */
        if (sscanf(endpoint, "http://127.0.0.1:%u/", &port) != 1 || port == 0 || port > 65535)
                return false;
        sa.sin_port = htons((uint16_t) port);
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ASSERT_TRUE(fd >= 0);
        r = connect(fd, (struct sockaddr *) &sa, sizeof(sa));
        (void) close(fd);
        return r == 0;
}

static void env_init(Env *e, const char *endpoint) {
        Raw x;
        const char *q[] = { "restype:container", NULL };
        _cleanup_free_ char *pq = NULL, *p = NULL;

        *e = (Env) {};
        ASSERT_OK(uv_loop_init(&e->loop));
        ASSERT_OK(uv_timer_init(&e->loop, &e->tick));
        ASSERT_OK(http_new(&e->loop, &e->http));
        e->endpoint = strdup(endpoint);
        ASSERT_TRUE(e->endpoint);
        (void) snprintf(e->container, sizeof(e->container), "spw-unit-%d", (int) getpid());
        (void) snprintf(e->dir, sizeof(e->dir), "/tmp/test-store-azure-XXXXXX");
        ASSERT_TRUE(mkdtemp(e->dir));

        ASSERT_TRUE(asprintf(&pq, "/%s?restype=container", e->container) > 0);
        ASSERT_TRUE(asprintf(&p, "/%s", e->container) > 0);
        raw_request(e, "PUT", pq, p, q, &x);
        ASSERT_OK(x.error);
        if (x.status != 201 && x.status != 409)
                TEST_FAIL("creating container '%s': HTTP %ld %s", e->container, x.status, x.body);
        free(x.body);
}

static void env_done(Env *e) {
        Raw x;
        const char *q[] = { "restype:container", NULL };
        _cleanup_free_ char *pq = NULL, *p = NULL;

        ASSERT_TRUE(asprintf(&pq, "/%s?restype=container", e->container) > 0);
        ASSERT_TRUE(asprintf(&p, "/%s", e->container) > 0);
        raw_request(e, "DELETE", pq, p, q, &x);
        ASSERT_EQ(x.status, 202);
        free(x.body);

        http_close(e->http);
        uv_close((uv_handle_t *) &e->tick, NULL);
        (void) uv_run(&e->loop, UV_RUN_DEFAULT);
        ASSERT_EQ(uv_loop_close(&e->loop), 0);
        free(e->endpoint);
        (void) rmdir(e->dir);
}

static char *make_file(Env *e, const char *name, size_t size, unsigned seed, int *ret_fd) {
        _cleanup_free_ uint8_t *buf = malloc(MIB);
        uint32_t x = seed * 2654435761U + 1;
        char *path;
        int fd;

        ASSERT_TRUE(buf);
        ASSERT_TRUE(asprintf(&path, "%s/%s", e->dir, name) > 0);
        fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        ASSERT_TRUE(fd >= 0);
        for (size_t done = 0; done < size;) {
                size_t n = MIN((size_t) MIB, size - done);

                for (size_t i = 0; i < n; i++) {
                        x = x * 1103515245U + 12345U;
                        buf[i] = (uint8_t) (x >> 16);
                }
                ASSERT_EQ(write(fd, buf, n), (ssize_t) n);
                done += n;
        }
        *ret_fd = fd;
        return path;
}

/* GET the blob and compare it with @fd's @size bytes. */
static void assert_blob_equals(Env *e, const char *key, int fd, size_t size) {
        _cleanup_free_ char *pq = NULL;
        _cleanup_free_ uint8_t *want = malloc(size + 1);
        Raw x;

        ASSERT_TRUE(want);
        ASSERT_EQ(pread(fd, want, size, 0), (ssize_t) size);
        ASSERT_TRUE(asprintf(&pq, "/%s/%s", e->container, key) > 0);
        raw_request(e, "GET", pq, pq, NULL, &x);
        ASSERT_OK(x.error);
        if (x.status != 200)
                TEST_FAIL("GET %s: HTTP %ld %s", pq, x.status, x.body);
        ASSERT_EQ(x.size, size);
        ASSERT_TRUE(memcmp(x.body, want, size) == 0);
        free(x.body);
}

typedef struct Job {
        UploadConfig cfg;
        CredProvider *cp;
        Outcome o;
} Job;

static void job_init(Env *e, Job *j, uint64_t part_size, unsigned concurrency, UploadChecksum checksum,
                     const char *account_key, const char *sas) {
        *j = (Job) {};
        j->cfg = (UploadConfig) {
                .name = (char *) "az",
                .scheme = UPLOAD_AZ,
                .account = (char *) AZURITE_ACCOUNT,
                .bucket = e->container,
                .prefix = (char *) "",
                .endpoint = e->endpoint,
                .part_size = part_size,
                .concurrency = concurrency,
                .checksum = checksum,
                .account_key = (char *) account_key,
                .sas_token = (char *) sas,
        };
        /* The metadata service is not asked for a key or a SAS; port 9 has nothing on loopback. */
        ASSERT_OK(cred_provider_new(&e->loop, e->http, &j->cfg, CLOUD_AZURE, "http://127.0.0.1:9",
                                    2 * USEC_PER_SEC, &j->cp));
}

static void job_start(Env *e, Job *j, const char *key, int fd, uint64_t size, uint64_t budget_usec) {
        StoreParams p = {
                .loop = &e->loop,
                .http = e->http,
                .upload = &j->cfg,
                .creds = j->cp,
                .key = key,
                .fd = fd,
                .size = size,
                .until_usec = budget_usec == USEC_INFINITY ? USEC_INFINITY
                                                           : now_monotonic_usec() + budget_usec,
        };

        ASSERT_OK(store_upload_start(&p, upload_done, &j->o, &j->o.u));
}

static void job_wait(Env *e, Job *j) {
        tests_run_until(&e->loop, &e->tick, &j->o.done, 120000);
}

static void job_done(Job *j) {
        j->o.u = store_upload_free(j->o.u);
        j->cp = cred_provider_free(j->cp);
}

typedef struct CheckOutcome {
        bool done;
        int result;
} CheckOutcome;

static void check_done(StoreCheck *chk, int result, const char *detail, void *userdata) {
        CheckOutcome *c = userdata;

        c->done = true;
        c->result = result;
}

static void test_small_blob(Env *e) {
        _cleanup_free_ char *path = NULL;
        Job j;
        int fd;

        path = make_file(e, "small.bin", 3 * MIB + 7, 1, &fd);
        job_init(e, &j, 0, 4, UPLOAD_CHECKSUM_MD5, AZURITE_KEY, NULL);
        job_start(e, &j, "run 1/small.bin", fd, 3 * MIB + 7, 60 * USEC_PER_SEC);
        ASSERT_FALSE(j.o.done); /* never from inside store_upload_start() */
        job_wait(e, &j);
        if (j.o.error != 0)
                TEST_FAIL("upload: %d %s", j.o.error, j.o.detail);
        ASSERT_U64_EQ(j.o.res.bytes, 3 * MIB + 7);
        ASSERT_EQ(j.o.res.parts, 1);
        ASSERT_EQ(j.o.res.retries, 0);
        ASSERT_TRUE(j.o.res.etag[0] && j.o.res.etag[0] != '"');
        ASSERT_U64_EQ(store_upload_progress(j.o.u), 3 * MIB + 7);
        assert_blob_equals(e, "run%201/small.bin", fd, 3 * MIB + 7);

        /* The manifest's question: is it still there, unchanged? */
        {
                StoreParams p = { .loop = &e->loop, .http = e->http, .upload = &j.cfg, .creds = j.cp,
                                  .key = "run 1/small.bin", .fd = -1,
                                  .until_usec = now_monotonic_usec() + 30 * USEC_PER_SEC };
                static const struct {
                        const char *key, *etag;
                        int want;
                } cases[] = { { "run 1/small.bin", NULL, 1 }, { "run 1/small.bin", "0x0", 0 },
                              { "run 1/missing.bin", "0x0", 0 } };

                for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                        CheckOutcome c = {};
                        StoreCheck *chk = NULL;
                        char quoted[160];

                        (void) snprintf(quoted, sizeof(quoted), "\"%s\"",
                                        cases[i].etag ? cases[i].etag : j.o.res.etag);
                        p.key = cases[i].key;
                        ASSERT_OK(store_check_start(&p, quoted, check_done, &c, &chk));
                        tests_run_until(&e->loop, &e->tick, &c.done, 30000);
                        ASSERT_EQ(c.result, cases[i].want);
                        chk = store_check_free(chk);
                }
        }
        job_done(&j);
        (void) close(fd);
        (void) unlink(path);
}

static void test_blocks(Env *e) {
        _cleanup_free_ char *path = NULL;
        uint64_t t0, t1, last = 0;
        bool monotone = true;
        Job j;
        int fd;

        path = make_file(e, "big.bin", 40 * MIB, 2, &fd);
        job_init(e, &j, 8 * MIB, 4, UPLOAD_CHECKSUM_MD5, AZURITE_KEY, NULL);
        t0 = now_monotonic_usec();
        job_start(e, &j, "big.bin", fd, 40 * MIB, 120 * USEC_PER_SEC);
        ASSERT_OK(uv_timer_start(&e->tick, tests_tick_cb, 5, 5));
        while (!j.o.done) {
                uint64_t p = store_upload_progress(j.o.u);

                monotone = monotone && p >= last;
                last = p;
                (void) uv_run(&e->loop, UV_RUN_ONCE);
        }
        ASSERT_OK(uv_timer_stop(&e->tick));
        t1 = now_monotonic_usec();
        if (j.o.error != 0)
                TEST_FAIL("upload: %d %s", j.o.error, j.o.detail);
        ASSERT_TRUE(monotone);
        ASSERT_U64_EQ(j.o.res.bytes, 40 * MIB);
        ASSERT_EQ(j.o.res.parts, 5);
        ASSERT_TRUE(j.o.res.etag[0]);
        fprintf(stderr, "   40 MiB in 5 blocks, 4 in flight: %.2f s, %.1f MiB/s\n", (double) (t1 - t0) / 1e6,
                40.0 / ((double) (t1 - t0) / 1e6));
        assert_blob_equals(e, "big.bin", fd, 40 * MIB);
        job_done(&j);

        /* checksum = none and crc32c (which falls back to MD5 on Azure) work too. */
        job_init(e, &j, 8 * MIB, 2, UPLOAD_CHECKSUM_NONE, AZURITE_KEY, NULL);
        job_start(e, &j, "big-none.bin", fd, 20 * MIB + 1, 120 * USEC_PER_SEC);
        job_wait(e, &j);
        ASSERT_EQ(j.o.error, 0);
        ASSERT_EQ(j.o.res.parts, 3);
        assert_blob_equals(e, "big-none.bin", fd, 20 * MIB + 1);
        job_done(&j);
        job_init(e, &j, 0, 4, UPLOAD_CHECKSUM_CRC32C, AZURITE_KEY, NULL);
        job_start(e, &j, "crc.bin", fd, 0, 30 * USEC_PER_SEC);
        job_wait(e, &j);
        ASSERT_EQ(j.o.error, 0);
        ASSERT_EQ(j.o.res.parts, 1);
        assert_blob_equals(e, "crc.bin", fd, 0);
        job_done(&j);

        (void) close(fd);
        (void) unlink(path);
}

/* An account SAS for the blob service, signed as "Create an account SAS" says for 2020-12-06 and later. */
static char *make_sas(void) {
        const char *sts =
                AZURITE_ACCOUNT "\nracwdl\nb\nsco\n\n2099-01-01T00:00:00Z\n\nhttps,http\n" AZ_VERSION "\n\n";
        _cleanup_free_ char *sig_enc = NULL;
        char sig[45], *sas;

        sign_with_azurite_key(sts, sig);
        sig_enc = store_pct_encode(sig, false);
        ASSERT_TRUE(sig_enc);
        ASSERT_TRUE(asprintf(&sas, "sv=" AZ_VERSION "&ss=b&srt=sco&sp=racwdl&se=2099-01-01T00%%3A00%%3A00Z"
                                   "&spr=https%%2Chttp&sig=%s",
                             sig_enc) > 0);
        return sas;
}

static void test_sas(Env *e) {
        _cleanup_free_ char *path = NULL, *sas = make_sas();
        Job j;
        int fd;

        path = make_file(e, "sas.bin", 12 * MIB, 3, &fd);
        job_init(e, &j, 5 * MIB, 2, UPLOAD_CHECKSUM_MD5, NULL, sas);
        job_start(e, &j, "sas/blob.bin", fd, 12 * MIB, 60 * USEC_PER_SEC);
        job_wait(e, &j);
        if (j.o.error != 0)
                TEST_FAIL("upload: %d %s", j.o.error, j.o.detail);
        ASSERT_EQ(j.o.res.parts, 3);
        assert_blob_equals(e, "sas/blob.bin", fd, 12 * MIB);
        job_done(&j);

        /* A SAS whose signature is wrong: one clear 403. */
        sas[strlen(sas) - 6] ^= 1;
        job_init(e, &j, 0, 2, UPLOAD_CHECKSUM_MD5, NULL, sas);
        job_start(e, &j, "sas/bad.bin", fd, MIB, 60 * USEC_PER_SEC);
        job_wait(e, &j);
        ASSERT_EQ(j.o.error, -EACCES);
        /* Azurite says AuthorizationFailure for a bad SAS signature, Azure AuthenticationFailed. */
        ASSERT_TRUE(strncmp(j.o.detail, "HTTP 403 ", 9) == 0);
        ASSERT_CONTAINS(j.o.detail, "az://devstoreaccount1/");
        job_done(&j);

        (void) close(fd);
        (void) unlink(path);
}

static void test_wrong_key(Env *e) {
        _cleanup_free_ char *path = NULL, *key = strdup(AZURITE_KEY);
        Job j;
        int fd;

        ASSERT_TRUE(key);
        key[0] = key[0] == 'A' ? 'B' : 'A';
        path = make_file(e, "wrong.bin", 20 * MIB, 4, &fd);
        job_init(e, &j, 5 * MIB, 4, UPLOAD_CHECKSUM_MD5, key, NULL);
        job_start(e, &j, "wrong.bin", fd, 20 * MIB, 60 * USEC_PER_SEC);
        job_wait(e, &j);
        fprintf(stderr, "   wrong key: %s\n", j.o.detail);
        ASSERT_EQ(j.o.error, -EACCES);
        /* Azure's code is AuthenticationFailed, Azurite's AuthorizationFailure. */
        ASSERT_TRUE(strncmp(j.o.detail, "HTTP 403 AuthenticationFailed: ", 31) == 0 ||
                    strncmp(j.o.detail, "HTTP 403 AuthorizationFailure: ", 31) == 0);
        ASSERT_CONTAINS(j.o.detail, "az://devstoreaccount1/spw-unit-");
        ASSERT_CONTAINS(j.o.detail, "/wrong.bin");
        ASSERT_U64_EQ(j.o.res.bytes, 0);
        job_done(&j);
        (void) close(fd);
        (void) unlink(path);
}

/*
 * A byte of the source changes while the body is on the wire: Azurite rejects the MD5, the
 * block is hashed again.
 */
typedef struct Corrupt {
        uv_check_t check;
        Job *j;
        int fd;
        uint64_t at;
        bool done;
} Corrupt;

static void corrupt_cb(uv_check_t *h) {
        Corrupt *c = container_of(h, Corrupt, check);
        uint8_t b = 0;

        if (c->done || store_upload_progress(c->j->o.u) == 0)
                return;
        ASSERT_EQ(pread(c->fd, &b, 1, (off_t) c->at), 1);
        b ^= 0xFF;
        ASSERT_EQ(pwrite(c->fd, &b, 1, (off_t) c->at), 1);
        c->done = true;
}

static void test_md5_mismatch(Env *e) {
        _cleanup_free_ char *path = NULL;
        Corrupt c = {};
        Job j;
        int fd;

        path = make_file(e, "flip.bin", 64 * MIB, 5, &fd);
        job_init(e, &j, 64 * MIB, 1, UPLOAD_CHECKSUM_MD5, AZURITE_KEY, NULL);
        c = (Corrupt) { .j = &j, .fd = fd, .at = 64 * MIB - 1 };
        ASSERT_OK(uv_check_init(&e->loop, &c.check));
        ASSERT_OK(uv_check_start(&c.check, corrupt_cb));
        job_start(e, &j, "flip.bin", fd, 64 * MIB, 120 * USEC_PER_SEC);
        job_wait(e, &j);
        uv_close((uv_handle_t *) &c.check, NULL);
        if (j.o.error != 0)
                TEST_FAIL("upload: %d %s", j.o.error, j.o.detail);
        ASSERT_TRUE(c.done);
        ASSERT_EQ(j.o.res.retries, 1);
        /* What is stored is the file as it is now, not a mix. */
        assert_blob_equals(e, "flip.bin", fd, 64 * MIB);
        job_done(&j);
        (void) close(fd);
        (void) unlink(path);
}

static void test_deadline(Env *e) {
        _cleanup_free_ char *path = NULL;
        Job j;
        int fd;

        path = make_file(e, "late.bin", 30 * MIB, 6, &fd);

        /* Already past: reported from the loop, nothing sent. */
        job_init(e, &j, 5 * MIB, 2, UPLOAD_CHECKSUM_MD5, AZURITE_KEY, NULL);
        job_start(e, &j, "late.bin", fd, 30 * MIB, 0);
        ASSERT_FALSE(j.o.done);
        job_wait(e, &j);
        ASSERT_EQ(j.o.error, -ETIME);
        ASSERT_STREQ(j.o.detail, "deadline reached after 0 of 6 blocks");
        job_done(&j);

        /* A few ms: cut off with requests in flight, which are cancelled. */
        job_init(e, &j, 5 * MIB, 2, UPLOAD_CHECKSUM_MD5, AZURITE_KEY, NULL);
        job_start(e, &j, "late.bin", fd, 30 * MIB, 15 * USEC_PER_MSEC);
        job_wait(e, &j);
        ASSERT_EQ(j.o.error, -ETIME);
        ASSERT_CONTAINS(j.o.detail, "of 6 blocks");
        fprintf(stderr, "   deadline: %s\n", j.o.detail);
        job_done(&j);

        /* Freed in the middle: no callback, nothing leaks (ASan). */
        job_init(e, &j, 5 * MIB, 3, UPLOAD_CHECKSUM_MD5, AZURITE_KEY, NULL);
        job_start(e, &j, "late.bin", fd, 30 * MIB, 60 * USEC_PER_SEC);
        tests_run_for(&e->loop, &e->tick, 30);
        ASSERT_FALSE(j.o.done);
        job_done(&j);
        tests_run_for(&e->loop, &e->tick, 50);

        (void) close(fd);
        (void) unlink(path);
}

/* $SPOTWATCH_AZURE_BENCH_MIB=N: time N MiB (default part size, 4 in flight); not run otherwise. */
static void bench(Env *e) {
        const char *v = getenv("SPOTWATCH_AZURE_BENCH_MIB");
        _cleanup_free_ char *path = NULL;
        struct rusage r0, r1;
        uint64_t t0, t1, size;
        double cpu;
        Job j;
        int fd;

        if (isempty(v) || atoi(v) <= 0)
                return;
        size = (uint64_t) atoi(v) * MIB;
        path = make_file(e, "bench.bin", size, 7, &fd);
        for (int i = 0; i < 2; i++) {
                UploadChecksum ck = i == 0 ? UPLOAD_CHECKSUM_NONE : UPLOAD_CHECKSUM_MD5;

                job_init(e, &j, 0, 4, ck, AZURITE_KEY, NULL);
                ASSERT_OK(getrusage(RUSAGE_SELF, &r0));
                t0 = now_monotonic_usec();
                job_start(e, &j, "bench.bin", fd, size, 600 * USEC_PER_SEC);
                job_wait(e, &j);
                t1 = now_monotonic_usec();
                ASSERT_OK(getrusage(RUSAGE_SELF, &r1));
                ASSERT_EQ(j.o.error, 0);
                cpu = (double) (r1.ru_utime.tv_sec - r0.ru_utime.tv_sec + r1.ru_stime.tv_sec -
                                r0.ru_stime.tv_sec) +
                      (double) (r1.ru_utime.tv_usec - r0.ru_utime.tv_usec + r1.ru_stime.tv_usec -
                                r0.ru_stime.tv_usec) / 1e6;
                fprintf(stderr, "   bench: %s MiB, checksum %s, %u blocks: %.2f s, %.1f MiB/s, "
                        "client CPU %.2f s\n", v,
                        ck == UPLOAD_CHECKSUM_MD5 ? "md5" : "none", j.o.res.parts, (double) (t1 - t0) / 1e6,
                        (double) size / MIB / ((double) (t1 - t0) / 1e6), cpu);
                job_done(&j);
        }
        (void) close(fd);
        (void) unlink(path);
}

static void test_azurite(void) {
        const char *endpoint = getenv("SPOTWATCH_AZURITE_URL");
        Env e;

        if (isempty(endpoint))
                endpoint = "http://127.0.0.1:10000/" AZURITE_ACCOUNT;
        if (!azurite_reachable(endpoint)) {
                fprintf(stderr,
                        "SKIP: Azurite is not answering at %s; the live part of this test is skipped "
                        "(tests/integration/test_upload_azure.py starts its own Azurite; by hand: "
                        "npx azurite-blob --blobHost 127.0.0.1 --blobPort 10000 --location /tmp/az)\n",
                        endpoint);
                return;
        }
        env_init(&e, endpoint);
        RUN_ENV(test_small_blob, &e);
        RUN_ENV(test_blocks, &e);
        RUN_ENV(test_sas, &e);
        RUN_ENV(test_wrong_key, &e);
        RUN_ENV(test_md5_mismatch, &e);
        RUN_ENV(test_deadline, &e);
        RUN_ENV(bench, &e);
        env_done(&e);
}

int main(void) {
        log_set_max_level(getenv("SPOTWATCH_DEBUG") ? LOG_DEBUG : LOG_INFO);
        RUN(test_http_date);
        RUN(test_string_to_sign_doc_example);
        RUN(test_string_to_sign_put_block);
        RUN(test_urls);
        RUN(test_block_ids);
        RUN(test_block_list);
        RUN(test_parse_error);
        RUN(test_classify);
        RUN(test_azurite);
        return 0;
}
