/* SPDX-License-Identifier: MIT */
/*
 * test-credentials.c - the credential chains of credentials.c against the
 * daemon's own fake metadata services (fake-aws.c, fake-gcp.c,
 * fake-azure.c) over real HTTP on 127.0.0.1: config before environment
 * before the instance's credentials; the AWS instance role through an
 * IMDSv2 token, GCP's service account token, Azure's managed identity
 * token; the cache and its refresh before the served expiry; invalidation;
 * the errors for no role, a cloud that does not match, bad documents and
 * dead services; one fetch for many callers; freeing with callers queued.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "credentials.h"
#include "fake-server-internal.h"
#include "fake-server.h"
#include "http.h"
#include "provider-util.h"
#include "shared/log.h"
#include "shared/macro.h"
#include "tests-loop.h"
#include "tests.h"

#define WAIT_MS 10000
#define DEST_S3 "s3://bucket/prefix/"
#define DEST_GS "gs://bucket/prefix/"
#define DEST_AZ "az://account/container/prefix/"

static uv_loop_t loop;
static uv_timer_t tick;
static Http *http;
static FakeServer *aws, *gcp, *azure;

typedef struct Got {
        unsigned calls;
        int error;
        Credentials creds;
        char detail[1024];
        uint64_t at_usec;      /* CLOCK_REALTIME of the call */
        CredProvider *get_again; /* call cred_provider_get() on this from the callback */
        struct Got *again;
        CredProvider *free_me; /* cred_provider_free() this from the callback */
        CredProvider *cancel_in; /* cred_provider_cancel(cancel_in, cancel) from the callback */
        void *cancel;
} Got;

static void got_reset(Got *g) {
        credentials_done(&g->creds);
        *g = (Got) { .creds.kind = _CRED_KIND_INVALID };
}

static void got_cb(CredProvider *p, int error, const Credentials *creds, const char *detail,
                   void *userdata) {
        Got *g = userdata;

        g->calls++;
        g->error = error;
        g->at_usec = provider_now_usec(CLOCK_REALTIME);
        credentials_done(&g->creds);
        if (error == 0) {
                ASSERT_TRUE(creds);
                ASSERT_TRUE(detail == NULL);
                ASSERT_OK(credentials_copy(&g->creds, creds));
                /* Never an expired one. */
                if (creds->expires_usec != 0 && creds->expires_usec <= g->at_usec)
                        TEST_FAIL("credentials from '%s' expired %" PRIu64 " us ago", creds->source,
                                  g->at_usec - creds->expires_usec);
        } else {
                ASSERT_TRUE(creds == NULL);
                ASSERT_TRUE(detail != NULL);
                /* One line. */
                ASSERT_TRUE(strchr(detail, '\n') == NULL);
                (void) snprintf(g->detail, sizeof(g->detail), "%s", detail);
        }
        if (g->get_again)
                ASSERT_OK(cred_provider_get(TAKE_PTR(g->get_again), got_cb, g->again));
        if (g->cancel_in)
                cred_provider_cancel(TAKE_PTR(g->cancel_in), g->cancel);
        if (g->free_me)
                (void) cred_provider_free(TAKE_PTR(g->free_me));
}

static void wait_calls(Got *g, unsigned n) {
        bool done = false;
        uint64_t deadline = uv_hrtime() + (uint64_t) WAIT_MS * 1000000;

        ASSERT_OK(uv_timer_start(&tick, tests_tick_cb, 5, 5));
        while (!done) {
                if (uv_hrtime() > deadline)
                        TEST_FAIL("callback %u did not come within %d ms", n, WAIT_MS);
                (void) uv_run(&loop, UV_RUN_ONCE);
                done = g->calls >= n;
        }
        ASSERT_OK(uv_timer_stop(&tick));
}

/* One get(), run to its callback, which never comes from inside the call. */
static void get(CredProvider *p, Got *g) {
        got_reset(g);
        ASSERT_OK(cred_provider_get(p, got_cb, g));
        ASSERT_EQ(g->calls, 0);
        wait_calls(g, 1);
        ASSERT_EQ(g->calls, 1);
}

static void get_ok(CredProvider *p, Got *g) {
        get(p, g);
        if (g->error < 0)
                TEST_FAIL("get failed: %d (%s): %s", g->error, strerror(-g->error), g->detail);
}

static void get_fails(CredProvider *p, Got *g, int error, const char *dest, const char *what) {
        char prefix[256];

        get(p, g);
        ASSERT_EQ(g->error, -error);
        (void) snprintf(prefix, sizeof(prefix), "no credentials for %s: ", dest);
        if (strncmp(g->detail, prefix, strlen(prefix)) != 0)
                TEST_FAIL("detail does not start with '%s': '%s'", prefix, g->detail);
        ASSERT_CONTAINS(g->detail, what);
        fprintf(stderr, "    %s\n", g->detail);
}

static UploadConfig upload(const char *dest, UploadScheme scheme) {
        return (UploadConfig) {
                .name = (char *) "ckpt",
                .destination = (char *) dest,
                .scheme = scheme,
        };
}

static CredProvider *provider(const UploadConfig *u, CloudKind cloud, FakeServer *fake) {
        CredProvider *p = NULL;

        ASSERT_OK(cred_provider_new(&loop, http, u, cloud, fake ? fake_server_url(fake) : NULL,
                                    2 * USEC_PER_SEC, &p));
        ASSERT_TRUE(p);
        return p;
}

static void clear_env(void) {
        ASSERT_OK(unsetenv("AWS_ACCESS_KEY_ID"));
        ASSERT_OK(unsetenv("AWS_SECRET_ACCESS_KEY"));
        ASSERT_OK(unsetenv("AWS_SESSION_TOKEN"));
}

static void set_env(const char *id, const char *secret, const char *token) {
        clear_env();
        if (id)
                ASSERT_OK(setenv("AWS_ACCESS_KEY_ID", id, 1));
        if (secret)
                ASSERT_OK(setenv("AWS_SECRET_ACCESS_KEY", secret, 1));
        if (token)
                ASSERT_OK(setenv("AWS_SESSION_TOKEN", token, 1));
}

static void serve_pair(const char *id, const char *secret, const char *token, uint64_t lifetime_usec) {
        FakeCredentials fc = {
                .access_key_id = id,
                .secret_access_key = secret,
                .session_token = token,
                .lifetime_usec = lifetime_usec,
        };

        ASSERT_OK(fake_server_set_credentials(aws, &fc));
}

