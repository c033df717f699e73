/* SPDX-License-Identifier: MIT */
/*
 * store-azure.c - one object to Azure Blob Storage as a block blob, through
 * the daemon's Http. az://ACCOUNT/CONTAINER/PREFIX goes to
 * https://ACCOUNT.blob.core.windows.net/CONTAINER/KEY, or to endpoint =
 * (path-style, e.g. Azurite's http://127.0.0.1:10000/devstoreaccount1).
 *
 * A file up to one part size is one Put Blob (x-ms-blob-type: BlockBlob, the
 * body streamed from the fd by curl). A larger one is staged as blocks (Put
 * Block, up to `concurrency` in flight, each block's checksum computed first
 * in slices on the loop) and committed in order with Put Block List. Block
 * ids are the base64 of "spw-%011u" (the block's number from 1): all ids of a
 * blob must have the same length, and 15 bytes give 20 base64 characters
 * without padding. Then Get Blob Properties (HEAD) verifies the size (and,
 * for a Put Blob with checksum = md5, the Content-MD5 the store kept), and
 * its ETag goes into StoreResult.etag.
 *
 * Nothing is aborted: Azure has no multipart upload object to delete. Blocks
 * staged but never committed are invisible (the blob is not created or keeps
 * its previous content) and Azure garbage-collects them after a week; a later
 * Put Blob or Put Block List of the same name discards them at once.
 *
 * Checksums: Azure verifies Content-MD5 on Put Blob and Put Block (400
 * Md5Mismatch; Azurite says 400 InvalidOperation "Provided contentMD5 doesn't
 * match."). It has no CRC-32C or SHA-256 header, so checksum = crc32c and
 * checksum = sha256 fall back to Content-MD5 here; x-ms-content-crc64 is not
 * implemented. checksum = none sends no checksum (TCP/TLS only). A rejected
 * checksum makes the block be read and hashed again before it is retried,
 * which also catches a byte that changed in flight.
 *
 * Auth, from the CredProvider: a SAS token is appended to the query; an
 * account key signs each request (Shared Key, "Authorize with Shared Key",
 * the 2015-02-21+ string to sign: an empty Content-Length for 0); an OAuth
 * token (managed identity) goes as Authorization: Bearer. Every request
 * carries x-ms-date and x-ms-version. A 403 invalidates the credentials and
 * is retried once with fresh ones (a configured key or SAS is not fetched
 * again: the provider says so at once), then it is one clear error naming
 * the object.
 *
 * Retries: transport errors (timeouts, resets, refused connections), 408,
 * 429, 5xx and a rejected checksum are retried with backoff and jitter, at
 * most STORE_RETRIES_MAX requests per block or request, and never when the
 * backoff plus the expected duration of the attempt would pass until_usec.
 * At until_usec everything in flight is cancelled and the upload ends with
 * -ETIME. until_usec = USEC_INFINITY: no deadline (then each request is only
 * bounded by the stall detection and a generous timeout).
 *
 * This module owns its requests, its timer and its copy of the credentials;
 * it never logs above debug and calls back only from the loop.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <strings.h>
#include <time.h>

#include "action.h"
#include "shared/log.h"
#include "shared/macro.h"
#include "store-internal.h"

/* Any version from 2017-11-09 on takes OAuth tokens; Azurite accepts this one. */
#define AZ_VERSION "2021-08-06"
#define AZ_BLOCKS_MAX 50000U
#define AZ_BLOCK_SIZE_MAX (UINT64_C(4000) * 1024U * 1024U)
#define AZ_BLOCK_ID_FMT "spw-%011u" /* 15 bytes */
#define AZ_BLOCK_ID_RAW 15U
#define AZ_BLOCK_ID_LEN 20U /* base64 of 15 bytes, no padding */
#define AZ_DETAIL_MAX 768U
#define AZ_ERROR_BODY_MAX (64U * 1024U)
/* Without a deadline a request is still bounded (the stall detection is the real guard). */
#define AZ_REQUEST_TIMEOUT_MAX_USEC (6 * 3600 * USEC_PER_SEC)
/* Credentials expiring within this are fetched again before the next request. */
#define AZ_CREDS_SLACK_USEC (15 * USEC_PER_SEC)

typedef struct AzOp AzOp;

typedef enum AzKind {
        AZ_PUT_BLOB,
        AZ_PUT_BLOCK,
        AZ_PUT_BLOCK_LIST,
        AZ_HEAD,
        AZ_DELETE,      /* a single Put Blob whose source changed under it: take it away again */
        _AZ_KIND_MAX,
        _AZ_KIND_INVALID = -EINVAL,
} AzKind;

static const char *const az_kind_table[_AZ_KIND_MAX] = {
        [AZ_PUT_BLOB] = "Put Blob",
        [AZ_PUT_BLOCK] = "Put Block",
        [AZ_PUT_BLOCK_LIST] = "Put Block List",
        [AZ_HEAD] = "Get Blob Properties",
        [AZ_DELETE] = "Delete Blob",
};

typedef enum AzSlotState {
        AZ_SLOT_IDLE,    /* no work */
        AZ_SLOT_HASHING, /* store_hash_start() runs for the body */
        AZ_SLOT_READY,   /* to be sent: waits for credentials or for retry_usec */
        AZ_SLOT_SENDING, /* the request is in flight */
} AzSlotState;

typedef enum AzPhase {
        AZ_PHASE_DATA,   /* Put Blob, or the blocks */
        AZ_PHASE_COMMIT, /* Put Block List */
        AZ_PHASE_VERIFY, /* HEAD (the only phase of a check) */
        AZ_PHASE_DONE,
} AzPhase;

