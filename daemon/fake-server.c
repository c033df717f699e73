/* SPDX-License-Identifier: MIT */
/*
 * fake-server.c - the --fake-metadata HTTP server. libmicrohttpd runs in
 * "external" epoll mode: MHD binds the loopback socket and keeps its own epoll
 * set; that one epoll fd sits under a uv_poll_t of the daemon's loop, and
 * after every MHD_run() a uv_timer_t is armed from MHD_get_timeout(), so MHD
 * never needs a thread. It serves the real AWS IMDSv2 paths with IMDSv2's
 * rules (session token required on every GET, X-Forwarded-For refused on the
 * token PUT) and a notice that manager sets. It owns only the MHD daemon, its
 * two uv handles and the fake's state; it knows nothing of plans and logs at
 * debug level only.
 */
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <json-c/json.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <uv.h>

#include "fake-server.h"
#include "shared/log.h"
#include "shared/macro.h"

#define FAKE_TOKENS_MAX 64
#define FAKE_TOKEN_TTL_MAX 21600U
#define FAKE_TOKEN_RANDOM_BYTES 36
#define FAKE_CONNECTIONS_MAX 64U
#define FAKE_CONNECTION_TIMEOUT_SEC 30U
#define FAKE_CONNECTION_MEMORY ((size_t) 32 * 1024)
#define FAKE_NOTICE_LEAD_USEC (120 * USEC_PER_SEC) /* AWS's two-minute warning */
#define FAKE_AWS_INSTANCE_ID "i-0fake0000000000001"
#define FAKE_HOST_MAX 32 /* "http://" and an IPv4 literal, or "http://[::1]" */

#define AWS_TOKEN_PATH "/latest/api/token"
#define AWS_TOKEN_TTL_HEADER "X-aws-ec2-metadata-token-ttl-seconds"
#define AWS_TOKEN_HEADER "X-aws-ec2-metadata-token"

typedef struct FakeToken {
        char value[8 + FAKE_TOKEN_RANDOM_BYTES * 4 / 3];
        uint64_t expire_usec; /* monotonic; 0 = slot unused */
} FakeToken;

struct FakeServer {
        uv_loop_t *loop;
        CloudKind cloud;
        struct MHD_Daemon *mhd;
        uv_poll_t poll;   /* MHD's epoll fd */
        uv_timer_t timer; /* MHD_get_timeout() */
        bool poll_initialized;
        bool timer_initialized;
        unsigned n_handles; /* uv handles not yet closed; @s is freed when it drops to 0 */
        bool closing;

        uint16_t port;
        char url[64];
        uint64_t requests;

        FakeToken tokens[FAKE_TOKENS_MAX]; /* a ring: a new token replaces the oldest */
        size_t token_next;

        bool notice;
        char notice_action[16];
        uint64_t notice_usec;
        bool rebalance;
        uint64_t rebalance_usec;
};

static void json_unrefp(json_object **o) {
        if (*o)
                (void) json_object_put(*o);
}

static uint64_t now_monotonic_usec(void) {
        return uv_hrtime() / NSEC_PER_USEC;
}

static uint64_t now_realtime_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / NSEC_PER_USEC;
}

/* RFC 3339 in UTC with seconds, as AWS writes it: 2026-11-27T13:20:00Z. */
static int format_time(uint64_t usec, char *buf, size_t size) {
        time_t t = (time_t) (usec / USEC_PER_SEC);
        struct tm tm;

        if (!gmtime_r(&t, &tm))
                return -EINVAL;
        if (strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
                return -ENOBUFS;
        return 0;
}

static void fake_server_maybe_free(FakeServer *s) {
        if (!s->closing || s->n_handles > 0)
                return;
        free(s);
}

static void handle_close_cb(uv_handle_t *handle) {
        FakeServer *s = handle->data;

        assert(s->n_handles > 0);
        s->n_handles--;
        fake_server_maybe_free(s);
}

void fake_server_close(FakeServer *s) {
        if (!s || s->closing)
                return;
        s->closing = true;

        /* Stop watching the epoll fd before MHD closes it. */
        if (s->poll_initialized)
                uv_close((uv_handle_t *) &s->poll, handle_close_cb);
        if (s->timer_initialized)
                uv_close((uv_handle_t *) &s->timer, handle_close_cb);
        if (s->mhd)
                MHD_stop_daemon(s->mhd);
        s->mhd = NULL;

        fake_server_maybe_free(s);
}

/* ---- responses ----------------------------------------------------------- */

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *type, const char *body,
                             size_t size, const char *header, const char *value) {
        struct MHD_Response *resp;
        enum MHD_Result ret;

        resp = MHD_create_response_from_buffer(size, (void *) body, MHD_RESPMEM_MUST_COPY);
        if (!resp)
                return MHD_NO;
        if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type) != MHD_YES ||
            MHD_add_response_header(resp, MHD_HTTP_HEADER_SERVER, "EC2ws") != MHD_YES ||
            (header && MHD_add_response_header(resp, header, value) != MHD_YES)) {
                MHD_destroy_response(resp);
                return MHD_NO;
        }
        ret = MHD_queue_response(c, status, resp);
        MHD_destroy_response(resp);
        return ret;
}