static void serve_token(FakeServer *s, const char *token, uint64_t lifetime_usec) {
        FakeCredentials fc = { .token = token, .lifetime_usec = lifetime_usec };

        ASSERT_OK(fake_server_set_credentials(s, &fc));
}

static void serve_none(FakeServer *s) {
        FakeCredentials fc = { .none = true };

        ASSERT_OK(fake_server_set_credentials(s, &fc));
}

static void assert_near(uint64_t got, uint64_t want, uint64_t slack) {
        if (got + slack < want || got > want + slack)
                TEST_FAIL("%" PRIu64 " not within %" PRIu64 " of %" PRIu64, got, slack, want);
}

/* ---- the chain ------------------------------------------------------------------ */

static void test_config_wins(void) {
        UploadConfig u = upload(DEST_S3, UPLOAD_S3);
        uint64_t f0 = fake_server_credential_fetches(aws), r0 = fake_server_requests(aws);
        CredProvider *p;
        Got g = {};

        set_env("ENVKEY", "envsecret", "envtoken");
        u.access_key_id = (char *) "CFGKEY";
        u.secret_access_key = (char *) "cfgsecret";
        p = provider(&u, CLOUD_AWS, aws);
        get_ok(p, &g);
        ASSERT_EQ(g.creds.kind, CRED_AWS);
        ASSERT_STREQ(g.creds.access_key_id, "CFGKEY");
        ASSERT_STREQ(g.creds.secret_access_key, "cfgsecret");
        /* The environment's session token belongs to the environment's key. */
        ASSERT_TRUE(g.creds.session_token == NULL);
        ASSERT_STREQ(g.creds.source, "config");
        ASSERT_U64_EQ(g.creds.expires_usec, 0);
        p = cred_provider_free(p);

        u.session_token = (char *) "cfgtoken";
        p = provider(&u, CLOUD_AWS, aws);
        get_ok(p, &g);
        ASSERT_STREQ(g.creds.session_token, "cfgtoken");
        p = cred_provider_free(p);

        /* Neither asked the metadata service. */
        ASSERT_U64_EQ(fake_server_credential_fetches(aws), f0);
        ASSERT_U64_EQ(fake_server_requests(aws), r0);
        clear_env();
        got_reset(&g);
}

static void test_env_wins_over_role(void) {
        UploadConfig u = upload(DEST_S3, UPLOAD_S3);
        uint64_t r0 = fake_server_requests(aws);
        CredProvider *p;
        Got g = {};

        set_env("ENVKEY", "envsecret", "envtoken");
        p = provider(&u, CLOUD_AWS, aws);
        get_ok(p, &g);
        ASSERT_EQ(g.creds.kind, CRED_AWS);
        ASSERT_STREQ(g.creds.access_key_id, "ENVKEY");
        ASSERT_STREQ(g.creds.secret_access_key, "envsecret");
        ASSERT_STREQ(g.creds.session_token, "envtoken");
        ASSERT_STREQ(g.creds.source, "environment");
        p = cred_provider_free(p);

        /* An empty variable is no variable. */
        set_env("ENVKEY", "envsecret", "");
        p = provider(&u, CLOUD_AWS, aws);
        get_ok(p, &g);
        ASSERT_TRUE(g.creds.session_token == NULL);
        p = cred_provider_free(p);

        /* gs:// takes HMAC keys the same way. */
        u = upload(DEST_GS, UPLOAD_GS);
        p = provider(&u, CLOUD_GCP, gcp);
        get_ok(p, &g);
        ASSERT_EQ(g.creds.kind, CRED_AWS);
        ASSERT_STREQ(g.creds.access_key_id, "ENVKEY");
        p = cred_provider_free(p);

        ASSERT_U64_EQ(fake_server_requests(aws), r0);
        clear_env();
        got_reset(&g);
}

static void test_half_keys(void) {
        UploadConfig u = upload(DEST_S3, UPLOAD_S3);
        uint64_t r0 = fake_server_requests(aws);
        CredProvider *p;
        Got g = {};

        u.access_key_id = (char *) "CFGKEY";
        p = provider(&u, CLOUD_AWS, aws);
        get_fails(p, &g, EINVAL, DEST_S3,
                  "access_key_id is set in [upload \"ckpt\"] but secret_access_key is not");
        p = cred_provider_free(p);

        u = upload(DEST_S3, UPLOAD_S3);
        u.session_token = (char *) "tok";
        p = provider(&u, CLOUD_AWS, aws);
        get_fails(p, &g, EINVAL, DEST_S3, "session_token is set in [upload \"ckpt\"] but");
        p = cred_provider_free(p);

        u = upload(DEST_S3, UPLOAD_S3);
        u.access_key_id = (char *) "CFG KEY";
        u.secret_access_key = (char *) "secret";
        p = provider(&u, CLOUD_AWS, aws);
        get_fails(p, &g, EINVAL, DEST_S3, "not a valid access key id");
        p = cred_provider_free(p);

        u = upload(DEST_S3, UPLOAD_S3);
        set_env(NULL, "envsecret", NULL);
        p = provider(&u, CLOUD_AWS, aws);
        get_fails(p, &g, EINVAL, DEST_S3,
                  "AWS_SECRET_ACCESS_KEY is set in the environment but AWS_ACCESS_KEY_ID");
        p = cred_provider_free(p);
        clear_env();

        /* No metadata service was asked: a half key is a mistake to fix, not to work around. */
        ASSERT_U64_EQ(fake_server_requests(aws), r0);

        /* No store, no credentials. */
        u = upload("file:///tmp/x/", UPLOAD_FILE);
        ASSERT_ERR(cred_provider_new(&loop, http, &u, CLOUD_AWS, fake_server_url(aws), 0, &p), EINVAL);
        got_reset(&g);
}

