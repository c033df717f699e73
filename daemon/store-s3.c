/* SPDX-License-Identifier: MIT */
/*
 * store-s3.c - one object to S3, an S3-compatible store (endpoint =, path
 * style) or GCS's S3-compatible XML API, through the daemon's Http.
 *
 * Signing is libcurl's (CURLOPT_AWS_SIGV4) with the pitfalls of curl 7.88
 * handled here: x-amz-content-sha256 is always sent by us (UNSIGNED-PAYLOAD,
 * or the payload's SHA-256 with checksum = sha256), the query is written
 * canonical (`?uploads=`, `partNumber` before `uploadId`, values encoded),
 * and the key is percent-encoded but for '/'. GCS with an OAuth token uses
 * `Authorization: Bearer` instead of SigV4; with HMAC keys it is SigV4.
 *
 * A file up to one part size goes as a single PUT; a larger one as a
 * multipart upload: CreateMultipartUpload, up to `concurrency` UploadPart
 * requests in flight (each part's checksum computed first, in slices on the
 * loop, then its body streamed from the fd by curl), CompleteMultipartUpload
 * with the parts' ETags, then HEAD: the size must match and the ETag must be
 * the MD5 of the parts' MD5s ("-N"), computed from what the store answered for
 * each part (and, with checksum = md5, equal to what we sent). Anything that
 * fails for good, or the deadline, aborts the multipart upload (DELETE
 * ?uploadId=) before the done callback, so no half object is ever visible and
 * no parts are left to pay for.
 *
 * Retries: a transport error, 5xx, 429, RequestTimeout and a rejected
 * checksum (BadDigest: the part is hashed again, which also catches a byte
 * corrupted in flight) are retried with backoff and jitter, at most
 * STORE_RETRIES_MAX times per request and never when the wait would pass the
 * deadline. A 403 with instance-role credentials refetches them once; with
 * configured or environment keys it is one clear error.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "action.h"
#include "shared/log.h"
#include "shared/macro.h"
#include "store-internal.h"

#define S3_DETAIL_MAX 512U
#define S3_CODE_MAX 64U
/* Time kept at the end for cancelling and the abort request. */
#define S3_ABORT_RESERVE_USEC (700 * USEC_PER_MSEC)
#define S3_SMALL_TIMEOUT_USEC (30 * USEC_PER_SEC)
/*
 * Credentials expiring within this are asked for again before the next
 * request (the provider itself refreshes well before: at 90 % of a short
 * lifetime, 5 minutes before a long one's end).
 */
#define S3_CREDS_SLACK_USEC (1 * USEC_PER_SEC)

typedef enum S3Phase {
        S3_CREDS,      /* waiting for credentials before starting */
        S3_CREATE,     /* CreateMultipartUpload */
        S3_PARTS,      /* parts (or the single PUT) */
        S3_COMPLETE,   /* CompleteMultipartUpload */
        S3_HEAD,       /* verifying */
        S3_ABORT,      /* aborting, then done with the saved error */
        S3_DELETE,     /* removing a single PUT's object whose source changed, then done with the error */
        S3_DONE,
} S3Phase;

typedef struct S3Upload S3Upload;

typedef struct S3Part {
        uint64_t off, len;
        StoreDigest digest;
        bool hashed;
        bool done;
        bool taken;          /* a slot works on it */
        unsigned attempts;
        char etag[80];       /* as the store answered, quotes removed */
} S3Part;

typedef struct S3Slot {
        S3Upload *u;
        unsigned index;
        S3Part *part;        /* NULL: idle */
        StoreHash *hash;
        HttpRequest *req;
        uv_timer_t timer;    /* backoff */
        bool timer_init;
        bool waiting_creds;
} S3Slot;

struct S3Upload {
        StoreUpload base;
        uv_loop_t *loop;
        Http *http;
        const UploadConfig *cfg;
        CredProvider *cp;
        Credentials creds;
        bool have_creds, creds_pending, creds_retried;
        char *key;
        char *url;           /* the object's URL (path-style or virtual-hosted) */
        char *object;        /* store_object_url(), for messages */
        char sigv4[96];
        bool bearer;         /* gs:// with an OAuth token */
        int fd;
        uint64_t size;
        struct timespec mtime; /* the source's when we started */
        bool have_mtime;
        uint64_t until_usec;
        uint64_t rate_limit;
        StoreDoneFn done;
        void *userdata;

        S3Phase phase;
        bool check;          /* only the HEAD of store_check_start() */
        bool multipart;
        char *upload_id;
        S3Part *parts;
        unsigned n_parts, n_done;
        uint64_t bytes_done;
        unsigned retries;
        S3Slot *slots;
        unsigned n_slots;

        HttpRequest *req;    /* create, complete, head, abort */
        unsigned req_attempts;
        uv_timer_t deadline; /* cuts the upload off S3_ABORT_RESERVE_USEC before until_usec */
        uv_timer_t retry;    /* backoff of @req */
        unsigned n_handles;  /* uv handles still open; the memory goes when 0 and @freed */
        bool freed;

        int error;           /* the first fatal error, reported after the abort */
        char detail[S3_DETAIL_MAX];
        StoreResult res;
};

typedef struct S3Check {
        StoreCheck base;
        S3Upload *u;         /* only its request machinery is used */
        char *etag;
        StoreCheckFn done;
        void *userdata;
} S3Check;

static void upload_fail(S3Upload *u, int error, const char *fmt, ...) _printf_(3, 4);
static void upload_next(S3Upload *u);
static void slot_run(S3Slot *sl);
static void req_start(S3Upload *u);

/* ---- XML answers ----------------------------------------------------------------- */

