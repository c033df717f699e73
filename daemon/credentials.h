/* SPDX-License-Identifier: MIT */
/*
 * credentials.h - where an [upload]'s store credentials come from, in order:
 *
 *   s3://  the [upload]'s access_key_id/secret_access_key(/session_token),
 *          then the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
 *          AWS_SESSION_TOKEN), then the instance role from the AWS metadata
 *          service (IMDSv2 token, iam/security-credentials/ -> ROLE ->
 *          iam/security-credentials/ROLE), refreshed before its Expiration.
 *   gs://  HMAC keys (access_key_id/secret_access_key, then the environment
 *          as for s3://), then the VM service account's OAuth token from the
 *          GCP metadata server (instance/service-accounts/default/token).
 *   az://  sas_token, then account_key (shared key), then the managed
 *          identity's token from Azure's IMDS (/metadata/identity/oauth2/token,
 *          resource https://storage.azure.com/).
 *
 * The configured and environment keys are read when the CredProvider is
 * made. The metadata service asked is the daemon's (metadata_url, or the
 * fake in --fake-metadata mode), and only when the daemon watches the
 * scheme's own cloud (AWS for s3://, GCP for gs://, Azure for az://); else
 * the error says what to configure. An AWS IMDS whose token PUT answers 404
 * is asked without a token; any other refusal of the PUT is an error.
 *
 * A CredProvider caches what the metadata service gave until 5 minutes
 * before it expires, or, for a lifetime under 10 minutes, until 90 % of it
 * has passed; it never hands out credentials past their expiry (a failed
 * refresh serves the old ones only while they last). It fetches at most once
 * at a time; callers waiting meanwhile are queued and all get its outcome.
 * Everything runs on the loop through the daemon's Http; nothing blocks.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "http.h"
#include "shared/macro.h"

typedef enum CredKind {
        CRED_AWS,        /* access key id + secret (+ session token): SigV4 */
        CRED_BEARER,     /* an OAuth2 bearer token (GCP service account, Azure managed identity) */
        CRED_AZURE_KEY,  /* an Azure storage account shared key (base64, as configured) */
        CRED_AZURE_SAS,  /* an Azure SAS query string, without the leading '?' */
        _CRED_KIND_MAX,
        _CRED_KIND_INVALID = -EINVAL,
} CredKind;

typedef struct Credentials {
        CredKind kind;
        char *access_key_id;         /* CRED_AWS */
        char *secret_access_key;     /* CRED_AWS */
        char *session_token;         /* CRED_AWS; NULL if none */
        char *token;                 /* CRED_BEARER, CRED_AZURE_KEY (the key), CRED_AZURE_SAS */
        /* Where they came from, for messages: "config", "environment",
         * "instance role 'NAME'", "service account", "managed identity". */
        char *source;
        uint64_t expires_usec;       /* CLOCK_REALTIME usec; 0 = does not expire */
} Credentials;

typedef struct CredProvider CredProvider;

/*
 * Called once per cred_provider_get(), from the loop (never from inside the
 * call). @error 0: @creds is valid until the callback returns (copy what you
 * keep). Else @detail is one line that starts "no credentials for
 * DESTINATION: " and says what failed, e.g. "none in [upload \"x\"] or the
 * environment, and the metadata service has no instance role (HTTP 404)" or
 * "..., and instance role 'r': HTTP 500"; @error is -ENOKEY (nothing
 * anywhere, or the metadata service has none), -EINVAL (half a key pair
 * configured), -EACCES (rejected by the store, see invalidate; or HTTP
 * 401/403), -EBADMSG (a bad answer), -EKEYEXPIRED (served already
 * expired), -EIO (another HTTP status), or a transport error from http.
 */
typedef void (*CredDoneFn)(CredProvider *p, int error, const Credentials *creds, const char *detail,
                           void *userdata);

/**
 * cred_provider_new() - credentials for @upload (copied what is needed; the
 * scheme decides which chain applies; -EINVAL for file://). @metadata_url: the metadata service's
 * base URL without a trailing '/' ("http://169.254.169.254" on AWS,
 * "http://metadata.google.internal" on GCP, "http://169.254.169.254" on Azure,
 * or the fake's); @cloud the daemon's cloud, which decides the metadata
 * service's dialect (the chain tries the instance-role step only when the
 * cloud is the right one: AWS for s3://, GCP for gs://, Azure for az://).
 * @request_timeout_usec bounds each metadata request.
 */
int cred_provider_new(uv_loop_t *loop, Http *http, const UploadConfig *upload, CloudKind cloud,
                      const char *metadata_url, uint64_t request_timeout_usec, CredProvider **ret);
/** cred_provider_get() - cached credentials if fresh, else fetch; -ENOMEM. */
int cred_provider_get(CredProvider *p, CredDoneFn done, void *userdata);
/**
 * cred_provider_cancel() - forget every queued callback whose userdata is
 * @userdata (its owner is going away); they are never called. NULL-safe.
 */
void cred_provider_cancel(CredProvider *p, void *userdata);
/**
 * cred_provider_invalidate() - the store rejected what we had (HTTP 403 with
 * an expired or invalid token): drop the cache, so the next get fetches. A
 * configured or environment key is not refetched: the next get fails at once
 * with "rejected by the store" instead of starting a retry storm. Instance
 * credentials are fetched again once; when the store rejects those too, gets
 * fail at once for a minute before the next fetch. Calls while nothing is
 * cached (several parts reporting the same rejection) change nothing.
 */
void cred_provider_invalidate(CredProvider *p);
/** cred_provider_free() - pending callbacks are not called. NULL-safe. */
CredProvider *cred_provider_free(CredProvider *p);
DEFINE_TRIVIAL_CLEANUP_FUNC(CredProvider *, cred_provider_free);

/*
 * The metadata services' answers, parsed as the provider does (exposed for
 * the fuzzer and the tests): an AWS role document, a GCP service-account
 * token, an Azure managed-identity token. -errno and a one-line @err on
 * anything wrong; on success *@ret is filled (free with credentials_done()).
 */
typedef enum CredAnswer {
        CRED_ANSWER_AWS_ROLE,
        CRED_ANSWER_GCP_TOKEN,
        CRED_ANSWER_AZURE_TOKEN,
        _CRED_ANSWER_MAX,
} CredAnswer;
int credentials_parse_answer(CredAnswer what, const char *body, size_t size, Credentials *ret, char *err,
                             size_t errsz);
/** credentials_parse_role_list() - the first line of iam/security-credentials/: the role's name (malloc'd). */
int credentials_parse_role_list(const char *body, size_t size, char **ret);

/** credentials_copy() / credentials_done() - deep copy and release. */
int credentials_copy(Credentials *to, const Credentials *from);
void credentials_done(Credentials *c);