/* One request slot: one HttpRequest, one piece of work at a time, with its retries. */
typedef struct AzSlot {
        AzOp *op;
        unsigned index;
        AzSlotState state;
        AzKind kind;
        unsigned block;        /* AZ_PUT_BLOCK: 0-based */
        uint64_t off, len;     /* the body's range of the source (AZ_PUT_BLOB, AZ_PUT_BLOCK) */
        unsigned attempts;     /* requests sent for this work */
        bool hashed;
        uint8_t md5[16];
        uint64_t retry_usec;   /* READY: not before this (monotonic); 0 = at once */
        uint64_t sent_usec;
        unsigned sent_gen;     /* credentials generation the request was signed with */
        StoreHash *hash;
        HttpRequest *req;
} AzSlot;

struct AzOp {
        StoreUpload upload;
        StoreCheck check;
        bool is_check;

        uv_loop_t *loop;
        Http *http;
        const UploadConfig *cfg;
        CredProvider *cp;
        char *object;          /* az://account/container/key, for messages */
        char *url;             /* the blob's URL without query */
        char *resource;        /* "/" account + the URL's path: the CanonicalizedResource base */
        int fd;
        uint64_t size;
        struct timespec mtime;  /* the source's when we started */
        bool have_mtime;
        uint64_t until_usec;
        UploadChecksum algo;   /* MD5 or NONE */

        Credentials creds;
        uint8_t *key;          /* CRED_AZURE_KEY, decoded */
        size_t key_size;
        bool have_creds, creds_pending, reauthed;
        unsigned cred_gen;     /* bumped for every set of credentials received */
        char auth_detail[AZ_DETAIL_MAX]; /* the 403 that made us fetch them again */

        AzPhase phase;
        bool blocks;           /* Put Block + Put Block List, else one Put Blob */
        uint64_t part;
        unsigned n_blocks, next_block, n_done;
        uint64_t bytes_done;
        uint64_t rate;         /* bytes/s of the last body request, for retry estimates; 0 = unknown */
        char *block_list;      /* the Put Block List body */
        size_t block_list_size;
        uint8_t blob_md5[16];  /* the single Put Blob's, for verification */
        bool blob_md5_set;

        AzSlot *slots;
        unsigned n_slots;
        uv_timer_t timer;      /* deadline, retry wake-ups, and the deferred report */

        bool finished;         /* error/detail/result are final; the report is due */
        bool reported;
        bool freed;
        int error;
        char detail[AZ_DETAIL_MAX];
        StoreResult res;

        StoreDoneFn done;
        StoreCheckFn check_done;
        void *userdata;
        char *want_etag;       /* check */
        int check_result;
};

static void op_pump(AzOp *op);
static void op_arm(AzOp *op);
static void slot_run(AzSlot *s);

static const char *strempty(const char *s) {
        return s ? s : "";
}

/* ---- time ---------------------------------------------------------------------------- */