static void test_role(void) {
        UploadConfig u = upload(DEST_S3, UPLOAD_S3);
        uint64_t f0, r0, now;
        CredProvider *p;
        Got g = {};

        serve_pair("ROLEKEY1", "rolesecret1", "rolesession1", FAKE_CREDENTIALS_LIFETIME_USEC);
        f0 = fake_server_credential_fetches(aws);
        r0 = fake_server_requests(aws);
        p = provider(&u, CLOUD_AWS, aws);
        get_ok(p, &g);
        now = provider_now_usec(CLOCK_REALTIME);
        ASSERT_EQ(g.creds.kind, CRED_AWS);
        ASSERT_STREQ(g.creds.access_key_id, "ROLEKEY1");
        ASSERT_STREQ(g.creds.secret_access_key, "rolesecret1");
        ASSERT_STREQ(g.creds.session_token, "rolesession1");
        ASSERT_STREQ(g.creds.source, "instance role '" FAKE_ROLE_NAME "'");
        assert_near(g.creds.expires_usec, now + FAKE_CREDENTIALS_LIFETIME_USEC, 2 * USEC_PER_SEC);
        /* The fake answers a GET without a session token with 401: the token PUT, the list, the role. */
        ASSERT_U64_EQ(fake_server_requests(aws) - r0, 3);
        ASSERT_U64_EQ(fake_server_credential_fetches(aws) - f0, 1);

        /* Cached: no request at all. */
        serve_pair("ROLEKEY2", "rolesecret2", NULL, FAKE_CREDENTIALS_LIFETIME_USEC);
        get_ok(p, &g);
        ASSERT_STREQ(g.creds.access_key_id, "ROLEKEY1");
        ASSERT_U64_EQ(fake_server_requests(aws) - r0, 3);
        p = cred_provider_free(p);

        /* An empty Token is none (the keys of a plain S3 user). */
        p = provider(&u, CLOUD_AWS, aws);
        get_ok(p, &g);
        ASSERT_STREQ(g.creds.access_key_id, "ROLEKEY2");
        ASSERT_TRUE(g.creds.session_token == NULL);
        p = cred_provider_free(p);

        /* An IMDS without session tokens (the PUT answers 404): plain GETs. */
        ASSERT_OK(fake_aws_set_v1_only(aws, true));
        r0 = fake_server_requests(aws);
        p = provider(&u, CLOUD_AWS, aws);
        get_ok(p, &g);
        ASSERT_STREQ(g.creds.access_key_id, "ROLEKEY2");
        ASSERT_U64_EQ(fake_server_requests(aws) - r0, 3);
        p = cred_provider_free(p);
        ASSERT_OK(fake_aws_set_v1_only(aws, false));
        ASSERT_ERR(fake_aws_set_v1_only(gcp, true), EOPNOTSUPP);

        /* The URL may end in '/'. */
        {
                char url[128];

                (void) snprintf(url, sizeof(url), "%s//", fake_server_url(aws));
                ASSERT_OK(cred_provider_new(&loop, http, &u, CLOUD_AWS, url, 0, &p));
                get_ok(p, &g);
                ASSERT_STREQ(g.creds.access_key_id, "ROLEKEY2");
                p = cred_provider_free(p);
        }
        got_reset(&g);
}

/*
 * With a lifetime of 3 s (the fake writes whole seconds, so 2-3 s), the
 * second pair is in use before the first one's Expiration, and no expired
 * pair ever comes out (got_cb() checks).
 */
static void test_role_refresh(void) {
        UploadConfig u = upload(DEST_S3, UPLOAD_S3);
        uint64_t f0, first_expiry, deadline;
        CredProvider *p;
        Got g = {};

        serve_pair("SHORTKEY1", "shortsecret1", NULL, 3 * USEC_PER_SEC);
        p = provider(&u, CLOUD_AWS, aws);
        get_ok(p, &g);
        ASSERT_STREQ(g.creds.access_key_id, "SHORTKEY1");
        first_expiry = g.creds.expires_usec;
        ASSERT_TRUE(first_expiry > g.at_usec && first_expiry <= g.at_usec + 3 * USEC_PER_SEC);

        serve_pair("SHORTKEY2", "shortsecret2", NULL, 3 * USEC_PER_SEC);
        f0 = fake_server_credential_fetches(aws);
        get_ok(p, &g);
        ASSERT_STREQ(g.creds.access_key_id, "SHORTKEY1");
        ASSERT_U64_EQ(fake_server_credential_fetches(aws), f0);

        deadline = provider_now_usec(CLOCK_REALTIME) + 6 * USEC_PER_SEC;
        for (;;) {
                get_ok(p, &g);
                if (streq(g.creds.access_key_id, "SHORTKEY2"))
                        break;
                ASSERT_TRUE(g.at_usec < first_expiry);
                if (g.at_usec > deadline)
                        TEST_FAIL("still the first pair after 6 s");
                tests_run_for(&loop, &tick, 50);
        }
        /* Fetched once more, before the first pair expired. */
        ASSERT_U64_EQ(fake_server_credential_fetches(aws) - f0, 1);
        ASSERT_TRUE(g.at_usec <= first_expiry + 100 * USEC_PER_MSEC);
        p = cred_provider_free(p);
        got_reset(&g);
}

/* The refresh fails: the old pair serves until its Expiration, never after. */
static void test_refresh_failure(void) {
        UploadConfig u = upload(DEST_S3, UPLOAD_S3);
        uint64_t expiry, deadline, f;
        CredProvider *p;
        bool fallback = false;
        Got g = {};

        serve_pair("OLDKEY", "oldsecret", NULL, 3 * USEC_PER_SEC);
        p = provider(&u, CLOUD_AWS, aws);
        get_ok(p, &g);
        expiry = g.creds.expires_usec;
        ASSERT_OK(fake_server_set_credentials_reply(aws, 500, "{}"));

        deadline = expiry + 5 * USEC_PER_SEC;
        for (;;) {
                f = fake_server_credential_fetches(aws);
                get(p, &g);
                if (g.error < 0)
                        break;
                ASSERT_STREQ(g.creds.access_key_id, "OLDKEY");
                /* Asked, got a 500, and still had the old ones. */
                if (fake_server_credential_fetches(aws) > f)
                        fallback = true;
                if (g.at_usec > deadline)
                        TEST_FAIL("no error after the expiry");
                tests_run_for(&loop, &tick, 50);
        }
        ASSERT_TRUE(fallback);
        ASSERT_TRUE(g.at_usec >= expiry);
        ASSERT_EQ(g.error, -EIO);
        ASSERT_CONTAINS(g.detail, "'" FAKE_ROLE_NAME "': HTTP 500");
        ASSERT_OK(fake_server_set_credentials_reply(aws, 0, NULL));
        p = cred_provider_free(p);
        got_reset(&g);
}