static enum MHD_Result reply_text(struct MHD_Connection *c, const char *text) {
        return reply(c, MHD_HTTP_OK, "text/plain", text, strlen(text), NULL, NULL);
}

static enum MHD_Result reply_json(struct MHD_Connection *c, json_object *o) {
        const char *text;
        size_t size;

        if (!o)
                return MHD_NO;
        text = json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE,
                                                 &size);
        if (!text)
                return MHD_NO;
        /* reply() copies the text before @o goes. */
        return reply(c, MHD_HTTP_OK, "application/json", text, size, NULL, NULL);
}

/* The small XHTML page IMDS sends with its errors. */
static enum MHD_Result reply_error(struct MHD_Connection *c, unsigned status, const char *allow) {
        char page[512];
        const char *reason;
        int n;

        switch (status) {
        case MHD_HTTP_BAD_REQUEST:
                reason = "Bad Request";
                break;
        case MHD_HTTP_UNAUTHORIZED:
                reason = "Unauthorized";
                break;
        case MHD_HTTP_FORBIDDEN:
                reason = "Forbidden";
                break;
        case MHD_HTTP_NOT_FOUND:
                reason = "Not Found";
                break;
        case MHD_HTTP_METHOD_NOT_ALLOWED:
                reason = "Method Not Allowed";
                break;
        default:
                reason = "Internal Server Error";
                break;
        }

        n = snprintf(page, sizeof(page),
                     "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n"
                     "<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\"\n"
                     "\t\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n"
                     "<html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n"
                     " <head>\n  <title>%u - %s</title>\n </head>\n"
                     " <body>\n  <h1>%u - %s</h1>\n </body>\n</html>\n",
                     status, reason, status, reason);
        if (n < 0 || (size_t) n >= sizeof(page))
                return MHD_NO;
        return reply(c, status, "text/html", page, (size_t) n, allow ? MHD_HTTP_HEADER_ALLOW : NULL, allow);
}

/* ---- AWS IMDSv2 ---------------------------------------------------------- */

static bool token_random(char *buf, size_t size) {
        static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        uint8_t raw[FAKE_TOKEN_RANDOM_BYTES];
        size_t o = 0;

        if (getrandom(raw, sizeof(raw), GRND_NONBLOCK) != (ssize_t) sizeof(raw))
                return false;

        /* AWS tokens look like "AQAEA...": a version prefix, then URL-safe base64. */
        assert(size >= 5 + sizeof(raw) / 3 * 4 + 1);
        memcpy(buf, "AQAEA", 5);
        o = 5;
        for (size_t i = 0; i + 3 <= sizeof(raw); i += 3) {
                uint32_t v = (uint32_t) raw[i] << 16 | (uint32_t) raw[i + 1] << 8 | raw[i + 2];

                buf[o++] = alphabet[(v >> 18) & 63];
                buf[o++] = alphabet[(v >> 12) & 63];
                buf[o++] = alphabet[(v >> 6) & 63];
                buf[o++] = alphabet[v & 63];
        }
        buf[o] = 0;
        return true;
}

/* The TTL header as AWS takes it: decimal seconds, 1..21600. */
static int parse_ttl(const char *s, unsigned *ret) {
        unsigned long v = 0;

        if (isempty(s))
                return -EINVAL;
        for (const char *p = s; *p; p++) {
                if (*p < '0' || *p > '9')
                        return -EINVAL;
                v = v * 10 + (unsigned long) (*p - '0');
                if (v > FAKE_TOKEN_TTL_MAX)
                        return -ERANGE;
        }
        if (v < 1)
                return -ERANGE;
        *ret = (unsigned) v;
        return 0;
}

static bool token_valid(FakeServer *s, const char *value) {
        uint64_t now = now_monotonic_usec();

        if (isempty(value))
                return false;
        for (size_t i = 0; i < FAKE_TOKENS_MAX; i++)
                if (s->tokens[i].expire_usec > now && streq(s->tokens[i].value, value))
                        return true;
        return false;
}

