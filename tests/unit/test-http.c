/* SPDX-License-Identifier: MIT */
/*
 * test-http.c - http.c against fake-server.c over real loopback TCP, both on
 * one uv loop: the IMDSv2 token dance and its refusals, connection reuse,
 * body and header caps, timeouts, refused connections, cancel, and
 * restarting, freeing or closing from inside a done callback. Hand-written
 * uv_tcp servers in this file play the misbehaving servers (silent, garbage,
 * chunked floods). Everything is closed and the loop must close cleanly.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <json-c/json.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <uv.h>

#include "fake-server.h"
#include "http.h"
#include "shared/log.h"
#include "shared/macro.h"
#include "tests.h"
#include "tests-loop.h"

#define WAIT_MS 5000

static uv_loop_t loop;
static uv_timer_t tick; /* wakes uv_run(UV_RUN_ONCE) so waits can check their deadline */
static FakeServer *srv;
static Http *http;

/* ---- helpers ------------------------------------------------------------- */

typedef struct Result {
        bool done;
        unsigned calls;
        int error;
        long status;
        char body[4096];
        size_t size;
} Result;

static void run_until(const bool *flag) {
        tests_run_until(&loop, &tick, flag, WAIT_MS);
}

static void run_for(uint64_t ms) {
        tests_run_for(&loop, &tick, ms);
}

static void on_done(HttpRequest *r, int error, long status, const char *body, size_t size, void *userdata) {
        Result *res = userdata;

        ASSERT_TRUE(body);
        ASSERT_EQ(body[size], 0);
        ASSERT_FALSE(http_request_is_running(r));
        res->done = true;
        res->calls++;
        res->error = error;
        res->status = status;
        res->size = MIN(size, sizeof(res->body) - 1);
        memcpy(res->body, body, res->size);
        res->body[res->size] = 0;
}

static void url_of(char *buf, size_t size, const char *base, const char *path) {
        int n = snprintf(buf, size, "%s%s", base, path);

        ASSERT_TRUE(n > 0 && (size_t) n < size);
}

static int start(HttpRequest *r, const char *method, const char *url, const char *const *headers,
                 size_t max_body, uint64_t timeout_usec, Result *res) {
        HttpRequestParams p = {
                .method = method,
                .url = url,
                .headers = headers,
                .timeout_usec = timeout_usec,
                .max_body = max_body,
        };

        *res = (Result) {};
        return http_request_start(r, &p, on_done, res);
}

/* Run one request to completion against @base + @path. */
static void request(HttpRequest *r, const char *method, const char *base, const char *path,
                    const char *const *headers, size_t max_body, Result *res) {
        char url[256];

        url_of(url, sizeof(url), base, path);
        ASSERT_OK(start(r, method, url, headers, max_body, 0, res));
        ASSERT_TRUE(http_request_is_running(r));
        ASSERT_FALSE(res->done);
        run_until(&res->done);
        ASSERT_EQ(res->calls, 1);
}

static void get_token(HttpRequest *r, unsigned ttl, char *token, size_t size) {
        char ttl_header[80];
        const char *headers[] = { ttl_header, NULL };
        Result res;

        (void) snprintf(ttl_header, sizeof(ttl_header), "X-aws-ec2-metadata-token-ttl-seconds: %u", ttl);
        request(r, "PUT", fake_server_url(srv), "/latest/api/token", headers, 0, &res);
        ASSERT_OK(res.error);
        ASSERT_EQ(res.status, 200);
        ASSERT_TRUE(res.size > 20 && res.size < size);
        ASSERT_TRUE(strpbrk(res.body, " \r\n\t") == NULL);
        memcpy(token, res.body, res.size + 1);
}

static void token_header(char *buf, size_t size, const char *token) {
        (void) snprintf(buf, size, "X-aws-ec2-metadata-token: %s", token);
}

/* ---- misbehaving servers ------------------------------------------------- */

/*
 * A uv_tcp server on 127.0.0.1 that reads each request head and then answers
 * with @reply verbatim and closes, or (with @reply NULL) never answers.
 */
typedef struct RawServer {
        uv_tcp_t listener;
        uint16_t port;
        char url[64];
        const char *reply;
        unsigned accepted;
        char last_head[4096]; /* the last request head answered, and what came with it */
} RawServer;

typedef struct RawConn {
        uv_tcp_t tcp;
        RawServer *server;
        char head[4096];
        size_t size;
        bool answered;
        uv_write_t write;
        uv_shutdown_t shutdown;
        struct RawConn *next;
} RawConn;

static RawConn *raw_conns;

static void raw_conn_close_cb(uv_handle_t *h) {
        RawConn *c = h->data;

        for (RawConn **p = &raw_conns; *p; p = &(*p)->next)
                if (*p == c) {
                        *p = c->next;
                        break;
                }
        free(c);
}

static void raw_conn_close(RawConn *c) {
        if (!uv_is_closing((uv_handle_t *) &c->tcp))
                uv_close((uv_handle_t *) &c->tcp, raw_conn_close_cb);
}

static void raw_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
        RawConn *c = h->data;

        *buf = uv_buf_init(c->head + c->size, (unsigned) (sizeof(c->head) - 1 - c->size));
}

