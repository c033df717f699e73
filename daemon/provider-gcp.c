/* SPDX-License-Identifier: MIT */
/*
 * provider-gcp.c - the GCP metadata server watcher: instance/id once, then a
 * chain of hanging GETs (wait_for_change with the last ETag) on each of
 * instance/preempted and instance/maintenance-event, each watch through its
 * own reusable HttpRequest and its own retry timer (see provider-gcp.h for
 * the protocol, the tight-loop guard and the backoff). With
 * gcp_shutdown_script = yes, a new preemption first fetches
 * instance/attributes/shutdown-script into Provider.shutdown_script (at most
 * GCP_SCRIPT_TIMEOUT_USEC) and only then reports the notice, so the plan can
 * run it.
 *
 * It owns the ETags, the notice ids, the backoff state and the timers. It
 * must not signal, spawn, write files or log above debug: notices go to
 * cb.on_event (on every answer that serves them), and every answer or
 * failure ends in one cb.on_poll: the error of a failed request, or success
 * when no watch is failing. Callbacks may call provider_stop() but must not
 * free the provider.
 *
 * Each timer is a ProviderTimer (provider-util.h), a small block that frees
 * itself in its close callback, so provider_free() can release the provider
 * at once while libuv still holds the handle until the next loop iteration.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "provider-gcp.h"
#include "provider-util.h"
#include "provider.h"
#include "shared/log.h"
#include "shared/macro.h"

#define GCP_QUOTE_SIZE (PROVIDER_QUOTE_MAX + 8)

typedef enum GcpWatchKind {
        GCP_WATCH_PREEMPTED,
        GCP_WATCH_MAINTENANCE,
        _GCP_WATCH_MAX,
        _GCP_WATCH_INVALID = -EINVAL,
} GcpWatchKind;

static const char *const gcp_watch_paths[_GCP_WATCH_MAX] = {
        [GCP_WATCH_PREEMPTED] = "instance/preempted",
        [GCP_WATCH_MAINTENANCE] = "instance/maintenance-event",
};

/* Every request carries it; the server refuses any without. */
static const char *const gcp_headers[] = { GCP_FLAVOR_HEADER, NULL };

#define GCP_PATH_INSTANCE_ID "instance/id"
#define GCP_PATH_SHUTDOWN_SCRIPT "instance/attributes/shutdown-script"

static const char *const gcp_maintenance_table[_GCP_MAINTENANCE_MAX] = {
        [GCP_MAINTENANCE_NONE] = "NONE",
        [GCP_MAINTENANCE_MIGRATE] = "MIGRATE_ON_HOST_MAINTENANCE",
        [GCP_MAINTENANCE_TERMINATE] = "TERMINATE_ON_HOST_MAINTENANCE",
};

typedef struct GcpProvider GcpProvider;
typedef struct GcpWatch GcpWatch;

struct GcpWatch {
        GcpProvider *g;
        GcpWatchKind kind;
        HttpRequest *req;
        ProviderTimer *timer;        /* a delayed re-arm; its owner is the watch */

        char etag[GCP_ETAG_MAX + 1]; /* of the last good answer; "" if none or it had none */
        bool answered;               /* a good answer came: from now on hanging GETs */
        bool hanging;                /* the request in flight is a hanging GET */
        uint64_t started_usec;       /* monotonic start of the request in flight */
        unsigned failures;           /* failed requests in a row */
        unsigned fast;               /* unchanged answers in a row that did not hang */
        bool failing;                /* the last request failed */
        bool held;                   /* a new preemption waits for the shutdown script */

        /* The value last served: preempted 0/1, or a GcpMaintenance; -1 before the first. */
        int value;
        unsigned generation;         /* notices this watch has seen */
        bool active;                 /* @event is being served */
        NoticeEvent event;
};

struct GcpProvider {
        Provider p;

        GcpWatch watch[_GCP_WATCH_MAX];
        HttpRequest *id_req;
        HttpRequest *script_req;
        char *id_url;
        char *script_url;
        unsigned id_tries;
        bool running;
        bool watching;               /* the watches have been started */
};

