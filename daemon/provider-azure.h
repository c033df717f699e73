/* SPDX-License-Identifier: MIT */
/*
 * provider-azure.h - the Azure Scheduled Events watcher's pure parts, exposed
 * for unit tests: the parser of the scheduledevents document, the RFC 1123
 * time parser, the mapping of an event to a NoticeEvent, the VM name check
 * and the StartRequests body. The watcher itself is reached through
 * provider_azure_vtable (provider.h). Nothing here does I/O or logs.
 *
 * The watcher's requests, each through its own reusable HttpRequest and all
 * with "Metadata: true":
 *
 *   GET  /metadata/instance/compute/name?api-version=2021-02-01&format=text   until known
 *   GET  /metadata/instance/compute/vmId?api-version=2021-02-01&format=text   once the name is known,
 *                                                                              AZURE_VM_ID_TRIES tries
 *   GET  /metadata/scheduledevents?api-version=2020-07-01                     every poll_interval
 *   POST /metadata/scheduledevents?api-version=2020-07-01                     {"StartRequests":[...]},
 *                                                                              after a plan (azure_ack)
 *
 * IMDS answers 429 above 5 requests per second. No two requests of this
 * provider start less than AZURE_REQUEST_SPACING_USEC apart, whatever they
 * are, so even with some jitter on the way no one-second window can hold more
 * than 5 of them. A 429 pauses every request for AZURE_THROTTLE_PAUSE_USEC.
 *
 * The first scheduledevents call switches the service on and may take up to
 * two minutes: until one has been answered with 200 the GET gets
 * AZURE_FIRST_CALL_TIMEOUT_USEC, and the name lookup and acknowledgements go
 * on beside it. At most one scheduledevents GET is in flight at any time.
 *
 * Only events whose Resources include this VM's name concern it, so none is
 * acted on before the name is known. A failed poll delays the next one like
 * AWS's (azure_backoff_usec()); the first good one resets it.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "event.h"
#include "shared/macro.h"

#define AZURE_EVENTS_API_VERSION "2020-07-01"
#define AZURE_COMPUTE_API_VERSION "2021-02-01"

#define AZURE_MAX_BODY ((size_t) 64 * 1024)  /* cap on the scheduledevents document */
#define AZURE_MAX_SMALL_BODY ((size_t) 4096) /* cap on name, vmId and the ack answer */
#define AZURE_JSON_MAX_DEPTH 8               /* json_tokener nesting limit; the document needs 4 */
#define AZURE_DOC_ENTRIES_MAX 256            /* Events[] longer than this is refused */
#define AZURE_EVENTS_MAX 16                  /* events of this VM kept per document */
#define AZURE_EVENT_ID_MAX 64                /* a GUID is 36 */
#define AZURE_VM_NAME_MAX 80                 /* Azure allows 64 (Linux) or 15 (Windows) */
#define AZURE_VM_ID_MAX 64
#define AZURE_VM_ID_TRIES 3
#define AZURE_ACKS_MAX 8                     /* acknowledgements waiting to be sent */
#define AZURE_ACK_TRIES 3                    /* 429, 5xx and transport errors are retried */

#define AZURE_REQUEST_SPACING_USEC (250 * USEC_PER_MSEC)   /* at most 4 starts per second */
#define AZURE_THROTTLE_PAUSE_USEC (1 * USEC_PER_SEC)       /* after a 429 */
#define AZURE_FIRST_CALL_TIMEOUT_USEC (120 * USEC_PER_SEC) /* the enabling call */
#define AZURE_MIN_NOTICE_USEC (30 * USEC_PER_SEC)          /* Azure's shortest Preempt notice */
#define AZURE_BACKOFF_CAP_USEC (5 * USEC_PER_SEC)

typedef enum AzureEventType {
        AZURE_EVENT_FREEZE,
        AZURE_EVENT_REBOOT,
        AZURE_EVENT_REDEPLOY,
        AZURE_EVENT_PREEMPT,
        AZURE_EVENT_TERMINATE,
        _AZURE_EVENT_TYPE_MAX,
        _AZURE_EVENT_TYPE_INVALID = -EINVAL,
} AzureEventType;

/** "Freeze", "Reboot", ... as Azure spells them; NULL when out of range. */
const char *azure_event_type_to_string(AzureEventType t);
/** Exact (case-sensitive) match of Azure's word; _AZURE_EVENT_TYPE_INVALID otherwise. */
AzureEventType azure_event_type_from_string(const char *s);

typedef enum AzureEventStatus {
        AZURE_EVENT_STATUS_OTHER,     /* absent, or a word we do not know */
        AZURE_EVENT_STATUS_SCHEDULED,
        AZURE_EVENT_STATUS_STARTED,
        _AZURE_EVENT_STATUS_MAX,
        _AZURE_EVENT_STATUS_INVALID = -EINVAL,
} AzureEventStatus;

