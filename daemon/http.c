/* SPDX-License-Identifier: MIT */
/*
 * http.c - libcurl's multi interface on the daemon's libuv loop, after curl's
 * docs/examples/multi-uv.c: CURLMOPT_SOCKETFUNCTION gives each socket a
 * uv_poll_t, CURLMOPT_TIMERFUNCTION drives one uv_timer_t, and every
 * curl_multi_socket_action() is followed by draining curl_multi_info_read().
 * Each easy handle is hardened as systemd's src/shared/curl-util.c does: every
 * setopt checked, no signals, http/https only, no redirects, no proxy, time
 * limits, a capped body and capped response headers.
 *
 * This module owns the multi handle, the socket watchers and the easy handles
 * of its HttpRequests. It knows nothing of clouds, never logs above debug and
 * calls back only from the loop, never from inside a curl callback.
 */
#include <assert.h>
#include <curl/curl.h>
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

#include "build-config.h"
#include "http.h"
#include "shared/log.h"
#include "shared/macro.h"

#define HTTP_TIMEOUT_DEFAULT_USEC (5 * USEC_PER_SEC)
#define HTTP_CONNECT_TIMEOUT_MAX_USEC (10 * USEC_PER_SEC)
#define HTTP_MAX_BODY_DEFAULT ((size_t) 16 * 1024)
#define HTTP_MAX_BODY_LIMIT ((size_t) 256 * 1024 * 1024)
#define HTTP_HEADERS_MAX 64
#define HTTP_HEADER_BYTES_MAX ((size_t) 16 * 1024)
#define HTTP_MAX_CONNECTS 16L

typedef struct HttpSocket HttpSocket;

/* The response headers of one transfer: "name\0value\0" in one allocation each. */
typedef struct HttpHeaders {
        char *name[HTTP_HEADERS_MAX];
        const char *value[HTTP_HEADERS_MAX];
        size_t n;
        size_t bytes;
} HttpHeaders;

struct HttpSocket {
        Http *http;
        uv_poll_t poll;
        curl_socket_t fd;
        HttpSocket *prev, *next;
};

struct Http {
        uv_loop_t *loop;
        CURLM *multi;
        uv_timer_t timer;   /* curl's timeout */
        uv_timer_t defer;   /* runs -ECANCELED callbacks from the loop */
        HttpSocket *sockets;
        HttpRequest *requests;
        unsigned n_handles; /* uv handles not yet closed; @h is freed when it drops to 0 */
        uint64_t connections_opened;
        bool closing;
};

struct HttpRequest {
        Http *http; /* NULL once detached by http_close() or a deferred free */
        char *name;
        CURL *easy;
        struct curl_slist *header_list; /* in use by @easy while running */

        /* Set from start until the callback runs: the request is busy. */
        HttpDoneFn done;
        void *userdata;

        bool in_multi;       /* @easy is added to the multi */
        bool cancel_pending; /* -ECANCELED callback queued on the defer timer */
        bool cancel_batch;   /* picked by the running defer dispatch */
        bool free_pending;   /* freed from inside its own callback */
        unsigned in_callback;

        size_t max_body;
        bool overflow;
        bool oom;
        char *body;
        size_t body_size;
        size_t body_alloc;

        HttpHeaders rx;   /* headers of the transfer in flight */
        HttpHeaders last; /* headers of the last finished transfer */

        char errbuf[CURL_ERROR_SIZE];

        /* A body read from a file (HttpRequestParams.file). */
        bool has_file;
        HttpFileBody file;
        uint64_t file_pos;   /* bytes of @file handed to curl */
        int file_error;      /* pread failed or the file was shorter: -errno */
        HttpRequest *prev, *next;
};

static void headers_clear(HttpHeaders *hs) {
        for (size_t i = 0; i < hs->n; i++)
                free(hs->name[i]);
        *hs = (HttpHeaders) {};
}

static void headers_move(HttpHeaders *dst, HttpHeaders *src) {
        headers_clear(dst);
        *dst = *src;
        *src = (HttpHeaders) {};
}

static void http_maybe_free(Http *h) {
        if (!h->closing || h->n_handles > 0)
                return;
        free(h);
        curl_global_cleanup();
}