static void raw_shutdown_cb(uv_shutdown_t *req, int status) {
        raw_conn_close(req->data);
}

static void raw_write_cb(uv_write_t *req, int status) {
        RawConn *c = req->data;

        c->shutdown.data = c;
        if (status < 0 || uv_shutdown(&c->shutdown, (uv_stream_t *) &c->tcp, raw_shutdown_cb) < 0)
                raw_conn_close(c);
}

static void raw_read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
        RawConn *c = s->data;
        uv_buf_t out;

        if (n < 0) {
                raw_conn_close(c);
                return;
        }
        c->size += (size_t) n;
        c->head[c->size] = 0;
        if (c->answered || !strstr(c->head, "\r\n\r\n") || !c->server->reply)
                return;

        /* Keep reading (and discarding) so a close never turns into a reset. */
        c->answered = true;
        memcpy(c->server->last_head, c->head, c->size + 1);
        c->size = 0;
        out = uv_buf_init((char *) c->server->reply, (unsigned) strlen(c->server->reply));
        c->write.data = c;
        if (uv_write(&c->write, s, &out, 1, raw_write_cb) < 0)
                raw_conn_close(c);
}

static void raw_connection_cb(uv_stream_t *listener, int status) {
        RawServer *rs = listener->data;
        RawConn *c;

        ASSERT_OK(status);
        c = calloc(1, sizeof(*c));
        ASSERT_TRUE(c);
        c->server = rs;
        ASSERT_OK(uv_tcp_init(&loop, &c->tcp));
        c->tcp.data = c;
        c->next = raw_conns;
        raw_conns = c;
        ASSERT_OK(uv_accept(listener, (uv_stream_t *) &c->tcp));
        ASSERT_OK(uv_read_start((uv_stream_t *) &c->tcp, raw_alloc_cb, raw_read_cb));
        rs->accepted++;
}

static void raw_server_start(RawServer *rs, const char *reply, bool listen) {
        struct sockaddr_in sa;
        struct sockaddr_storage bound;
        int len = sizeof(bound);

        *rs = (RawServer) { .reply = reply };
        ASSERT_OK(uv_ip4_addr("127.0.0.1", 0, &sa));
        ASSERT_OK(uv_tcp_init(&loop, &rs->listener));
        rs->listener.data = rs;
        ASSERT_OK(uv_tcp_bind(&rs->listener, (const struct sockaddr *) &sa, 0));
        if (listen)
                ASSERT_OK(uv_listen((uv_stream_t *) &rs->listener, 16, raw_connection_cb));
        ASSERT_OK(uv_tcp_getsockname(&rs->listener, (struct sockaddr *) &bound, &len));
        rs->port = ntohs(((struct sockaddr_in *) &bound)->sin_port);
        ASSERT_TRUE(rs->port > 0);
        (void) snprintf(rs->url, sizeof(rs->url), "http://127.0.0.1:%u", (unsigned) rs->port);
}

static void raw_listener_close_cb(uv_handle_t *h) {
        RawServer *rs = h->data;

        rs->listener.data = NULL;
}

static void raw_server_stop(RawServer *rs) {
        uint64_t deadline = uv_hrtime() + (uint64_t) WAIT_MS * 1000000;

        for (RawConn *c = raw_conns; c; c = c->next)
                raw_conn_close(c);
        uv_close((uv_handle_t *) &rs->listener, raw_listener_close_cb);

        /* @rs lives on the caller's stack: wait for every close callback. */
        ASSERT_OK(uv_timer_start(&tick, tests_tick_cb, 5, 5));
        while (raw_conns || rs->listener.data) {
                if (uv_hrtime() > deadline)
                        TEST_FAIL("raw server did not close");
                (void) uv_run(&loop, UV_RUN_ONCE);
        }
        ASSERT_OK(uv_timer_stop(&tick));
}

static void raw_wait_accepted(RawServer *rs, unsigned n) {
        uint64_t deadline = uv_hrtime() + (uint64_t) WAIT_MS * 1000000;

        while (rs->accepted < n) {
                if (uv_hrtime() > deadline)
                        TEST_FAIL("no connection %u within %d ms", n, WAIT_MS);
                run_for(2);
        }
}

/* ---- fake server: the AWS IMDSv2 rules ----------------------------------- */

