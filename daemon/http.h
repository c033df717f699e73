/* SPDX-License-Identifier: MIT */
/*
 * http.h - libcurl's multi interface driven by the daemon's libuv loop, after
 * curl's docs/examples/multi-uv.c: one uv_poll_t per socket, one uv_timer_t,
 * curl_multi_socket_action(), and curl_multi_info_read() drained after each
 * call. The only module that calls curl; it knows nothing about clouds.
 *
 * An HttpRequest wraps one easy handle that is reused for every request to
 * the same endpoint, so the connection cache keeps the TCP connection alive
 * between polls. Only http:// and https:// are allowed, redirects are not
 * followed, no proxy is used (not even one from the environment), bodies and
 * response headers are capped, every request has a timeout, and no signal is
 * used (CURLOPT_NOSIGNAL).
 */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct Http Http;
typedef struct HttpRequest HttpRequest;

/*
 * Called once per started request, from the loop. @error is 0 when an HTTP
 * answer arrived (whatever its @status), else -ETIMEDOUT, -ECONNREFUSED,
 * -ECONNRESET, -EFBIG (body over the cap), -EPROTO (not HTTP), -EHOSTUNREACH
 * (also: name not resolved), -ECANCELED (http_request_cancel), -ENOMEM or
 * -EIO. @status is the HTTP status when a status line arrived, else 0. @body
 * is NUL-terminated (and may contain NULs; use @size); on error it is "" and
 * @size 0. @body is valid until the callback returns. The callback may
 * restart @r, free it (http_request_free), touch other requests, or call
 * http_close().
 */
typedef void (*HttpDoneFn)(HttpRequest *r, int error, long status, const char *body, size_t size,
                           void *userdata);

int http_new(uv_loop_t *loop, Http **ret);
/**
 * http_close() - cancel all requests (their callbacks are not called) and free
 * @h asynchronously. Requests stay allocated (their owners free them, before
 * or after this); from now on they refuse to start with -ESHUTDOWN. NULL-safe.
 */
void http_close(Http *h);

/** http_request_new() - a reusable request slot; @name is for debug logs. */
int http_request_new(Http *h, const char *name, HttpRequest **ret);
/** http_request_free() - cancels a running request without calling back. NULL-safe. */
HttpRequest *http_request_free(HttpRequest *r);

/* A request body read from a file with pread(2) as curl sends it (never all in memory). */
typedef struct HttpFileBody {
        int fd;                     /* not owned; must stay open while the request runs */
        uint64_t offset;
        uint64_t size;
} HttpFileBody;

typedef struct HttpRequestParams {
        const char *method;         /* "GET" (default), "PUT", "POST", "DELETE", "HEAD" */
        const char *url;
        const char *const *headers; /* NULL-terminated "Name: value" lines, or NULL */
        const char *body;           /* request body for PUT/POST, or NULL (empty) */
        size_t body_size;
        uint64_t timeout_usec;      /* whole request; 0 = 5 s */
        size_t max_body;            /* cap on the response body; 0 = 16 KiB, at most 256 MiB */
        const HttpFileBody *file;   /* PUT only: the body comes from a file (instead of @body); copied */
        /*
         * SigV4 signing by curl (CURLOPT_AWS_SIGV4), e.g. "aws:amz:us-east-1:s3",
         * with @username (access key id) and @password (secret). NULL: none.
         * curl signs the headers given here too (x-amz-security-token,
         * x-amz-content-sha256, Content-MD5, ...); the caller must supply
         * x-amz-content-sha256 itself (curl 7.88 does not).
         */
        const char *aws_sigv4;
        const char *username;
        const char *password;
        /* Give up when under 1 byte/s moves for this long (a stalled peer); 0 = only the timeout. */
        uint64_t stall_usec;
        /* Send at most this many bytes per second (CURLOPT_MAX_SEND_SPEED_LARGE); 0 = no limit. */
        uint64_t max_send_speed;
} HttpRequestParams;

/**
 * http_request_start() - start @r with @p (copied: @p, its strings and body
 * may go once this returns). -EBUSY if @r is already running (including a
 * cancel whose callback has not run yet), -EINVAL for a missing or non-http(s)
 * URL, an unknown method, a header line without ':' or with CR/LF, a body
 * size without a body or a max_body over 256 MiB,
 * -ESHUTDOWN after http_close() or http_request_free(), -ENOMEM, -EIO.
 * Headers: "Expect:" is always suppressed; without a Content-Type header a
 * PUT/POST sends none.
 */
int http_request_start(HttpRequest *r, const HttpRequestParams *p, HttpDoneFn done, void *userdata);
/**
 * http_request_cancel() - stop the transfer at once; its callback runs with
 * -ECANCELED from the loop (never from inside this call), and until then the
 * request still counts as running. No-op if idle or already cancelled.
 */
void http_request_cancel(HttpRequest *r);
/**
 * http_request_uploaded() - request body bytes sent so far by the running
 * (or last) request; 0 before the first.
 */
uint64_t http_request_uploaded(HttpRequest *r);
/** http_request_is_running() - 1 from start until the done callback has been called, else 0. */
int http_request_is_running(HttpRequest *r);

/**
 * http_request_header() - a response header of the last finished request
 * (case-insensitive name), value trimmed; NULL if absent. Valid until the
 * request is started again.
 */
const char *http_request_header(HttpRequest *r, const char *name);

/**
 * http_connections_opened() - number of TCP connections opened since
 * http_new() (CURLINFO_NUM_CONNECTS summed over finished and cancelled
 * transfers), for status and tests.
 */
uint64_t http_connections_opened(Http *h);