static void handle_close_cb(uv_handle_t *handle) {
        Http *h = handle->data;

        assert(h->n_handles > 0);
        h->n_handles--;
        http_maybe_free(h);
}

static void socket_close_cb(uv_handle_t *handle) {
        HttpSocket *s = container_of((uv_poll_t *) handle, HttpSocket, poll);
        Http *h = s->http;

        free(s);
        assert(h->n_handles > 0);
        h->n_handles--;
        http_maybe_free(h);
}

static void socket_close(HttpSocket *s) {
        Http *h = s->http;

        if (s->prev)
                s->prev->next = s->next;
        else
                h->sockets = s->next;
        if (s->next)
                s->next->prev = s->prev;
        s->prev = s->next = NULL;

        /* uv_close() stops polling at once, so curl may close or reuse the fd right after. */
        uv_close((uv_handle_t *) &s->poll, socket_close_cb);
}

static int socket_new(Http *h, curl_socket_t fd, HttpSocket **ret) {
        HttpSocket *s;
        int r;

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->http = h;
        s->fd = fd;
        r = uv_poll_init_socket(h->loop, &s->poll, fd);
        if (r < 0) {
                free(s);
                return r;
        }
        h->n_handles++;

        s->next = h->sockets;
        if (h->sockets)
                h->sockets->prev = s;
        h->sockets = s;

        *ret = s;
        return 0;
}

static void http_collect_connects(Http *h, HttpRequest *r) {
        long n = 0;

        if (curl_easy_getinfo(r->easy, CURLINFO_NUM_CONNECTS, &n) == CURLE_OK && n > 0)
                h->connections_opened += (uint64_t) n;
}

/* Take @r's easy handle out of the multi; any pending CURLMsg of it goes with it. */
static void request_remove(HttpRequest *r) {
        CURLMcode mc;

        if (!r->in_multi)
                return;
        r->in_multi = false;
        if (!r->http || !r->http->multi)
                return;
        mc = curl_multi_remove_handle(r->http->multi, r->easy);
        if (mc != CURLM_OK)
                log_debug("http: request '%s': curl_multi_remove_handle() failed: %s, ignoring", r->name,
                          curl_multi_strerror(mc));
}

static void request_unlink(HttpRequest *r) {
        Http *h = r->http;

        if (!h)
                return;
        if (r->prev)
                r->prev->next = r->next;
        else
                h->requests = r->next;
        if (r->next)
                r->next->prev = r->prev;
        r->prev = r->next = NULL;
        r->http = NULL;
}

static void request_destroy(HttpRequest *r) {
        request_remove(r);
        request_unlink(r);
        if (r->easy)
                curl_easy_cleanup(r->easy);
        curl_slist_free_all(r->header_list);
        headers_clear(&r->rx);
        headers_clear(&r->last);
        free(r->body);
        free(r->name);
        free(r);
}

/*
 * Call @r's done callback once. The callback may restart @r, free it, cancel or
 * free other requests, or close the Http; a free of @r itself is deferred to here.
 */
static void request_call_done(HttpRequest *r, int error, long status) {
        HttpDoneFn done = r->done;
        void *userdata = r->userdata;
        const char *body = "";
        size_t size = 0;

        assert(done);
        r->done = NULL;
        r->userdata = NULL;

        /*
         * The body buffer is only written from curl callbacks, so even if @done
         * restarts @r, @body stays intact until @done returns.
         */
        if (error == 0 && r->body_size > 0) {
                body = r->body;
                size = r->body_size;
        }

        r->in_callback++;
        done(r, error, status, body, size, userdata);
        r->in_callback--;

        if (r->in_callback == 0 && r->free_pending)
                request_destroy(r);
}