static void test_token_and_notice(void) {
        char token[128], auth[200], url[256];
        const char *headers[] = { auth, NULL };
        json_object *o, *v;
        HttpRequest *r;
        Result res;
        uint64_t n0 = fake_server_requests(srv);

        ASSERT_OK(http_request_new(http, "aws", &r));

        get_token(r, 21600, token, sizeof(token));
        ASSERT_STREQ(http_request_header(r, "x-aws-ec2-metadata-token-ttl-seconds"), "21600");
        ASSERT_STREQ(http_request_header(r, "Content-Type"), "text/plain");
        ASSERT_TRUE(http_request_header(r, "X-No-Such-Header") == NULL);
        token_header(auth, sizeof(auth), token);

        /* No notice yet. */
        request(r, NULL, fake_server_url(srv), "/latest/meta-data/spot/instance-action", headers, 0, &res);
        ASSERT_OK(res.error);
        ASSERT_EQ(res.status, 404);
        request(r, "GET", fake_server_url(srv), "/latest/meta-data/events/recommendations/rebalance", headers, 0,
                &res);
        ASSERT_EQ(res.status, 404);

        /* 2026-11-27T13:20:00Z */
        ASSERT_OK(fake_server_set_notice(srv, "terminate", UINT64_C(1795785600) * USEC_PER_SEC));
        request(r, "GET", fake_server_url(srv), "/latest/meta-data/spot/instance-action", headers, 0, &res);
        ASSERT_OK(res.error);
        ASSERT_EQ(res.status, 200);
        ASSERT_STREQ(http_request_header(r, "content-type"), "application/json");
        o = json_tokener_parse(res.body);
        ASSERT_TRUE(o);
        ASSERT_TRUE(json_object_object_get_ex(o, "action", &v));
        ASSERT_STREQ(json_object_get_string(v), "terminate");
        ASSERT_TRUE(json_object_object_get_ex(o, "time", &v));
        ASSERT_STREQ(json_object_get_string(v), "2026-11-27T13:20:00Z");
        json_object_put(o);

        ASSERT_ERR(fake_server_set_notice(srv, "preempt", 0), EINVAL);
        ASSERT_OK(fake_server_set_notice(srv, "hibernate", 0));
        request(r, "GET", fake_server_url(srv), "/latest/meta-data/spot/instance-action", headers, 0, &res);
        ASSERT_EQ(res.status, 200);
        ASSERT_CONTAINS(res.body, "\"hibernate\"");

        ASSERT_OK(fake_server_set_notice(srv, "rebalance", UINT64_C(1795785600) * USEC_PER_SEC));
        request(r, "GET", fake_server_url(srv), "/latest/meta-data/events/recommendations/rebalance", headers, 0,
                &res);
        ASSERT_EQ(res.status, 200);
        o = json_tokener_parse(res.body);
        ASSERT_TRUE(o);
        ASSERT_TRUE(json_object_object_get_ex(o, "noticeTime", &v));
        ASSERT_STREQ(json_object_get_string(v), "2026-11-27T13:20:00Z");
        json_object_put(o);

        request(r, "GET", fake_server_url(srv), "/latest/meta-data/", headers, 0, &res);
        ASSERT_EQ(res.status, 200);
        ASSERT_CONTAINS(res.body, "instance-id");
        ASSERT_CONTAINS(res.body, "spot/");

        fake_server_clear_notice(srv);
        request(r, "GET", fake_server_url(srv), "/latest/meta-data/spot/instance-action", headers, 0, &res);
        ASSERT_EQ(res.status, 404);
        request(r, "GET", fake_server_url(srv), "/latest/meta-data/events/recommendations/rebalance", headers, 0,
                &res);
        ASSERT_EQ(res.status, 404);

        request(r, "GET", fake_server_url(srv), "/latest/meta-data/instance-id", headers, 0, &res);
        ASSERT_EQ(res.status, 200);
        ASSERT_STREQ(res.body, fake_server_instance_id(srv));
        ASSERT_STREQ(res.body, "i-0fake0000000000001");

        request(r, "GET", fake_server_url(srv), "/latest/meta-data/events/maintenance/scheduled", headers, 0, &res);
        ASSERT_EQ(res.status, 200);
        ASSERT_STREQ(res.body, "[]");

        request(r, "GET", fake_server_url(srv), "/latest/meta-data/no/such/path", headers, 0, &res);
        ASSERT_EQ(res.status, 404);
        ASSERT_STREQ(http_request_header(r, "Content-Type"), "text/html");
        ASSERT_CONTAINS(res.body, "404 - Not Found");
        request(r, "GET", fake_server_url(srv), "/", headers, 0, &res);
        ASSERT_EQ(res.status, 404);

        /* The URL helper is only exercised here. */
        url_of(url, sizeof(url), fake_server_url(srv), "/latest/meta-data/");
        ASSERT_CONTAINS(url, "http://127.0.0.1:");

        ASSERT_U64_EQ(fake_server_requests(srv) - n0, 13);
        http_request_free(r);
}