static void test_invalidate_role(void) {
        UploadConfig u = upload(DEST_S3, UPLOAD_S3);
        uint64_t f0;
        CredProvider *p;
        Got g = {};

        serve_pair("ROLEKEY", "rolesecret", "session", FAKE_CREDENTIALS_LIFETIME_USEC);
        p = provider(&u, CLOUD_AWS, aws);
        /* Nothing to drop yet. */
        cred_provider_invalidate(p);
        f0 = fake_server_credential_fetches(aws);
        get_ok(p, &g);
        ASSERT_U64_EQ(fake_server_credential_fetches(aws) - f0, 1);

        /* Rejected: fetched again at the next get (parts in parallel report it once each). */
        serve_pair("ROLEKEY2", "rolesecret2", "session2", FAKE_CREDENTIALS_LIFETIME_USEC);
        cred_provider_invalidate(p);
        cred_provider_invalidate(p);
        cred_provider_invalidate(p);
        get_ok(p, &g);
        ASSERT_STREQ(g.creds.access_key_id, "ROLEKEY2");
        ASSERT_U64_EQ(fake_server_credential_fetches(aws) - f0, 2);
        get_ok(p, &g);
        ASSERT_U64_EQ(fake_server_credential_fetches(aws) - f0, 2);

        /* The fresh ones rejected too: no fetch storm, a clear error at once. */
        cred_provider_invalidate(p);
        get_fails(p, &g, EACCES, DEST_S3, "rejected by the store");
        ASSERT_CONTAINS(g.detail, "instance role");
        get_fails(p, &g, EACCES, DEST_S3, "next try in");
        ASSERT_U64_EQ(fake_server_credential_fetches(aws) - f0, 2);
        p = cred_provider_free(p);
        got_reset(&g);
}

static void test_invalidate_fixed(void) {
        UploadConfig u = upload(DEST_S3, UPLOAD_S3);
        CredProvider *p;
        Got g = {};

        u.access_key_id = (char *) "CFGKEY";
        u.secret_access_key = (char *) "cfgsecret";
        p = provider(&u, CLOUD_AWS, aws);
        get_ok(p, &g);
        cred_provider_invalidate(p);
        get_fails(p, &g, EACCES, DEST_S3,
                  "the access key 'CFGKEY' from the config was rejected by the store");
        get_fails(p, &g, EACCES, DEST_S3, "rejected by the store");
        p = cred_provider_free(p);

        set_env("ENVKEY", "envsecret", NULL);
        u = upload(DEST_S3, UPLOAD_S3);
        p = provider(&u, CLOUD_AWS, aws);
        cred_provider_invalidate(p);
        get_fails(p, &g, EACCES, DEST_S3,
                  "the access key 'ENVKEY' from the environment was rejected by the store");
        p = cred_provider_free(p);
        clear_env();

        u = upload(DEST_AZ, UPLOAD_AZ);
        u.sas_token = (char *) "sv=2024&sig=x";
        p = provider(&u, CLOUD_AZURE, azure);
        cred_provider_invalidate(p);
        get_fails(p, &g, EACCES, DEST_AZ, "the sas_token from the config was rejected by the store");
        p = cred_provider_free(p);
        got_reset(&g);
}

static void test_no_role(void) {
        UploadConfig u = upload(DEST_S3, UPLOAD_S3);
        CredProvider *p;
        Got g = {};

        serve_none(aws);
        p = provider(&u, CLOUD_AWS, aws);
        get_fails(p, &g, ENOKEY, DEST_S3,
                  "none in [upload \"ckpt\"] or the environment, and the metadata service has no instance "
                  "role (HTTP 404)");
        /* Not cached: asked again. */
        serve_pair("BACKKEY", "backsecret", NULL, FAKE_CREDENTIALS_LIFETIME_USEC);
        get_ok(p, &g);
        ASSERT_STREQ(g.creds.access_key_id, "BACKKEY");
        p = cred_provider_free(p);
        got_reset(&g);
}

static uint64_t all_requests(void) {
        return fake_server_requests(aws) + fake_server_requests(gcp) + fake_server_requests(azure);
}

static void test_cloud_mismatch(void) {
        static const struct {
                const char *dest;
                UploadScheme scheme;
                CloudKind cloud;
                const char *what;
        } cases[] = {
                { DEST_S3, UPLOAD_S3, CLOUD_GCP,
                  "set access_key_id and secret_access_key in [upload \"ckpt\"], or AWS_ACCESS_KEY_ID and "
                  "AWS_SECRET_ACCESS_KEY in the environment (the instance role is only asked for on AWS; "
                  "the daemon watches gcp)" },
                { DEST_S3, UPLOAD_S3, CLOUD_AUTO, "the daemon watches no known cloud" },
                { DEST_GS, UPLOAD_GS, CLOUD_AWS,
                  "set an HMAC key as access_key_id and secret_access_key in [upload" },
                { DEST_AZ, UPLOAD_AZ, CLOUD_ALIBABA,
                  "set sas_token or account_key in [upload \"ckpt\"] (the managed identity token is only "
                  "asked for on Azure; the daemon watches alibaba)" },
        };
        uint64_t r0 = all_requests();
        Got g = {};

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                UploadConfig u = upload(cases[i].dest, cases[i].scheme);
                CredProvider *p = provider(&u, cases[i].cloud, aws);

                get_fails(p, &g, ENOKEY, cases[i].dest, cases[i].what);
                p = cred_provider_free(p);
        }
        ASSERT_U64_EQ(all_requests(), r0);
        got_reset(&g);
}

static void test_gcp(void) {
        UploadConfig u = upload(DEST_GS, UPLOAD_GS);
        uint64_t now, f0 = fake_server_credential_fetches(gcp);
        CredProvider *p;
        Got g = {};

        serve_token(gcp, "ya29.test-token", 1800 * USEC_PER_SEC);
        p = provider(&u, CLOUD_GCP, gcp);
        get_ok(p, &g);
        now = provider_now_usec(CLOCK_REALTIME);
        ASSERT_EQ(g.creds.kind, CRED_BEARER);
        ASSERT_STREQ(g.creds.token, "ya29.test-token");
        ASSERT_TRUE(g.creds.access_key_id == NULL);
        ASSERT_STREQ(g.creds.source, "service account");
        assert_near(g.creds.expires_usec, now + 1800 * USEC_PER_SEC, 2 * USEC_PER_SEC);
        get_ok(p, &g);
        ASSERT_U64_EQ(fake_server_credential_fetches(gcp) - f0, 1);
        cred_provider_invalidate(p);
        get_ok(p, &g);
        ASSERT_U64_EQ(fake_server_credential_fetches(gcp) - f0, 2);
        p = cred_provider_free(p);

        serve_none(gcp);
        p = provider(&u, CLOUD_GCP, gcp);
        get_fails(p, &g, ENOKEY, DEST_GS,
                  "none in [upload \"ckpt\"] or the environment, and the metadata server has no service "
                  "account (HTTP 404)");
        p = cred_provider_free(p);
        serve_token(gcp, "ya29.default", FAKE_CREDENTIALS_LIFETIME_USEC);
        got_reset(&g);
}