static int curlcode_to_errno(HttpRequest *r, CURLcode code, long os_errno) {
        switch (code) {
        case CURLE_OK:
                return 0;
        case CURLE_OPERATION_TIMEDOUT:
                return -ETIMEDOUT;
        case CURLE_COULDNT_CONNECT:
                switch (os_errno) {
                case EHOSTUNREACH:
                case ENETUNREACH:
                case ENETDOWN:
                case EADDRNOTAVAIL:
                        return -EHOSTUNREACH;
                case ETIMEDOUT:
                        return -ETIMEDOUT;
                default:
                        return -ECONNREFUSED;
                }
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_COULDNT_RESOLVE_PROXY:
                return -EHOSTUNREACH;
        case CURLE_SEND_ERROR:
        case CURLE_RECV_ERROR:
        case CURLE_GOT_NOTHING:
        case CURLE_PARTIAL_FILE:
                return -ECONNRESET;
        case CURLE_FILESIZE_EXCEEDED:
                return -EFBIG;
        case CURLE_ABORTED_BY_CALLBACK:
        case CURLE_READ_ERROR:
                if (r->file_error < 0)
                        return r->file_error;
                return -EIO;
        case CURLE_WRITE_ERROR:
                if (r->overflow)
                        return -EFBIG;
                if (r->oom)
                        return -ENOMEM;
                return -EIO;
        case CURLE_WEIRD_SERVER_REPLY:
        case CURLE_UNSUPPORTED_PROTOCOL:
        case CURLE_HTTP2:
        case CURLE_HTTP2_STREAM:
        case CURLE_HTTP3:
        case CURLE_BAD_CONTENT_ENCODING:
        case CURLE_TOO_MANY_REDIRECTS:
                return -EPROTO;
        case CURLE_OUT_OF_MEMORY:
                return -ENOMEM;
        case CURLE_URL_MALFORMAT:
                return -EINVAL;
        default:
                return -EIO;
        }
}

static void request_finish(HttpRequest *r, CURLcode code) {
        Http *h = r->http;
        long status = 0, os_errno = 0;
        int error;

        (void) curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
        (void) curl_easy_getinfo(r->easy, CURLINFO_OS_ERRNO, &os_errno);
        http_collect_connects(h, r);
        request_remove(r);

        error = curlcode_to_errno(r, code, os_errno);
        headers_move(&r->last, &r->rx);
        if (error < 0)
                log_debug("http: request '%s' failed: %s (%s)", r->name, curl_easy_strerror(code),
                          isempty(r->errbuf) ? "no details" : r->errbuf);
        else
                log_debug("http: request '%s': HTTP %ld, %zu bytes", r->name, status, r->body_size);

        request_call_done(r, error, status);
}

/* Drain curl's messages; each finished request is removed before it is called back. */
static void http_dispatch(Http *h) {
        CURLMsg *m;
        int left;

        while (!h->closing && (m = curl_multi_info_read(h->multi, &left))) {
                CURL *easy = m->easy_handle;
                CURLcode code = m->data.result;
                char *p = NULL;

                if (m->msg != CURLMSG_DONE)
                        continue;
                /* From here on @m is not touched: removing its handle frees it. */
                if (curl_easy_getinfo(easy, CURLINFO_PRIVATE, &p) != CURLE_OK || !p) {
                        (void) curl_multi_remove_handle(h->multi, easy);
                        continue;
                }
                request_finish((HttpRequest *) p, code);
        }
}

static void http_socket_action(Http *h, curl_socket_t fd, int flags) {
        CURLMcode mc;
        int running;

        if (h->closing)
                return;
        mc = curl_multi_socket_action(h->multi, fd, flags, &running);
        if (mc != CURLM_OK)
                log_debug("http: curl_multi_socket_action() failed: %s", curl_multi_strerror(mc));
        http_dispatch(h);
}

static void socket_poll_cb(uv_poll_t *poll, int status, int events) {
        HttpSocket *s = container_of(poll, HttpSocket, poll);
        int flags = 0;

        if (status < 0)
                flags = CURL_CSELECT_ERR;
        else {
                if (events & UV_READABLE)
                        flags |= CURL_CSELECT_IN;
                if (events & UV_WRITABLE)
                        flags |= CURL_CSELECT_OUT;
        }
        http_socket_action(s->http, s->fd, flags);
}

static void timer_cb(uv_timer_t *timer) {
        Http *h = container_of(timer, Http, timer);

        http_socket_action(h, CURL_SOCKET_TIMEOUT, 0);
}