static void test_token_refusals(void) {
        static const struct {
                const char *method;
                const char *path;
                const char *header1;
                const char *header2;
                long status;
        } table[] = {
                /* IMDSv2 only: no token, a made-up token -> 401, whatever the path. */
                { "GET", "/latest/meta-data/spot/instance-action", NULL, NULL, 401 },
                { "GET", "/latest/meta-data/no/such/path", NULL, NULL, 401 },
                { "GET", "/latest/meta-data/", "X-aws-ec2-metadata-token: AQAEAnotatoken", NULL, 401 },
                { "GET", "/latest/meta-data/", "X-aws-ec2-metadata-token:", NULL, 401 },
                /* The token PUT wants a TTL of 1..21600 seconds. */
                { "PUT", "/latest/api/token", NULL, NULL, 400 },
                { "PUT", "/latest/api/token", "X-aws-ec2-metadata-token-ttl-seconds: 0", NULL, 400 },
                { "PUT", "/latest/api/token", "X-aws-ec2-metadata-token-ttl-seconds: 21601", NULL, 400 },
                { "PUT", "/latest/api/token", "X-aws-ec2-metadata-token-ttl-seconds: -5", NULL, 400 },
                { "PUT", "/latest/api/token", "X-aws-ec2-metadata-token-ttl-seconds: 60s", NULL, 400 },
                { "PUT", "/latest/api/token", "X-aws-ec2-metadata-token-ttl-seconds: 99999999999999999999", NULL,
                  400 },
                { "PUT", "/latest/api/token", "X-aws-ec2-metadata-token-ttl-seconds: 1", NULL, 200 },
                /* ... and refuses anything that came through a proxy. */
                { "PUT", "/latest/api/token", "X-aws-ec2-metadata-token-ttl-seconds: 60",
                  "X-Forwarded-For: 203.0.113.7", 403 },
                /* Methods. */
                { "GET", "/latest/api/token", "X-aws-ec2-metadata-token-ttl-seconds: 60", NULL, 405 },
                { "POST", "/latest/api/token", "X-aws-ec2-metadata-token-ttl-seconds: 60", NULL, 405 },
                { "PUT", "/latest/meta-data/", NULL, NULL, 405 },
                { "DELETE", "/latest/meta-data/", NULL, NULL, 405 },
        };
        HttpRequest *r;
        Result res;

        ASSERT_OK(http_request_new(http, "refusals", &r));
        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                const char *headers[] = { table[i].header1, table[i].header2, NULL };

                request(r, table[i].method, fake_server_url(srv), table[i].path, headers, 0, &res);
                if (res.status != table[i].status)
                        TEST_FAIL("case %zu: %s %s: got %ld, want %ld", i, table[i].method, table[i].path,
                                  res.status, table[i].status);
                ASSERT_OK(res.error);
                if (table[i].status == 405)
                        ASSERT_TRUE(http_request_header(r, "Allow"));
        }
        http_request_free(r);
}

static void test_fake_server_addresses(void) {
        FakeServer *s = NULL;
        int fd;
        struct sockaddr_in6 sa6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };

        ASSERT_ERR(fake_server_new(&loop, CLOUD_AWS, "0.0.0.0", 0, &s), EADDRNOTAVAIL);
        ASSERT_ERR(fake_server_new(&loop, CLOUD_AWS, "192.0.2.1", 0, &s), EADDRNOTAVAIL);
        ASSERT_ERR(fake_server_new(&loop, CLOUD_AWS, "::", 0, &s), EADDRNOTAVAIL);
        ASSERT_ERR(fake_server_new(&loop, CLOUD_AWS, "169.254.169.254", 0, &s), EADDRNOTAVAIL);
        ASSERT_ERR(fake_server_new(&loop, CLOUD_AWS, "localhost", 0, &s), EINVAL);
        ASSERT_ERR(fake_server_new(&loop, CLOUD_AUTO, "127.0.0.1", 0, &s), EOPNOTSUPP);
        ASSERT_TRUE(s == NULL);

        /* The port is taken by the main fake: MHD's bind fails. */
        ASSERT_TRUE(fake_server_new(&loop, CLOUD_AWS, "127.0.0.1", fake_server_port(srv), &s) < 0);
        ASSERT_TRUE(s == NULL);

        /* IPv6 loopback, where the machine has it. */
        fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && bind(fd, (struct sockaddr *) &sa6, sizeof(sa6)) == 0) {
                HttpRequest *r;
                char token[128];
                Result res;

                safe_close(fd);
                ASSERT_OK(fake_server_new(&loop, CLOUD_AWS, "::1", 0, &s));
                ASSERT_TRUE(fake_server_port(s) > 0);
                ASSERT_CONTAINS(fake_server_url(s), "http://[::1]:");
                ASSERT_OK(http_request_new(http, "v6", &r));
                request(r, "PUT", fake_server_url(s), "/latest/api/token",
                        (const char *const[]) { "X-aws-ec2-metadata-token-ttl-seconds: 5", NULL }, 0, &res);
                ASSERT_EQ(res.status, 200);
                ASSERT_TRUE(res.size < sizeof(token));
                ASSERT_U64_EQ(fake_server_requests(s), 1);
                http_request_free(r);
                fake_server_close(s);
        } else {
                fprintf(stderr, "no IPv6 loopback, skipping ::1\n");
                safe_close(fd);
        }
}

/* ---- http: connection reuse ---------------------------------------------- */