static enum MHD_Result aws_token(FakeServer *s, struct MHD_Connection *c) {
        const char *ttl_s;
        FakeToken *t;
        unsigned ttl;
        char buf[16];

        /* IMDSv2 refuses token requests that passed through a proxy. */
        if (MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Forwarded-For"))
                return reply_error(c, MHD_HTTP_FORBIDDEN, NULL);

        ttl_s = MHD_lookup_connection_value(c, MHD_HEADER_KIND, AWS_TOKEN_TTL_HEADER);
        if (parse_ttl(ttl_s, &ttl) < 0)
                return reply_error(c, MHD_HTTP_BAD_REQUEST, NULL);

        t = &s->tokens[s->token_next++ % FAKE_TOKENS_MAX];
        if (!token_random(t->value, sizeof(t->value))) {
                t->expire_usec = 0;
                return reply_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL);
        }
        t->expire_usec = now_monotonic_usec() + ttl * USEC_PER_SEC;

        (void) snprintf(buf, sizeof(buf), "%u", ttl);
        return reply(c, MHD_HTTP_OK, "text/plain", t->value, strlen(t->value), AWS_TOKEN_TTL_HEADER, buf);
}

static enum MHD_Result aws_instance_action(FakeServer *s, struct MHD_Connection *c) {
        _cleanup_(json_unrefp) json_object *o = NULL;
        char when[32];

        if (!s->notice || format_time(s->notice_usec, when, sizeof(when)) < 0)
                return reply_error(c, MHD_HTTP_NOT_FOUND, NULL);

        o = json_object_new_object();
        if (!o || json_object_object_add(o, "action", json_object_new_string(s->notice_action)) < 0 ||
            json_object_object_add(o, "time", json_object_new_string(when)) < 0)
                return MHD_NO;
        return reply_json(c, o);
}

static enum MHD_Result aws_rebalance(FakeServer *s, struct MHD_Connection *c) {
        _cleanup_(json_unrefp) json_object *o = NULL;
        char when[32];

        if (!s->rebalance || format_time(s->rebalance_usec, when, sizeof(when)) < 0)
                return reply_error(c, MHD_HTTP_NOT_FOUND, NULL);

        o = json_object_new_object();
        if (!o || json_object_object_add(o, "noticeTime", json_object_new_string(when)) < 0)
                return MHD_NO;
        return reply_json(c, o);
}

static enum MHD_Result aws_scheduled_events(FakeServer *s, struct MHD_Connection *c) {
        _cleanup_(json_unrefp) json_object *o = NULL;

        /* No maintenance is ever scheduled on the fake: an empty list, as IMDS serves it. */
        o = json_object_new_array();
        return reply_json(c, o);
}

static enum MHD_Result aws_handle(FakeServer *s, struct MHD_Connection *c, const char *url, const char *method) {
        if (streq(url, AWS_TOKEN_PATH)) {
                if (!streq(method, MHD_HTTP_METHOD_PUT))
                        return reply_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, MHD_HTTP_METHOD_PUT);
                return aws_token(s, c);
        }

        if (!streq(method, MHD_HTTP_METHOD_GET))
                return reply_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, MHD_HTTP_METHOD_GET);
        if (strncmp(url, "/latest/", 8) != 0)
                return reply_error(c, MHD_HTTP_NOT_FOUND, NULL);

        /* IMDSv2 only: without a live session token nothing is served, not even a 404. */
        if (!token_valid(s, MHD_lookup_connection_value(c, MHD_HEADER_KIND, AWS_TOKEN_HEADER)))
                return reply_error(c, MHD_HTTP_UNAUTHORIZED, NULL);

        if (streq(url, "/latest/meta-data/") || streq(url, "/latest/meta-data"))
                return reply_text(c, s->notice ? "events/\ninstance-id\nspot/" : "events/\ninstance-id");
        if (streq(url, "/latest/meta-data/instance-id"))
                return reply_text(c, FAKE_AWS_INSTANCE_ID);
        if (streq(url, "/latest/meta-data/spot/instance-action"))
                return aws_instance_action(s, c);
        if (streq(url, "/latest/meta-data/events/recommendations/rebalance"))
                return aws_rebalance(s, c);
        if (streq(url, "/latest/meta-data/events/maintenance/scheduled"))
                return aws_scheduled_events(s, c);
        return reply_error(c, MHD_HTTP_NOT_FOUND, NULL);
}

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                 const char *version, const char *upload_data, size_t *upload_data_size,
                                 void **con_cls) {
        FakeServer *s = cls;

        /* First call: headers only. Answering later lets MHD deal with any body and "Expect:". */
        if (!*con_cls) {
                *con_cls = s;
                s->requests++;
                return MHD_YES;
        }
        /* IMDS ignores request bodies; MHD bounds what it buffers per connection. */
        if (*upload_data_size > 0) {
                *upload_data_size = 0;
                return MHD_YES;
        }

        log_debug("fake-server: %s %s", method, url);
        switch (s->cloud) {
        case CLOUD_AWS:
                return aws_handle(s, c, url, method);
        case CLOUD_AUTO:
        case CLOUD_GCP:
        case CLOUD_AZURE:
        case CLOUD_ALIBABA:
        case _CLOUD_MAX:
        case _CLOUD_INVALID:
                break;
        }
        return reply_error(c, MHD_HTTP_NOT_FOUND, NULL);
}

