/* SPDX-License-Identifier: MIT */
/*
 * fuzz-metadata.c - every parser of a metadata service answer, fed the input
 * as a body (exactly @size bytes, no NUL after it) or, for headers and time
 * fields, as a NUL-terminated string: AWS (provider-aws.h), GCP
 * (provider-gcp.h), Azure (provider-azure.h) and Alibaba
 * (provider-alibaba.h). The metadata service is never trusted, so whatever
 * it serves must come back as an error code, never a crash. Checks that each
 * notice a parser makes has a NUL-terminated id.
 */
#include <errno.h>

#include "fuzz.h"
#include "provider-alibaba.h"
#include "provider-aws.h"
#include "provider-azure.h"
#include "provider-gcp.h"

/* 2026-11-27T13:18:01Z, a "now" for azure_event_to_notice(). */
#define FUZZ_NOW_USEC (UINT64_C(1795785481) * USEC_PER_SEC)

static void check_event(const NoticeEvent *ev) {
        FUZZ_CHECK(memchr(ev->id, '\0', sizeof(ev->id)));
        FUZZ_CHECK(memchr(ev->detail, '\0', sizeof(ev->detail)));
}

static void fuzz_aws(const char *body, size_t size, const char *s) {
        NoticeEvent ev, events[AWS_IMDS_EVENTS_MAX];
        uint64_t usec;
        size_t n = SIZE_MAX;
        bool terminated;

        if (aws_parse_instance_action(body, size, &ev) == 0)
                check_event(&ev);
        if (aws_parse_rebalance(body, size, &ev) == 0)
                check_event(&ev);
        if (aws_parse_maintenance(body, size, events, AWS_IMDS_EVENTS_MAX, &n) == 0) {
                FUZZ_CHECK(n <= AWS_IMDS_EVENTS_MAX);
                for (size_t i = 0; i < n; i++)
                        check_event(&events[i]);
        }
        if (aws_parse_maintenance(body, size, events, 1, &n) == 0)
                FUZZ_CHECK(n <= 1);
        (void) aws_parse_lifecycle_state(body, size, &terminated);
        (void) aws_parse_token_ttl(s, &usec);
        (void) aws_parse_event_time(s, &usec);
}

static void fuzz_gcp(const char *body, size_t size, const char *s) {
        char etag[GCP_ETAG_MAX + 1], *str = NULL;
        GcpMaintenance m;
        NoticeEvent ev;
        bool preempted;

        (void) gcp_parse_preempted(body, size, &preempted);
        if (gcp_parse_maintenance(body, size, &m) == 0 && m != GCP_MAINTENANCE_NONE) {
                FUZZ_CHECK(gcp_maintenance_event(m, NULL, FUZZ_NOW_USEC, 1, &ev) == 0);
                check_event(&ev);
        }
        if (gcp_parse_etag(s, etag, sizeof(etag)) == 0) {
                FUZZ_CHECK(strlen(etag) <= GCP_ETAG_MAX);
                gcp_preempt_event(etag, FUZZ_NOW_USEC, 2, &ev);
                check_event(&ev);
        }
        if (gcp_parse_instance_id(body, size, &str) == 0) {
                FUZZ_CHECK(str && strlen(str) <= GCP_INSTANCE_ID_MAX);
                free(str);
        }
        str = NULL;
        if (gcp_parse_shutdown_script(body, size, &str) == 0)
                free(str);
}

static void fuzz_azure(const char *body, size_t size, const char *s) {
        AzureDocument *doc;
        uint64_t usec;
        char *name = NULL;

        /* About 3 KiB: on the heap, so ASan sees any write past it. */
        doc = malloc(sizeof(*doc));
        if (!doc)
                return;
        if (azure_parse_document(body, size, "vm", doc) == 0) {
                FUZZ_CHECK(doc->n_events <= AZURE_EVENTS_MAX);
                FUZZ_CHECK(doc->n_events <= doc->n_entries);
                for (size_t i = 0; i < doc->n_events; i++) {
                        NoticeEvent ev;

                        if (azure_event_to_notice(&doc->events[i], FUZZ_NOW_USEC, &ev) == 0) {
                                check_event(&ev);
                                FUZZ_CHECK(azure_event_id_from_notice(ev.id));
                        }
                }
        }
        (void) azure_parse_document(body, size, NULL, doc);
        free(doc);

        (void) azure_parse_rfc1123(s, &usec);
        if (azure_parse_vm_name(body, size, &name) == 0) {
                FUZZ_CHECK(name);
                free(name);
        }
}

static void fuzz_alibaba(const char *body, size_t size) {
        NoticeEvent ev;

        if (alibaba_parse_termination_time(body, size, &ev) == 0)
                check_event(&ev);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const char *body = (const char *) data;
        char *s = fuzz_strndup(data, size);

        if (!s)
                return 0;
        fuzz_aws(body, size, s);
        fuzz_gcp(body, size, s);
        fuzz_azure(body, size, s);
        fuzz_alibaba(body, size);
        free(s);
        return 0;
}