static void test_azure(void) {
        UploadConfig u = upload(DEST_AZ, UPLOAD_AZ);
        uint64_t now;
        CredProvider *p;
        Got g = {};

        serve_token(azure, "eyJ0eXAi.azure-test", 7200 * USEC_PER_SEC);
        p = provider(&u, CLOUD_AZURE, azure);
        get_ok(p, &g);
        now = provider_now_usec(CLOCK_REALTIME);
        ASSERT_EQ(g.creds.kind, CRED_BEARER);
        ASSERT_STREQ(g.creds.token, "eyJ0eXAi.azure-test");
        ASSERT_STREQ(g.creds.source, "managed identity");
        assert_near(g.creds.expires_usec, now + 7200 * USEC_PER_SEC, 2 * USEC_PER_SEC);
        p = cred_provider_free(p);

        /* The config's SAS token, then its account key, come first. */
        u.sas_token = (char *) "?sv=2024-01-01&sig=abc%3D";
        u.account_key = (char *) "a2V5";
        p = provider(&u, CLOUD_AZURE, azure);
        get_ok(p, &g);
        ASSERT_EQ(g.creds.kind, CRED_AZURE_SAS);
        ASSERT_STREQ(g.creds.token, "sv=2024-01-01&sig=abc%3D");
        ASSERT_STREQ(g.creds.source, "config");
        p = cred_provider_free(p);
        u.sas_token = NULL;
        p = provider(&u, CLOUD_AZURE, azure);
        get_ok(p, &g);
        ASSERT_EQ(g.creds.kind, CRED_AZURE_KEY);
        ASSERT_STREQ(g.creds.token, "a2V5");
        p = cred_provider_free(p);

        /* AWS keys in the environment are nothing to Azure. */
        set_env("ENVKEY", "envsecret", NULL);
        serve_none(azure);
        u.account_key = NULL;
        p = provider(&u, CLOUD_AZURE, azure);
        get_fails(p, &g, EIO, DEST_AZ, "the managed identity token: HTTP 400 (Identity not found)");
        p = cred_provider_free(p);
        clear_env();
        serve_token(azure, "azure-default", FAKE_CREDENTIALS_LIFETIME_USEC);

        /* expires_on as a number is taken too. */
        ASSERT_OK(fake_server_set_credentials_reply(
                azure, 200, "{\"access_token\": \"num\", \"expires_on\": 4102444800}"));
        p = provider(&u, CLOUD_AZURE, azure);
        get_ok(p, &g);
        ASSERT_STREQ(g.creds.token, "num");
        ASSERT_U64_EQ(g.creds.expires_usec, UINT64_C(4102444800) * USEC_PER_SEC);
        p = cred_provider_free(p);
        ASSERT_OK(fake_server_set_credentials_reply(azure, 0, NULL));
        got_reset(&g);
}

/* ---- bad answers ----------------------------------------------------------------- */

/* Role documents: the head up to the keys, and a tail that makes them whole. */
#define AWS_HEAD "{\"Code\": \"Success\", \"AccessKeyId\": \"k\", \"SecretAccessKey\": \"s\", "
#define AWS_TAIL "\"SecretAccessKey\": \"s\", \"Token\": \"t\", \"Expiration\": \"2099-01-01T00:00:00Z\"}"
#define AWS_LATER "\"Expiration\": \"2099-01-01T00:00:00Z\"}"
#define ROLE_ERR "instance role '" FAKE_ROLE_NAME "': "