/* CURLMOPT_SOCKETFUNCTION: may run inside any curl_multi_*() call, including curl_multi_cleanup(). */
static int curl_socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
        Http *h = userp;
        HttpSocket *s = socketp;
        int events = 0, r;

        if (what == CURL_POLL_REMOVE) {
                if (s) {
                        socket_close(s);
                        if (!h->closing)
                                (void) curl_multi_assign(h->multi, fd, NULL);
                }
                return 0;
        }
        if (h->closing)
                return 0;

        if (!s) {
                r = socket_new(h, fd, &s);
                if (r < 0) {
                        log_debug("http: cannot watch socket %d: %s", (int) fd, strerror(-r));
                        return -1;
                }
                if (curl_multi_assign(h->multi, fd, s) != CURLM_OK) {
                        socket_close(s);
                        return -1;
                }
        }

        if (what & CURL_POLL_IN)
                events |= UV_READABLE;
        if (what & CURL_POLL_OUT)
                events |= UV_WRITABLE;
        if (events == 0) {
                (void) uv_poll_stop(&s->poll);
                return 0;
        }
        r = uv_poll_start(&s->poll, events, socket_poll_cb);
        if (r < 0) {
                log_debug("http: cannot poll socket %d: %s", (int) fd, uv_strerror(r));
                return -1;
        }
        return 0;
}

/* CURLMOPT_TIMERFUNCTION: -1 stops the timer, 0 means "as soon as possible", armed as 1 ms. */
static int curl_timer_cb(CURLM *multi, long timeout_ms, void *userp) {
        Http *h = userp;

        if (h->closing)
                return 0;
        if (timeout_ms < 0) {
                (void) uv_timer_stop(&h->timer);
                return 0;
        }
        if (uv_timer_start(&h->timer, timer_cb, timeout_ms == 0 ? 1 : (uint64_t) timeout_ms, 0) < 0)
                return -1;
        return 0;
}

static void curl_multi_cleanupp(CURLM **m) {
        if (*m)
                (void) curl_multi_cleanup(*m);
}

static void curl_slist_free_allp(struct curl_slist **l) {
        curl_slist_free_all(*l);
}

static int multi_new(Http *h, CURLM **ret) {
        _cleanup_(curl_multi_cleanupp) CURLM *m = NULL;

        m = curl_multi_init();
        if (!m)
                return -ENOMEM;
        if (curl_multi_setopt(m, CURLMOPT_SOCKETFUNCTION, curl_socket_cb) != CURLM_OK ||
            curl_multi_setopt(m, CURLMOPT_SOCKETDATA, h) != CURLM_OK ||
            curl_multi_setopt(m, CURLMOPT_TIMERFUNCTION, curl_timer_cb) != CURLM_OK ||
            curl_multi_setopt(m, CURLMOPT_TIMERDATA, h) != CURLM_OK ||
            curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, HTTP_MAX_CONNECTS) != CURLM_OK)
                return -EIO;

        *ret = TAKE_PTR(m);
        return 0;
}

int http_new(uv_loop_t *loop, Http **ret) {
        Http *h;
        int r;

        assert(loop);
        assert(ret);

        /* Reference-counted by curl; paired with curl_global_cleanup() when @h is freed. */
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
                return -EIO;

        h = calloc(1, sizeof(*h));
        if (!h) {
                curl_global_cleanup();
                return -ENOMEM;
        }
        h->loop = loop;

        r = multi_new(h, &h->multi);
        if (r < 0) {
                free(h);
                curl_global_cleanup();
                return r;
        }

        /* Nothing fails after the handles exist: from here on @h is freed only by http_close(). */
        (void) uv_timer_init(loop, &h->timer);
        h->timer.data = h;
        (void) uv_timer_init(loop, &h->defer);
        h->defer.data = h;
        h->n_handles = 2;

        *ret = h;
        return 0;
}

void http_close(Http *h) {
        if (!h || h->closing)
                return;

        /* Detach every request without calling back; their owners still free them. */
        while (h->requests) {
                HttpRequest *r = h->requests;

                request_remove(r);
                r->done = NULL;
                r->userdata = NULL;
                r->cancel_pending = r->cancel_batch = false;
                request_unlink(r);
        }

        h->closing = true;

        /*
         * curl_multi_cleanup() closes the cached connections and may report
         * CURL_POLL_REMOVE for them; stop watching first so no poll handle ever
         * refers to a closed fd, and close whatever curl did not report.
         */
        for (HttpSocket *s = h->sockets; s; s = s->next)
                (void) uv_poll_stop(&s->poll);
        curl_multi_cleanup(h->multi);
        h->multi = NULL;
        while (h->sockets)
                socket_close(h->sockets);

        uv_close((uv_handle_t *) &h->timer, handle_close_cb);
        uv_close((uv_handle_t *) &h->defer, handle_close_cb);
}

