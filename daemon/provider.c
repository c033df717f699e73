/* SPDX-License-Identifier: MIT */
/*
 * provider.c - the common part of a cloud metadata watcher: picks the vtable
 * for a cloud, owns the fields every provider shares (base URL, callbacks,
 * instance id, poll counters) and forwards start/stop/free to the cloud's
 * implementation. It does no I/O itself and does not pick the cloud for
 * cloud = auto; that is the caller's job before provider_new().
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "provider.h"
#include "shared/macro.h"

static const ProviderVTable *const provider_vtables[_CLOUD_MAX] = {
        [CLOUD_AWS] = &provider_aws_vtable,
        [CLOUD_ALIBABA] = &provider_alibaba_vtable,
        [CLOUD_AZURE] = &provider_azure_vtable,
        [CLOUD_GCP] = &provider_gcp_vtable,
};

static const char *const provider_default_urls[_CLOUD_MAX] = {
        [CLOUD_AWS] = "http://169.254.169.254",
        [CLOUD_GCP] = "http://169.254.169.254",
        [CLOUD_AZURE] = "http://169.254.169.254",
        [CLOUD_ALIBABA] = "http://100.100.100.200",
};

const char *provider_default_url(CloudKind cloud) {
        if (cloud < 0 || cloud >= _CLOUD_MAX)
                return NULL;
        return provider_default_urls[cloud];
}

int provider_new(CloudKind cloud, uv_loop_t *loop, Http *http, const Config *config, const char *base_url,
                 const ProviderCallbacks *cb, void *userdata, Provider **ret) {
        const ProviderVTable *vt;
        Provider *p;
        size_t n;
        int r;

        assert(loop);
        assert(http);
        assert(config);
        assert(ret);

        if (cloud <= CLOUD_AUTO || cloud >= _CLOUD_MAX)
                return -EINVAL;
        vt = provider_vtables[cloud];
        if (!vt)
                return -EOPNOTSUPP;
        assert(vt->object_size >= sizeof(Provider));

        if (isempty(base_url))
                base_url = provider_default_url(cloud);

        p = calloc(1, vt->object_size);
        if (!p)
                return -ENOMEM;
        p->vtable = vt;
        p->loop = loop;
        p->http = http;
        p->config = config;
        if (cb)
                p->cb = *cb;
        p->userdata = userdata;

        p->base_url = strdup(base_url);
        if (!p->base_url) {
                provider_free(p);
                return -ENOMEM;
        }
        /* Paths are appended with their leading '/'. */
        n = strlen(p->base_url);
        while (n > 0 && p->base_url[n - 1] == '/')
                p->base_url[--n] = 0;
        if (n == 0) {
                provider_free(p);
                return -EINVAL;
        }

        r = vt->init(p);
        if (r < 0) {
                provider_free(p);
                return r;
        }

        *ret = p;
        return 0;
}

int provider_start(Provider *p) {
        assert(p);
        return p->vtable->start(p);
}

void provider_stop(Provider *p) {
        if (!p)
                return;
        p->vtable->stop(p);
}

void provider_set_config(Provider *p, const Config *config) {
        assert(p);
        assert(config);
        p->config = config;
}

void provider_plan_finished(Provider *p, const NoticeEvent *ev) {
        if (p && p->vtable->plan_finished)
                p->vtable->plan_finished(p, ev);
}

Provider *provider_free(Provider *p) {
        if (!p)
                return NULL;
        p->vtable->stop(p);
        p->vtable->done(p);
        free(p->base_url);
        free(p->instance_id);
        free(p->shutdown_script);
        free(p);
        return NULL;
}
