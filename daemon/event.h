/* SPDX-License-Identifier: MIT */
/*
 * event.h - the kinds of notice a cloud can give and the clouds we know.
 * Shared vocabulary of config, providers, notice and report; no state.
 */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>

typedef enum EventKind {
        EVENT_TERMINATE,
        EVENT_STOP,
        EVENT_HIBERNATE,
        EVENT_PREEMPT,
        EVENT_REBALANCE,
        EVENT_MAINTENANCE,
        EVENT_MANUAL,
        EVENT_SHUTDOWN, /* the guest is shutting down (GCP shutdown-script bridge) */
        _EVENT_MAX,
        _EVENT_INVALID = -EINVAL,
} EventKind;

#define EVENT_MASK(k) (1U << (k))
/* The SPEC's default for [daemon] events. */
#define EVENT_MASK_DEFAULT                                                                       \
        (EVENT_MASK(EVENT_TERMINATE) | EVENT_MASK(EVENT_STOP) | EVENT_MASK(EVENT_HIBERNATE) | \
         EVENT_MASK(EVENT_PREEMPT))

const char *event_kind_to_string(EventKind k);
EventKind event_kind_from_string(const char *s);

typedef enum CloudKind {
        CLOUD_AUTO,
        CLOUD_AWS,
        CLOUD_GCP,
        CLOUD_AZURE,
        CLOUD_ALIBABA,
        _CLOUD_MAX,
        _CLOUD_INVALID = -EINVAL,
} CloudKind;

const char *cloud_kind_to_string(CloudKind k);
CloudKind cloud_kind_from_string(const char *s);

/*
 * One observation of a notice, as a provider parsed it. @id identifies the
 * notice across polls (the same notice served again has the same id), e.g.
 * "aws:spot:terminate:2026-11-27T13:20:00Z". Times are wall-clock usec.
 */
typedef struct NoticeEvent {
        EventKind kind;
        CloudKind cloud;
        char id[160];
        char detail[160];       /* cloud's own word for it, e.g. the AWS action, for the log */
        uint64_t notice_usec;   /* when we first saw it (filled by the caller of notice_feed) */
        uint64_t deadline_usec; /* when the cloud takes the machine; 0 if the cloud gave none */
        bool report_only;       /* the machine is not going away (GCP live migration): never a plan */
} NoticeEvent;