int http_request_new(Http *h, const char *name, HttpRequest **ret) {
        HttpRequest *r;

        assert(h);
        assert(ret);

        if (h->closing)
                return -ESHUTDOWN;

        r = calloc(1, sizeof(*r));
        if (!r)
                return -ENOMEM;
        r->name = strdup(isempty(name) ? "http" : name);
        r->easy = curl_easy_init();
        if (!r->name || !r->easy) {
                request_destroy(r);
                return -ENOMEM;
        }

        r->http = h;
        r->next = h->requests;
        if (h->requests)
                h->requests->prev = r;
        h->requests = r;

        *ret = r;
        return 0;
}

HttpRequest *http_request_free(HttpRequest *r) {
        if (!r)
                return NULL;

        request_remove(r);
        r->done = NULL;
        r->userdata = NULL;
        r->cancel_pending = r->cancel_batch = false;

        if (r->in_callback > 0) {
                /* Freed from its own callback: finish once the callback returns. */
                r->free_pending = true;
                request_unlink(r);
                return NULL;
        }

        request_destroy(r);
        return NULL;
}

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *userdata) {
        HttpRequest *r = userdata;
        size_t n = size * nmemb, need;

        if (n > r->max_body - r->body_size) {
                /* Returning less than @n makes curl abort with CURLE_WRITE_ERROR. */
                r->overflow = true;
                return 0;
        }

        need = r->body_size + n + 1;
        if (need > r->body_alloc) {
                size_t a = r->body_alloc > 0 ? r->body_alloc : 512;
                char *p;

                while (a < need)
                        a *= 2;
                a = MIN(a, r->max_body + 1);
                p = realloc(r->body, a);
                if (!p) {
                        r->oom = true;
                        return 0;
                }
                r->body = p;
                r->body_alloc = a;
        }

        memcpy(r->body + r->body_size, ptr, n);
        r->body_size += n;
        r->body[r->body_size] = 0;
        return n;
}

