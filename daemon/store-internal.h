/* SPDX-License-Identifier: MIT */
/*
 * store-internal.h - what the store backends (store-s3.c, store-azure.c)
 * share, implemented in store.c: the dispatch table, hashing a range of the
 * source in slices on the loop, backoff with jitter, and encoders.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "shared/macro.h"
#include "store.h"

/* Every backend's StoreUpload / StoreCheck starts with its ops. */
typedef struct StoreOps {
        int (*upload_start)(const StoreParams *p, StoreDoneFn done, void *userdata, StoreUpload **ret);
        uint64_t (*upload_progress)(const StoreUpload *u);
        void (*upload_free)(StoreUpload *u);
        int (*check_start)(const StoreParams *p, const char *etag, StoreCheckFn done, void *userdata,
                           StoreCheck **ret);
        void (*check_free)(StoreCheck *c);
} StoreOps;

struct StoreUpload {
        const StoreOps *ops;
};
struct StoreCheck {
        const StoreOps *ops;
};

extern const StoreOps store_s3_ops;    /* s3:// and gs:// */
extern const StoreOps store_azure_ops; /* az:// */

/* Requests are retried at most this often per part / per request. */
#define STORE_RETRIES_MAX 8U
/* A request that sends nothing for this long is given up (and retried). */
#define STORE_STALL_USEC (30 * USEC_PER_SEC)

/* ---- hashing a range of the source, on the threadpool ------------------- */

typedef struct StoreDigest {
        uint8_t md5[16];
        uint32_t crc32c;
        uint8_t sha256[32];
} StoreDigest;

typedef struct StoreHash StoreHash;
/* @error 0 or -errno (a short read: -ENODATA). Called from the loop; may free @h. */
typedef void (*StoreHashFn)(StoreHash *h, int error, const StoreDigest *d, void *userdata);
/**
 * store_hash_start() - hash @len bytes of @fd at @off with @algo (NONE:
 * nothing is read) on libuv's threadpool; @done is called on the loop, never
 * from inside this call, unless store_hash_free() came first. @done must not
 * free @h (it is freed after @done returns); store_hash_free() is only for
 * a hash still running.
 */
int store_hash_start(uv_loop_t *loop, int fd, uint64_t off, uint64_t len, UploadChecksum algo, StoreHashFn done,
                     void *userdata, StoreHash **ret);
StoreHash *store_hash_free(StoreHash *h);

/** crc32c_update() - CRC-32C (Castagnoli), SSE4.2 when the CPU has it. Start with 0. */
uint32_t crc32c_update(uint32_t crc, const void *buf, size_t n);

/* ---- answers ------------------------------------------------------------ */

/* XML answers (error bodies, upload ids) are at most this big. */
#define STORE_XML_MAX (256U * 1024U)
/**
 * store_xml_find() - the text of the first of the root element's children
 * named each of @names (local names, at most 4 KiB each) into @values[i]
 * (malloc'd, or NULL if absent). -EBADMSG (and all NULL) if @body is not a
 * whole XML document (or empty, or too big).
 */
int store_xml_find(const char *body, size_t size, const char *const *names, char **values, size_t n);
/** store_strip_quotes() - an ETag header's value without its quotes into @out (NULL: ""). */
void store_strip_quotes(const char *in, char *out, size_t size);

/* ---- request headers ----------------------------------------------------- */

#define STORE_HEADERS_MAX 15U

/*
 * The "Name: value" lines of one request, each in its own allocation (an
 * OAuth token or an STS session token runs to a few KiB), NULL-terminated
 * for HttpRequestParams.headers. Adding past STORE_HEADERS_MAX is a bug
 * (assert); out of memory sets @oom, which the caller checks before sending.
 */
typedef struct StoreHeaders {
        const char *v[STORE_HEADERS_MAX + 1];
        char *owned[STORE_HEADERS_MAX];
        size_t n;
        bool oom;
} StoreHeaders;

void store_headers_add(StoreHeaders *h, const char *fmt, ...) _printf_(2, 3);
void store_headers_done(StoreHeaders *h);

/* ---- helpers ------------------------------------------------------------ */

/** store_backoff_usec() - delay before retry @attempt (1, 2, ...): 200 ms * 2^(n-1), capped at 5 s, full jitter. */
uint64_t store_backoff_usec(unsigned attempt);
/** store_pct_encode() - RFC 3986: keep A-Za-z0-9-_.~ (and '/' if @keep_slash); malloc'd. */
char *store_pct_encode(const char *s, bool keep_slash);
/** store_base64() - standard base64 with padding into @out (at least 4*ceil(n/3)+1 bytes). */
void store_base64(const uint8_t *in, size_t n, char *out);
/** store_base64_decode() - -EINVAL on bad input; *ret_n bytes into malloc'd *ret. */
int store_base64_decode(const char *in, uint8_t **ret, size_t *ret_n);
/** store_hex() - lower-case hex of @n bytes into @out (2n+1 bytes). */
void store_hex(const uint8_t *in, size_t n, char *out);
/**
 * store_part_size() - the part size for a file of @size bytes: the
 * configured one if set, else 8 MiB doubled until at most 10000 parts are
 * needed (never below 5 MiB but for the last part, never above 5 GiB).
 */
uint64_t store_part_size(const UploadConfig *u, uint64_t size);