static GcpProvider *gcp_from_provider(Provider *p) {
        return container_of(p, GcpProvider, p);
}

/* ---- pure parts ------------------------------------------------------ */

const char *gcp_maintenance_to_string(GcpMaintenance m) {
        if (m < 0 || m >= _GCP_MAINTENANCE_MAX)
                return NULL;
        return gcp_maintenance_table[m];
}

/* @body without trailing whitespace is exactly @word. */
static bool body_is(const char *body, size_t size, const char *word) {
        size_t n = strlen(word);

        if (!body || size < n || memcmp(body, word, n) != 0)
                return false;
        return provider_trim_end(body + n, size - n) == 0;
}

int gcp_parse_preempted(const char *body, size_t size, bool *ret) {
        assert(ret);

        if (body_is(body, size, "TRUE"))
                *ret = true;
        else if (body_is(body, size, "FALSE"))
                *ret = false;
        else
                return -EBADMSG;
        return 0;
}

int gcp_parse_maintenance(const char *body, size_t size, GcpMaintenance *ret) {
        assert(ret);

        for (GcpMaintenance m = 0; m < _GCP_MAINTENANCE_MAX; m++)
                if (body_is(body, size, gcp_maintenance_table[m])) {
                        *ret = m;
                        return 0;
                }
        return -EBADMSG;
}

int gcp_parse_etag(const char *value, char *ret, size_t size) {
        size_t n;

        assert(ret);
        assert(size >= GCP_ETAG_MAX + 1);

        if (!value)
                return -EINVAL;
        while (provider_is_space(*value))
                value++;
        n = provider_trim_end(value, strlen(value));
        if (n >= 2 && value[0] == '"' && value[n - 1] == '"') {
                value++;
                n -= 2;
        }
        if (n == 0 || !provider_visible_ascii(value, n) || memchr(value, '"', n))
                return -EINVAL;
        if (n > GCP_ETAG_MAX)
                return -ERANGE;

        memcpy(ret, value, n);
        ret[n] = 0;
        return 0;
}

int gcp_parse_instance_id(const char *body, size_t size, char **ret) {
        return provider_parse_word(body, size, GCP_INSTANCE_ID_MAX, ret);
}