static bool is_blank(char c) {
        return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static size_t header_cb(char *buf, size_t size, size_t nitems, void *userdata) {
        HttpRequest *r = userdata;
        size_t n = size * nitems, len = n, name_len, i;
        const char *colon, *v;
        char *e;

        /* A status line starts a new header block (after 1xx or a redirect): keep only the last. */
        if (n >= 5 && memcmp(buf, "HTTP/", 5) == 0) {
                headers_clear(&r->rx);
                return n;
        }

        while (len > 0 && is_blank(buf[len - 1]))
                len--;
        colon = memchr(buf, ':', len);
        if (!colon || colon == buf)
                return n; /* the blank end line, or no "name:" */

        /* Over the caps the rest is dropped: a header flood must not grow memory. */
        if (r->rx.n >= HTTP_HEADERS_MAX || len > HTTP_HEADER_BYTES_MAX - r->rx.bytes)
                return n;

        name_len = (size_t) (colon - buf);
        v = colon + 1;
        while (v < buf + len && is_blank(*v))
                v++;

        e = malloc(len + 2);
        if (!e)
                return n;
        memcpy(e, buf, name_len);
        e[name_len] = 0;
        i = (size_t) (buf + len - v);
        memcpy(e + name_len + 1, v, i);
        e[name_len + 1 + i] = 0;

        r->rx.name[r->rx.n] = e;
        r->rx.value[r->rx.n] = e + name_len + 1;
        r->rx.n++;
        r->rx.bytes += len;
        return n;
}

static bool scheme_ok(const char *url) {
        return strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0;
}

static bool header_has(const char *const *headers, const char *name) {
        size_t l = strlen(name);

        for (const char *const *h = headers; h && *h; h++)
                if (strncasecmp(*h, name, l) == 0 && ((*h)[l] == ':' || (*h)[l] == ';'))
                        return true;
        return false;
}

static int slist_add(struct curl_slist **l, const char *line) {
        struct curl_slist *t;

        t = curl_slist_append(*l, line);
        if (!t)
                return -ENOMEM;
        *l = t;
        return 0;
}

static int request_build_headers(const HttpRequestParams *p, bool has_body, struct curl_slist **ret) {
        _cleanup_(curl_slist_free_allp) struct curl_slist *l = NULL;
        int r;

        for (const char *const *h = p->headers; h && *h; h++) {
                /* A CR or LF would let a caller's value inject further headers. */
                if (strpbrk(*h, "\r\n") || !strchr(*h, ':'))
                        return -EINVAL;
                r = slist_add(&l, *h);
                if (r < 0)
                        return r;
        }

        /*
         * A bare "Name:" removes a header curl would add on its own. Not with
         * SigV4: curl would sign the empty header it then does not send.
         * There curl's own "Expect: 100-continue" on large bodies stays
         * (unsigned, which S3 allows), and a store may refuse a part before
         * its body is sent.
         */
        if (!header_has(p->headers, "Expect") && !p->aws_sigv4) {
                r = slist_add(&l, "Expect:");
                if (r < 0)
                        return r;
        }
        if (has_body && !header_has(p->headers, "Content-Type")) {
                r = slist_add(&l, "Content-Type:");
                if (r < 0)
                        return r;
        }

        *ret = TAKE_PTR(l);
        return 0;
}

typedef enum HttpMethod {
        HTTP_GET,
        HTTP_PUT,
        HTTP_POST,
        HTTP_DELETE,
        HTTP_HEAD,
        _HTTP_METHOD_MAX,
        _HTTP_METHOD_INVALID = -EINVAL,
} HttpMethod;

static const char *const http_method_table[_HTTP_METHOD_MAX] = {
        [HTTP_GET] = "GET",
        [HTTP_PUT] = "PUT",
        [HTTP_POST] = "POST",
        [HTTP_DELETE] = "DELETE",
        [HTTP_HEAD] = "HEAD",
};

static HttpMethod http_method_from_string(const char *s) {
        if (!s)
                return HTTP_GET;
        for (HttpMethod m = 0; m < _HTTP_METHOD_MAX; m++)
                if (streq(http_method_table[m], s))
                        return m;
        return _HTTP_METHOD_INVALID;
}

static long usec_to_msec(uint64_t usec) {
        uint64_t ms = usec / USEC_PER_MSEC + (usec % USEC_PER_MSEC > 0);

        return (long) MIN(ms, (uint64_t) LONG_MAX);
}

/* curl asks for the next piece of a file body: pread it straight into curl's buffer. */
static size_t read_cb(char *buf, size_t size, size_t nitems, void *userdata) {
        HttpRequest *r = userdata;
        uint64_t left = r->file.size - r->file_pos;
        size_t want = (size_t) MIN((uint64_t) size * nitems, left);
        ssize_t n;

        if (want == 0)
                return 0;
        do
                n = pread(r->file.fd, buf, want, (off_t) (r->file.offset + r->file_pos));
        while (n < 0 && errno == EINTR);
        if (n <= 0) {
                /* A file that shrank under us: the request must fail, not send a short body. */
                r->file_error = n < 0 ? -errno : -ENODATA;
                return CURL_READFUNC_ABORT;
        }
        r->file_pos += (uint64_t) n;
        return (size_t) n;
}

static int seek_cb(void *userdata, curl_off_t offset, int origin) {
        HttpRequest *r = userdata;

        if (origin != SEEK_SET || offset < 0 || (uint64_t) offset > r->file.size)
                return CURL_SEEKFUNC_CANTSEEK;
        r->file_pos = (uint64_t) offset;
        return CURL_SEEKFUNC_OK;
}

#define SETOPT(easy, opt, val)                                          \
        do {                                                            \
                if (curl_easy_setopt((easy), (opt), (val)) != CURLE_OK) \
                        return -EIO;                                    \
        } while (0)

static int request_setopts(HttpRequest *r, const HttpRequestParams *p, HttpMethod method,
                           struct curl_slist *headers) {
        uint64_t timeout_usec = p->timeout_usec > 0 ? p->timeout_usec : HTTP_TIMEOUT_DEFAULT_USEC;
        CURL *e = r->easy;

        SETOPT(e, CURLOPT_URL, p->url);
        SETOPT(e, CURLOPT_PRIVATE, (void *) r);
        SETOPT(e, CURLOPT_ERRORBUFFER, r->errbuf);
        SETOPT(e, CURLOPT_NOSIGNAL, 1L);
        SETOPT(e, CURLOPT_PROTOCOLS_STR, "http,https");
        SETOPT(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
        SETOPT(e, CURLOPT_FOLLOWLOCATION, 0L);
        SETOPT(e, CURLOPT_MAXREDIRS, 0L);
        /* The metadata service is link-local: an http_proxy from the environment must not apply. */
        SETOPT(e, CURLOPT_PROXY, "");
        SETOPT(e, CURLOPT_TIMEOUT_MS, usec_to_msec(timeout_usec));
        SETOPT(e, CURLOPT_CONNECTTIMEOUT_MS, usec_to_msec(MIN(timeout_usec, HTTP_CONNECT_TIMEOUT_MAX_USEC)));
        SETOPT(e, CURLOPT_USERAGENT, "spotwatchd/" PACKAGE_VERSION);
        SETOPT(e, CURLOPT_HTTPHEADER, headers);
        /* curl refuses a declared Content-Length over the cap before reading any of it. */
        /* A HEAD's Content-Length is the object's size, not a body coming. */
        if (method != HTTP_HEAD)
                SETOPT(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) MIN(r->max_body, (size_t) INT64_MAX));
        SETOPT(e, CURLOPT_WRITEFUNCTION, write_cb);
        SETOPT(e, CURLOPT_WRITEDATA, (void *) r);
        SETOPT(e, CURLOPT_HEADERFUNCTION, header_cb);
        SETOPT(e, CURLOPT_HEADERDATA, (void *) r);
        if (p->aws_sigv4) {
                SETOPT(e, CURLOPT_AWS_SIGV4, p->aws_sigv4);
                SETOPT(e, CURLOPT_USERNAME, p->username ? p->username : "");
                SETOPT(e, CURLOPT_PASSWORD, p->password ? p->password : "");
        }
        if (p->max_send_speed > 0)
                SETOPT(e, CURLOPT_MAX_SEND_SPEED_LARGE, (curl_off_t) MIN(p->max_send_speed, (uint64_t) INT64_MAX));
        if (p->stall_usec > 0) {
                SETOPT(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
                SETOPT(e, CURLOPT_LOW_SPEED_TIME, MAX(1L, usec_to_msec(p->stall_usec) / 1000L));
        }

        switch (method) {
        case HTTP_GET:
                SETOPT(e, CURLOPT_HTTPGET, 1L);
                break;
        case HTTP_DELETE:
                SETOPT(e, CURLOPT_HTTPGET, 1L);
                SETOPT(e, CURLOPT_CUSTOMREQUEST, "DELETE");
                break;
        case HTTP_HEAD:
                SETOPT(e, CURLOPT_NOBODY, 1L);
                break;
        case HTTP_PUT:
                if (p->file) {
                        SETOPT(e, CURLOPT_UPLOAD, 1L);
                        SETOPT(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t) p->file->size);
                        SETOPT(e, CURLOPT_READFUNCTION, read_cb);
                        SETOPT(e, CURLOPT_READDATA, (void *) r);
                        SETOPT(e, CURLOPT_SEEKFUNCTION, seek_cb);
                        SETOPT(e, CURLOPT_SEEKDATA, (void *) r);
                        SETOPT(e, CURLOPT_UPLOAD_BUFFERSIZE, 512L * 1024L);
                        break;
                }
                __attribute__((fallthrough));
        case HTTP_POST:
                /* Small bodies only: curl copies them, so the caller's buffer may go at once. */
                SETOPT(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) (p->body ? p->body_size : 0));
                SETOPT(e, CURLOPT_COPYPOSTFIELDS, p->body ? p->body : "");
                if (method == HTTP_PUT)
                        SETOPT(e, CURLOPT_CUSTOMREQUEST, "PUT");
                break;
        case _HTTP_METHOD_MAX:
        case _HTTP_METHOD_INVALID:
                assert(false);
                return -EINVAL;
        }

        return 0;
}