static void test_bad_documents(void) {
        static const struct {
                CloudKind cloud;
                unsigned status;
                const char *body;
                int error;
                const char *what;
        } cases[] = {
                { CLOUD_AWS, 500, "{}", EIO, "or the environment, and " ROLE_ERR "HTTP 500" },
                { CLOUD_AWS, 404, "{}", ENOKEY, ROLE_ERR "HTTP 404" },
                { CLOUD_AWS, 200, "", EBADMSG, ROLE_ERR "empty body" },
                { CLOUD_AWS, 200, "not json", EBADMSG, "invalid JSON" },
                { CLOUD_AWS, 200, "{\"Code\": \"Success\"", EBADMSG, "invalid JSON: truncated" },
                { CLOUD_AWS, 200, "[]", EBADMSG, "JSON is not an object" },
                { CLOUD_AWS, 200, "{\"Code\": \"Failure\", \"AccessKeyId\": \"k\", " AWS_TAIL, EBADMSG,
                  "\"Code\" is 'Failure', not 'Success'" },
                { CLOUD_AWS, 200, "{\"AccessKeyId\": \"k\", " AWS_TAIL, EBADMSG, "missing \"Code\"" },
                { CLOUD_AWS, 200, "{\"Code\": \"Success\", \"AccessKeyId\": 5, " AWS_TAIL, EBADMSG,
                  "\"AccessKeyId\" is not a string" },
                { CLOUD_AWS, 200, "{\"Code\": \"Success\", \"AccessKeyId\": null, " AWS_TAIL, EBADMSG,
                  "\"AccessKeyId\" is null" },
                { CLOUD_AWS, 200, "{\"Code\": \"Success\", \"AccessKeyId\": \"\", " AWS_TAIL, EBADMSG,
                  "\"AccessKeyId\" is empty" },
                { CLOUD_AWS, 200, "{\"Code\": \"Success\", \"AccessKeyId\": \"a b\", " AWS_TAIL, EBADMSG,
                  "\"AccessKeyId\" holds characters that cannot be sent" },
                { CLOUD_AWS, 200, "{\"Code\": \"Success\", \"AccessKeyId\": \"k\", \"SecretAccessKey\": [], "
                  AWS_LATER, EBADMSG, "\"SecretAccessKey\" is not a string" },
                { CLOUD_AWS, 200, AWS_HEAD "\"Token\": 7, " AWS_LATER, EBADMSG,
                  "\"Token\" is not a string" },
                { CLOUD_AWS, 200, AWS_HEAD "\"Token\": \"t\"}", EBADMSG, "missing \"Expiration\"" },
                { CLOUD_AWS, 200, AWS_HEAD "\"Expiration\": \"tomorrow\"}", EBADMSG,
                  "invalid \"Expiration\" 'tomorrow'" },
                { CLOUD_AWS, 200, AWS_HEAD "\"Expiration\": \"2001-01-01T00:00:00Z\"}", EKEYEXPIRED,
                  "already expired at 2001-01-01T00:00:00Z" },
                { CLOUD_AWS, 200, AWS_HEAD AWS_LATER " x", EBADMSG, "invalid JSON" },
                { CLOUD_GCP, 500, "oops", EIO, "the service account token: HTTP 500" },
                { CLOUD_GCP, 200, "{\"expires_in\": 3599, \"token_type\": \"Bearer\"}", EBADMSG,
                  "missing \"access_token\"" },
                { CLOUD_GCP, 200, "{\"access_token\": \"t\", \"expires_in\": \"3599\"}", EBADMSG,
                  "\"expires_in\" is not an integer" },
                { CLOUD_GCP, 200, "{\"access_token\": \"t\", \"expires_in\": -5}", EBADMSG,
                  "invalid \"expires_in\"" },
                { CLOUD_GCP, 200, "{\"access_token\": \"t\", \"expires_in\": 0}", EKEYEXPIRED, "expired" },
                { CLOUD_GCP, 200, "{\"access_token\": \"t\", \"expires_in\": 99999999999}", EBADMSG,
                  "invalid \"expires_in\"" },
                { CLOUD_GCP, 200, "{\"access_token\": \"t\", \"expires_in\": 60, \"token_type\": \"MAC\"}",
                  EBADMSG, "\"token_type\" is 'MAC', not 'Bearer'" },
                { CLOUD_GCP, 200, "{\"access_token\": {\"a\": 1}, \"expires_in\": 60}", EBADMSG,
                  "\"access_token\" is not a string" },
                { CLOUD_AZURE, 500, "{\"error\": \"server_error\"}", EIO,
                  "the managed identity token: HTTP 500 (server_error)" },
                { CLOUD_AZURE, 200, "{\"access_token\": \"t\"}", EBADMSG, "missing \"expires_on\"" },
                { CLOUD_AZURE, 200, "{\"access_token\": \"t\", \"expires_on\": \"soon\"}", EBADMSG,
                  "invalid \"expires_on\" 'soon'" },
                { CLOUD_AZURE, 200, "{\"access_token\": \"t\", \"expires_on\": true}", EBADMSG,
                  "\"expires_on\" is neither a string nor a number" },
                { CLOUD_AZURE, 200, "{\"access_token\": \"t\", \"expires_on\": \"1000\"}", EKEYEXPIRED,
                  "expired at 1970-01-01T00:16:40Z" },
                { CLOUD_AZURE, 200, "{\"access_token\": \"t\", \"expires_on\": \"99999999999999\"}", EBADMSG,
                  "invalid \"expires_on\"" },
                { CLOUD_AZURE, 200, "{\"access_token\": 1, \"expires_on\": \"4102444800\"}", EBADMSG,
                  "\"access_token\" is not a string" },
                /* Nested deeper than the parser goes. */
                { CLOUD_AZURE, 200, "{\"a\":{\"b\":{\"c\":{\"d\":{\"e\":{\"f\":{\"g\":{\"h\":{}}}}}}}}}",
                  EBADMSG, "invalid JSON: nesting too deep" },
        };
        Got g = {};

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                FakeServer *s = cases[i].cloud == CLOUD_AWS   ? aws
                                : cases[i].cloud == CLOUD_GCP ? gcp
                                                              : azure;
                UploadScheme scheme = cases[i].cloud == CLOUD_AWS   ? UPLOAD_S3
                                      : cases[i].cloud == CLOUD_GCP ? UPLOAD_GS
                                                                    : UPLOAD_AZ;
                const char *dest = scheme == UPLOAD_S3 ? DEST_S3 : scheme == UPLOAD_GS ? DEST_GS : DEST_AZ;
                UploadConfig u = upload(dest, scheme);
                CredProvider *p;

                fprintf(stderr, "  %s %u '%s'\n", cloud_kind_to_string(cases[i].cloud), cases[i].status,
                        cases[i].body);
                ASSERT_OK(fake_server_set_credentials_reply(s, cases[i].status, cases[i].body));
                p = provider(&u, cases[i].cloud, s);
                get_fails(p, &g, cases[i].error, dest, cases[i].what);
                p = cred_provider_free(p);
                ASSERT_OK(fake_server_set_credentials_reply(s, 0, NULL));
        }

        /* A body over the cap is not read to its end. */
        {
                size_t n = 100 * 1024;
                char *big = malloc(n + 1);
                UploadConfig u = upload(DEST_AZ, UPLOAD_AZ);
                CredProvider *p;

                ASSERT_TRUE(big);
                memset(big, ' ', n);
                big[n] = 0;
                ASSERT_OK(fake_server_set_credentials_reply(azure, 200, big));
                free(big);
                p = provider(&u, CLOUD_AZURE, azure);
                get_fails(p, &g, EFBIG, DEST_AZ, "body over the cap");
                p = cred_provider_free(p);
                ASSERT_OK(fake_server_set_credentials_reply(azure, 0, NULL));
        }
        got_reset(&g);
}

