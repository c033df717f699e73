/* SPDX-License-Identifier: MIT */
/*
 * fuzz-store.c - what the upload path reads from the network: object store
 * answers (the XML lookup store-s3.c and store-azure.c use for UploadId,
 * error Code/Message/AuthenticationErrorDetail) and the metadata services'
 * credential answers (AWS role list and document, GCP and Azure tokens).
 * A store or a metadata service is never trusted: anything must come back as
 * an error code or well-formed values, never a crash.
 */
#include <errno.h>

#include "credentials.h"
#include "fuzz.h"
#include "store-internal.h"

static void fuzz_xml(const char *body, size_t size) {
        static const char *const names[] = { "Code", "Message", "UploadId", "AuthenticationErrorDetail" };
        char *v[4];

        if (store_xml_find(body, size, names, v, 4) == 0)
                for (size_t i = 0; i < 4; i++) {
                        FUZZ_CHECK(!v[i] || strlen(v[i]) <= 4096);
                        free(v[i]);
                }
        else
                for (size_t i = 0; i < 4; i++)
                        FUZZ_CHECK(v[i] == NULL);
}

static void fuzz_credentials(const char *body, size_t size, const char *s) {
        char err[256], *role = NULL;

        for (CredAnswer a = 0; a < _CRED_ANSWER_MAX; a++) {
                Credentials c = {};

                err[0] = '\0';
                if (credentials_parse_answer(a, body, size, &c, err, sizeof(err)) == 0) {
                        FUZZ_CHECK(c.kind == CRED_AWS ? c.access_key_id && c.secret_access_key : c.token != NULL);
                        credentials_done(&c);
                } else
                        FUZZ_CHECK(memchr(err, '\0', sizeof(err)));
        }
        if (credentials_parse_role_list(body, size, &role) == 0) {
                FUZZ_CHECK(role && !strchr(role, '\n'));
                free(role);
        }
        {
                char q[64];

                store_strip_quotes(s, q, sizeof(q));
                FUZZ_CHECK(strlen(q) < sizeof(q));
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        char *body, *s;

        /* Exactly @size bytes, in their own allocation, as an HTTP body arrives. */
        body = malloc(size + 1);
        s = fuzz_strndup(data, size);
        if (!body || !s) {
                free(body);
                free(s);
                return 0;
        }
        memcpy(body, data, size);
        body[size] = '\0';
        fuzz_xml(body, size);
        fuzz_credentials(body, size, s);
        free(body);
        free(s);
        return 0;
}