/* RFC 1123 in English whatever the locale: "Sun, 06 Nov 1994 08:49:37 GMT". */
static void az_http_date(uint64_t realtime_usec, char out[static 128]) {
        static const char days[7][4] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
        static const char months[12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
        time_t t = (time_t) (realtime_usec / USEC_PER_SEC);
        struct tm tm;

        if (!gmtime_r(&t, &tm) || tm.tm_wday < 0 || tm.tm_wday > 6 || tm.tm_mon < 0 || tm.tm_mon > 11)
                tm = (struct tm) { .tm_year = 70, .tm_mday = 1, .tm_wday = 4 };
        (void) snprintf(out, 128, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday], tm.tm_mday,
                        months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* ---- Shared Key ------------------------------------------------------------------------ */

typedef struct AzSignInput {
        const char *verb;
        uint64_t content_length;       /* 0 is signed as "" (version 2015-02-21 and later) */
        const char *content_md5;       /* base64, or NULL */
        const char *content_type;      /* or NULL */
        /* "x-ms-name:value": lower-case names, sorted, trimmed; NULL-terminated */
        const char *const *ms_headers;
        const char *resource;          /* "/" account + the URL path as sent (percent-encoded) */
        const char *const *query;      /* "name:value": lower-case names, sorted, values decoded; or NULL */
} AzSignInput;

/*
 * The StringToSign of "Authorize with Shared Key" for the Blob service:
 * VERB, Content-Encoding, Content-Language, Content-Length, Content-MD5,
 * Content-Type, Date, If-Modified-Since, If-Match, If-None-Match,
 * If-Unmodified-Since, Range (each followed by "\n"; we send only the
 * length, the MD5 and maybe the type, and x-ms-date instead of Date), then
 * the canonicalized x-ms- headers ("name:value\n" each), then the
 * canonicalized resource ("/account/path", then "\nname:value" per query
 * parameter).
 */
static int az_string_to_sign(const AzSignInput *in, char **ret) {
        _cleanup_free_ char *buf = NULL;
        size_t size = 0;
        FILE *f;

        f = open_memstream(&buf, &size);
        if (!f)
                return -ENOMEM;
        fprintf(f, "%s\n\n\n", in->verb);
        if (in->content_length > 0)
                fprintf(f, "%" PRIu64, in->content_length);
        fprintf(f, "\n%s\n%s\n\n\n\n\n\n\n", in->content_md5 ? in->content_md5 : "",
                in->content_type ? in->content_type : "");
        for (const char *const *h = in->ms_headers; h && *h; h++)
                fprintf(f, "%s\n", *h);
        fputs(in->resource, f);
        for (const char *const *q = in->query; q && *q; q++)
                fprintf(f, "\n%s", *q);
        if (fclose(f) != 0)
                return -ENOMEM;
        *ret = TAKE_PTR(buf);
        return 0;
}

/* base64(HMAC-SHA256(key, @string_to_sign)) into @out (45 bytes). */
static int az_sign(const uint8_t *key, size_t key_size, const char *string_to_sign, char out[static 45]) {
        uint8_t mac[EVP_MAX_MD_SIZE];
        unsigned n = 0;

        if (!HMAC(EVP_sha256(), key, (int) key_size, (const unsigned char *) string_to_sign,
                  strlen(string_to_sign), mac, &n) ||
            n != 32)
                return -EIO;
        store_base64(mac, n, out);
        return 0;
}

/* ---- URLs ------------------------------------------------------------------------------ */

/* The blob's URL and its CanonicalizedResource base ("/account" + the URL's path). */
static int az_urls(const UploadConfig *c, const char *key, char **ret_url, char **ret_resource) {
        _cleanup_free_ char *container = NULL, *k = NULL, *url = NULL, *resource = NULL;
        const char *path;
        int n;

        container = store_pct_encode(c->bucket, false);
        k = store_pct_encode(key, true);
        if (!container || !k)
                return -ENOMEM;
        if (c->endpoint) {
                size_t l = strlen(c->endpoint);

                while (l > 0 && c->endpoint[l - 1] == '/')
                        l--;
                n = asprintf(&url, "%.*s/%s/%s", (int) l, c->endpoint, container, k);
        } else
                n = asprintf(&url, "https://%s.blob.core.windows.net/%s/%s", c->account, container, k);
        if (n < 0)
                return -ENOMEM;

        /* The path starts at the first '/' after "scheme://host[:port]". */
        path = strstr(url, "://");
        path = path ? strchr(path + 3, '/') : NULL;
        if (!path)
                return -EINVAL;
        if (asprintf(&resource, "/%s%s", c->account, path) < 0)
                return -ENOMEM;

        *ret_url = TAKE_PTR(url);
        *ret_resource = TAKE_PTR(resource);
        return 0;
}

static void az_block_id(unsigned index, char out[static AZ_BLOCK_ID_LEN + 1]) {
        char raw[AZ_BLOCK_ID_RAW + 1];

        (void) snprintf(raw, sizeof(raw), AZ_BLOCK_ID_FMT, index + 1);
        store_base64((const uint8_t *) raw, AZ_BLOCK_ID_RAW, out);
}

/* ---- error answers --------------------------------------------------------------------- */

/*
 * Code and Message of an Azure error answer (<Error><Code/><Message/></Error>),
 * else x-ms-error-code (a HEAD has no body). Only the Message's first line:
 * Azure appends "RequestId:..." and "Time:..." lines. An
 * AuthenticationErrorDetail (why a 403: "Invalid token audience.", or the
 * string the service signed) is appended to the message, cut to fit.
 */
static void az_parse_error(HttpRequest *r, const char *body, size_t size, char *code, size_t code_size,
                           char *message, size_t message_size) {
        static const char *const names[] = { "Code", "Message", "AuthenticationErrorDetail" };
        char *v[3] = {};
        const char *h;

        code[0] = message[0] = '\0';
        if (size > 0 && size <= AZ_ERROR_BODY_MAX)
                (void) store_xml_find(body, size, names, v, ELEMENTSOF(names));
        if (v[1])
                v[1][strcspn(v[1], "\r\n")] = '\0';
        if (v[2])
                v[2][strcspn(v[2], "\r\n")] = '\0';
        if (v[0])
                (void) snprintf(code, code_size, "%s", v[0]);
        else if (r && (h = http_request_header(r, "x-ms-error-code")))
                (void) snprintf(code, code_size, "%s", h);
        (void) snprintf(message, message_size, "%s%s%s", strempty(v[1]), v[1] && v[2] ? " " : "", strempty(v[2]));
        for (size_t i = 0; i < ELEMENTSOF(v); i++)
                free(v[i]);
}

static bool az_md5_rejected(long status, const char *code, const char *message) {
        return status == 400 && (streq(code, "Md5Mismatch") || streq(code, "InvalidMd5") ||
                                 (streq(code, "InvalidOperation") && strcasestr(message, "md5")));
}

static bool az_retryable(int error, long status) {
        if (error < 0)
                return error != -ENOMEM && error != -EINVAL && error != -ESHUTDOWN && error != -ENODATA &&
                       error != -EFBIG;
        return status >= 500 || status == 429 || status == 408;
}

/* ---- the end --------------------------------------------------------------------------- */

static void slot_release(AzSlot *s) {
        s->hash = store_hash_free(s->hash);
        s->req = http_request_free(s->req);
        s->state = AZ_SLOT_IDLE;
}

/* The result is final: stop all work; the callback comes from the timer (the loop). */
static void op_finish(AzOp *op, int error, const char *fmt, ...) _printf_(3, 4);
static void op_finish(AzOp *op, int error, const char *fmt, ...) {
        va_list ap;

        if (op->finished)
                return;
        op->finished = true;
        op->phase = AZ_PHASE_DONE;
        op->error = error;
        if (fmt) {
                va_start(ap, fmt);
                (void) vsnprintf(op->detail, sizeof(op->detail), fmt, ap);
                va_end(ap);
        }
        for (unsigned i = 0; i < op->n_slots; i++)
                slot_release(&op->slots[i]);
        cred_provider_cancel(op->cp, op);
        op->creds_pending = false;
        if (error < 0)
                log_debug("store-azure: %s: %s", op->object, op->detail);
        op_arm(op);
}

static void op_report(AzOp *op) {
        if (op->reported || op->freed)
                return;
        op->reported = true;
        if (op->is_check) {
                log_debug("store-azure: %s: check: %d%s%s", op->object,
                          op->error < 0 ? op->error : op->check_result, op->detail[0] ? ", " : "",
                          op->detail);
                /* May free @op. */
                op->check_done(&op->check, op->error < 0 ? op->error : op->check_result,
                               op->detail[0] ? op->detail : NULL, op->userdata);
                return;
        }
        op->res.bytes = op->bytes_done;
        op->res.parts = op->n_blocks;
        if (op->error == 0)
                log_debug("store-azure: %s: complete, %" PRIu64 " bytes, %u blocks, %u retries", op->object,
                          op->size, op->n_blocks, op->res.retries);
        /* May free @op. */
        op->done(&op->upload, op->error, op->error < 0 ? op->detail : NULL, &op->res, op->userdata);
}

static void op_destroy(AzOp *op) {
        for (unsigned i = 0; i < op->n_slots; i++) {
                http_request_free(op->slots[i].req);
                store_hash_free(op->slots[i].hash);
        }
        credentials_done(&op->creds);
        free(op->key);
        free(op->slots);
        free(op->block_list);
        free(op->object);
        free(op->url);
        free(op->resource);
        free(op->want_etag);
        free(op);
}

static void op_timer_closed(uv_handle_t *h) {
        op_destroy(h->data);
}

/* No callback from now on; the memory goes once libuv has let go of the timer. */
static void op_free(AzOp *op) {
        if (!op || op->freed)
                return;
        op->freed = true;
        for (unsigned i = 0; i < op->n_slots; i++)
                slot_release(&op->slots[i]);
        cred_provider_cancel(op->cp, op);
        uv_close((uv_handle_t *) &op->timer, op_timer_closed);
}

/* ---- the timer: deadline, retries, report ---------------------------------------------- */

static const char *op_where(const AzOp *op, char *buf, size_t size) {
        if (op->phase == AZ_PHASE_COMMIT)
                (void) snprintf(buf, size, "%u of %u blocks, before Put Block List", op->n_done,
                                op->n_blocks);
        else if (op->phase == AZ_PHASE_VERIFY)
                (void) snprintf(buf, size, "%u of %u blocks, while verifying", op->n_blocks, op->n_blocks);
        else
                (void) snprintf(buf, size, "%u of %u blocks", op->n_done, op->n_blocks);
        return buf;
}

static void op_timer_cb(uv_timer_t *t) {
        AzOp *op = t->data;
        uint64_t now;
        char where[96];

        if (op->finished) {
                op_report(op);
                return;
        }
        now = now_monotonic_usec();
        if (now >= op->until_usec) {
                if (op->is_check)
                        op_finish(op, -ETIME, "deadline reached while checking %s", op->object);
                else
                        op_finish(op, -ETIME, "deadline reached after %s",
                                  op_where(op, where, sizeof(where)));
                return;
        }
        for (unsigned i = 0; i < op->n_slots; i++)
                if (op->slots[i].state == AZ_SLOT_READY && op->slots[i].retry_usec <= now)
                        op->slots[i].retry_usec = 0;
        op_pump(op);
}

/* Wake at the deadline or the earliest retry; at once when the report is due. */
static void op_arm(AzOp *op) {
        uint64_t now = now_monotonic_usec(), when = op->until_usec;

        if (op->freed)
                return;
        if (op->finished)
                when = now;
        else
                for (unsigned i = 0; i < op->n_slots; i++)
                        if (op->slots[i].state == AZ_SLOT_READY && op->slots[i].retry_usec > 0)
                                when = MIN(when, op->slots[i].retry_usec);
        if (when == USEC_INFINITY) {
                (void) uv_timer_stop(&op->timer);
                return;
        }
        (void) uv_timer_start(&op->timer, op_timer_cb,
                              when > now ? (when - now + USEC_PER_MSEC - 1) / USEC_PER_MSEC : 0, 0);
}

/* ---- credentials ----------------------------------------------------------------------- */

static void creds_done(CredProvider *p, int error, const Credentials *c, const char *detail,
                       void *userdata) {
        AzOp *op = userdata;
        _cleanup_free_ uint8_t *key = NULL;
        size_t key_size = 0;
        int r;

        op->creds_pending = false;
        if (op->finished || op->freed)
                return;
        if (error < 0) {
                /* The 403 is the news; a configured key or SAS that is "rejected" again adds nothing. */
                if (op->reauthed && op->auth_detail[0] && error == -EACCES)
                        op_finish(op, -EACCES, "%s", op->auth_detail);
                else if (op->reauthed && op->auth_detail[0])
                        op_finish(op, -EACCES, "%s; fetching credentials again: %s", op->auth_detail,
                                  detail ? detail : strerror(-error));
                else
                        op_finish(op, error, "credentials: %s", detail ? detail : strerror(-error));
                return;
        }
        if (c->kind != CRED_AZURE_KEY && c->kind != CRED_AZURE_SAS && c->kind != CRED_BEARER) {
                op_finish(op, -EACCES, "credentials: %s gave credentials az:// cannot use",
                          strna(c->source));
                return;
        }
        if (c->kind == CRED_AZURE_KEY) {
                r = c->token ? store_base64_decode(c->token, &key, &key_size) : -EINVAL;
                if (r < 0) {
                        op_finish(op, r == -ENOMEM ? r : -EACCES,
                                  "credentials: the account key from %s is not valid base64",
                                  strna(c->source));
                        return;
                }
        } else if (isempty(c->token)) {
                op_finish(op, -EACCES, "credentials: %s gave an empty token", strna(c->source));
                return;
        }

        credentials_done(&op->creds);
        if (credentials_copy(&op->creds, c) < 0) {
                op_finish(op, -ENOMEM, "out of memory");
                return;
        }
        free(op->key);
        op->key = TAKE_PTR(key);
        op->key_size = key_size;
        op->have_creds = true;
        op->cred_gen++;
        log_debug("store-azure: %s: credentials from %s", op->object, strna(c->source));
        op_pump(op);
}

static bool creds_fresh(const AzOp *op) {
        if (!op->have_creds)
                return false;
        return op->creds.expires_usec == 0 ||
               now_realtime_usec() + AZ_CREDS_SLACK_USEC < op->creds.expires_usec;
}

/* True when credentials are there; else a fetch is under way and creds_done() pumps. */
static bool creds_ensure(AzOp *op) {
        int r;

        if (creds_fresh(op))
                return true;
        if (op->creds_pending)
                return false;
        op->creds_pending = true;
        r = cred_provider_get(op->cp, creds_done, op);
        if (r < 0) {
                op->creds_pending = false;
                op_finish(op, r, "credentials: %s", strerror(-r));
        }
        return false;
}

/* ---- requests -------------------------------------------------------------------------- */


static uint64_t op_time_left(const AzOp *op) {
        uint64_t now = now_monotonic_usec();

        if (op->until_usec == USEC_INFINITY)
                return USEC_INFINITY;
        return now < op->until_usec ? op->until_usec - now : 0;
}

static void req_done(HttpRequest *r, int error, long status, const char *body, size_t size, void *userdata);

static int slot_send(AzSlot *s) {
        AzOp *op = s->op;
        _cleanup_free_ char *url = NULL, *block_id_enc = NULL, *sts = NULL;
        char date[128], md5[25] = "", block_id[AZ_BLOCK_ID_LEN + 1], sig[45];
        char ms_date[160], ms_version[64], ms_type[64] = "", query_block[64] = "";
        const char *ms[4] = {}, *query[3] = {}, *verb = "PUT", *q = NULL;
        uint64_t clen = 0, left;
        HttpFileBody file = { .fd = op->fd, .offset = s->off, .size = s->len };
        HttpRequestParams p = {};
        _cleanup_(store_headers_done) StoreHeaders h = {};
        size_t nms = 0;
        const char *sas = NULL;
        int r;

        az_http_date(now_realtime_usec(), date);
        switch (s->kind) {
        case AZ_PUT_BLOB:
                clen = s->len;
                p.file = &file;
                (void) snprintf(ms_type, sizeof(ms_type), "x-ms-blob-type:BlockBlob");
                break;
        case AZ_PUT_BLOCK:
                clen = s->len;
                p.file = &file;
                az_block_id(s->block, block_id);
                block_id_enc = store_pct_encode(block_id, false);
                if (!block_id_enc)
                        return -ENOMEM;
                (void) snprintf(query_block, sizeof(query_block), "blockid:%s", block_id);
                query[0] = query_block;
                query[1] = "comp:block";
                break;
        case AZ_PUT_BLOCK_LIST:
                clen = op->block_list_size;
                p.body = op->block_list;
                p.body_size = op->block_list_size;
                query[0] = "comp:blocklist";
                q = "comp=blocklist";
                break;
        case AZ_HEAD:
                verb = "HEAD";
                break;
        case AZ_DELETE:
                verb = "DELETE";
                break;
        case _AZ_KIND_MAX:
        case _AZ_KIND_INVALID:
                assert(false);
                return -EINVAL;
        }
        if ((s->kind == AZ_PUT_BLOB || s->kind == AZ_PUT_BLOCK) && op->algo == UPLOAD_CHECKSUM_MD5)
                store_base64(s->md5, sizeof(s->md5), md5);

        /* Sorted by name: x-ms-blob-type < x-ms-date < x-ms-version. */
        (void) snprintf(ms_date, sizeof(ms_date), "x-ms-date:%s", date);
        (void) snprintf(ms_version, sizeof(ms_version), "x-ms-version:%s", AZ_VERSION);
        if (ms_type[0])
                ms[nms++] = ms_type;
        ms[nms++] = ms_date;
        ms[nms++] = ms_version;

        if (op->creds.kind == CRED_AZURE_SAS)
                sas = op->creds.token[0] == '?' ? op->creds.token + 1 : op->creds.token;
        if (s->kind == AZ_PUT_BLOCK) {
                if (asprintf(&url, "%s?comp=block&blockid=%s%s%s", op->url, block_id_enc, sas ? "&" : "",
                             strempty(sas)) < 0)
                        return -ENOMEM;
        } else if (asprintf(&url, "%s%s%s%s%s", op->url, q || sas ? "?" : "", strempty(q),
                            q && sas ? "&" : "", strempty(sas)) < 0)
                return -ENOMEM;

        for (size_t i = 0; i < nms; i++) {
                const char *colon = strchr(ms[i], ':');

                store_headers_add(&h, "%.*s: %s", (int) (colon - ms[i]), ms[i], colon + 1);
        }
        if (md5[0])
                store_headers_add(&h, "Content-MD5: %s", md5);

        switch (op->creds.kind) {
        case CRED_AZURE_KEY: {
                AzSignInput in = {
                        .verb = verb,
                        .content_length = clen,
                        .content_md5 = md5[0] ? md5 : NULL,
                        .ms_headers = ms,
                        .resource = op->resource,
                        .query = query,
                };

                r = az_string_to_sign(&in, &sts);
                if (r < 0)
                        return r;
                r = az_sign(op->key, op->key_size, sts, sig);
                if (r < 0)
                        return r;
                store_headers_add(&h, "Authorization: SharedKey %s:%s", op->cfg->account, sig);
                break;
        }
        case CRED_BEARER:
                store_headers_add(&h, "Authorization: Bearer %s", op->creds.token);
                break;
        case CRED_AZURE_SAS:
                break;
        case CRED_AWS:
        case _CRED_KIND_MAX:
        case _CRED_KIND_INVALID:
                return -EACCES;
        }

        if (h.oom)
                return -ENOMEM;
        left = op_time_left(op);
        p.method = verb;
        p.url = url;
        p.headers = h.v;
        p.timeout_usec = MAX(MIN(left, AZ_REQUEST_TIMEOUT_MAX_USEC), USEC_PER_MSEC);
        p.max_body = AZ_ERROR_BODY_MAX;
        p.stall_usec = STORE_STALL_USEC;
        r = http_request_start(s->req, &p, req_done, s);
        if (r < 0)
                return r;

        s->state = AZ_SLOT_SENDING;
        s->attempts++;
        s->sent_usec = now_monotonic_usec();
        s->sent_gen = op->cred_gen;
        if (s->kind == AZ_PUT_BLOCK)
                log_debug("store-azure: %s: Put Block %u of %u, attempt %u", op->object, s->block + 1,
                          op->n_blocks, s->attempts);
        else
                log_debug("store-azure: %s: %s, attempt %u", op->object, az_kind_table[s->kind],
                          s->attempts);
        return 0;
}

/* ---- hashing ----------------------------------------------------------------------------- */

static void hash_done(StoreHash *hash, int error, const StoreDigest *d, void *userdata) {
        AzSlot *s = userdata;
        AzOp *op = s->op;

        s->hash = NULL; /* store.c frees it once this returns */
        if (op->finished || op->freed)
                return;
        if (error < 0) {
                op_finish(op, error, "reading %" PRIu64 " bytes of the source at offset %" PRIu64 ": %s",
                          s->len, s->off,
                          error == -ENODATA ? "the file is shorter than when the upload started"
                                            : strerror(-error));
                return;
        }
        memcpy(s->md5, d->md5, sizeof(s->md5));
        s->hashed = true;
        s->state = AZ_SLOT_READY;
        op_pump(op);
}

static bool slot_needs_hash(const AzSlot *s) {
        return (s->kind == AZ_PUT_BLOB || s->kind == AZ_PUT_BLOCK) && s->op->algo == UPLOAD_CHECKSUM_MD5 &&
               !s->hashed;
}

/* Start @s on new work; it runs when the pump gets to it. */
static void slot_take(AzSlot *s, AzKind kind, unsigned block, uint64_t off, uint64_t len) {
        s->kind = kind;
        s->block = block;
        s->off = off;
        s->len = len;
        s->attempts = 0;
        s->hashed = false;
        s->retry_usec = 0;
        s->state = AZ_SLOT_READY;
}

/* A READY slot: hash if needed, else send once credentials are there. */
static void slot_run(AzSlot *s) {
        AzOp *op = s->op;
        char where[96];
        int r;

        assert(s->state == AZ_SLOT_READY && s->retry_usec == 0);
        if (slot_needs_hash(s)) {
                s->state = AZ_SLOT_HASHING;
                r = store_hash_start(op->loop, op->fd, s->off, s->len, UPLOAD_CHECKSUM_MD5, hash_done, s,
                                     &s->hash);
                if (r < 0) {
                        s->state = AZ_SLOT_READY;
                        op_finish(op, r, "hashing block %u: %s", s->block + 1, strerror(-r));
                }
                return;
        }
        if (!creds_ensure(op))
                return;
        r = slot_send(s);
        if (r < 0)
                op_finish(op, r, "%s %s after %s: %s", az_kind_table[s->kind], op->object,
                          op_where(op, where, sizeof(where)), strerror(-r));
}

/* ---- answers ------------------------------------------------------------------------------ */

static int build_block_list(AzOp *op) {
        _cleanup_free_ char *buf = NULL;
        size_t size = 0;
        FILE *f;

        f = open_memstream(&buf, &size);
        if (!f)
                return -ENOMEM;
        fputs("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<BlockList>", f);
        for (unsigned i = 0; i < op->n_blocks; i++) {
                char id[AZ_BLOCK_ID_LEN + 1];

                az_block_id(i, id);
                fprintf(f, "<Latest>%s</Latest>", id);
        }
        fputs("</BlockList>\n", f);
        if (fclose(f) != 0)
                return -ENOMEM;
        free(op->block_list);
        op->block_list = TAKE_PTR(buf);
        op->block_list_size = size;
        return 0;
}

static void verify_done(AzSlot *s) {
        AzOp *op = s->op;
        const char *length = http_request_header(s->req, "Content-Length");
        const char *md5 = http_request_header(s->req, "Content-MD5");
        char etag[sizeof(op->res.etag)], sent[25];
        unsigned long long n = 0;
        char *end = NULL;

        store_strip_quotes(http_request_header(s->req, "ETag"), etag, sizeof(etag));
        if (op->is_check) {
                op->check_result = etag[0] && op->want_etag && strcasecmp(etag, op->want_etag) == 0;
                if (!op->check_result)
                        (void) snprintf(op->detail, sizeof(op->detail), "ETag '%s', expected '%s'", etag,
                                        strna(op->want_etag));
                op_finish(op, 0, NULL);
                return;
        }

        errno = 0;
        if (length)
                n = strtoull(length, &end, 10);
        if (!length || errno != 0 || end == length || *end || n != op->size) {
                op_finish(op, -EIO, "verification failed: size %s != %" PRIu64 " (%s)",
                          length ? length : "unknown", op->size, op->object);
                return;
        }
        if (op->blob_md5_set) {
                store_base64(op->blob_md5, sizeof(op->blob_md5), sent);
                if (!md5 || !streq(md5, sent)) {
                        op_finish(op, -EIO, "verification failed: Content-MD5 %s != %s sent (%s)",
                                  md5 ? md5 : "missing", sent, op->object);
                        return;
                }
        }
        (void) snprintf(op->res.etag, sizeof(op->res.etag), "%s", etag);
        op_finish(op, 0, NULL);
}

/* Is the source still what the blocks were read from? (A trainer still writing.) */
static bool source_changed(const AzOp *op) {
        struct stat st;

        if (!op->have_mtime || fstat(op->fd, &st) < 0)
                return false;
        return (uint64_t) st.st_size != op->size || st.st_mtim.tv_sec != op->mtime.tv_sec ||
               st.st_mtim.tv_nsec != op->mtime.tv_nsec;
}

static void slot_succeeded(AzSlot *s) {
        AzOp *op = s->op;
        uint64_t took = now_monotonic_usec() - s->sent_usec;
        int r;

        if (s->len > 0 && (s->kind == AZ_PUT_BLOB || s->kind == AZ_PUT_BLOCK))
                op->rate = s->len * USEC_PER_SEC / MAX(took, (uint64_t) 1);

        switch (s->kind) {
        case AZ_PUT_BLOB:
                if (source_changed(op)) {
                        /* Visible already and maybe torn (a trainer still appending): remove it. */
                        slot_take(s, AZ_DELETE, 0, 0, 0);
                        break;
                }
                op->bytes_done = op->size;
                op->n_done = 1;
                if (op->algo == UPLOAD_CHECKSUM_MD5) {
                        memcpy(op->blob_md5, s->md5, sizeof(op->blob_md5));
                        op->blob_md5_set = true;
                }
                op->phase = AZ_PHASE_VERIFY;
                slot_take(s, AZ_HEAD, 0, 0, 0);
                break;
        case AZ_PUT_BLOCK:
                op->bytes_done += s->len;
                op->n_done++;
                s->state = AZ_SLOT_IDLE;
                if (op->n_done < op->n_blocks)
                        break;
                if (source_changed(op)) {
                        /* Not committed: Azure drops uncommitted blocks, nothing torn becomes visible. */
                        op_finish(op, -EBUSY, "source changed while being read");
                        return;
                }
                r = build_block_list(op);
                if (r < 0) {
                        op_finish(op, r, "out of memory");
                        return;
                }
                op->phase = AZ_PHASE_COMMIT;
                slot_take(s, AZ_PUT_BLOCK_LIST, 0, 0, 0);
                break;
        case AZ_PUT_BLOCK_LIST:
                op->phase = AZ_PHASE_VERIFY;
                slot_take(s, AZ_HEAD, 0, 0, 0);
                break;
        case AZ_HEAD:
                verify_done(s);
                break;
        case AZ_DELETE:
                op_finish(op, -EBUSY, "source changed while being read");
                return;
        case _AZ_KIND_MAX:
        case _AZ_KIND_INVALID:
                assert(false);
        }
}

static int status_to_errno(long status) {
        if (status == 403 || status == 401)
                return -EACCES;
        if (status == 404)
                return -ENOENT;
        return -EIO;
}

static void slot_failed(AzSlot *s, int error, long status, const char *body, size_t size) {
        AzOp *op = s->op;
        char code[128], message[320], what[512], where[96];
        uint64_t now = now_monotonic_usec(), delay, estimate = 0;
        bool md5_rejected;

        az_parse_error(s->req, body, size, code, sizeof(code), message, sizeof(message));
        if (error < 0)
                (void) snprintf(what, sizeof(what), "%s: %s", az_kind_table[s->kind], strerror(-error));
        else
                (void) snprintf(what, sizeof(what), "HTTP %ld%s%s%s%s", status, code[0] ? " " : "", code,
                                message[0] ? ": " : "", message);

        if (error == 0 && status == 404 && op->is_check) {
                op->check_result = 0;
                (void) snprintf(op->detail, sizeof(op->detail), "not in the store");
                op_finish(op, 0, NULL);
                return;
        }

        /* Azure answers 401 to a bad bearer token, 403 to a bad signature or SAS. */
        if (error == 0 && (status == 403 || status == 401)) {
                if (s->sent_gen != op->cred_gen || op->creds_pending) {
                        /* Signed with credentials that are being replaced already. */
                        s->state = AZ_SLOT_READY;
                        s->retry_usec = 0;
                        s->attempts--;
                        op->res.retries++;
                        return;
                }
                if (!op->reauthed) {
                        op->reauthed = true;
                        (void) snprintf(op->auth_detail, sizeof(op->auth_detail),
                                        "%s (%s %s, credentials from %s)", what, az_kind_table[s->kind],
                                        op->object, strna(op->creds.source));
                        log_debug("store-azure: %s: %s, fetching credentials again", op->object, what);
                        cred_provider_invalidate(op->cp);
                        op->have_creds = false;
                        s->state = AZ_SLOT_READY;
                        s->retry_usec = 0;
                        op->res.retries++;
                        return;
                }
                op_finish(op, -EACCES, "%s (%s %s, credentials from %s)", what, az_kind_table[s->kind],
                          op->object, strna(op->creds.source));
                return;
        }

        md5_rejected = error == 0 && az_md5_rejected(status, code, message);
        if (!md5_rejected && !az_retryable(error, status)) {
                op_finish(op, error < 0 ? error : status_to_errno(status), "%s (%s %s)", what,
                          az_kind_table[s->kind], op->object);
                return;
        }
        if (s->attempts >= STORE_RETRIES_MAX) {
                op_finish(op, error < 0 ? error : -EIO, "%s (%s %s), gave up after %u attempts", what,
                          az_kind_table[s->kind], op->object, s->attempts);
                return;
        }

        delay = store_backoff_usec(s->attempts);
        if (op->rate > 0 && s->len > 0)
                estimate = s->len * USEC_PER_SEC / op->rate;
        if (op->until_usec != USEC_INFINITY && now + delay + estimate >= op->until_usec) {
                op_finish(op, -ETIME, "no time left to retry before the deadline after %s: %s (%s %s)",
                          op_where(op, where, sizeof(where)), what, az_kind_table[s->kind], op->object);
                return;
        }

        log_debug("store-azure: %s: %s%s, retrying in %" PRIu64 " ms", op->object, what,
                  md5_rejected ? " (checksum rejected, hashing again)" : "", delay / USEC_PER_MSEC);
        if (md5_rejected)
                s->hashed = false;
        s->state = AZ_SLOT_READY;
        s->retry_usec = now + delay;
        op->res.retries++;
}

static void req_done(HttpRequest *r, int error, long status, const char *body, size_t size, void *userdata) {
        AzSlot *s = userdata;
        AzOp *op = s->op;

        if (op->finished || op->freed)
                return;
        if (error == 0 && status >= 200 && status < 300)
                slot_succeeded(s);
        else
                slot_failed(s, error, status, body, size);
        op_pump(op);
}

/* ---- the pump ---------------------------------------------------------------------------- */

/* Give idle slots work, run the ready ones, and set the timer. */
static void op_pump(AzOp *op) {
        if (op->finished || op->freed)
                return;

        for (unsigned i = 0; i < op->n_slots && !op->finished; i++) {
                AzSlot *s = &op->slots[i];

                if (s->state == AZ_SLOT_IDLE && op->phase == AZ_PHASE_DATA && op->blocks &&
                    op->next_block < op->n_blocks) {
                        unsigned b = op->next_block++;
                        uint64_t off = (uint64_t) b * op->part;

                        slot_take(s, AZ_PUT_BLOCK, b, off, MIN(op->part, op->size - off));
                }
                if (s->state == AZ_SLOT_READY && s->retry_usec == 0)
                        slot_run(s);
        }
        op_arm(op);
}

/* ---- setup ------------------------------------------------------------------------------- */

static int op_new(const StoreParams *p, bool is_check, AzOp **ret) {
        const UploadConfig *c = p->upload;
        _cleanup_free_ AzOp *op = NULL;
        unsigned concurrency;
        int r;

        assert(p->loop && p->http && p->creds && p->key);
        if (c->scheme != UPLOAD_AZ || isempty(c->account) || isempty(c->bucket))
                return -EINVAL;

        op = calloc(1, sizeof(*op));
        if (!op)
                return -ENOMEM;
        op->upload.ops = op->check.ops = &store_azure_ops;
        op->is_check = is_check;
        op->loop = p->loop;
        op->http = p->http;
        op->cfg = c;
        op->cp = p->creds;
        op->fd = p->fd;
        op->size = is_check ? 0 : p->size;
        if (!is_check && p->fd >= 0) {
                struct stat st;

                if (fstat(p->fd, &st) >= 0) {
                        op->mtime = st.st_mtim;
                        op->have_mtime = true;
                }
        }
        op->until_usec = p->until_usec;
        op->algo = c->checksum == UPLOAD_CHECKSUM_NONE ? UPLOAD_CHECKSUM_NONE : UPLOAD_CHECKSUM_MD5;
        op->creds.kind = _CRED_KIND_INVALID;

        if (is_check) {
                op->phase = AZ_PHASE_VERIFY;
                op->n_slots = 1;
        } else {
                op->phase = AZ_PHASE_DATA;
                op->part = MIN(store_part_size(c, op->size), AZ_BLOCK_SIZE_MAX);
                if (op->size > op->part && (op->size + op->part - 1) / op->part > AZ_BLOCKS_MAX)
                        /* A configured part size too small for this file: Azure takes 50,000 blocks. */
                        op->part = (op->size + AZ_BLOCKS_MAX - 1) / AZ_BLOCKS_MAX;
                if (op->part > AZ_BLOCK_SIZE_MAX)
                        return -EFBIG;
                op->blocks = op->size > op->part;
                op->n_blocks = op->blocks ? (unsigned) ((op->size + op->part - 1) / op->part) : 1;
                concurrency = c->concurrency > 0 ? c->concurrency : UPLOAD_DEFAULT_CONCURRENCY;
                op->n_slots = op->blocks ? MIN(concurrency, op->n_blocks) : 1;
        }

        op->object = store_object_url(c, p->key);
        if (!op->object)
                goto oom;
        r = az_urls(c, p->key, &op->url, &op->resource);
        if (r < 0)
                goto fail;
        op->slots = calloc(op->n_slots, sizeof(AzSlot));
        if (!op->slots)
                goto oom;
        for (unsigned i = 0; i < op->n_slots; i++) {
                char name[32];

                op->slots[i].op = op;
                op->slots[i].index = i;
                (void) snprintf(name, sizeof(name), "azure-%u", i);
                r = http_request_new(p->http, name, &op->slots[i].req);
                if (r < 0)
                        goto fail;
        }

        /* From here on the memory goes through the timer's close callback. */
        r = uv_timer_init(p->loop, &op->timer);
        if (r < 0)
                goto fail;
        op->timer.data = op;
        *ret = TAKE_PTR(op);
        return 0;
oom:
        r = -ENOMEM;
fail:
        for (unsigned i = 0; op->slots && i < op->n_slots; i++)
                http_request_free(op->slots[i].req);
        free(op->slots);
        free(op->object);
        free(op->url);
        free(op->resource);
        return r;
}

static int az_upload_start(const StoreParams *p, StoreDoneFn done, void *userdata, StoreUpload **ret) {
        AzOp *op;
        int r;

        r = op_new(p, false, &op);
        if (r < 0)
                return r;
        op->done = done;
        op->userdata = userdata;
        if (op->blocks)
                op->next_block = 0;
        else
                slot_take(&op->slots[0], AZ_PUT_BLOB, 0, 0, op->size);
        log_debug("store-azure: %s: %" PRIu64 " bytes, %s, part size %" PRIu64 ", %u in flight", op->object,
                  op->size, op->blocks ? "blocks" : "single Put Blob", op->part, op->n_slots);

        /* Everything, even a deadline already passed, happens from the loop. */
        (void) uv_timer_start(&op->timer, op_timer_cb, 0, 0);
        *ret = &op->upload;
        return 0;
}

static uint64_t az_upload_progress(const StoreUpload *u) {
        const AzOp *op = container_of(u, AzOp, upload);
        uint64_t n = op->bytes_done;

        for (unsigned i = 0; i < op->n_slots; i++) {
                const AzSlot *s = &op->slots[i];

                if (s->state == AZ_SLOT_SENDING && (s->kind == AZ_PUT_BLOB || s->kind == AZ_PUT_BLOCK))
                        n += MIN(http_request_uploaded(s->req), s->len);
        }
        return MIN(n, op->size);
}

static void az_upload_free(StoreUpload *u) {
        if (u)
                op_free(container_of(u, AzOp, upload));
}

static int az_check_start(const StoreParams *p, const char *etag, StoreCheckFn done, void *userdata,
                          StoreCheck **ret) {
        AzOp *op;
        char e[sizeof(op->res.etag)];
        int r;

        r = op_new(p, true, &op);
        if (r < 0)
                return r;
        store_strip_quotes(etag, e, sizeof(e));
        op->want_etag = strdup(e);
        if (!op->want_etag) {
                op_free(op);
                return -ENOMEM;
        }
        op->check_done = done;
        op->userdata = userdata;
        slot_take(&op->slots[0], AZ_HEAD, 0, 0, 0);
        (void) uv_timer_start(&op->timer, op_timer_cb, 0, 0);
        *ret = &op->check;
        return 0;
}

static void az_check_free(StoreCheck *c) {
        if (c)
                op_free(container_of(c, AzOp, check));
}

const StoreOps store_azure_ops = {
        .upload_start = az_upload_start,
        .upload_progress = az_upload_progress,
        .upload_free = az_upload_free,
        .check_start = az_check_start,
        .check_free = az_check_free,
};