/** "other", "Scheduled", "Started", for logs; NULL when out of range. */
const char *azure_event_status_to_string(AzureEventStatus s);

/* One entry of Events[] that concerns this VM. */
typedef struct AzureEvent {
        char event_id[AZURE_EVENT_ID_MAX + 1];
        AzureEventType type;            /* _AZURE_EVENT_TYPE_INVALID for a type we do not know */
        char event_type[24];            /* EventType as served, non-printables as '?', cut to fit */
        AzureEventStatus status;
        uint64_t not_before_usec;       /* wall clock; 0 when NotBefore is "" or absent */
        int64_t duration_sec;           /* DurationInSeconds; -1 when absent or unknown */
        char event_source[16];          /* EventSource ("Platform", "User"), or "" */
} AzureEvent;

typedef struct AzureDocument {
        uint64_t incarnation;           /* DocumentIncarnation */
        size_t n_entries;               /* entries in Events[] */
        size_t n_events;                /* of them, those for this VM, in events[] */
        size_t n_dropped;               /* further ones for this VM beyond AZURE_EVENTS_MAX */
        AzureEvent events[AZURE_EVENTS_MAX];
} AzureDocument;

/**
 * azure_parse_document() - parse a scheduledevents body,
 * {"DocumentIncarnation": N, "Events": [{...}, ...]}, keeping the events
 * whose Resources include @vm_name (ASCII case-insensitively, as Azure
 * resource names are), in document order. @vm_name NULL checks the document
 * and keeps none.
 *
 * Every entry is checked against the documented schema, whichever VM it is
 * for: an object with EventId (1..AZURE_EVENT_ID_MAX visible ASCII
 * characters), EventType (string) and Resources (array of strings); if
 * present (null counts as absent), ResourceType, Description, EventSource and
 * EventStatus are strings, NotBefore is "" or an RFC 1123 time and
 * DurationInSeconds an integer. Unknown members, EventTypes and EventStatus
 * words are accepted. -EBADMSG for anything else (not JSON, NULs, nesting
 * deeper than AZURE_JSON_MAX_DEPTH, trailing data, a missing or mistyped
 * member, a negative or non-integer DocumentIncarnation, more than
 * AZURE_DOC_ENTRIES_MAX entries); -ENOMEM. *@ret is written only on success.
 */
int azure_parse_document(const char *body, size_t size, const char *vm_name, AzureDocument *ret);

/**
 * azure_parse_rfc1123() - "Mon, 19 Sep 2016 18:29:47 GMT" (HTTP's IMF-fixdate;
 * "UTC" is taken for "GMT", a one-digit day is allowed, the weekday must be
 * a weekday name but is not checked against the date) into wall-clock usec.
 * Years 1970..9999. -EINVAL for anything else, including trailing data.
 */
int azure_parse_rfc1123(const char *s, uint64_t *ret_usec);

/**
 * azure_event_to_notice() - the NoticeEvent for @e seen at wall-clock
 * @now_usec: Preempt -> EVENT_PREEMPT, Terminate -> EVENT_TERMINATE, Reboot,
 * Redeploy and Freeze -> EVENT_MAINTENANCE; id "azure:EVENTID", detail the
 * EventType, cloud AZURE, deadline NotBefore, or @now_usec +
 * AZURE_MIN_NOTICE_USEC when NotBefore is empty or not after @now_usec.
 * -EOPNOTSUPP for an EventType we do not know.
 */
int azure_event_to_notice(const AzureEvent *e, uint64_t now_usec, NoticeEvent *ret);

/**
 * azure_event_id_from_notice() - the EventId inside a NoticeEvent id
 * "azure:EVENTID", or NULL when @id is not one of ours.
 */
const char *azure_event_id_from_notice(const char *id);

/**
 * azure_parse_vm_name() - the body of compute/name (format=text): one
 * trailing newline or spaces are dropped; what is left must be
 * 1..AZURE_VM_NAME_MAX visible ASCII characters. Returns a malloc'd copy.
 * -EBADMSG otherwise, -ENOMEM.
 */
int azure_parse_vm_name(const char *body, size_t size, char **ret);

/**
 * azure_build_ack_body() - {"StartRequests":[{"EventId":"@event_id"}]},
 * written by json-c without spaces, malloc'd. -EINVAL when @event_id is not a
 * valid EventId (see azure_parse_document()), -ENOMEM.
 */
int azure_build_ack_body(const char *event_id, char **ret);

/**
 * azure_backoff_usec() - the delay before the next poll after @failures (>= 1)
 * failed polls in a row: min(@poll_interval_usec << failures,
 * max(@poll_interval_usec, AZURE_BACKOFF_CAP_USEC)).
 */
uint64_t azure_backoff_usec(uint64_t poll_interval_usec, unsigned failures);