/* "HTTP 403 AccessDenied: Access Denied" from an S3 error answer. */
/* The answer in one line for @buf, and its error <Code> (or "") for @code: the body is parsed once. */
static void describe_answer(char *buf, size_t size, long status, const char *body, size_t body_size,
                            char code[static S3_CODE_MAX]) {
        static const char *const names[] = { "Code", "Message" };
        char *v[2];

        code[0] = '\0';
        if (store_xml_find(body, body_size, names, v, 2) == 0 && v[0]) {
                (void) snprintf(buf, size, "HTTP %ld %s%s%s", status, v[0], v[1] ? ": " : "", v[1] ? v[1] : "");
                (void) snprintf(code, S3_CODE_MAX, "%s", v[0]);
        } else
                (void) snprintf(buf, size, "HTTP %ld", status);
        free(v[0]);
        free(v[1]);
}

/* ---- small helpers ------------------------------------------------------------------ */

static uint64_t time_left(const S3Upload *u) {
        uint64_t now = now_monotonic_usec();

        return now < u->until_usec ? u->until_usec - now : 0;
}

static bool is_md5_hex(const char *s) {
        if (strlen(s) != 32)
                return false;
        for (; *s; s++)
                if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f') || (*s >= 'A' && *s <= 'F')))
                        return false;
        return true;
}

