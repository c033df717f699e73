/* SPDX-License-Identifier: MIT */
/*
 * event.c - string tables for EventKind and CloudKind.
 */
#include <string.h>

#include "event.h"
#include "shared/macro.h"

static const char *const event_kind_table[_EVENT_MAX] = {
        [EVENT_TERMINATE] = "terminate",     [EVENT_STOP] = "stop",
        [EVENT_HIBERNATE] = "hibernate",     [EVENT_PREEMPT] = "preempt",
        [EVENT_REBALANCE] = "rebalance",     [EVENT_MAINTENANCE] = "maintenance",
        [EVENT_MANUAL] = "manual",          [EVENT_SHUTDOWN] = "shutdown",
};

const char *event_kind_to_string(EventKind k) {
        if (k < 0 || k >= _EVENT_MAX)
                return NULL;
        return event_kind_table[k];
}

EventKind event_kind_from_string(const char *s) {
        if (!s)
                return _EVENT_INVALID;
        for (EventKind k = 0; k < _EVENT_MAX; k++)
                if (streq(event_kind_table[k], s))
                        return k;
        return _EVENT_INVALID;
}

static const char *const cloud_kind_table[_CLOUD_MAX] = {
        [CLOUD_AUTO] = "auto", [CLOUD_AWS] = "aws", [CLOUD_GCP] = "gcp",
        [CLOUD_AZURE] = "azure", [CLOUD_ALIBABA] = "alibaba",
};

const char *cloud_kind_to_string(CloudKind k) {
        if (k < 0 || k >= _CLOUD_MAX)
                return NULL;
        return cloud_kind_table[k];
}

CloudKind cloud_kind_from_string(const char *s) {
        if (!s)
                return _CLOUD_INVALID;
        for (CloudKind k = 0; k < _CLOUD_MAX; k++)
                if (streq(cloud_kind_table[k], s))
                        return k;
        return _CLOUD_INVALID;
}
