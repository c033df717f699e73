/* SPDX-License-Identifier: MIT */
/*
 * fake-alibaba.c - the fake Alibaba Cloud ECS metadata service. As the real
 * one, it takes both access modes: a GET without a token is served (normal
 * mode), a GET with an X-aliyun-ecs-metadata-token header is served only if
 * that token came from PUT /latest/api/token and has not expired (hardened
 * mode), else 401. A token PUT needs X-aliyun-ecs-metadata-token-ttl-seconds
 * in 1..21600 and is refused when it came through a proxy (X-Forwarded-For).
 * It serves the instance id and instance/spot/termination-time (404, or the
 * UTC time manager set). HTTP plumbing is fake-server.c's; this file owns
 * only Alibaba's rules.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "fake-server-internal.h"

#define FAKE_TOKEN_DIGITS 48
#define FAKE_TERMINATION_LEAD_USEC (5 * 60 * USEC_PER_SEC) /* Alibaba announces about 5 minutes ahead */
#define FAKE_ALIBABA_INSTANCE_ID "i-bp1fake0000000000001"

#define ALIBABA_TOKEN_PATH "/latest/api/token"
#define ALIBABA_TOKEN_TTL_HEADER "X-aliyun-ecs-metadata-token-ttl-seconds"
#define ALIBABA_TOKEN_HEADER "X-aliyun-ecs-metadata-token"
#define ALIBABA_TERMINATION_PATH "/latest/meta-data/instance/spot/termination-time"

typedef struct FakeAlibaba {
        FakeTokenRing tokens;

        bool notice;
        uint64_t notice_usec;
} FakeAlibaba;

/* Alibaba's tokens are plain hex. */
static bool token_random(char *buf, size_t size) {
        return fake_random_hex(buf, size, FAKE_TOKEN_DIGITS) >= 0;
}

static enum MHD_Result alibaba_termination_time(FakeServer *s, const FakeRequest *req) {
        FakeAlibaba *a = s->state;
        char when[32];

        if (!a->notice || fake_format_time(a->notice_usec, FAKE_TIME_RFC3339, when, sizeof(when)) < 0)
                return fake_reply_error(s, req, MHD_HTTP_NOT_FOUND, NULL);
        return fake_reply_text(s, req, when);
}

static enum MHD_Result alibaba_handle(FakeServer *s, const FakeRequest *req) {
        FakeAlibaba *a = s->state;
        const char *url = req->url, *method = req->method, *token;

        if (streq(url, ALIBABA_TOKEN_PATH)) {
                if (!streq(method, MHD_HTTP_METHOD_PUT))
                        return fake_reply_error(s, req, MHD_HTTP_METHOD_NOT_ALLOWED, MHD_HTTP_METHOD_PUT);
                /* Unlike AWS, the answer does not repeat the TTL. */
                return fake_token_put(s, req, &a->tokens, ALIBABA_TOKEN_TTL_HEADER, false, token_random);
        }

        if (!streq(method, MHD_HTTP_METHOD_GET))
                return fake_reply_error(s, req, MHD_HTTP_METHOD_NOT_ALLOWED, MHD_HTTP_METHOD_GET);
        if (strncmp(url, "/latest/", 8) != 0)
                return fake_reply_error(s, req, MHD_HTTP_NOT_FOUND, NULL);

        /* Both modes: no token is fine, a token must be good. */
        token = fake_request_header(req, ALIBABA_TOKEN_HEADER);
        if (token && !fake_token_valid(&a->tokens, token))
                return fake_reply_error(s, req, MHD_HTTP_UNAUTHORIZED, NULL);

        if (streq(url, "/latest/meta-data/") || streq(url, "/latest/meta-data"))
                return fake_reply_text(s, req, "instance/\ninstance-id");
        if (streq(url, "/latest/meta-data/instance-id"))
                return fake_reply_text(s, req, FAKE_ALIBABA_INSTANCE_ID);
        if (streq(url, ALIBABA_TERMINATION_PATH))
                return alibaba_termination_time(s, req);
        return fake_reply_error(s, req, MHD_HTTP_NOT_FOUND, NULL);
}

static int alibaba_set_notice(FakeServer *s, const char *event, uint64_t time_usec) {
        FakeAlibaba *a = s->state;

        if (!event || !streq(event, "terminate"))
                return -EINVAL;
        a->notice_usec = time_usec > 0 ? time_usec : fake_now_realtime_usec() + FAKE_TERMINATION_LEAD_USEC;
        a->notice = true;
        return 0;
}

static void alibaba_clear_notice(FakeServer *s) {
        FakeAlibaba *a = s->state;

        a->notice = false;
}

static const char *alibaba_instance_id(FakeServer *s) {
        return FAKE_ALIBABA_INSTANCE_ID;
}

const FakeCloud fake_cloud_alibaba = {
        .cloud = CLOUD_ALIBABA,
        .server_header = "Tengine",
        .events = "terminate",
        .state_size = sizeof(FakeAlibaba),
        .handle = alibaba_handle,
        .set_notice = alibaba_set_notice,
        .clear_notice = alibaba_clear_notice,
        .instance_id = alibaba_instance_id,
};
