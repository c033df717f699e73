/* SPDX-License-Identifier: MIT */
/*
 * store.h - sending one file to an object store: s3:// and gs:// (the S3 API
 * and GCS's S3-compatible XML API, store-s3.c) and az:// (Azure Blob block
 * blobs, store-azure.c). All requests go through the daemon's Http (the one
 * curl multi handle on the libuv loop); no threads, no child processes.
 *
 * A StoreUpload sends @size bytes of @fd (read with pread; the caller keeps
 * the fd open and does not care about its offset) as one object: a single
 * PUT for small files, else a multipart upload (Put Block + Put Block List
 * on Azure) with up to the [upload]'s concurrency parts in flight. Every
 * request carries the [upload]'s checksum for the store to verify; a failed
 * request is retried with exponential backoff and jitter while time is left
 * before @until_usec; at the end the object's size and ETag/checksum are
 * checked against what was sent (HEAD). A multipart upload that does not
 * complete is aborted (S3), so nothing half-written ever becomes visible.
 * A source whose size or mtime changed while it was read is not completed
 * (a single PUT's object is deleted again): done(-EBUSY, "source changed
 * while being read"), for the caller to try once more or report. A part
 * whose checksum the store rejects is re-read and retried, which also
 * catches a byte changed in flight.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "credentials.h"
#include "http.h"

typedef struct StoreUpload StoreUpload;

typedef struct StoreParams {
        uv_loop_t *loop;
        Http *http;
        const UploadConfig *upload; /* must outlive the StoreUpload */
        CredProvider *creds;        /* must outlive the StoreUpload */
        const char *key;            /* object key, unescaped (prefix + name); copied */
        int fd;                     /* the source, open for reading; not owned */
        uint64_t size;              /* bytes to send from offset 0 */
        uint64_t until_usec;        /* monotonic: stop (and abort) before this */
        uint64_t rate_limit;        /* bytes/s for the whole object (all parts together); 0 = none */
} StoreParams;

typedef struct StoreResult {
        uint64_t bytes;     /* bytes acknowledged by the store (== size on success) */
        unsigned parts;     /* 1 for a single PUT */
        unsigned retries;   /* requests sent again after a failure */
        char etag[128];     /* the object's ETag (or the checksum compared), "" if unknown */
} StoreResult;

/*
 * Called once, from the loop, never from inside store_upload_start(). @error
 * 0: the object is complete and verified. Else @detail is one line saying
 * what went wrong and where, e.g. "HTTP 403 AccessDenied: ...", "deadline
 * reached after 3 of 8 parts" (-ETIME), "verification failed: size 5 != 6"
 * (-EIO), "credentials: ..." (-EACCES). @res is filled either way. The
 * callback may free @u.
 */
typedef void (*StoreDoneFn)(StoreUpload *u, int error, const char *detail, const StoreResult *res,
                            void *userdata);

/** store_upload_start() - -EINVAL for a scheme that is not a store's, -ENOMEM. */
int store_upload_start(const StoreParams *p, StoreDoneFn done, void *userdata, StoreUpload **ret);
/** store_upload_progress() - bytes the store acknowledged so far plus those of requests in flight. */
uint64_t store_upload_progress(const StoreUpload *u);
/**
 * store_upload_free() - stop at once without calling back; a multipart
 * upload already created is aborted in the background (best effort, bounded
 * by a short timeout, logged at debug). NULL-safe.
 */
StoreUpload *store_upload_free(StoreUpload *u);

/*
 * Does the store hold @key with ETag (or checksum) @etag? For the manifest:
 * a file already sent unchanged is skipped only if the object is still there.
 * @done gets 1 (yes), 0 (no, or different), or -errno (could not tell).
 */
typedef struct StoreCheck StoreCheck;
typedef void (*StoreCheckFn)(StoreCheck *c, int result, const char *detail, void *userdata);
int store_check_start(const StoreParams *p, const char *etag, StoreCheckFn done, void *userdata,
                      StoreCheck **ret);
StoreCheck *store_check_free(StoreCheck *c);

/** store_object_url() - "s3://bucket/key" etc. for messages (the key %-escaped where needed); malloc'd. */
char *store_object_url(const UploadConfig *u, const char *key);
