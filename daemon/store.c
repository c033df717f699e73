/* SPDX-License-Identifier: MIT */
/*
 * store.c - the front of the store backends: dispatch by scheme, and what
 * store-s3.c and store-azure.c share (store-internal.h): hashing a range of
 * the source on the loop in 1 MiB slices, CRC-32C, backoff with jitter, the
 * encoders and the part size rule.
 */
#include <assert.h>
#include <errno.h>
#include <expat.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shared/macro.h"
#include "store-internal.h"

#define HASH_SLICE (1024U * 1024U)
#define PART_SIZE_START (UINT64_C(8) * 1024U * 1024U)
#define PARTS_MAX UINT64_C(10000)

/* ---- dispatch ------------------------------------------------------------ */

static const StoreOps *store_ops(const UploadConfig *u) {
        switch (u->scheme) {
        case UPLOAD_S3:
        case UPLOAD_GS:
                return &store_s3_ops;
        case UPLOAD_AZ:
                return &store_azure_ops;
        case UPLOAD_FILE:
        case _UPLOAD_SCHEME_MAX:
        case _UPLOAD_SCHEME_INVALID:
                break;
        }
        return NULL;
}

int store_upload_start(const StoreParams *p, StoreDoneFn done, void *userdata, StoreUpload **ret) {
        const StoreOps *ops;

        assert(p && p->upload && done && ret);
        ops = store_ops(p->upload);
        if (!ops || p->fd < 0 || !p->key)
                return -EINVAL;
        return ops->upload_start(p, done, userdata, ret);
}

uint64_t store_upload_progress(const StoreUpload *u) {
        return u ? u->ops->upload_progress(u) : 0;
}

StoreUpload *store_upload_free(StoreUpload *u) {
        if (u)
                u->ops->upload_free(u);
        return NULL;
}

int store_check_start(const StoreParams *p, const char *etag, StoreCheckFn done, void *userdata,
                      StoreCheck **ret) {
        const StoreOps *ops;

        assert(p && p->upload && etag && done && ret);
        ops = store_ops(p->upload);
        if (!ops || !p->key)
                return -EINVAL;
        return ops->check_start(p, etag, done, userdata, ret);
}

StoreCheck *store_check_free(StoreCheck *c) {
        if (c)
                c->ops->check_free(c);
        return NULL;
}

char *store_object_url(const UploadConfig *u, const char *key) {
        _cleanup_free_ char *k = store_pct_encode(key, true);
        char *s = NULL;
        int n;

        if (!k)
                return NULL;
        if (u->scheme == UPLOAD_AZ)
                n = asprintf(&s, "az://%s/%s/%s", u->account, u->bucket, k);
        else
                n = asprintf(&s, "%s://%s/%s", upload_scheme_to_string(u->scheme), u->bucket, k);
        return n < 0 ? NULL : s;
}

/* ---- hashing on libuv's threadpool -------------------------------------------
 *
 * A part's checksum must be in its request's headers, so the part is read
 * once to hash it before curl reads it again to send it. MD5 runs at about
 * 600 MB/s here: on the loop it would stall everything else for 14 ms per
 * 8 MiB and serialise hashing with sending. A worker thread hashes instead
 * (pread, no shared state but the StoreHash it was given) while the loop
 * goes on sending the parts already hashed; the result comes back through
 * the after-work callback on the loop. Only hashing runs there: every
 * transfer stays on the loop's curl multi handle.
 */

struct StoreHash {
        uv_work_t work;
        int fd;
        uint64_t off, len;
        UploadChecksum algo;
        StoreDigest digest;
        int error;
        bool cancelled;         /* freed by its owner while the worker ran: free in after_work */
        StoreHashFn done;
        void *userdata;
};

StoreHash *store_hash_free(StoreHash *h) {
        if (!h)
                return NULL;
        /* Not started yet: uv_cancel() makes after_work run with UV_ECANCELED; else it runs when done. */
        h->cancelled = true;
        (void) uv_cancel((uv_req_t *) &h->work);
        return NULL;
}