static void test_keepalive(void) {
        char token[128], auth[200];
        const char *headers[] = { auth, NULL };
        HttpRequest *r, *c[3];
        Result res, cres[3];
        Http *h;
        uint64_t n0 = fake_server_requests(srv);

        ASSERT_OK(http_new(&loop, &h));
        ASSERT_OK(http_request_new(h, "poll", &r));

        /* The easy handle is kept, so the token PUT and all polls share one TCP connection. */
        get_token(r, 300, token, sizeof(token));
        token_header(auth, sizeof(auth), token);
        for (int i = 0; i < 12; i++) {
                request(r, "GET", fake_server_url(srv), "/latest/meta-data/spot/instance-action", headers, 0,
                        &res);
                ASSERT_OK(res.error);
                ASSERT_EQ(res.status, 404);
        }
        ASSERT_U64_EQ(http_connections_opened(h), 1);
        ASSERT_U64_EQ(fake_server_requests(srv) - n0, 13);

        /* Three at once need at most three connections (one may be the cached one). */
        for (int i = 0; i < 3; i++) {
                char url[256];

                ASSERT_OK(http_request_new(h, "parallel", &c[i]));
                url_of(url, sizeof(url), fake_server_url(srv), "/latest/meta-data/instance-id");
                ASSERT_OK(start(c[i], "GET", url, headers, 0, 0, &cres[i]));
        }
        for (int i = 0; i < 3; i++) {
                run_until(&cres[i].done);
                ASSERT_EQ(cres[i].status, 200);
                ASSERT_STREQ(cres[i].body, "i-0fake0000000000001");
        }
        ASSERT_TRUE(http_connections_opened(h) >= 3 && http_connections_opened(h) <= 4);

        for (int i = 0; i < 3; i++)
                http_request_free(c[i]);
        http_request_free(r);
        http_close(h);
}

/* ---- http: caps and failures --------------------------------------------- */

static void test_body_cap(void) {
        static const char chunked[] = "HTTP/1.1 200 OK\r\n"
                                      "Transfer-Encoding: chunked\r\n"
                                      "Connection: close\r\n"
                                      "\r\n"
                                      "20\r\n0123456789abcdef0123456789abcdef\r\n"
                                      "20\r\n0123456789abcdef0123456789abcdef\r\n"
                                      "0\r\n\r\n";
        char token[128], auth[200];
        const char *headers[] = { auth, NULL };
        HttpRequest *r;
        RawServer rs;
        Result res;

        ASSERT_OK(http_request_new(http, "cap", &r));
        get_token(r, 60, token, sizeof(token));
        token_header(auth, sizeof(auth), token);

        /* Content-Length over the cap: curl refuses before reading. */
        request(r, "GET", fake_server_url(srv), "/latest/meta-data/", headers, 8, &res);
        ASSERT_ERR(res.error, EFBIG);
        ASSERT_EQ(res.size, 0);
        ASSERT_STREQ(res.body, "");

        ASSERT_OK(fake_server_set_notice(srv, "stop", 0));
        request(r, "GET", fake_server_url(srv), "/latest/meta-data/spot/instance-action", headers, 16, &res);
        ASSERT_ERR(res.error, EFBIG);
        fake_server_clear_notice(srv);

        /* Exactly at the cap is fine; the request works again afterwards. */
        request(r, "GET", fake_server_url(srv), "/latest/meta-data/instance-id", headers,
                strlen("i-0fake0000000000001"), &res);
        ASSERT_OK(res.error);
        ASSERT_STREQ(res.body, "i-0fake0000000000001");

        /* No length announced: the write callback stops it. */
        raw_server_start(&rs, chunked, true);
        request(r, "GET", rs.url, "/", NULL, 40, &res);
        ASSERT_ERR(res.error, EFBIG);
        request(r, "GET", rs.url, "/", NULL, 64, &res);
        ASSERT_OK(res.error);
        ASSERT_EQ(res.size, 64);
        raw_server_stop(&rs);

        http_request_free(r);
}

static void test_bad_servers(void) {
        static char flood[16384];
        static const struct {
                const char *reply;
                int error;
                long status;
        } table[] = {
                { "this is not HTTP\r\n\r\n", -EPROTO, 0 },
                { "", -ECONNRESET, 0 },
                { "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\nshort", -ECONNRESET, 200 },
                { "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n"
                  "Connection: close\r\n\r\n",
                  0, 302 },
                { "HTTP/1.1 302 Found\r\nLocation: file:///etc/passwd\r\nContent-Length: 0\r\n"
                  "Connection: close\r\n\r\n",
                  0, 302 },
                { "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy", 0,
                  503 },
                { flood, 0, 200 },
        };
        HttpRequest *r;
        size_t o;

        /* A header flood: only the first 64 headers are kept. */
        o = (size_t) snprintf(flood, sizeof(flood), "HTTP/1.1 200 OK\r\nConnection: close\r\n");
        for (int i = 0; i < 200; i++)
                o += (size_t) snprintf(flood + o, sizeof(flood) - o, "X-H%d: v%d\r\n", i, i);
        (void) snprintf(flood + o, sizeof(flood) - o, "Content-Length: 2\r\n\r\nok");

        ASSERT_OK(http_request_new(http, "bad", &r));
        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                RawServer rs;
                Result res;

                raw_server_start(&rs, table[i].reply, true);
                request(r, "GET", rs.url, "/latest/meta-data/", NULL, 0, &res);
                if (res.error != table[i].error || res.status != table[i].status)
                        TEST_FAIL("case %zu: got error %d status %ld, want %d %ld", i, res.error, res.status,
                                  table[i].error, table[i].status);
                if (table[i].status == 302)
                        ASSERT_TRUE(http_request_header(r, "Location"));
                if (table[i].reply == flood) {
                        ASSERT_STREQ(res.body, "ok");
                        ASSERT_STREQ(http_request_header(r, "x-h0"), "v0");
                        ASSERT_TRUE(http_request_header(r, "X-H150") == NULL);
                }
                ASSERT_EQ(rs.accepted, 1);
                raw_server_stop(&rs);
        }
        http_request_free(r);
}

