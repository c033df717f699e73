/* SPDX-License-Identifier: MIT */
/*
 * provider-alibaba.c - the Alibaba Cloud ECS watcher: the parser of
 * instance/spot/termination-time and the table that runs provider-aws.c's
 * IMDS poll engine with Alibaba's endpoint and header names (see
 * provider-alibaba.h). The engine owns the timer, the requests, the session
 * token and the backoff; this file owns nothing else. Like every provider it
 * never signals, spawns, writes files or logs above debug.
 */
#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "provider-alibaba.h"
#include "provider-aws.h"
#include "provider-util.h"
#include "provider.h"
#include "shared/macro.h"
#include "shared/parse.h"

#define ALIBABA_TOKEN_HEADER "X-aliyun-ecs-metadata-token"
#define ALIBABA_TOKEN_TTL_HEADER "X-aliyun-ecs-metadata-token-ttl-seconds"

typedef struct AlibabaProvider {
        Provider p;
        AwsImds *imds;
} AlibabaProvider;

static AlibabaProvider *alibaba_from_provider(Provider *p) {
        return container_of(p, AlibabaProvider, p);
}

int alibaba_parse_termination_time(const char *body, size_t size, NoticeEvent *ret) {
        char buf[ALIBABA_TIME_MAX + 1], norm[ALIBABA_TIME_MAX];
        uint64_t usec;

        if (!body)
                return -EBADMSG;
        size = provider_trim_end(body, size);
        if (size == 0 || size > ALIBABA_TIME_MAX || !provider_visible_ascii(body, size))
                return -EBADMSG;
        memcpy(buf, body, size);
        buf[size] = 0;
        if (parse_rfc3339(buf, &usec) < 0 || usec == 0)
                return -EBADMSG;

        *ret = (NoticeEvent) {
                .kind = EVENT_TERMINATE,
                .cloud = CLOUD_ALIBABA,
                .deadline_usec = usec,
        };
        (void) snprintf(ret->id, sizeof(ret->id), "alibaba:spot:%s", format_rfc3339(norm, sizeof(norm), usec));
        (void) snprintf(ret->detail, sizeof(ret->detail), "termination-time");
        return 0;
}

static int endpoint_termination_time(Provider *p, const char *body, size_t size, NoticeEvent *events,
                                     size_t n_max, size_t *ret_n, char *err, size_t errsz) {
        int r;

        assert(n_max >= 1);
        r = alibaba_parse_termination_time(body, size, &events[0]);
        if (r < 0) {
                char q[PROVIDER_QUOTE_MAX + 8];

                provider_quote_untrusted(q, sizeof(q), body, size);
                return provider_set_error(err, errsz, "not a UTC time: '%s'", q);
        }
        *ret_n = 1;
        return 0;
}

static bool alibaba_token_enabled(const Config *config) {
        return config->alibaba_token;
}

static const AwsImdsEndpoint alibaba_endpoints[] = {
        {
                .path = "/latest/meta-data/instance/spot/termination-time",
                .what = "instance/spot/termination-time",
                .parse = endpoint_termination_time,
        },
};

static const AwsImdsFlavor alibaba_flavor = {
        .name = "alibaba",
        .token_header = ALIBABA_TOKEN_HEADER,
        .token_ttl_header = ALIBABA_TOKEN_TTL_HEADER,
        .token_enabled = alibaba_token_enabled,
        .tokenless_hint = "alibaba_token = yes needs a token",
        .token_hint = "set alibaba_token = yes",
        .endpoints = alibaba_endpoints,
        .n_endpoints = ELEMENTSOF(alibaba_endpoints),
};

static int alibaba_init(Provider *p) {
        return aws_imds_new(p, &alibaba_flavor, &alibaba_from_provider(p)->imds);
}

static int alibaba_start(Provider *p) {
        return aws_imds_start(alibaba_from_provider(p)->imds);
}

static void alibaba_stop(Provider *p) {
        aws_imds_stop(alibaba_from_provider(p)->imds);
}

static void alibaba_done(Provider *p) {
        AlibabaProvider *a = alibaba_from_provider(p);

        a->imds = aws_imds_close(a->imds);
}

const ProviderVTable provider_alibaba_vtable = {
        .cloud = CLOUD_ALIBABA,
        .object_size = sizeof(AlibabaProvider),
        .init = alibaba_init,
        .start = alibaba_start,
        .stop = alibaba_stop,
        .done = alibaba_done,
};