int http_request_start(HttpRequest *r, const HttpRequestParams *p, HttpDoneFn done, void *userdata) {
        _cleanup_(curl_slist_free_allp) struct curl_slist *headers = NULL;
        HttpMethod method;
        CURLMcode mc;
        Http *h;
        int k;

        assert(r);
        assert(p);
        assert(done);

        h = r->http;
        if (!h || h->closing || r->free_pending)
                return -ESHUTDOWN;
        if (r->done)
                return -EBUSY;
        if (isempty(p->url) || !scheme_ok(p->url))
                return -EINVAL;
        method = http_method_from_string(p->method);
        if (method < 0)
                return method;
        if (p->body_size > 0 && !p->body)
                return -EINVAL;
        if (p->file && (method != HTTP_PUT || p->body || p->file->fd < 0 ||
                        p->file->size > (uint64_t) INT64_MAX - p->file->offset))
                return -EINVAL;
        if (p->max_body > HTTP_MAX_BODY_LIMIT)
                return -EINVAL;

        k = request_build_headers(p, method == HTTP_PUT || method == HTTP_POST, &headers);
        if (k < 0)
                return k;

        /* Start from curl's defaults each time; the connection cache lives in the multi. */
        curl_easy_reset(r->easy);
        curl_slist_free_all(r->header_list);
        r->header_list = TAKE_PTR(headers);

        r->max_body = p->max_body > 0 ? p->max_body : HTTP_MAX_BODY_DEFAULT;
        k = request_setopts(r, p, method, r->header_list);
        if (k < 0)
                return k;

        /* Not the buffer itself: a callback that restarts @r may still read the old body. */
        r->body_size = 0;
        r->overflow = r->oom = false;
        r->errbuf[0] = 0;
        r->has_file = p->file;
        r->file = p->file ? *p->file : (HttpFileBody) { .fd = -1 };
        r->file_pos = 0;
        r->file_error = 0;
        headers_clear(&r->rx);

        mc = curl_multi_add_handle(h->multi, r->easy);
        if (mc != CURLM_OK)
                return mc == CURLM_OUT_OF_MEMORY ? -ENOMEM : -EIO;
        r->in_multi = true;
        r->done = done;
        r->userdata = userdata;

        log_debug("http: request '%s': %s %s", r->name, http_method_table[method], p->url);
        return 0;
}