static void test_request_shape(void) {
        static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        HttpRequest *r;
        RawServer rs;
        Result res;
        char url[128];
        HttpRequestParams p = {
                .method = "PUT",
                .url = url,
                .headers = (const char *const[]) { "X-aws-ec2-metadata-token-ttl-seconds: 21600", NULL },
                .body = "hello",
                .body_size = 5,
        };

        raw_server_start(&rs, ok, true);
        ASSERT_OK(http_request_new(http, "shape", &r));
        url_of(url, sizeof(url), rs.url, "/latest/api/token");

        /* PUT with a small body: no "Expect: 100-continue", no form Content-Type. */
        res = (Result) {};
        ASSERT_OK(http_request_start(r, &p, on_done, &res));
        run_until(&res.done);
        ASSERT_OK(res.error);
        ASSERT_EQ(res.status, 200);
        ASSERT_CONTAINS(rs.last_head, "PUT /latest/api/token HTTP/1.1\r\n");
        ASSERT_CONTAINS(rs.last_head, "\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n");
        ASSERT_CONTAINS(rs.last_head, "\r\nContent-Length: 5\r\n");
        ASSERT_CONTAINS(rs.last_head, "\r\nUser-Agent: spotwatchd/");
        ASSERT_TRUE(strcasestr(rs.last_head, "Expect:") == NULL);
        ASSERT_TRUE(strcasestr(rs.last_head, "Content-Type:") == NULL);

        /* POST keeps the caller's Content-Type; GET sends no body. */
        p.method = "POST";
        p.headers = (const char *const[]) { "Content-Type: application/json", "Metadata: true", NULL };
        p.body = "{}";
        p.body_size = 2;
        res = (Result) {};
        ASSERT_OK(http_request_start(r, &p, on_done, &res));
        run_until(&res.done);
        ASSERT_CONTAINS(rs.last_head, "POST /latest/api/token HTTP/1.1\r\n");
        ASSERT_CONTAINS(rs.last_head, "\r\nContent-Type: application/json\r\n");
        ASSERT_CONTAINS(rs.last_head, "\r\nMetadata: true\r\n");

        p = (HttpRequestParams) { .url = url };
        res = (Result) {};
        ASSERT_OK(http_request_start(r, &p, on_done, &res));
        run_until(&res.done);
        ASSERT_CONTAINS(rs.last_head, "GET /latest/api/token HTTP/1.1\r\n");
        ASSERT_TRUE(strcasestr(rs.last_head, "Content-Length") == NULL);
        ASSERT_TRUE(strcasestr(rs.last_head, "Metadata:") == NULL);

        http_request_free(r);
        raw_server_stop(&rs);
}

static void test_timeout(void) {
        HttpRequest *r;
        RawServer rs;
        Result res;
        uint64_t t0, ms;

        raw_server_start(&rs, NULL, true);
        ASSERT_OK(http_request_new(http, "silent", &r));

        t0 = uv_hrtime();
        ASSERT_OK(start(r, "GET", rs.url, NULL, 0, 300 * USEC_PER_MSEC, &res));
        run_until(&res.done);
        ms = (uv_hrtime() - t0) / 1000000;
        ASSERT_ERR(res.error, ETIMEDOUT);
        ASSERT_EQ(res.status, 0);
        if (ms < 290 || ms > 1500)
                TEST_FAIL("timeout took %" PRIu64 " ms, want about 300", ms);
        ASSERT_EQ(rs.accepted, 1);

        http_request_free(r);
        raw_server_stop(&rs);
}

static void test_refused(void) {
        HttpRequest *r;
        RawServer rs;
        Result res;

        /* Bound but not listening: the port stays ours, and a connect gets RST. */
        raw_server_start(&rs, NULL, false);
        ASSERT_OK(http_request_new(http, "refused", &r));
        request(r, "GET", rs.url, "/", NULL, 0, &res);
        ASSERT_ERR(res.error, ECONNREFUSED);
        ASSERT_EQ(res.status, 0);

        http_request_free(r);
        raw_server_stop(&rs);
}