static void hash_work(uv_work_t *w) {
        StoreHash *h = container_of(w, StoreHash, work);
        _cleanup_free_ uint8_t *buf = NULL;
        const EVP_MD *type = h->algo == UPLOAD_CHECKSUM_MD5 ? EVP_md5() : h->algo == UPLOAD_CHECKSUM_SHA256 ? EVP_sha256() : NULL;
        EVP_MD_CTX *md = NULL;
        uint64_t off = h->off, left = h->len;
        uint32_t crc = 0;
        unsigned n = 0;

        if (left == 0 && !type) {
                h->digest.crc32c = 0;
                return;
        }
        buf = malloc(HASH_SLICE);
        if (!buf) {
                h->error = -ENOMEM;
                return;
        }
        if (type) {
                md = EVP_MD_CTX_new();
                if (!md || EVP_DigestInit_ex(md, type, NULL) != 1) {
                        h->error = -ENOMEM;
                        goto finish;
                }
        }
        while (left > 0 && !h->cancelled) {
                ssize_t k;

                do
                        k = pread(h->fd, buf, (size_t) MIN(left, (uint64_t) HASH_SLICE), (off_t) off);
                while (k < 0 && errno == EINTR);
                if (k <= 0) {
                        h->error = k < 0 ? -errno : -ENODATA;
                        goto finish;
                }
                if (md) {
                        if (EVP_DigestUpdate(md, buf, (size_t) k) != 1) {
                                h->error = -EIO;
                                goto finish;
                        }
                } else
                        crc = crc32c_update(crc, buf, (size_t) k);
                off += (uint64_t) k;
                left -= (uint64_t) k;
        }
        if (md && EVP_DigestFinal_ex(md, h->algo == UPLOAD_CHECKSUM_MD5 ? h->digest.md5 : h->digest.sha256, &n) != 1)
                h->error = -EIO;
        h->digest.crc32c = crc;
finish:
        EVP_MD_CTX_free(md);
}

static void hash_after_work(uv_work_t *w, int status) {
        StoreHash *h = container_of(w, StoreHash, work);

        if (h->cancelled) {
                free(h);
                return;
        }
        if (status < 0 && h->error == 0)
                h->error = status;
        /* The callback frees @h through store_hash_free(), which only marks it: free it here. */
        h->done(h, h->error, h->error == 0 ? &h->digest : NULL, h->userdata);
        free(h);
}

int store_hash_start(uv_loop_t *loop, int fd, uint64_t off, uint64_t len, UploadChecksum algo, StoreHashFn done,
                     void *userdata, StoreHash **ret) {
        StoreHash *h;
        int r;

        assert(loop && done && ret);

        /* CRC-32C tables are built once, before any worker may race to build them. */
        (void) crc32c_update(0, "", 0);
        h = calloc(1, sizeof(*h));
        if (!h)
                return -ENOMEM;
        *h = (StoreHash) {
                .fd = fd,
                .off = off,
                .len = algo == UPLOAD_CHECKSUM_NONE ? 0 : len,
                .algo = algo,
                .done = done,
                .userdata = userdata,
        };
        r = uv_queue_work(loop, &h->work, hash_work, hash_after_work);
        if (r < 0) {
                free(h);
                return r;
        }
        *ret = h;
        return 0;
}

/* ---- CRC-32C ------------------------------------------------------------------ */

static uint32_t crc32c_table[8][256];
static bool crc32c_ready, crc32c_hw;

static void crc32c_init(void) {
        for (unsigned i = 0; i < 256; i++) {
                uint32_t c = i;

                for (unsigned k = 0; k < 8; k++)
                        c = c & 1 ? (c >> 1) ^ 0x82F63B78U : c >> 1;
                crc32c_table[0][i] = c;
        }
        for (unsigned i = 0; i < 256; i++)
                for (unsigned t = 1; t < 8; t++)
                        crc32c_table[t][i] = (crc32c_table[t - 1][i] >> 8) ^
                                             crc32c_table[0][crc32c_table[t - 1][i] & 0xFF];
#if defined(__x86_64__)
        crc32c_hw = __builtin_cpu_supports("sse4.2");
#endif
        crc32c_ready = true;
}

