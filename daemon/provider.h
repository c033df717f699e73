/* SPDX-License-Identifier: MIT */
/*
 * provider.h - a cloud's metadata watcher behind one vtable. A provider
 * builds requests, runs them through http, parses the answers and hands
 * NoticeEvents to its owner through callbacks. It never signals, spawns,
 * writes state_dir or emits MESSAGE_ID records; it only logs at debug level
 * and reports errors upward through on_poll.
 */
#pragma once

#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "event.h"
#include "http.h"

typedef struct Provider Provider;

typedef struct ProviderCallbacks {
        /* A notice is present in this poll (called on every poll while it is served). */
        void (*on_event)(Provider *p, const NoticeEvent *ev, void *userdata);
        /*
         * One poll cycle ended. @error is 0 on success or the -errno of the
         * first failure; @what names the endpoint or step that failed (NULL on
         * success) and @detail is a short human description ("HTTP 503", "bad JSON").
         */
        void (*on_poll)(Provider *p, int error, const char *what, const char *detail, void *userdata);
        /*
         * A notice seen before is gone before its time came (Azure: the event
         * left the document): it was cancelled. Optional.
         */
        void (*on_cancel)(Provider *p, const NoticeEvent *ev, void *userdata);
        /*
         * The cloud was told the plan for @ev is done (Azure StartRequests):
         * @error 0, or -errno with @detail. Optional.
         */
        void (*on_ack)(Provider *p, const NoticeEvent *ev, int error, const char *detail, void *userdata);
} ProviderCallbacks;

typedef struct ProviderVTable {
        CloudKind cloud;
        size_t object_size;
        /* Fill the provider-specific part after the common part is set up. */
        int (*init)(Provider *p);
        /* Begin watching; the first poll starts at once. */
        int (*start)(Provider *p);
        /* Stop all requests and timers; no callbacks afterwards. */
        void (*stop)(Provider *p);
        /* Release provider-specific memory (handles already stopped). */
        void (*done)(Provider *p);
        /* Optional: the plan for @ev (one of ours) has finished; e.g. acknowledge it. */
        void (*plan_finished)(Provider *p, const NoticeEvent *ev);
} ProviderVTable;

struct Provider {
        const ProviderVTable *vtable;
        uv_loop_t *loop;
        Http *http;
        const Config *config;        /* borrowed; provider_set_config() swaps it on reload */
        char *base_url;              /* metadata_url or the cloud's address, no trailing '/' */
        ProviderCallbacks cb;
        void *userdata;

        char *instance_id;           /* NULL until known */
        char *shutdown_script;       /* GCP: the instance's shutdown-script, fetched at a preemption; or NULL */
        uint64_t polls;              /* completed poll cycles */
        uint64_t last_poll_usec;     /* wall-clock end of the last cycle */
        int last_poll_error;
};

/**
 * provider_new() - a provider for @cloud (not AUTO) polling @base_url (or the
 * cloud's default when NULL). -EOPNOTSUPP for clouds without a provider yet.
 */
int provider_new(CloudKind cloud, uv_loop_t *loop, Http *http, const Config *config, const char *base_url,
                 const ProviderCallbacks *cb, void *userdata, Provider **ret);
int provider_start(Provider *p);
void provider_stop(Provider *p);
/** provider_set_config() - new poll interval etc. apply from the next cycle. */
void provider_set_config(Provider *p, const Config *config);
/** provider_plan_finished() - tell the provider a plan it started has ended (no-op if it does not care). */
void provider_plan_finished(Provider *p, const NoticeEvent *ev);
Provider *provider_free(Provider *p);

/** The cloud's own metadata base URL, e.g. "http://169.254.169.254". */
const char *provider_default_url(CloudKind cloud);

extern const ProviderVTable provider_aws_vtable;
extern const ProviderVTable provider_alibaba_vtable;
extern const ProviderVTable provider_azure_vtable;
extern const ProviderVTable provider_gcp_vtable;