static void test_bad_params(void) {
        HttpRequest *r;
        Result res;
        HttpRequestParams p = { .url = "http://127.0.0.1:1/" };

        ASSERT_OK(http_request_new(http, "params", &r));
        ASSERT_ERR(start(r, "GET", NULL, NULL, 0, 0, &res), EINVAL);
        ASSERT_ERR(start(r, "GET", "", NULL, 0, 0, &res), EINVAL);
        ASSERT_ERR(start(r, "GET", "ftp://127.0.0.1/", NULL, 0, 0, &res), EINVAL);
        ASSERT_ERR(start(r, "GET", "file:///etc/passwd", NULL, 0, 0, &res), EINVAL);
        ASSERT_ERR(start(r, "PATCH", "http://127.0.0.1:1/", NULL, 0, 0, &res), EINVAL);
        ASSERT_ERR(start(r, "GET", "http://127.0.0.1:1/",
                         (const char *const[]) { "X-A: 1\r\nX-Injected: 2", NULL }, 0, 0, &res),
                   EINVAL);
        ASSERT_ERR(start(r, "GET", "http://127.0.0.1:1/", (const char *const[]) { "no colon", NULL }, 0, 0, &res),
                   EINVAL);
        p.body_size = 3;
        ASSERT_ERR(http_request_start(r, &p, on_done, &res), EINVAL);
        ASSERT_FALSE(http_request_is_running(r));

        /* A request runs once at a time. */
        ASSERT_OK(start(r, "GET", "http://127.0.0.1:1/", NULL, 0, 0, &res));
        ASSERT_ERR(start(r, "GET", "http://127.0.0.1:1/", NULL, 0, 0, &res), EBUSY);
        run_until(&res.done);
        ASSERT_TRUE(res.error < 0);

        http_request_free(r);
        ASSERT_TRUE(http_request_free(NULL) == NULL);
        http_request_cancel(NULL);
}

/* ---- http: cancel, restart, free and close from callbacks ----------------- */

static void test_cancel(void) {
        HttpRequest *r, *r2;
        RawServer rs;
        Result res, res2;

        raw_server_start(&rs, NULL, true);
        ASSERT_OK(http_request_new(http, "cancel", &r));
        ASSERT_OK(http_request_new(http, "cancel2", &r2));

        /* Idle: nothing happens. */
        http_request_cancel(r);

        /* Cancelled before the loop even ran: called back from the loop, not from cancel. */
        ASSERT_OK(start(r, "GET", rs.url, NULL, 0, 0, &res));
        http_request_cancel(r);
        http_request_cancel(r);
        ASSERT_FALSE(res.done);
        ASSERT_TRUE(http_request_is_running(r));
        ASSERT_ERR(start(r, "GET", rs.url, NULL, 0, 0, &res2), EBUSY);
        run_until(&res.done);
        ASSERT_ERR(res.error, ECANCELED);
        ASSERT_FALSE(http_request_is_running(r));

        /* Cancelled while connected and waiting for the answer. */
        ASSERT_OK(start(r, "GET", rs.url, NULL, 0, 0, &res));
        raw_wait_accepted(&rs, rs.accepted + 1);
        run_for(10);
        http_request_cancel(r);
        ASSERT_FALSE(res.done);
        run_until(&res.done);
        ASSERT_ERR(res.error, ECANCELED);
        ASSERT_EQ(res.calls, 1);

        /* Cancelled and then freed before the loop ran: never called back. */
        ASSERT_OK(start(r2, "GET", rs.url, NULL, 0, 0, &res2));
        http_request_cancel(r2);
        r2 = http_request_free(r2);
        run_for(30);
        ASSERT_FALSE(res2.done);

        /* Freed while running: never called back. */
        ASSERT_OK(http_request_new(http, "cancel3", &r2));
        ASSERT_OK(start(r2, "GET", rs.url, NULL, 0, 0, &res2));
        run_for(20);
        r2 = http_request_free(r2);
        run_for(20);
        ASSERT_FALSE(res2.done);

        /* Still usable after a cancel. */
        request(r, "GET", fake_server_url(srv), "/latest/meta-data/", NULL, 0, &res);
        ASSERT_EQ(res.status, 401);

        http_request_free(r);
        raw_server_stop(&rs);
}

typedef struct Restart {
        char url[256];
        const char *headers[2];
        char auth[200];
        unsigned rounds;
        unsigned want;
        long statuses[8];
        bool done;
        bool free_at_end;
        bool cancel_after_restart;
} Restart;

static void on_restart(HttpRequest *r, int error, long status, const char *body, size_t size, void *userdata) {
        Restart *x = userdata;
        HttpRequestParams p = { .url = x->url, .headers = x->headers };

        ASSERT_TRUE(error == 0 || (x->cancel_after_restart && error == -ECANCELED));
        ASSERT_TRUE(x->rounds < ELEMENTSOF(x->statuses));
        x->statuses[x->rounds++] = status;

        if (x->rounds < x->want) {
                ASSERT_OK(http_request_start(r, &p, on_restart, x));
                ASSERT_TRUE(http_request_is_running(r));
                /* The body we were given must survive the restart until we return. */
                ASSERT_EQ(body[size], 0);
                if (x->cancel_after_restart)
                        http_request_cancel(r);
                return;
        }

        x->done = true;
        if (x->free_at_end) {
                ASSERT_TRUE(http_request_free(r) == NULL);
                /* Freed, but alive until we return: starting it again is refused. */
                ASSERT_ERR(http_request_start(r, &p, on_restart, x), ESHUTDOWN);
        }
}