static void test_dead_service(void) {
        UploadConfig u = upload(DEST_S3, UPLOAD_S3);
        uv_tcp_t t;
        struct sockaddr_in sa;
        struct sockaddr_storage bound;
        int len = sizeof(bound);
        char url[64];
        CredProvider *p = NULL;
        Got g = {};

        /* A port that was just free: bind and close it. */
        ASSERT_OK(uv_ip4_addr("127.0.0.1", 0, &sa));
        ASSERT_OK(uv_tcp_init(&loop, &t));
        ASSERT_OK(uv_tcp_bind(&t, (const struct sockaddr *) &sa, 0));
        ASSERT_OK(uv_tcp_getsockname(&t, (struct sockaddr *) &bound, &len));
        (void) snprintf(url, sizeof(url), "http://127.0.0.1:%u",
                        ntohs(((struct sockaddr_in *) &bound)->sin_port));
        uv_close((uv_handle_t *) &t, NULL);
        tests_run_for(&loop, &tick, 10);

        ASSERT_OK(cred_provider_new(&loop, http, &u, CLOUD_AWS, url, USEC_PER_SEC, &p));
        get_fails(p, &g, ECONNREFUSED, DEST_S3,
                  "the instance role: IMDSv2 session token: connection refused");
        p = cred_provider_free(p);

        /* The metadata service of another cloud answers the token PUT with 405, GCP with 403. */
        ASSERT_OK(cred_provider_new(&loop, http, &u, CLOUD_AWS, fake_server_url(gcp), USEC_PER_SEC, &p));
        get_fails(p, &g, EIO, DEST_S3, "IMDSv2 session token: HTTP 405");
        p = cred_provider_free(p);
        u = upload(DEST_GS, UPLOAD_GS);
        ASSERT_OK(cred_provider_new(&loop, http, &u, CLOUD_GCP, fake_server_url(aws), USEC_PER_SEC, &p));
        get_fails(p, &g, ENOKEY, DEST_GS, "no service account (HTTP 404)");
        p = cred_provider_free(p);
        got_reset(&g);
}

/* ---- many callers --------------------------------------------------------------- */

static void test_concurrent(void) {
        UploadConfig u = upload(DEST_S3, UPLOAD_S3);
        uint64_t f0, r0;
        CredProvider *p;
        Got g[5] = {}, again = {}, late = {};

        serve_pair("SHAREDKEY", "sharedsecret", "tok", FAKE_CREDENTIALS_LIFETIME_USEC);
        f0 = fake_server_credential_fetches(aws);
        r0 = fake_server_requests(aws);
        p = provider(&u, CLOUD_AWS, aws);
        for (size_t i = 0; i < ELEMENTSOF(g); i++) {
                got_reset(&g[i]);
                ASSERT_OK(cred_provider_get(p, got_cb, &g[i]));
        }
        /* The first callback asks again: that one comes later, from the cache. */
        got_reset(&again);
        g[0].get_again = p;
        g[0].again = &again;
        wait_calls(&g[ELEMENTSOF(g) - 1], 1);
        /* Run a little more while callers join during a fetch. */
        for (size_t i = 0; i < ELEMENTSOF(g); i++) {
                ASSERT_EQ(g[i].calls, 1);
                ASSERT_OK(g[i].error);
                ASSERT_STREQ(g[i].creds.access_key_id, "SHAREDKEY");
                ASSERT_STREQ(g[i].creds.session_token, "tok");
        }
        wait_calls(&again, 1);
        ASSERT_STREQ(again.creds.access_key_id, "SHAREDKEY");
        ASSERT_U64_EQ(fake_server_credential_fetches(aws) - f0, 1);
        ASSERT_U64_EQ(fake_server_requests(aws) - r0, 3);

        /* A get while a fetch runs joins it. */
        cred_provider_invalidate(p);
        got_reset(&g[0]);
        got_reset(&late);
        ASSERT_OK(cred_provider_get(p, got_cb, &g[0]));
        while (fake_server_requests(aws) - r0 < 4)
                (void) uv_run(&loop, UV_RUN_ONCE);
        ASSERT_OK(cred_provider_get(p, got_cb, &late));
        wait_calls(&late, 1);
        ASSERT_EQ(g[0].calls, 1);
        ASSERT_OK(late.error);
        ASSERT_U64_EQ(fake_server_credential_fetches(aws) - f0, 2);
        ASSERT_U64_EQ(fake_server_requests(aws) - r0, 6);
        p = cred_provider_free(p);

        for (size_t i = 0; i < ELEMENTSOF(g); i++)
                got_reset(&g[i]);
        got_reset(&again);
        got_reset(&late);
}

/* Freed with callers queued, during a fetch, or from a callback: the rest are not called. */
static void test_free(void) {
        UploadConfig u = upload(DEST_S3, UPLOAD_S3);
        CredProvider *p;
        uint64_t r0;
        Got a = {}, b = {}, c = {};

        p = provider(&u, CLOUD_AWS, aws);
        ASSERT_OK(cred_provider_get(p, got_cb, &a));
        p = cred_provider_free(p);
        ASSERT_TRUE(cred_provider_free(NULL) == NULL);
        cred_provider_invalidate(NULL);

        /* During the fetch. */
        r0 = fake_server_requests(aws);
        p = provider(&u, CLOUD_AWS, aws);
        ASSERT_OK(cred_provider_get(p, got_cb, &a));
        while (fake_server_requests(aws) == r0)
                (void) uv_run(&loop, UV_RUN_ONCE);
        p = cred_provider_free(p);
        tests_run_for(&loop, &tick, 100);
        ASSERT_EQ(a.calls, 0);

        /* From the first of three callbacks. */
        p = provider(&u, CLOUD_AWS, aws);
        a.free_me = p;
        ASSERT_OK(cred_provider_get(p, got_cb, &a));
        ASSERT_OK(cred_provider_get(p, got_cb, &b));
        ASSERT_OK(cred_provider_get(p, got_cb, &c));
        wait_calls(&a, 1);
        tests_run_for(&loop, &tick, 50);
        ASSERT_EQ(b.calls, 0);
        ASSERT_EQ(c.calls, 0);

        /* With fixed keys too (delivered from the kick timer). */
        u.access_key_id = (char *) "K";
        u.secret_access_key = (char *) "S";
        got_reset(&a);
        p = provider(&u, CLOUD_AWS, aws);
        a.free_me = p;
        ASSERT_OK(cred_provider_get(p, got_cb, &a));
        ASSERT_OK(cred_provider_get(p, got_cb, &b));
        wait_calls(&a, 1);
        tests_run_for(&loop, &tick, 20);
        ASSERT_EQ(b.calls, 0);

        got_reset(&a);
        got_reset(&b);
        got_reset(&c);
}