static uint32_t crc32c_sw(uint32_t c, const uint8_t *p, size_t n) {
        while (n >= 8) {
                uint64_t w;

                memcpy(&w, p, 8);
                w ^= c;
                c = crc32c_table[7][w & 0xFF] ^ crc32c_table[6][(w >> 8) & 0xFF] ^
                    crc32c_table[5][(w >> 16) & 0xFF] ^ crc32c_table[4][(w >> 24) & 0xFF] ^
                    crc32c_table[3][(w >> 32) & 0xFF] ^ crc32c_table[2][(w >> 40) & 0xFF] ^
                    crc32c_table[1][(w >> 48) & 0xFF] ^ crc32c_table[0][w >> 56];
                p += 8;
                n -= 8;
        }
        while (n-- > 0)
                c = crc32c_table[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
        return c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(uint32_t c, const uint8_t *p, size_t n) {
        uint64_t c64 = c;

        while (n >= 8) {
                uint64_t w;

                memcpy(&w, p, 8);
                c64 = __builtin_ia32_crc32di(c64, w);
                p += 8;
                n -= 8;
        }
        c = (uint32_t) c64;
        while (n-- > 0)
                c = __builtin_ia32_crc32qi(c, *p++);
        return c;
}
#endif

uint32_t crc32c_update(uint32_t crc, const void *buf, size_t n) {
        uint32_t c = ~crc;

        if (!crc32c_ready)
                crc32c_init();
#if defined(__x86_64__)
        if (crc32c_hw)
                return ~crc32c_sse42(c, buf, n);
#endif
        return ~crc32c_sw(c, buf, n);
}

/* ---- answers ------------------------------------------------------------------ */

/* The text of the first element named each of @names (local names), at any depth. */
typedef struct XmlFind {
        const char *const *names;
        char **values;
        size_t n;
        int current;         /* index into names of the element being read, or -1 */
        unsigned depth;      /* 1: the root element */
        bool oom;
} XmlFind;

static void xml_start(void *data, const XML_Char *name, const XML_Char **attrs) {
        XmlFind *x = data;
        const char *local = strrchr(name, ':');

        local = local ? local + 1 : name;
        x->current = -1;
        /* Only the root's own children: <Error><Code>, <InitiateMultipartUploadResult><UploadId>. */
        if (++x->depth != 2)
                return;
        for (size_t i = 0; i < x->n; i++)
                if (!x->values[i] && streq(local, x->names[i])) {
                        x->current = (int) i;
                        x->values[i] = strdup("");
                        if (!x->values[i])
                                x->oom = true;
                        return;
                }
}

static void xml_end(void *data, const XML_Char *name) {
        XmlFind *x = data;

        x->depth--;
        x->current = -1;
}

static void xml_text(void *data, const XML_Char *s, int len) {
        XmlFind *x = data;
        char *v, *n;
        size_t l;

        if (x->current < 0 || len <= 0)
                return;
        v = x->values[x->current];
        l = strlen(v);
        if (l + (size_t) len > 4096)
                return;
        n = realloc(v, l + (size_t) len + 1);
        if (!n) {
                x->oom = true;
                return;
        }
        memcpy(n + l, s, (size_t) len);
        n[l + (size_t) len] = '\0';
        x->values[x->current] = n;
}

/* Fills @values[i] (malloc'd or NULL); -EBADMSG if @body is not XML. */
int store_xml_find(const char *body, size_t size, const char *const *names, char **values, size_t n) {
        XmlFind x = { .names = names, .values = values, .n = n, .current = -1 };
        XML_Parser p;
        int r = 0;

        for (size_t i = 0; i < n; i++)
                values[i] = NULL;
        if (size == 0 || size > STORE_XML_MAX)
                return -EBADMSG;
        p = XML_ParserCreate(NULL);
        if (!p)
                return -ENOMEM;
        XML_SetUserData(p, &x);
        XML_SetElementHandler(p, xml_start, xml_end);
        XML_SetCharacterDataHandler(p, xml_text);
        if (XML_Parse(p, body, (int) size, 1) != XML_STATUS_OK)
                r = -EBADMSG;
        if (x.oom)
                r = -ENOMEM;
        XML_ParserFree(p);
        if (r < 0)
                /* Nothing from a document that is not one: a truncated body proves nothing. */
                for (size_t i = 0; i < n; i++) {
                        free(values[i]);
                        values[i] = NULL;
                }
        return r;
}

void store_strip_quotes(const char *in, char *out, size_t size) {
        size_t n;

        if (!in) {
                out[0] = '\0';
                return;
        }
        if (in[0] == '"')
                in++;
        n = strlen(in);
        if (n > 0 && in[n - 1] == '"')
                n--;
        n = MIN(n, size - 1);
        memcpy(out, in, n);
        out[n] = '\0';
}

/* ---- request headers ----------------------------------------------------------- */

void store_headers_add(StoreHeaders *h, const char *fmt, ...) {
        va_list ap;
        char *line;
        int r;

        assert(h->n < STORE_HEADERS_MAX);
        va_start(ap, fmt);
        r = vasprintf(&line, fmt, ap);
        va_end(ap);
        if (r < 0) {
                h->oom = true;
                return;
        }
        h->owned[h->n] = line;
        h->v[h->n++] = line;
        h->v[h->n] = NULL;
}

void store_headers_done(StoreHeaders *h) {
        for (size_t i = 0; i < h->n; i++)
                free(h->owned[i]);
        *h = (StoreHeaders) {};
}

/* ---- helpers ------------------------------------------------------------------ */

uint64_t store_backoff_usec(unsigned attempt) {
        uint64_t d = 200 * USEC_PER_MSEC;

        for (unsigned i = 1; i < attempt && d < 5 * USEC_PER_SEC; i++)
                d *= 2;
        d = MIN(d, 5 * USEC_PER_SEC);
        /* Half fixed, half random: retries of parallel parts spread out, none is immediate. */
        return d / 2 + (uint64_t) arc4random_uniform((uint32_t) (d / 2 + 1));
}

char *store_pct_encode(const char *s, bool keep_slash) {
        static const char hex[] = "0123456789ABCDEF";
        char *out, *o;

        out = o = malloc(strlen(s) * 3 + 1);
        if (!out)
                return NULL;
        for (const unsigned char *c = (const unsigned char *) s; *c; c++) {
                if ((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
                    *c == '-' || *c == '_' || *c == '.' || *c == '~' || (keep_slash && *c == '/'))
                        *o++ = (char) *c;
                else {
                        *o++ = '%';
                        *o++ = hex[*c >> 4];
                        *o++ = hex[*c & 15];
                }
        }
        *o = '\0';
        return out;
}

void store_base64(const uint8_t *in, size_t n, char *out) {
        (void) EVP_EncodeBlock((unsigned char *) out, in, (int) n);
}

int store_base64_decode(const char *in, uint8_t **ret, size_t *ret_n) {
        size_t len = strlen(in), pad = 0;
        _cleanup_free_ uint8_t *out = NULL;
        int n;

        if (len == 0 || len % 4 != 0 || len > INT32_MAX)
                return -EINVAL;
        if (in[len - 1] == '=')
                pad++;
        if (len > 1 && in[len - 2] == '=')
                pad++;
        out = malloc(len / 4 * 3 + 1);
        if (!out)
                return -ENOMEM;
        n = EVP_DecodeBlock(out, (const unsigned char *) in, (int) len);
        if (n < 0 || (size_t) n < pad)
                return -EINVAL;
        *ret_n = (size_t) n - pad;
        *ret = TAKE_PTR(out);
        return 0;
}

void store_hex(const uint8_t *in, size_t n, char *out) {
        static const char hex[] = "0123456789abcdef";

        for (size_t i = 0; i < n; i++) {
                out[2 * i] = hex[in[i] >> 4];
                out[2 * i + 1] = hex[in[i] & 15];
        }
        out[2 * n] = '\0';
}

uint64_t store_part_size(const UploadConfig *u, uint64_t size) {
        uint64_t p = PART_SIZE_START;

        if (u->part_size > 0)
                p = u->part_size;
        /* Even a configured size grows if the file would need more parts than S3 allows. */
        while (p < UPLOAD_PART_SIZE_MAX && (size + p - 1) / p > PARTS_MAX)
                p *= 2;
        return MIN(MAX(p, (uint64_t) UPLOAD_PART_SIZE_MIN), UPLOAD_PART_SIZE_MAX);
}