/* ---- the loop ------------------------------------------------------------ */

static void timer_cb(uv_timer_t *timer);

/*
 * Let MHD accept, read, answer and expire connections, then wake up again when
 * MHD_get_timeout() says: MHD's epoll set is edge-triggered, so data MHD has
 * seen but not processed yet is only announced through a timeout of 0.
 */
static void fake_server_run(FakeServer *s) {
        MHD_UNSIGNED_LONG_LONG timeout_ms;

        if (s->closing)
                return;
        if (MHD_run(s->mhd) != MHD_YES)
                log_debug("fake-server: MHD_run() failed, ignoring");
        if (MHD_get_timeout(s->mhd, &timeout_ms) == MHD_YES)
                (void) uv_timer_start(&s->timer, timer_cb, (uint64_t) timeout_ms, 0);
        else
                (void) uv_timer_stop(&s->timer);
}

static void timer_cb(uv_timer_t *timer) {
        fake_server_run(container_of(timer, FakeServer, timer));
}

static void poll_cb(uv_poll_t *poll, int status, int events) {
        FakeServer *s = container_of(poll, FakeServer, poll);

        if (status < 0)
                log_debug("fake-server: polling MHD's epoll fd failed: %s", uv_strerror(status));
        fake_server_run(s);
}

_printf_(2, 0) static void mhd_log(void *cls, const char *fmt, va_list ap) {
        char buf[256];
        size_t n;

        (void) vsnprintf(buf, sizeof(buf), fmt, ap);
        n = strlen(buf);
        while (n > 0 && buf[n - 1] == '\n')
                buf[--n] = 0;
        log_debug("fake-server: microhttpd: %s", buf);
}

/*
 * A loopback literal into *@ret_sa with @port set, and its URL host part into
 * @ret_host: AF_INET or AF_INET6, -EINVAL for no literal, -EADDRNOTAVAIL for
 * an address that is not loopback.
 */
static int parse_loopback(const char *address, uint16_t port, struct sockaddr_storage *ret_sa,
                          char ret_host[static FAKE_HOST_MAX]) {
        struct sockaddr_storage sa = {};
        struct sockaddr_in *in = (struct sockaddr_in *) &sa;
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) &sa;
        int family;

        if (!address)
                return -EINVAL;
        if (inet_pton(AF_INET, address, &in->sin_addr) == 1) {
                if ((ntohl(in->sin_addr.s_addr) >> 24) != 127)
                        return -EADDRNOTAVAIL;
                in->sin_family = family = AF_INET;
                in->sin_port = htons(port);
        } else if (inet_pton(AF_INET6, address, &in6->sin6_addr) == 1) {
                if (!IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
                        return -EADDRNOTAVAIL;
                in6->sin6_family = family = AF_INET6;
                in6->sin6_port = htons(port);
        } else
                return -EINVAL;

        /* Written from the parsed address, so nothing the caller typed ends up in the URL. */
        if (family == AF_INET) {
                char a[INET_ADDRSTRLEN];

                if (!inet_ntop(AF_INET, &in->sin_addr, a, sizeof(a)))
                        return -EINVAL;
                (void) snprintf(ret_host, FAKE_HOST_MAX, "http://%s", a);
        } else
                (void) snprintf(ret_host, FAKE_HOST_MAX, "http://[::1]");
        *ret_sa = sa;
        return family;
}