static int hexval(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        c = (char) (c | 0x20);
        return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* The store got other bytes than those we hashed (a change in flight or in the file). */
static bool digest_rejected(long status, const char *code) {
        return status == 400 &&
               (streq(code, "BadDigest") || streq(code, "XAmzContentSHA256Mismatch") || streq(code, "InvalidDigest"));
}

/* Transient: worth another try. @code: the answer's error code, "" if none. */
static bool retryable(int error, long status, const char *code) {
        if (error < 0)
                return error != -ENOMEM && error != -EINVAL && error != -ESHUTDOWN && error != -ENODATA &&
                       error != -EFBIG;
        if (status >= 500 || status == 429 || status == 408)
                return true;
        return digest_rejected(status, code) || (status == 400 && streq(code, "RequestTimeout"));
}

/* ---- requests ------------------------------------------------------------------------ */

/* Auth and the payload hash header; @sha256 NULL: UNSIGNED-PAYLOAD. */
static void request_auth(S3Upload *u, HttpRequestParams *p, StoreHeaders *h, const uint8_t *sha256) {
        char hex[65];

        if (u->bearer) {
                store_headers_add(h, "Authorization: Bearer %s", u->creds.token);
                return;
        }
        p->aws_sigv4 = u->sigv4;
        p->username = u->creds.access_key_id;
        p->password = u->creds.secret_access_key;
        if (sha256) {
                store_hex(sha256, 32, hex);
                store_headers_add(h, "x-amz-content-sha256: %s", hex);
        } else
                store_headers_add(h, "x-amz-content-sha256: UNSIGNED-PAYLOAD");
        if (u->creds.session_token)
                store_headers_add(h, "x-amz-security-token: %s", u->creds.session_token);
}

static void sha256_of(const void *p, size_t n, uint8_t out[static 32]) {
        unsigned len = 32;

        (void) EVP_Digest(p, n, out, &len, EVP_sha256(), NULL);
}

/* ---- credentials --------------------------------------------------------------------- */

static bool creds_fresh(const S3Upload *u) {
        if (!u->have_creds)
                return false;
        return u->creds.expires_usec == 0 || now_realtime_usec() + S3_CREDS_SLACK_USEC < u->creds.expires_usec;
}

static void creds_done(CredProvider *p, int error, const Credentials *c, const char *detail, void *userdata) {
        S3Upload *u = userdata;

        u->creds_pending = false;
        if (error < 0) {
                upload_fail(u, error, "credentials: %s", detail ? detail : strerror(-error));
                return;
        }
        if (u->cfg->scheme == UPLOAD_GS ? !(c->kind == CRED_AWS || c->kind == CRED_BEARER)
                                         : c->kind != CRED_AWS) {
                upload_fail(u, -EACCES, "credentials: %s gave credentials %s cannot use", c->source,
                            upload_scheme_to_string(u->cfg->scheme));
                return;
        }
        credentials_done(&u->creds);
        if (credentials_copy(&u->creds, c) < 0) {
                upload_fail(u, -ENOMEM, "out of memory");
                return;
        }
        u->have_creds = true;
        u->bearer = c->kind == CRED_BEARER;
        log_debug("upload: %s: credentials from %s", u->object, c->source);

        if (u->phase == S3_CREDS) {
                u->phase = u->multipart ? S3_CREATE : S3_PARTS;
                upload_next(u);
                return;
        }
        /* Whoever waited for fresh credentials goes on. */
        for (unsigned i = 0; i < u->n_slots; i++)
                if (u->slots[i].waiting_creds) {
                        u->slots[i].waiting_creds = false;
                        slot_run(&u->slots[i]);
                }
        if (u->phase == S3_CREATE || u->phase == S3_COMPLETE || u->phase == S3_HEAD)
                if (!u->req || !http_request_is_running(u->req))
                        req_start(u);
}

/* Get (fresh) credentials; false when the caller must wait for creds_done(). */
static bool creds_ensure(S3Upload *u) {
        int r;

        if (creds_fresh(u))
                return true;
        if (u->creds_pending)
                return false;
        u->creds_pending = true;
        r = cred_provider_get(u->cp, creds_done, u);
        if (r < 0) {
                u->creds_pending = false;
                upload_fail(u, r, "credentials: %s", strerror(-r));
        }
        return false;
}

/*
 * The store refused the signature or the key: instance-role credentials are
 * fetched again once; configured ones are an error at once.
 */
static bool creds_rejected(S3Upload *u) {
        /* Only what expires can be fetched anew; a configured key stays wrong. */
        if (u->creds_retried || u->creds.expires_usec == 0)
                return false;
        u->creds_retried = true;
        cred_provider_invalidate(u->cp);
        u->have_creds = false;
        return true;
}

/* ---- the end ------------------------------------------------------------------------ */

static void handle_closed(uv_handle_t *h);

static void upload_release(S3Upload *u) {
        for (unsigned i = 0; i < u->n_slots; i++) {
                S3Slot *sl = &u->slots[i];

                sl->hash = store_hash_free(sl->hash);
                sl->req = http_request_free(sl->req);
                if (sl->timer_init)
                        (void) uv_timer_stop(&sl->timer);
        }
        (void) uv_timer_stop(&u->deadline);
        (void) uv_timer_stop(&u->retry);
}

static void upload_destroy_now(S3Upload *u) {
        for (unsigned i = 0; i < u->n_slots; i++) {
                http_request_free(u->slots[i].req);
                store_hash_free(u->slots[i].hash);
        }
        http_request_free(u->req);
        credentials_done(&u->creds);
        free(u->slots);
        free(u->parts);
        free(u->upload_id);
        free(u->key);
        free(u->url);
        free(u->object);
        free(u);
}

/* Close the uv handles; the memory goes in handle_closed() once all are closed. */
static void slot_timer_closed(uv_handle_t *h) {
        S3Slot *sl = h->data;

        h->data = sl->u;
        handle_closed(h);
}

static void upload_close_handles(S3Upload *u) {
        for (unsigned i = 0; i < u->n_slots; i++)
                if (u->slots[i].timer_init)
                        uv_close((uv_handle_t *) &u->slots[i].timer, slot_timer_closed);
        uv_close((uv_handle_t *) &u->deadline, handle_closed);
        uv_close((uv_handle_t *) &u->retry, handle_closed);
}

static void handle_closed(uv_handle_t *h) {
        S3Upload *u = h->data;

        assert(u->n_handles > 0);
        if (--u->n_handles == 0)
                upload_destroy_now(u);
}

static void upload_report(S3Upload *u) {
        StoreDoneFn done = u->done;

        u->phase = S3_DONE;
        upload_release(u);
        u->res.parts = u->n_parts;
        u->res.retries = u->retries;
        u->res.bytes = u->bytes_done;
        if (u->error == 0)
                log_debug("upload: %s: complete, %" PRIu64 " bytes, %u parts, %u retries", u->object,
                          u->size, u->n_parts, u->retries);
        /* May free @u. */
        done(&u->base, u->error, u->error < 0 ? u->detail : NULL, &u->res, u->userdata);
}

/* The abort is answered (or could not be sent): report, or, if the owner let go, free. */
static void abort_finished(S3Upload *u) {
        free(u->upload_id);
        u->upload_id = NULL;
        if (u->freed) {
                u->req = http_request_free(u->req);
                upload_close_handles(u);
                return;
        }
        upload_report(u);
}

/* Fatal: abort the multipart upload if there is one, then report. */
static void upload_fail(S3Upload *u, int error, const char *fmt, ...) {
        va_list ap;

        if (u->phase == S3_ABORT || u->phase == S3_DONE)
                return;
        u->error = error;
        va_start(ap, fmt);
        (void) vsnprintf(u->detail, sizeof(u->detail), fmt, ap);
        va_end(ap);
        log_debug("upload: %s: failed: %s", u->object, u->detail);

        upload_release(u);
        if (u->req)
                http_request_cancel(u->req);
        if (u->upload_id && !u->freed) {
                u->phase = S3_ABORT;
                u->req_attempts = 0;
                if (!http_request_is_running(u->req))
                        req_start(u);
                /* else: req_done() sees the cancel and starts the abort. */
                return;
        }
        upload_report(u);
}

/* ---- create, complete, head, abort: one request at a time on @u->req ------------------- */

static char *complete_body(S3Upload *u) {
        char *buf = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&buf, &size);

        if (!f)
                return NULL;
        fputs("<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">", f);
        for (unsigned i = 0; i < u->n_parts; i++) {
                fprintf(f, "<Part><PartNumber>%u</PartNumber><ETag>\"%s\"</ETag>", i + 1, u->parts[i].etag);
                if (u->cfg->checksum == UPLOAD_CHECKSUM_CRC32C) {
                        uint8_t be[4];
                        char b64[9];
                        uint32_t c = u->parts[i].digest.crc32c;

                        be[0] = (uint8_t) (c >> 24), be[1] = (uint8_t) (c >> 16), be[2] = (uint8_t) (c >> 8),
                        be[3] = (uint8_t) c;
                        store_base64(be, 4, b64);
                        fprintf(f, "<ChecksumCRC32C>%s</ChecksumCRC32C>", b64);
                }
                fputs("</Part>", f);
        }
        fputs("</CompleteMultipartUpload>", f);
        if (fclose(f) != 0) {
                free(buf);
                return NULL;
        }
        return buf;
}

/* The ETag a multipart object must have: MD5 of the parts' binary MD5s, "-N". */
static bool expected_etag(const S3Upload *u, const char *have, char *out, size_t size) {
        EVP_MD_CTX *md;
        uint8_t d[16];
        unsigned len = 16;
        char hex[33];

        if (!u->multipart) {
                store_strip_quotes(u->parts[0].etag, out, size);
                return is_md5_hex(out);
        }
        /*
         * Only a store that says "-N" computes the S3 way (s3rver gives the
         * whole object's MD5, which we never compute): then the size is
         * what is checked, and each part's ETag was already.
         */
        if (!strchr(have, '-') || u->cfg->scheme == UPLOAD_GS)
                return false; /* GCS documents no formula for a composed object's ETag */
        md = EVP_MD_CTX_new();
        if (!md || EVP_DigestInit_ex(md, EVP_md5(), NULL) != 1) {
                EVP_MD_CTX_free(md);
                return false;
        }
        for (unsigned i = 0; i < u->n_parts; i++) {
                uint8_t b[16];

                if (!is_md5_hex(u->parts[i].etag)) {
                        EVP_MD_CTX_free(md);
                        return false;
                }
                for (unsigned k = 0; k < 16; k++)
                        b[k] = (uint8_t) (hexval(u->parts[i].etag[2 * k]) << 4 | hexval(u->parts[i].etag[2 * k + 1]));
                (void) EVP_DigestUpdate(md, b, 16);
        }
        (void) EVP_DigestFinal_ex(md, d, &len);
        EVP_MD_CTX_free(md);
        store_hex(d, 16, hex);
        (void) snprintf(out, size, "%s-%u", hex, u->n_parts);
        return true;
}

static void req_done(HttpRequest *r, int error, long status, const char *body, size_t size, void *userdata);
static void check_head_done(HttpRequest *r, int error, long status, const char *body, size_t size,
                            void *userdata);

/* Start @p on the request in *@req, made on first use. */
static int request_start(S3Upload *u, HttpRequest **req, const char *name, const HttpRequestParams *p,
                         HttpDoneFn done, void *userdata) {
        int r;

        if (!*req) {
                r = http_request_new(u->http, name, req);
                if (r < 0)
                        return r;
        }
        return http_request_start(*req, p, done, userdata);
}

static void req_start(S3Upload *u) {
        _cleanup_free_ char *url = NULL, *id = NULL, *xml = NULL;
        HttpRequestParams p = { .timeout_usec = MIN(S3_SMALL_TIMEOUT_USEC, MAX(time_left(u), USEC_PER_SEC)) };
        _cleanup_(store_headers_done) StoreHeaders h = {};
        uint8_t sha[32];
        int r;

        if (u->phase != S3_ABORT && !creds_ensure(u))
                return; /* creds_done() calls again */
        if (u->phase == S3_ABORT && !u->have_creds) {
                abort_finished(u);
                return;
        }
        if (u->upload_id) {
                id = store_pct_encode(u->upload_id, false);
                if (!id)
                        goto oom;
        }
        switch (u->phase) {
        case S3_CREATE:
                p.method = "POST";
                r = asprintf(&url, "%s?uploads=", u->url);
                if (u->cfg->checksum == UPLOAD_CHECKSUM_CRC32C)
                        store_headers_add(&h, "x-amz-checksum-algorithm: CRC32C");
                store_headers_add(&h, "Content-Type: application/octet-stream");
                sha256_of("", 0, sha);
                request_auth(u, &p, &h, sha);
                break;
        case S3_COMPLETE:
                p.method = "POST";
                r = asprintf(&url, "%s?uploadId=%s", u->url, id);
                xml = complete_body(u);
                if (!xml)
                        goto oom;
                p.body = xml;
                p.body_size = strlen(xml);
                store_headers_add(&h, "Content-Type: application/xml");
                sha256_of(xml, p.body_size, sha);
                request_auth(u, &p, &h, sha);
                /* Completing a large upload may take the store a while. */
                p.timeout_usec = MAX(time_left(u), USEC_PER_SEC);
                p.max_body = 64 * 1024;
                break;
        case S3_HEAD:
                p.method = "HEAD";
                r = asprintf(&url, "%s", u->url);
                sha256_of("", 0, sha);
                request_auth(u, &p, &h, sha);
                /* Asking costs no more than the time left: a store that hangs must not hold the plan past it. */
                p.timeout_usec = MAX(MIN(S3_SMALL_TIMEOUT_USEC, time_left(u)), 100 * USEC_PER_MSEC);
                break;
        case S3_DELETE:
                p.method = "DELETE";
                r = asprintf(&url, "%s", u->url);
                sha256_of("", 0, sha);
                request_auth(u, &p, &h, sha);
                break;
        case S3_ABORT:
                p.method = "DELETE";
                r = asprintf(&url, "%s?uploadId=%s", u->url, id);
                sha256_of("", 0, sha);
                request_auth(u, &p, &h, sha);
                /* Whatever the deadline says: an abandoned upload costs storage. */
                p.timeout_usec = 2 * USEC_PER_SEC;
                break;
        default:
                assert(false);
                return;
        }
        if (r < 0)
                goto oom;
        if (h.oom)
                goto oom;
        p.url = url;
        p.headers = h.v;
        r = request_start(u, &u->req, "s3", &p, u->check ? check_head_done : req_done, u);
        if (r < 0)
                goto fail;
        return;

oom:
        r = -ENOMEM;
fail:
        if (u->phase == S3_ABORT) {
                abort_finished(u);
                return;
        }
        upload_fail(u, r, "cannot start request: %s", strerror(-r));
}

static void retry_cb(uv_timer_t *t) {
        req_start(t->data);
}

/* Schedule @u->req again if time and attempts allow; false if not. */
static bool req_retry(S3Upload *u) {
        uint64_t d = store_backoff_usec(++u->req_attempts);

        if (u->req_attempts > STORE_RETRIES_MAX || d + S3_ABORT_RESERVE_USEC >= time_left(u))
                return false;
        u->retries++;
        (void) uv_timer_start(&u->retry, retry_cb, d / USEC_PER_MSEC, 0);
        return true;
}

static void head_verify(S3Upload *u, long status) {
        const char *len = http_request_header(u->req, "Content-Length");
        char etag[128], want[128];

        store_strip_quotes(http_request_header(u->req, "ETag"), etag, sizeof(etag));
        if (!len || strtoull(len, NULL, 10) != u->size) {
                upload_fail(u, -EIO, "verification failed: the store has %s bytes, %" PRIu64 " were sent",
                            len ? len : "no Content-Length:", u->size);
                return;
        }
        if (expected_etag(u, etag, want, sizeof(want)) && strcasecmp(etag, want) != 0) {
                upload_fail(u, -EIO, "verification failed: ETag '%s', expected '%s'", etag, want);
                return;
        }
        (void) snprintf(u->res.etag, sizeof(u->res.etag), "%s", etag);
        u->phase = S3_DONE;
        upload_report(u);
}

static void req_done(HttpRequest *r, int error, long status, const char *body, size_t size, void *userdata) {
        S3Upload *u = userdata;
        char what[S3_DETAIL_MAX], code[S3_CODE_MAX] = "";

        if (u->phase == S3_ABORT) {
                if (error == -ECANCELED && u->upload_id && !u->req_attempts) {
                        /* The cancel of what ran before the failure: now the abort itself. */
                        u->req_attempts = 1;
                        req_start(u);
                        return;
                }
                if (error < 0 || (status != 204 && status != 200 && status != 404))
                        log_debug("upload: %s: abort of upload %s failed (%s %ld)", u->object, u->upload_id,
                                  error < 0 ? strerror(-error) : "HTTP", status);
                abort_finished(u);
                return;
        }
        if (error == -ECANCELED)
                return;
        if (u->phase == S3_DELETE) {
                if (error < 0 || (status != 204 && status != 200 && status != 404))
                        log_debug("upload: %s: could not remove the object of a changed source (%s %ld)", u->object,
                                  error < 0 ? strerror(-error) : "HTTP", status);
                upload_report(u);
                return;
        }

        if (error == 0 && (status == 401 || status == 403) && creds_rejected(u)) {
                req_start(u);
                return;
        }
        if (error < 0 || status < 200 || status > 299) {
                if (error < 0)
                        (void) snprintf(what, sizeof(what), "%s", strerror(-error));
                else
                        describe_answer(what, sizeof(what), status, body, size, code);
                if (retryable(error, status, code) && req_retry(u))
                        return;
                upload_fail(u, error < 0 ? error : (status == 403 ? -EACCES : -EIO), "%s: %s%s%s%s",
                            u->phase == S3_CREATE     ? "CreateMultipartUpload"
                            : u->phase == S3_COMPLETE ? "CompleteMultipartUpload"
                                                       : "HEAD",
                            what, status == 403 ? " (credentials from " : "",
                            status == 403 ? u->creds.source : "", status == 403 ? ")" : "");
                return;
        }
        u->req_attempts = 0;

        switch (u->phase) {
        case S3_CREATE: {
                static const char *const names[] = { "UploadId" };
                char *id = NULL;

                if (store_xml_find(body, size, names, &id, 1) < 0 || isempty(id)) {
                        free(id);
                        upload_fail(u, -EPROTO, "CreateMultipartUpload: no UploadId in the answer");
                        return;
                }
                u->upload_id = id;
                u->phase = S3_PARTS;
                upload_next(u);
                return;
        }
        case S3_COMPLETE:
                /* A 200 may still carry an error (S3 sends it after a long completion). */
                if (strstr(body, "<Error>")) {
                        describe_answer(what, sizeof(what), status, body, size, code);
                        if ((streq(code, "InternalError") || streq(code, "SlowDown")) && req_retry(u))
                                return;
                        upload_fail(u, -EIO, "CompleteMultipartUpload: %s", what);
                        return;
                }
                free(u->upload_id);
                u->upload_id = NULL; /* complete: nothing to abort any more */
                u->phase = S3_HEAD;
                req_start(u);
                return;
        case S3_HEAD:
                head_verify(u, status);
                return;
        default:
                assert(false);
        }
}

/* ---- parts ---------------------------------------------------------------------------------- */

static void slot_done(HttpRequest *r, int error, long status, const char *body, size_t size, void *userdata);

static void slot_retry_cb(uv_timer_t *t) {
        slot_run(t->data);
}

static void slot_send(S3Slot *sl) {
        S3Upload *u = sl->u;
        S3Part *pt = sl->part;
        unsigned number = (unsigned) (pt - u->parts) + 1;
        _cleanup_free_ char *url = NULL, *id = NULL;
        HttpFileBody file = { .fd = u->fd, .offset = pt->off, .size = pt->len };
        HttpRequestParams p = {
                .method = "PUT",
                .file = &file,
                .stall_usec = STORE_STALL_USEC,
                .max_body = 64 * 1024,
        };
        _cleanup_(store_headers_done) StoreHeaders h = {};
        char b64[48];
        int r;

        if (u->multipart) {
                id = store_pct_encode(u->upload_id, false);
                if (!id || asprintf(&url, "%s?partNumber=%u&uploadId=%s", u->url, number, id) < 0)
                        goto oom;
        } else if (asprintf(&url, "%s", u->url) < 0)
                goto oom;

        switch (u->cfg->checksum) {
        case UPLOAD_CHECKSUM_MD5:
                store_base64(pt->digest.md5, 16, b64);
                store_headers_add(&h, "Content-MD5: %s", b64);
                request_auth(u, &p, &h, NULL);
                break;
        case UPLOAD_CHECKSUM_CRC32C: {
                uint32_t c = pt->digest.crc32c;
                uint8_t be[4] = { (uint8_t) (c >> 24), (uint8_t) (c >> 16), (uint8_t) (c >> 8), (uint8_t) c };

                store_base64(be, 4, b64);
                store_headers_add(&h, "x-amz-checksum-crc32c: %s", b64);
                if (!u->multipart)
                        store_headers_add(&h, "x-amz-sdk-checksum-algorithm: CRC32C");
                request_auth(u, &p, &h, NULL);
                break;
        }
        case UPLOAD_CHECKSUM_SHA256:
                request_auth(u, &p, &h, pt->digest.sha256);
                break;
        default:
                request_auth(u, &p, &h, NULL);
                break;
        }
        store_headers_add(&h, "Content-Type: application/octet-stream");
        if (h.oom)
                goto oom;
        p.url = url;
        p.headers = h.v;
        /* Background sync: the parts in flight share the rate. */
        if (u->rate_limit > 0)
                p.max_send_speed = MAX(u->rate_limit / u->n_slots, (uint64_t) 1024);
        /* A part may take as long as there is time; a stall is caught by stall_usec. */
        p.timeout_usec = MAX(time_left(u), USEC_PER_SEC);

        r = request_start(u, &sl->req, "s3-part", &p, slot_done, sl);
        if (r < 0)
                goto fail;
        return;
oom:
        r = -ENOMEM;
fail:
        upload_fail(u, r, "part %u: cannot start request: %s", number, strerror(-r));
}

static void slot_hashed(StoreHash *hs, int error, const StoreDigest *d, void *userdata) {
        S3Slot *sl = userdata;
        S3Upload *u = sl->u;

        sl->hash = NULL; /* freed by store.c once this returns */
        if (error < 0) {
                upload_fail(u, error == -ENODATA ? -EBUSY : error, "part %u: cannot read the source: %s",
                            (unsigned) (sl->part - u->parts) + 1,
                            error == -ENODATA ? "it became shorter" : strerror(-error));
                return;
        }
        sl->part->digest = *d;
        sl->part->hashed = true;
        slot_run(sl);
}

/* Move @sl forward: take a part, hash it, send it. */
static void slot_run(S3Slot *sl) {
        S3Upload *u = sl->u;
        int r;

        if (u->phase != S3_PARTS)
                return;
        if (!sl->part) {
                for (unsigned i = 0; i < u->n_parts; i++)
                        if (!u->parts[i].done && !u->parts[i].taken) {
                                sl->part = &u->parts[i];
                                sl->part->taken = true;
                                break;
                        }
                if (!sl->part)
                        return;
        }
        if (!sl->part->hashed && u->cfg->checksum != UPLOAD_CHECKSUM_NONE) {
                if (sl->hash)
                        return;
                r = store_hash_start(u->loop, u->fd, sl->part->off, sl->part->len, u->cfg->checksum, slot_hashed,
                                     sl, &sl->hash);
                if (r < 0)
                        upload_fail(u, r, "cannot hash part: %s", strerror(-r));
                return;
        }
        if (!creds_ensure(u)) {
                sl->waiting_creds = true;
                return;
        }
        slot_send(sl);
}

/* Is the source still what the parts were read from? (A trainer still writing.) */
static bool source_changed(const S3Upload *u) {
        struct stat st;

        if (!u->have_mtime || fstat(u->fd, &st) < 0)
                return false;
        return (uint64_t) st.st_size != u->size || st.st_mtim.tv_sec != u->mtime.tv_sec ||
               st.st_mtim.tv_nsec != u->mtime.tv_nsec;
}

static void parts_finished(S3Upload *u) {
        if (source_changed(u)) {
                if (u->multipart) {
                        /* Not completed: the abort leaves nothing of it. */
                        upload_fail(u, -EBUSY, "source changed while being read");
                        return;
                }
                /* A single PUT is visible already: take it away again, it may be torn. */
                u->error = -EBUSY;
                (void) snprintf(u->detail, sizeof(u->detail), "source changed while being read");
                u->phase = S3_DELETE;
                u->req_attempts = 0;
                req_start(u);
                return;
        }
        if (!u->multipart) {
                u->phase = S3_HEAD;
                req_start(u);
                return;
        }
        u->phase = S3_COMPLETE;
        req_start(u);
}

static void slot_done(HttpRequest *r, int error, long status, const char *body, size_t size, void *userdata) {
        S3Slot *sl = userdata;
        S3Upload *u = sl->u;
        S3Part *pt = sl->part;
        unsigned number = (unsigned) (pt - u->parts) + 1;
        char what[S3_DETAIL_MAX], code[S3_CODE_MAX] = "";
        uint64_t d;

        if (error == -ECANCELED)
                return;

        if (error == 0 && status >= 200 && status <= 299) {
                char etag[80];

                store_strip_quotes(http_request_header(r, "ETag"), etag, sizeof(etag));
                if (!etag[0]) {
                        upload_fail(u, -EPROTO, "part %u: the store answered without an ETag", number);
                        return;
                }
                if (u->cfg->checksum == UPLOAD_CHECKSUM_MD5 && is_md5_hex(etag)) {
                        char want[33];

                        store_hex(pt->digest.md5, 16, want);
                        if (strcasecmp(etag, want) != 0) {
                                /* The store kept other bytes than we hashed: send again. */
                                error = -EIO;
                                (void) snprintf(what, sizeof(what), "ETag %s, MD5 sent %s", etag, want);
                                goto retry;
                        }
                }
                (void) snprintf(pt->etag, sizeof(pt->etag), "%s", etag);
                pt->done = true;
                pt->taken = false;
                u->n_done++;
                u->bytes_done += pt->len;
                sl->part = NULL;
                if (u->n_done == u->n_parts) {
                        parts_finished(u);
                        return;
                }
                slot_run(sl);
                return;
        }

        if (error == 0 && (status == 401 || status == 403) && creds_rejected(u)) {
                slot_run(sl);
                return;
        }
        if (error < 0)
                (void) snprintf(what, sizeof(what), "%s", strerror(-error));
        else
                describe_answer(what, sizeof(what), status, body, size, code);
        if (!retryable(error, status, code)) {
                upload_fail(u, error < 0 ? error : (status == 401 || status == 403 ? -EACCES : -EIO),
                            "part %u: %s%s%s%s", number, what,
                            status == 401 || status == 403 ? " (credentials from " : "",
                            status == 401 || status == 403 ? u->creds.source : "",
                            status == 401 || status == 403 ? ")" : "");
                return;
        }
        if (error == 0 && digest_rejected(status, code))
                /* The bytes the store got are not those we hashed: a change in flight or in the file. */
                pt->hashed = false;
retry:
        if (error == -EIO)
                pt->hashed = false;
        d = store_backoff_usec(++pt->attempts);
        if (pt->attempts > STORE_RETRIES_MAX || d + S3_ABORT_RESERVE_USEC >= time_left(u)) {
                upload_fail(u, error < 0 ? error : -EIO, "part %u: %s (after %u attempts)", number, what,
                            pt->attempts);
                return;
        }
        u->retries++;
        log_debug("upload: %s: part %u: %s, again in %" PRIu64 " ms", u->object, number, what,
                  d / USEC_PER_MSEC);
        (void) uv_timer_start(&sl->timer, slot_retry_cb, d / USEC_PER_MSEC, 0);
}

static void upload_next(S3Upload *u) {
        switch (u->phase) {
        case S3_CREDS:
                if (creds_ensure(u)) {
                        u->phase = u->multipart ? S3_CREATE : S3_PARTS;
                        upload_next(u);
                }
                return;
        case S3_CREATE:
                req_start(u);
                return;
        case S3_PARTS:
                for (unsigned i = 0; i < u->n_slots; i++)
                        slot_run(&u->slots[i]);
                return;
        default:
                return;
        }
}

static void deadline_cb(uv_timer_t *t) {
        S3Upload *u = t->data;

        upload_fail(u, -ETIME, "deadline reached after %u of %u parts", u->n_done, u->n_parts);
}

/* ---- setup --------------------------------------------------------------------------------- */

static int object_url(const UploadConfig *c, const char *key, char **ret) {
        _cleanup_free_ char *k = store_pct_encode(key, true);
        const char *region = c->region ? c->region : UPLOAD_DEFAULT_REGION;
        int r;

        if (!k)
                return -ENOMEM;
        if (c->endpoint)
                r = asprintf(ret, "%s/%s/%s", c->endpoint, c->bucket, k);
        else if (c->scheme == UPLOAD_GS)
                r = asprintf(ret, "https://storage.googleapis.com/%s/%s", c->bucket, k);
        else if (!strchr(c->bucket, '.'))
                r = asprintf(ret, "https://%s.s3.%s.amazonaws.com/%s", c->bucket, region, k);
        else
                r = asprintf(ret, "https://s3.%s.amazonaws.com/%s/%s", region, c->bucket, k);
        return r < 0 ? -ENOMEM : 0;
}

static uint64_t s3_progress(const StoreUpload *base) {
        const S3Upload *u = (const S3Upload *) base;
        uint64_t n = u->bytes_done;

        for (unsigned i = 0; i < u->n_slots; i++)
                if (u->slots[i].req && http_request_is_running(u->slots[i].req))
                        n += MIN(http_request_uploaded(u->slots[i].req), u->slots[i].part ? u->slots[i].part->len : 0);
        return MIN(n, u->size);
}

static void s3_free(StoreUpload *base) {
        S3Upload *u = (S3Upload *) base;

        if (!u || u->freed)
                return;
        u->freed = true;
        upload_release(u);
        cred_provider_cancel(u->cp, u);
        u->creds_pending = false;
        if (u->upload_id && u->have_creds && u->phase != S3_DONE) {
                /* Abort in the background; the handles close when it is answered. */
                if (u->phase != S3_ABORT) {
                        u->phase = S3_ABORT;
                        u->req_attempts = 1;
                        if (u->req)
                                http_request_cancel(u->req);
                        if (!u->req || !http_request_is_running(u->req))
                                req_start(u);
                        else
                                u->req_attempts = 0; /* req_done() starts it after the cancel */
                }
                return;
        }
        u->req = http_request_free(u->req);
        upload_close_handles(u);
}

static int upload_new(const StoreParams *p, S3Upload **ret) {
        const UploadConfig *c = p->upload;
        S3Upload *u;
        uint64_t part;
        int r;

        u = calloc(1, sizeof(*u));
        if (!u)
                return -ENOMEM;
        u->base.ops = &store_s3_ops;
        u->loop = p->loop;
        u->http = p->http;
        u->cfg = c;
        u->cp = p->creds;
        u->fd = p->fd;
        u->size = p->size;
        u->until_usec = p->until_usec;
        u->rate_limit = p->rate_limit;
        if (p->fd >= 0) {
                struct stat st;

                if (fstat(p->fd, &st) >= 0) {
                        u->mtime = st.st_mtim;
                        u->have_mtime = true;
                }
        }
        (void) snprintf(u->sigv4, sizeof(u->sigv4), "aws:amz:%s:s3",
                        c->region ? c->region : c->scheme == UPLOAD_GS ? "auto" : UPLOAD_DEFAULT_REGION);

        u->key = strdup(p->key);
        u->object = store_object_url(c, p->key);
        r = object_url(c, p->key, &u->url);
        if (!u->key || !u->object || r < 0)
                goto oom;

        part = store_part_size(c, p->size);
        u->multipart = p->size > part;
        u->n_parts = u->multipart ? (unsigned) ((p->size + part - 1) / part) : 1;
        u->parts = calloc(u->n_parts, sizeof(S3Part));
        if (!u->parts)
                goto oom;
        for (unsigned i = 0; i < u->n_parts; i++) {
                u->parts[i].off = (uint64_t) i * part;
                u->parts[i].len = MIN(part, p->size - u->parts[i].off);
        }
        u->n_slots = MIN(u->n_parts, c->concurrency > 0 ? c->concurrency : UPLOAD_DEFAULT_CONCURRENCY);
        u->slots = calloc(u->n_slots, sizeof(S3Slot));
        if (!u->slots)
                goto oom;

        /* From here on the memory goes through the handles' close callbacks. */
        (void) uv_timer_init(u->loop, &u->deadline);
        (void) uv_timer_init(u->loop, &u->retry);
        u->deadline.data = u->retry.data = u;
        u->n_handles = 2;
        for (unsigned i = 0; i < u->n_slots; i++) {
                u->slots[i].u = u;
                u->slots[i].index = i;
                (void) uv_timer_init(u->loop, &u->slots[i].timer);
                u->slots[i].timer.data = &u->slots[i];
                u->slots[i].timer_init = true;
                u->n_handles++;
        }
        *ret = u;
        return 0;
oom:
        free(u->key);
        free(u->object);
        free(u->url);
        free(u->parts);
        free(u);
        return -ENOMEM;
}

static void start_cb(uv_timer_t *t) {
        S3Upload *u = t->data;
        uint64_t left = time_left(u);

        if (left <= S3_ABORT_RESERVE_USEC) {
                upload_fail(u, -ETIME, "deadline reached before the upload could start");
                return;
        }
        (void) uv_timer_start(&u->deadline, deadline_cb, (left - S3_ABORT_RESERVE_USEC) / USEC_PER_MSEC, 0);
        upload_next(u);
}

static int s3_upload_start(const StoreParams *p, StoreDoneFn done, void *userdata, StoreUpload **ret) {
        S3Upload *u;
        int r;

        if (!p->upload->bucket)
                return -EINVAL;
        r = upload_new(p, &u);
        if (r < 0)
                return r;
        u->done = done;
        u->userdata = userdata;
        u->phase = S3_CREDS;
        /* Never call back from inside this call: the first step runs from the loop. */
        (void) uv_timer_start(&u->deadline, start_cb, 0, 0);
        *ret = &u->base;
        return 0;
}

/* ---- check: HEAD for the manifest ------------------------------------------------------------ */

static void check_upload_done(StoreUpload *base, int error, const char *detail, const StoreResult *res,
                              void *userdata) {
        S3Check *c = userdata;
        int result;

        if (error == 0)
                result = strcasecmp(res->etag, c->etag) == 0;
        else if (error == -ENOENT)
                result = 0;
        else
                result = error;
        c->done(&c->base, result, detail, c->userdata);
}

static void check_head_done(HttpRequest *r, int error, long status, const char *body, size_t size,
                            void *userdata) {
        S3Upload *u = userdata;
        char etag[128], code[S3_CODE_MAX];

        if (error == -ECANCELED)
                return;
        if (error == 0 && (status == 401 || status == 403) && creds_rejected(u)) {
                req_start(u);
                return;
        }
        u->phase = S3_DONE;
        if (error < 0) {
                u->error = error;
                (void) snprintf(u->detail, sizeof(u->detail), "HEAD: %s", strerror(-error));
        } else if (status == 404) {
                u->error = -ENOENT;
                (void) snprintf(u->detail, sizeof(u->detail), "not in the store");
        } else if (status < 200 || status > 299) {
                u->error = -EIO;
                describe_answer(u->detail, sizeof(u->detail), status, body, size, code);
        } else {
                store_strip_quotes(http_request_header(r, "ETag"), etag, sizeof(etag));
                (void) snprintf(u->res.etag, sizeof(u->res.etag), "%s", etag);
        }
        upload_report(u);
}

static void check_start_cb(uv_timer_t *t) {
        req_start(t->data);
}

static int s3_check_start(const StoreParams *p, const char *etag, StoreCheckFn done, void *userdata,
                          StoreCheck **ret) {
        S3Check *c;
        S3Upload *u;
        int r;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->etag = strdup(etag);
        if (!c->etag) {
                free(c);
                return -ENOMEM;
        }
        /* A zero-byte "upload" gives the request machinery, credentials and URL. */
        StoreParams q = *p;
        q.size = 0;
        r = upload_new(&q, &u);
        if (r < 0) {
                free(c->etag);
                free(c);
                return r;
        }
        u->done = check_upload_done;
        u->userdata = c;
        u->phase = S3_HEAD;
        u->check = true;
        c->base.ops = &store_s3_ops;
        c->u = u;
        c->done = done;
        c->userdata = userdata;
        (void) uv_timer_start(&u->deadline, check_start_cb, 0, 0);
        *ret = &c->base;
        return 0;
}

static void s3_check_free(StoreCheck *base) {
        S3Check *c = (S3Check *) base;

        free(c->u->upload_id);
        c->u->upload_id = NULL;
        s3_free(&c->u->base);
        free(c->etag);
        free(c);
}

const StoreOps store_s3_ops = {
        .upload_start = s3_upload_start,
        .upload_progress = s3_progress,
        .upload_free = s3_free,
        .check_start = s3_check_start,
        .check_free = s3_check_free,
};