static void defer_cb(uv_timer_t *timer) {
        Http *h = container_of(timer, Http, defer);

        /* Only what is queued now; a cancel from inside a callback waits for the next round. */
        for (HttpRequest *r = h->requests; r; r = r->next)
                if (r->cancel_pending)
                        r->cancel_batch = true;

        for (;;) {
                HttpRequest *r;

                /* Callbacks may free any request or close @h: rescan from the head each time. */
                if (h->closing)
                        return;
                for (r = h->requests; r && !r->cancel_batch; r = r->next)
                        ;
                if (!r)
                        return;

                r->cancel_batch = r->cancel_pending = false;
                log_debug("http: request '%s' cancelled", r->name);
                request_call_done(r, -ECANCELED, 0);
        }
}

void http_request_cancel(HttpRequest *r) {
        Http *h;

        if (!r || !r->done || r->cancel_pending)
                return;
        h = r->http;
        if (!h || h->closing)
                return;

        if (r->in_multi) {
                http_collect_connects(h, r);
                request_remove(r);
        }
        r->cancel_pending = true;
        (void) uv_timer_start(&h->defer, defer_cb, 0, 0);
}

int http_request_is_running(HttpRequest *r) {
        return r && r->done;
}

const char *http_request_header(HttpRequest *r, const char *name) {
        assert(r);
        assert(name);

        for (size_t i = 0; i < r->last.n; i++)
                if (strcasecmp(r->last.name[i], name) == 0)
                        return r->last.value[i];
        return NULL;
}

uint64_t http_connections_opened(Http *h) {
        assert(h);
        return h->connections_opened;
}

uint64_t http_request_uploaded(HttpRequest *r) {
        curl_off_t n = 0;

        if (!r || !r->easy)
                return 0;
        if (curl_easy_getinfo(r->easy, CURLINFO_SIZE_UPLOAD_T, &n) != CURLE_OK || n < 0)
                return 0;
        return (uint64_t) n;
}