int fake_server_new(uv_loop_t *loop, CloudKind cloud, const char *address, uint16_t port, FakeServer **ret) {
        const union MHD_DaemonInfo *info;
        struct sockaddr_storage sa;
        unsigned flags;
        FakeServer *s;
        char host[FAKE_HOST_MAX];
        int family, r, epoll_fd;

        assert(loop);
        assert(ret);

        if (cloud != CLOUD_AWS)
                return -EOPNOTSUPP;
        family = parse_loopback(address, port, &sa, host);
        if (family < 0)
                return family;

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->loop = loop;
        s->cloud = cloud;

        /*
         * External epoll mode: no MHD_USE_INTERNAL_POLLING_THREAD. MHD_USE_ITC is
         * ignored without a thread, and MHD_USE_TURBO is not needed. GCP's
         * hanging GETs will need MHD_ALLOW_SUSPEND_RESUME (which adds an ITC fd
         * to MHD's epoll set) and a fake_server_run() after each resume.
         */
        flags = MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
        if (family == AF_INET6)
                flags |= MHD_USE_IPv6;

        errno = 0;
        s->mhd = MHD_start_daemon(flags, port, NULL, NULL, access_cb, s,
                                  /* First, or MHD prints what it finds before it to stderr. */
                                  MHD_OPTION_EXTERNAL_LOGGER, mhd_log, s,
                                  MHD_OPTION_SOCK_ADDR, (struct sockaddr *) &sa,
                                  MHD_OPTION_CONNECTION_LIMIT, FAKE_CONNECTIONS_MAX,
                                  MHD_OPTION_CONNECTION_TIMEOUT, FAKE_CONNECTION_TIMEOUT_SEC,
                                  MHD_OPTION_CONNECTION_MEMORY_LIMIT, FAKE_CONNECTION_MEMORY,
                                  MHD_OPTION_END);
        if (!s->mhd) {
                /* MHD has no error codes; errno is usually what bind() or epoll_create() left. */
                r = errno > 0 ? -errno : -EIO;
                free(s);
                return r;
        }

        info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_EPOLL_FD);
        epoll_fd = info ? info->epoll_fd : -1;
        info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
        s->port = info ? info->port : 0;
        if (epoll_fd < 0 || s->port == 0) {
                MHD_stop_daemon(s->mhd);
                free(s);
                return -EIO;
        }
        (void) snprintf(s->url, sizeof(s->url), "%s:%u", host, (unsigned) s->port);

        /* From here on @s is freed only by fake_server_close(). */
        (void) uv_timer_init(loop, &s->timer);
        s->timer.data = s;
        s->timer_initialized = true;
        s->n_handles++;

        r = uv_poll_init(loop, &s->poll, epoll_fd);
        if (r < 0)
                goto fail;
        s->poll.data = s;
        s->poll_initialized = true;
        s->n_handles++;

        r = uv_poll_start(&s->poll, UV_READABLE, poll_cb);
        if (r < 0)
                goto fail;

        fake_server_run(s);

        log_debug("fake-server: serving %s metadata on %s", cloud_kind_to_string(cloud), s->url);
        *ret = s;
        return 0;

fail:
        fake_server_close(s);
        return r;
}

uint16_t fake_server_port(FakeServer *s) {
        assert(s);
        return s->port;
}

const char *fake_server_url(FakeServer *s) {
        assert(s);
        return s->url;
}

const char *fake_server_instance_id(FakeServer *s) {
        assert(s);
        return FAKE_AWS_INSTANCE_ID;
}

int fake_server_set_notice(FakeServer *s, const char *action, uint64_t time_usec) {
        static const char *const actions[] = { "terminate", "stop", "hibernate" };
        bool known = false;

        assert(s);

        if (!action)
                return -EINVAL;
        for (size_t i = 0; i < ELEMENTSOF(actions); i++)
                if (streq(actions[i], action))
                        known = true;
        if (!known)
                return -EINVAL;

        (void) snprintf(s->notice_action, sizeof(s->notice_action), "%s", action);
        s->notice_usec = time_usec > 0 ? time_usec : now_realtime_usec() + FAKE_NOTICE_LEAD_USEC;
        s->notice = true;
        return 0;
}

void fake_server_clear_notice(FakeServer *s) {
        assert(s);
        s->notice = false;
        s->rebalance = false;
}

int fake_server_set_rebalance(FakeServer *s, uint64_t time_usec) {
        assert(s);
        s->rebalance_usec = time_usec > 0 ? time_usec : now_realtime_usec();
        s->rebalance = true;
        return 0;
}

uint64_t fake_server_requests(FakeServer *s) {
        assert(s);
        return s->requests;
}