/* A caller that goes away takes its queued callbacks along, also from inside another's callback. */
static void test_cancel(void) {
        UploadConfig u = upload(DEST_S3, UPLOAD_S3);
        CredProvider *p;
        Got a = {}, b = {}, c = {};

        serve_pair("CANCELKEY", "cancelsecret", NULL, FAKE_CREDENTIALS_LIFETIME_USEC);
        p = provider(&u, CLOUD_AWS, aws);
        cred_provider_cancel(NULL, &a);
        cred_provider_cancel(p, &a);

        /* Queued during a fetch: a and c twice, b once; then a goes. */
        ASSERT_OK(cred_provider_get(p, got_cb, &a));
        ASSERT_OK(cred_provider_get(p, got_cb, &b));
        ASSERT_OK(cred_provider_get(p, got_cb, &a));
        ASSERT_OK(cred_provider_get(p, got_cb, &c));
        ASSERT_OK(cred_provider_get(p, got_cb, &c));
        cred_provider_cancel(p, &a);
        /* The queue still works after the last one was removed. */
        cred_provider_cancel(p, &c);
        ASSERT_OK(cred_provider_get(p, got_cb, &c));
        wait_calls(&c, 1);
        ASSERT_EQ(b.calls, 1);
        tests_run_for(&loop, &tick, 20);
        ASSERT_EQ(a.calls, 0);
        ASSERT_EQ(c.calls, 1);
        ASSERT_STREQ(c.creds.access_key_id, "CANCELKEY");

        /* From the cache, b's callback cancels c, which is in the same batch. */
        got_reset(&b);
        got_reset(&c);
        b.cancel_in = p;
        b.cancel = &c;
        ASSERT_OK(cred_provider_get(p, got_cb, &b));
        ASSERT_OK(cred_provider_get(p, got_cb, &c));
        wait_calls(&b, 1);
        tests_run_for(&loop, &tick, 20);
        ASSERT_EQ(c.calls, 0);
        get_ok(p, &c);
        p = cred_provider_free(p);

        got_reset(&a);
        got_reset(&b);
        got_reset(&c);
}

static void test_copy(void) {
        Credentials a = {
                .kind = CRED_AWS,
                .access_key_id = (char *) "id",
                .secret_access_key = (char *) "secret",
                .source = (char *) "config",
                .expires_usec = 42,
        };
        Credentials b;

        ASSERT_OK(credentials_copy(&b, &a));
        ASSERT_EQ(b.kind, CRED_AWS);
        ASSERT_STREQ(b.access_key_id, "id");
        ASSERT_STREQ(b.secret_access_key, "secret");
        ASSERT_TRUE(b.session_token == NULL);
        ASSERT_TRUE(b.token == NULL);
        ASSERT_STREQ(b.source, "config");
        ASSERT_U64_EQ(b.expires_usec, 42);
        ASSERT_TRUE(b.access_key_id != a.access_key_id);
        credentials_done(&b);
        ASSERT_TRUE(b.access_key_id == NULL);
        credentials_done(&b);
        credentials_done(NULL);
}

/* The fake's own rules for what it is told to serve. */
static void test_fake_rules(void) {
        FakeServer *ali = NULL;
        FakeCredentials fc;

        fc = (FakeCredentials) { .access_key_id = "K", .secret_access_key = "S" };
        ASSERT_ERR(fake_server_set_credentials(gcp, &fc), EINVAL);
        fc = (FakeCredentials) { .token = "T" };
        ASSERT_ERR(fake_server_set_credentials(aws, &fc), EINVAL);
        fc = (FakeCredentials) { .access_key_id = "K" };
        ASSERT_ERR(fake_server_set_credentials(aws, &fc), EINVAL);
        fc = (FakeCredentials) { .access_key_id = "K", .secret_access_key = "S S" };
        ASSERT_ERR(fake_server_set_credentials(aws, &fc), EINVAL);
        fc = (FakeCredentials) { .none = true, .token = "T" };
        ASSERT_ERR(fake_server_set_credentials(azure, &fc), EINVAL);
        fc = (FakeCredentials) { .token = "T", .lifetime_usec = FAKE_CREDENTIALS_LIFETIME_MAX_USEC + 1 };
        ASSERT_ERR(fake_server_set_credentials(azure, &fc), EINVAL);

        ASSERT_OK(fake_server_new(&loop, CLOUD_ALIBABA, "127.0.0.1", 0, &ali));
        fc = (FakeCredentials) { .none = true };
        ASSERT_ERR(fake_server_set_credentials(ali, &fc), EINVAL);
        fake_server_close(ali);
}

int main(void) {
        int r;

        if (getenv("SPOTWATCH_TEST_DEBUG"))
                log_set_max_level(LOG_DEBUG);
        clear_env();
        /* The fakes' defaults come from here; the tests set their own anyway. */
        ASSERT_OK(unsetenv("SPOTWATCHD_FAKE_ACCESS_KEY_ID"));

        ASSERT_OK(uv_loop_init(&loop));
        ASSERT_OK(uv_timer_init(&loop, &tick));
        ASSERT_OK(fake_server_new(&loop, CLOUD_AWS, "127.0.0.1", 0, &aws));
        ASSERT_OK(fake_server_new(&loop, CLOUD_GCP, "127.0.0.1", 0, &gcp));
        ASSERT_OK(fake_server_new(&loop, CLOUD_AZURE, "127.0.0.1", 0, &azure));
        ASSERT_OK(http_new(&loop, &http));

        RUN(test_copy);
        RUN(test_fake_rules);
        RUN(test_config_wins);
        RUN(test_env_wins_over_role);
        RUN(test_half_keys);
        RUN(test_role);
        RUN(test_role_refresh);
        RUN(test_refresh_failure);
        RUN(test_invalidate_role);
        RUN(test_invalidate_fixed);
        RUN(test_no_role);
        RUN(test_cloud_mismatch);
        RUN(test_gcp);
        RUN(test_azure);
        RUN(test_bad_documents);
        RUN(test_dead_service);
        RUN(test_concurrent);
        RUN(test_free);
        RUN(test_cancel);

        http_close(http);
        fake_server_close(aws);
        fake_server_close(gcp);
        fake_server_close(azure);
        uv_close((uv_handle_t *) &tick, NULL);
        ASSERT_OK(uv_run(&loop, UV_RUN_DEFAULT));
        r = uv_loop_close(&loop);
        if (r < 0) {
                uv_print_all_handles(&loop, stderr);
                TEST_FAIL("uv_loop_close(): %s", uv_strerror(r));
        }
        return 0;
}