static void test_restart_in_callback(void) {
        char token[128];
        HttpRequest *r;
        Restart x = { .want = 5 };
        Http *h;
        HttpRequestParams p;

        ASSERT_OK(http_new(&loop, &h));
        ASSERT_OK(http_request_new(h, "restart", &r));
        get_token(r, 60, token, sizeof(token));
        token_header(x.auth, sizeof(x.auth), token);
        x.headers[0] = x.auth;
        url_of(x.url, sizeof(x.url), fake_server_url(srv), "/latest/meta-data/spot/instance-action");

        p = (HttpRequestParams) { .url = x.url, .headers = x.headers };
        ASSERT_OK(http_request_start(r, &p, on_restart, &x));
        run_until(&x.done);
        ASSERT_EQ(x.rounds, 5);
        for (unsigned i = 0; i < x.rounds; i++)
                ASSERT_EQ(x.statuses[i], 404);
        ASSERT_U64_EQ(http_connections_opened(h), 1);
        ASSERT_FALSE(http_request_is_running(r));

        /* Restart, cancel the restart from the same callback, and finally free from the callback. */
        x = (Restart) { .want = 3, .cancel_after_restart = true, .free_at_end = true, .url = "", .auth = "" };
        token_header(x.auth, sizeof(x.auth), token);
        x.headers[0] = x.auth;
        url_of(x.url, sizeof(x.url), fake_server_url(srv), "/latest/meta-data/spot/instance-action");
        ASSERT_OK(http_request_start(r, &p, on_restart, &x));
        run_until(&x.done);
        ASSERT_EQ(x.rounds, 3);
        ASSERT_EQ(x.statuses[0], 404);
        ASSERT_EQ(x.statuses[1], 0); /* cancelled */
        ASSERT_EQ(x.statuses[2], 0);
        /* @r is gone now. */
        run_for(20);

        http_close(h);
}

typedef struct CloseCtx {
        Http *h;
        HttpRequest *other;
        Result other_res;
        bool done;
} CloseCtx;

static void on_close_from_callback(HttpRequest *r, int error, long status, const char *body, size_t size,
                                   void *userdata) {
        CloseCtx *x = userdata;

        ASSERT_EQ(status, 401);
        /* Close the whole Http from inside a callback, with another request still running. */
        http_close(x->h);
        ASSERT_FALSE(http_request_is_running(x->other));
        x->done = true;
}

static void test_close_from_callback(void) {
        char url[256];
        HttpRequest *r;
        RawServer rs;
        CloseCtx x = {};
        HttpRequestParams p = { .url = url };

        raw_server_start(&rs, NULL, true);
        ASSERT_OK(http_new(&loop, &x.h));
        ASSERT_OK(http_request_new(x.h, "closer", &r));
        ASSERT_OK(http_request_new(x.h, "other", &x.other));

        ASSERT_OK(start(x.other, "GET", rs.url, NULL, 0, 0, &x.other_res));
        url_of(url, sizeof(url), fake_server_url(srv), "/latest/meta-data/");
        ASSERT_OK(http_request_start(r, &p, on_close_from_callback, &x));
        run_until(&x.done);
        run_for(30);
        ASSERT_FALSE(x.other_res.done);

        /* Detached requests refuse to start and can still be freed after the Http is gone. */
        ASSERT_ERR(http_request_start(r, &p, on_close_from_callback, &x), ESHUTDOWN);
        http_request_free(r);
        http_request_free(x.other);

        /* Closing with requests still running: no callbacks, no leaks. */
        {
                HttpRequest *a, *b;
                Result ra, rb;
                Http *h;

                ASSERT_OK(http_new(&loop, &h));
                ASSERT_OK(http_request_new(h, "a", &a));
                ASSERT_OK(http_request_new(h, "b", &b));
                ASSERT_OK(start(a, "GET", rs.url, NULL, 0, 0, &ra));
                ASSERT_OK(start(b, "GET", url, NULL, 0, 0, &rb));
                http_request_cancel(b);
                run_for(20);
                http_request_free(b);
                http_close(h);
                http_close(NULL);
                run_for(20);
                ASSERT_FALSE(ra.done);
                http_request_free(a);
        }

        raw_server_stop(&rs);
}

int main(void) {
        int r;

        if (getenv("SPOTWATCH_TEST_DEBUG"))
                log_set_max_level(LOG_DEBUG);

        ASSERT_OK(uv_loop_init(&loop));
        ASSERT_OK(uv_timer_init(&loop, &tick));
        ASSERT_OK(fake_server_new(&loop, CLOUD_AWS, "127.0.0.1", 0, &srv));
        ASSERT_TRUE(fake_server_port(srv) > 0);
        ASSERT_OK(http_new(&loop, &http));

        RUN(test_token_and_notice);
        RUN(test_token_refusals);
        RUN(test_fake_server_addresses);
        RUN(test_keepalive);
        RUN(test_body_cap);
        RUN(test_bad_servers);
        RUN(test_request_shape);
        RUN(test_timeout);
        RUN(test_refused);
        RUN(test_bad_params);
        RUN(test_cancel);
        RUN(test_restart_in_callback);
        RUN(test_close_from_callback);

        http_close(http);
        fake_server_close(srv);
        uv_close((uv_handle_t *) &tick, NULL);
        ASSERT_OK(uv_run(&loop, UV_RUN_DEFAULT));
        r = uv_loop_close(&loop);
        if (r < 0) {
                uv_print_all_handles(&loop, stderr);
                TEST_FAIL("uv_loop_close(): %s", uv_strerror(r));
        }
        return 0;
}
