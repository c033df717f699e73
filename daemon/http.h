/* SPDX-License-Identifier: MIT */
/*
 * http.h - libcurl's multi interface driven by the daemon's libuv loop, after
 * curl's docs/examples/multi-uv.c: one uv_poll_t per socket, one uv_timer_t,
 * curl_multi_socket_action(), and curl_multi_info_read() drained after each
 * call. The only module that calls curl; it knows nothing about clouds.
 *
 * An HttpRequest wraps one easy handle that is reused for every request to
 * the same endpoint, so the connection cache keeps the TCP connection alive
 * between polls. Only http:// and https:// are allowed, bodies are capped,
 * every request has a timeout, and no signal is used (CURLOPT_NOSIGNAL).
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
 * -ECONNRESET, -EFBIG (body over the cap), -EPROTO (not HTTP), -EHOSTUNREACH,
 * -ECANCELED (http_request_cancel) or -EIO. @body is NUL-terminated (and may
 * contain NULs; use @size). The request may be restarted from the callback.
 */
typedef void (*HttpDoneFn)(HttpRequest *r, int error, long status, const char *body, size_t size,
                           void *userdata);

int http_new(uv_loop_t *loop, Http **ret);
/** http_close() - cancel all requests (their callbacks are not called) and free @h asynchronously. */
void http_close(Http *h);

/** http_request_new() - a reusable request slot; @name is for debug logs. */
int http_request_new(Http *h, const char *name, HttpRequest **ret);
/** http_request_free() - cancels a running request without calling back. NULL-safe. */
HttpRequest *http_request_free(HttpRequest *r);

typedef struct HttpRequestParams {
        const char *method;         /* "GET" (default), "PUT", "POST" */
        const char *url;
        const char *const *headers; /* NULL-terminated "Name: value" lines, or NULL */
        const char *body;           /* request body for PUT/POST, or NULL (empty) */
        size_t body_size;
        uint64_t timeout_usec;      /* whole request; 0 = 5 s */
        size_t max_body;            /* cap on the response body; 0 = 16 KiB */
} HttpRequestParams;

/** http_request_start() - -EBUSY if @r is already running. */
int http_request_start(HttpRequest *r, const HttpRequestParams *p, HttpDoneFn done, void *userdata);
/** http_request_cancel() - stop it; its callback runs with -ECANCELED from the loop. No-op if idle. */
void http_request_cancel(HttpRequest *r);
int http_request_is_running(HttpRequest *r);

/**
 * http_request_header() - a response header of the last finished request
 * (case-insensitive name), value trimmed; NULL if absent. Valid until the
 * request is started again.
 */
const char *http_request_header(HttpRequest *r, const char *name);

/** Number of TCP connections opened since http_new(), for status and tests. */
uint64_t http_connections_opened(Http *h);