int gcp_parse_shutdown_script(const char *body, size_t size, char **ret) {
        char *s;

        assert(ret);

        if (size > GCP_SCRIPT_MAX_BODY)
                return -EBADMSG;
        if (size == 0 || !body) {
                *ret = NULL;
                return 0;
        }
        if (memchr(body, 0, size))
                return -EBADMSG;
        s = strndup(body, size);
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

static bool url_unreserved(char c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
               c == '_' || c == '.' || c == '~';
}

int gcp_watch_url(const char *base, const char *path, const char *etag, unsigned wait_sec, char **ret) {
        char enc[GCP_ETAG_MAX * 3 + 1];
        size_t j = 0;
        char *u;
        int n;

        assert(ret);

        if (isempty(base) || isempty(path))
                return -EINVAL;
        if (wait_sec == 0)
                n = asprintf(&u, "%s" GCP_METADATA_PREFIX "%s", base, path);
        else {
                if (!isempty(etag)) {
                        if (strlen(etag) > GCP_ETAG_MAX)
                                return -EINVAL;
                        for (const char *c = etag; *c; c++) {
                                if (url_unreserved(*c))
                                        enc[j++] = *c;
                                else
                                        j += (size_t) snprintf(enc + j, sizeof(enc) - j, "%%%02X",
                                                               (unsigned) (unsigned char) *c);
                        }
                }
                enc[j] = 0;
                n = asprintf(&u, "%s" GCP_METADATA_PREFIX "%s?wait_for_change=true%s%s&timeout_sec=%u", base,
                             path, j > 0 ? "&last_etag=" : "", enc, wait_sec);
        }
        if (n < 0)
                return -ENOMEM;
        *ret = u;
        return 0;
}

/* ":ETAG", or ":tSECONDS" without one, then ":N" from the second notice on. */
static void format_id_tail(char *buf, size_t size, const char *etag, uint64_t detect_usec, unsigned generation) {
        int n;

        if (!isempty(etag))
                n = snprintf(buf, size, "%s", etag);
        else
                n = snprintf(buf, size, "t%" PRIu64, detect_usec / USEC_PER_SEC);
        if (generation >= 2 && n >= 0 && (size_t) n < size)
                (void) snprintf(buf + n, size - (size_t) n, ":%u", generation);
}

void gcp_preempt_event(const char *etag, uint64_t detect_usec, unsigned generation, NoticeEvent *ret) {
        char tail[GCP_ETAG_MAX + 32];

        assert(ret);

        format_id_tail(tail, sizeof(tail), etag, detect_usec, generation);
        *ret = (NoticeEvent) {
                .kind = EVENT_PREEMPT,
                .cloud = CLOUD_GCP,
                .deadline_usec = detect_usec + GCP_PREEMPT_LEAD_USEC,
        };
        (void) snprintf(ret->id, sizeof(ret->id), "gcp:preempted:%s", tail);
        (void) snprintf(ret->detail, sizeof(ret->detail), "preempted");
}

int gcp_maintenance_event(GcpMaintenance m, const char *etag, uint64_t detect_usec, unsigned generation,
                          NoticeEvent *ret) {
        char tail[GCP_ETAG_MAX + 32];

        assert(ret);

        if (m != GCP_MAINTENANCE_MIGRATE && m != GCP_MAINTENANCE_TERMINATE)
                return -EINVAL;
        format_id_tail(tail, sizeof(tail), etag, detect_usec, generation);
        *ret = (NoticeEvent) {
                .kind = EVENT_MAINTENANCE,
                .cloud = CLOUD_GCP,
                .deadline_usec = 0,
                /* A live migration keeps the VM running: worth a record, never a plan. */
                .report_only = m == GCP_MAINTENANCE_MIGRATE,
        };
        (void) snprintf(ret->id, sizeof(ret->id), "gcp:maintenance-event:%s:%s", gcp_maintenance_table[m], tail);
        (void) snprintf(ret->detail, sizeof(ret->detail), "%s", gcp_maintenance_table[m]);
        return 0;
}

uint64_t gcp_backoff_usec(uint64_t poll_interval_usec, unsigned failures) {
        /* The first retry comes after one interval, not two as AWS's. */
        uint64_t d = provider_backoff_usec(poll_interval_usec, failures > 0 ? failures - 1 : 0,
                                           GCP_BACKOFF_CAP_USEC);

        return MAX(d, GCP_RETRY_MIN_USEC);
}

unsigned gcp_wait_sec(uint64_t wait_usec) {
        uint64_t s = wait_usec / USEC_PER_SEC + (wait_usec % USEC_PER_SEC != 0);

        return (unsigned) MIN(MAX(s, UINT64_C(1)), (uint64_t) GCP_WAIT_SEC_MAX);
}

/* ---- the watches -------------------------------------------------------- */

static void gcp_watch_request(GcpWatch *w);

static uint64_t gcp_poll_interval(GcpProvider *g) {
        return provider_poll_interval_usec(g->p.config);
}

/* What a failed status means here: a path GCP does not serve is worth saying so. */
static int http_status_to_errno(long status) {
        if (status == 404)
                return -ENOENT;
        return provider_http_status_to_errno(status);
}

static bool gcp_any_failing(GcpProvider *g) {
        for (GcpWatchKind k = 0; k < _GCP_WATCH_MAX; k++)
                if (g->watch[k].failing)
                        return true;
        return false;
}

/* One answer or failure is one "poll" for the owner. Returns false if the owner stopped us. */
static bool gcp_report_poll(GcpProvider *g, int error, const char *what, const char *detail) {
        Provider *p = &g->p;

        provider_count_poll(p, error);
        if (p->cb.on_poll && (error < 0 || !gcp_any_failing(g)))
                p->cb.on_poll(p, error, error < 0 ? what : NULL, error < 0 ? detail : NULL, p->userdata);
        return g->running;
}

static void gcp_timer_cb(uv_timer_t *t) {
        GcpWatch *w = provider_timer_owner(t);

        if (!w || !w->g->running || w->held || http_request_is_running(w->req) > 0)
                return;
        gcp_watch_request(w);
}

static void gcp_watch_arm(GcpWatch *w, uint64_t delay_usec) {
        int r;

        if (!w->g->running || w->held)
                return;
        if (delay_usec == 0) {
                gcp_watch_request(w);
                return;
        }
        r = uv_timer_start(&w->timer->handle, gcp_timer_cb, provider_timeout_ms(delay_usec), 0);
        if (r < 0)
                log_debug_errno(r, "gcp: %s: cannot arm the retry timer: %m", gcp_watch_paths[w->kind]);
}

/* A request of @w failed: report it and retry after the backoff. */
_printf_(3, 4) static void gcp_watch_fail(GcpWatch *w, int error, const char *fmt, ...) {
        GcpProvider *g = w->g;
        char detail[160];
        uint64_t delay;
        va_list ap;

        assert(error < 0);
        va_start(ap, fmt);
        (void) vsnprintf(detail, sizeof(detail), fmt, ap);
        va_end(ap);

        if (w->failures < 64)
                w->failures++;
        w->failing = true;
        w->fast = 0;
        delay = gcp_backoff_usec(gcp_poll_interval(g), w->failures);
        log_debug("gcp: %s: %s, retrying in %" PRIu64 " ms", gcp_watch_paths[w->kind], detail,
                  delay / USEC_PER_MSEC);

        if (!gcp_report_poll(g, error, gcp_watch_paths[w->kind], detail))
                return;
        gcp_watch_arm(w, delay);
}

static void gcp_watch_done(HttpRequest *r, int error, long status, const char *body, size_t size, void *userdata);

static void gcp_watch_request(GcpWatch *w) {
        GcpProvider *g = w->g;
        const Config *c = g->p.config;
        _cleanup_free_ char *url = NULL;
        HttpRequestParams params;
        unsigned wait_sec = 0;
        int r;

        if (!g->running || w->held)
                return;
        (void) uv_timer_stop(&w->timer->handle);

        w->hanging = w->answered;
        if (w->hanging)
                wait_sec = gcp_wait_sec(c->gcp_wait_usec);
        r = gcp_watch_url(g->p.base_url, gcp_watch_paths[w->kind], w->etag, wait_sec, &url);
        if (r < 0) {
                gcp_watch_fail(w, r, "cannot build the URL: %s", strerror(-r));
                return;
        }

        params = (HttpRequestParams) {
                .method = "GET",
                .url = url,
                .headers = gcp_headers,
                /* The server may hold a hanging GET for timeout_sec; the request must outlive that. */
                .timeout_usec = c->request_timeout_usec + (uint64_t) wait_sec * USEC_PER_SEC,
                .max_body = GCP_MAX_BODY,
        };
        w->started_usec = provider_now_usec(CLOCK_MONOTONIC);
        log_debug("gcp: GET %s", url);
        r = http_request_start(w->req, &params, gcp_watch_done, w);
        if (r < 0)
                gcp_watch_fail(w, r, "cannot start request: %s", strerror(-r));
}

static void gcp_emit(GcpProvider *g, const NoticeEvent *ev) {
        Provider *p = &g->p;

        log_debug("gcp: notice %s", ev->id);
        if (p->cb.on_event)
                p->cb.on_event(p, ev, p->userdata);
}

static void gcp_script_done(HttpRequest *r, int error, long status, const char *body, size_t size,
                            void *userdata);

/* Fetch the shutdown script before the preempt notice goes out. Returns true if the notice must wait. */
static bool gcp_fetch_script(GcpProvider *g) {
        HttpRequestParams params = {
                .method = "GET",
                .url = g->script_url,
                .headers = gcp_headers,
                .timeout_usec = MIN(g->p.config->request_timeout_usec, GCP_SCRIPT_TIMEOUT_USEC),
                .max_body = GCP_SCRIPT_MAX_BODY,
        };
        int r;

        if (!g->p.config->gcp_shutdown_script)
                return false;
        log_debug("gcp: GET %s", g->script_url);
        r = http_request_start(g->script_req, &params, gcp_script_done, g);
        if (r < 0) {
                log_debug_errno(r, "gcp: cannot fetch the shutdown script: %m");
                return false;
        }
        return true;
}

/* A good instance/preempted answer. Returns false if the notice waits for the shutdown script. */
static bool gcp_on_preempted(GcpWatch *w, bool preempted) {
        GcpProvider *g = w->g;

        if (!preempted) {
                if (w->active)
                        log_debug("gcp: preemption %s is gone", w->event.id);
                w->active = false;
                w->value = 0;
                return true;
        }

        w->value = 1;
        if (!w->active) {
                w->generation++;
                gcp_preempt_event(w->etag, provider_now_usec(CLOCK_REALTIME), w->generation, &w->event);
                w->active = true;
                if (gcp_fetch_script(g)) {
                        w->held = true;
                        return false;
                }
        }
        gcp_emit(g, &w->event);
        return true;
}

static void gcp_on_maintenance(GcpWatch *w, GcpMaintenance m) {
        GcpProvider *g = w->g;

        if (m == GCP_MAINTENANCE_NONE) {
                if (w->active)
                        log_debug("gcp: maintenance %s is over", w->event.id);
                w->active = false;
                w->value = m;
                return;
        }
        if (!w->active || w->value != (int) m) {
                w->generation++;
                (void) gcp_maintenance_event(m, w->etag, provider_now_usec(CLOCK_REALTIME), w->generation,
                                             &w->event);
                w->active = true;
        }
        w->value = m;
        gcp_emit(g, &w->event);
}

static void gcp_fetch_id(GcpProvider *g);

static void gcp_start_watches(GcpProvider *g) {
        if (g->watching)
                return;
        g->watching = true;
        for (GcpWatchKind k = 0; k < _GCP_WATCH_MAX && g->running; k++)
                gcp_watch_arm(&g->watch[k], 0);
}

static void gcp_watch_done(HttpRequest *r, int error, long status, const char *body, size_t size, void *userdata) {
        GcpWatch *w = userdata;
        GcpProvider *g = w->g;
        const char *path = gcp_watch_paths[w->kind];
        char etag[GCP_ETAG_MAX + 1] = "", q[GCP_QUOTE_SIZE];
        uint64_t elapsed = provider_now_usec(CLOCK_MONOTONIC) - w->started_usec;
        GcpMaintenance m = GCP_MAINTENANCE_NONE;
        bool preempted = false, unchanged, go_on = true;
        int value, k;

        /* We cancel only in stop(); whatever was running then is of no interest. */
        if (error == -ECANCELED || !g->running)
                return;

        if (error < 0) {
                gcp_watch_fail(w, error, "%s", provider_transport_error_to_string(error));
                return;
        }
        if (status != 200) {
                gcp_watch_fail(w, http_status_to_errno(status), "HTTP %ld", status);
                return;
        }

        if (w->kind == GCP_WATCH_PREEMPTED) {
                k = gcp_parse_preempted(body, size, &preempted);
                value = preempted;
        } else {
                k = gcp_parse_maintenance(body, size, &m);
                value = m;
        }
        if (k < 0) {
                provider_quote_untrusted(q, sizeof(q), body, size);
                /* Keep the last good ETag: the next request sees the bad value again until it changes. */
                gcp_watch_fail(w, -EBADMSG, "unexpected value '%s'", q);
                return;
        }

        k = gcp_parse_etag(http_request_header(r, "ETag"), etag, sizeof(etag));
        if (k < 0) {
                log_debug("gcp: %s: answer without a valid ETag, waiting without last_etag", path);
                etag[0] = 0;
        }

        /* A hanging GET that came back at once with nothing new: the server did not hang. */
        unchanged = w->hanging && value == w->value && streq(etag, w->etag);
        if (unchanged && elapsed < GCP_FAST_ANSWER_USEC) {
                if (w->fast < 64)
                        w->fast++;
        } else
                w->fast = 0;

        log_debug("gcp: %s = %s (ETag '%s', %" PRIu64 " ms%s)", path,
                  w->kind == GCP_WATCH_PREEMPTED ? (preempted ? "TRUE" : "FALSE") : gcp_maintenance_to_string(m),
                  etag, elapsed / USEC_PER_MSEC, unchanged ? ", unchanged" : "");

        memcpy(w->etag, etag, sizeof(etag));
        w->answered = true;
        w->failures = 0;
        w->failing = false;

        if (w->kind == GCP_WATCH_PREEMPTED)
                go_on = gcp_on_preempted(w, preempted);
        else
                gcp_on_maintenance(w, m);
        if (!g->running)
                return;

        if (!gcp_report_poll(g, 0, NULL, NULL))
                return;
        if (w->kind == GCP_WATCH_PREEMPTED)
                gcp_fetch_id(g);
        if (!go_on)
                return;

        if (w->fast > GCP_FAST_ANSWERS_MAX) {
                log_debug("gcp: %s: %u unchanged answers came back at once, the server does not hang; "
                          "waiting between requests", path, w->fast);
                gcp_watch_arm(w, MAX(gcp_poll_interval(g), GCP_FAST_ANSWER_USEC));
        } else
                gcp_watch_arm(w, 0);
}

static void gcp_script_done(HttpRequest *r, int error, long status, const char *body, size_t size,
                            void *userdata) {
        GcpProvider *g = userdata;
        GcpWatch *w = &g->watch[GCP_WATCH_PREEMPTED];
        _cleanup_free_ char *script = NULL;
        const char *what = GCP_PATH_SHUTDOWN_SCRIPT;
        char detail[160] = "";
        int k = 0;

        if (error == -ECANCELED || !g->running)
                return;

        if (error < 0) {
                k = error;
                (void) snprintf(detail, sizeof(detail), "%s", provider_transport_error_to_string(error));
        } else if (status == 404)
                log_debug("gcp: the instance has no shutdown script");
        else if (status != 200) {
                k = http_status_to_errno(status);
                (void) snprintf(detail, sizeof(detail), "HTTP %ld", status);
        } else {
                k = gcp_parse_shutdown_script(body, size, &script);
                if (k < 0)
                        (void) snprintf(detail, sizeof(detail), "%s",
                                        k == -EBADMSG ? "NUL byte in the script" : strerror(-k));
                else
                        log_debug("gcp: shutdown script of %zu bytes", size);
        }

        free(g->p.shutdown_script);
        g->p.shutdown_script = TAKE_PTR(script);

        /* The notice goes out in any case; the failure is reported after it. */
        w->held = false;
        if (w->active && w->value == 1) {
                gcp_emit(g, &w->event);
                if (!g->running)
                        return;
        }
        if (k < 0) {
                log_debug("gcp: cannot fetch the shutdown script: %s", detail);
                if (!gcp_report_poll(g, k, what, detail))
                        return;
        }
        gcp_watch_arm(w, 0);
}

static void gcp_id_done(HttpRequest *r, int error, long status, const char *body, size_t size, void *userdata) {
        GcpProvider *g = userdata;
        char *id = NULL;

        if (error == -ECANCELED || !g->running)
                return;

        g->id_tries++;
        /* Nice to have for hooks, never a reason to fail. */
        if (error == 0 && status == 200 && gcp_parse_instance_id(body, size, &id) >= 0) {
                free(g->p.instance_id);
                g->p.instance_id = id;
                log_debug("gcp: instance id '%s'", id);
        } else
                log_debug("gcp: cannot get the instance id (error %d, HTTP %ld), try %u of %u", error, status,
                          g->id_tries, GCP_INSTANCE_ID_TRIES);

        gcp_start_watches(g);
}

static void gcp_fetch_id(GcpProvider *g) {
        HttpRequestParams params = {
                .method = "GET",
                .url = g->id_url,
                .headers = gcp_headers,
                .timeout_usec = g->p.config->request_timeout_usec,
                .max_body = GCP_MAX_BODY,
        };
        int r;

        if (g->p.instance_id || g->id_tries >= GCP_INSTANCE_ID_TRIES || http_request_is_running(g->id_req) > 0)
                return;
        log_debug("gcp: GET %s", g->id_url);
        r = http_request_start(g->id_req, &params, gcp_id_done, g);
        if (r >= 0)
                return;
        log_debug_errno(r, "gcp: cannot fetch the instance id: %m");
        g->id_tries++;
        gcp_start_watches(g);
}

/* ---- vtable ----------------------------------------------------------- */


static int gcp_init(Provider *p) {
        GcpProvider *g = gcp_from_provider(p);
        int r;

        r = gcp_watch_url(p->base_url, GCP_PATH_INSTANCE_ID, NULL, 0, &g->id_url);
        if (r < 0)
                return r;
        r = gcp_watch_url(p->base_url, GCP_PATH_SHUTDOWN_SCRIPT, NULL, 0, &g->script_url);
        if (r < 0)
                return r;
        r = http_request_new(p->http, GCP_PATH_INSTANCE_ID, &g->id_req);
        if (r < 0)
                return r;
        r = http_request_new(p->http, GCP_PATH_SHUTDOWN_SCRIPT, &g->script_req);
        if (r < 0)
                return r;

        for (GcpWatchKind k = 0; k < _GCP_WATCH_MAX; k++) {
                GcpWatch *w = &g->watch[k];

                w->g = g;
                w->kind = k;
                w->value = -1;
                r = http_request_new(p->http, gcp_watch_paths[k], &w->req);
                if (r < 0)
                        return r;
                r = provider_timer_new(p->loop, w, &w->timer);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int gcp_start(Provider *p) {
        GcpProvider *g = gcp_from_provider(p);
        int r;

        if (g->running)
                return 0;
        r = provider_request_renew(p->http, GCP_PATH_INSTANCE_ID, &g->id_req);
        if (r < 0)
                return r;
        r = provider_request_renew(p->http, GCP_PATH_SHUTDOWN_SCRIPT, &g->script_req);
        if (r < 0)
                return r;
        for (GcpWatchKind k = 0; k < _GCP_WATCH_MAX; k++) {
                GcpWatch *w = &g->watch[k];

                r = provider_request_renew(p->http, gcp_watch_paths[k], &w->req);
                if (r < 0)
                        return r;
                w->failures = 0;
                w->fast = 0;
                w->failing = false;
                w->held = false;
        }

        g->running = true;
        g->watching = false;
        /* The instance id first, so a notice seen at start-up already carries it. */
        gcp_fetch_id(g);
        if (http_request_is_running(g->id_req) <= 0)
                gcp_start_watches(g);
        return 0;
}

static void gcp_stop(Provider *p) {
        GcpProvider *g = gcp_from_provider(p);

        g->running = false;
        if (g->id_req)
                http_request_cancel(g->id_req);
        if (g->script_req)
                http_request_cancel(g->script_req);
        for (GcpWatchKind k = 0; k < _GCP_WATCH_MAX; k++) {
                GcpWatch *w = &g->watch[k];

                w->held = false;
                if (w->timer)
                        (void) uv_timer_stop(&w->timer->handle);
                if (w->req)
                        http_request_cancel(w->req);
        }
}

static void gcp_done(Provider *p) {
        GcpProvider *g = gcp_from_provider(p);

        g->id_req = http_request_free(g->id_req);
        g->script_req = http_request_free(g->script_req);
        free(g->id_url);
        g->id_url = NULL;
        free(g->script_url);
        g->script_url = NULL;
        for (GcpWatchKind k = 0; k < _GCP_WATCH_MAX; k++) {
                GcpWatch *w = &g->watch[k];

                w->req = http_request_free(w->req);
                w->timer = provider_timer_close(w->timer);
        }
}

const ProviderVTable provider_gcp_vtable = {
        .cloud = CLOUD_GCP,
        .object_size = sizeof(GcpProvider),
        .init = gcp_init,
        .start = gcp_start,
        .stop = gcp_stop,
        .done = gcp_done,
};
