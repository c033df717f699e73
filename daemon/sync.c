/* SPDX-License-Identifier: MIT */
/*
 * sync.c - see sync.h. Owns one uv_fs_event_t and one uv_timer_t per
 * watched [upload]; the memory goes when the last handle is closed.
 */
#include <assert.h>
#include <errno.h>
#include <glob.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "shared/log.h"
#include "shared/macro.h"
#include "sync.h"

typedef struct SyncEntry {
        SyncWatch *w;
        char *name;
        char *dir;            /* the directory watched */
        uv_fs_event_t event;
        uv_timer_t timer;
        bool watching;        /* @event is started */
        bool running;         /* the manager runs a sync of it */
        bool dirty;           /* changed since the last run started */
} SyncEntry;

struct SyncWatch {
        uv_loop_t *loop;
        SyncDueFn due;
        void *userdata;
        SyncEntry *entries;
        size_t n;
        unsigned n_handles;
        bool closing;
};

static void timer_cb(uv_timer_t *t);
static void event_cb(uv_fs_event_t *ev, const char *filename, int events, int status);

static void entry_schedule(SyncEntry *e, uint64_t usec) {
        (void) uv_timer_start(&e->timer, timer_cb, usec / USEC_PER_MSEC, 0);
}

static void watch_try(SyncEntry *e) {
        int r;

        if (e->watching)
                return;
        r = uv_fs_event_start(&e->event, event_cb, e->dir, 0);
        if (r < 0) {
                log_debug("sync: cannot watch '%s' for [upload \"%s\"] (%s), rescanning every %us", e->dir, e->name,
                          uv_strerror(r), (unsigned) (SYNC_RESCAN_USEC / USEC_PER_SEC));
                return;
        }
        e->watching = true;
}

static void timer_cb(uv_timer_t *t) {
        SyncEntry *e = t->data;

        watch_try(e);
        if (e->running)
                return; /* sync_watch_done() schedules what comes next */
        /* Due after a change, or the periodic rescan (a listing and manifest lookups, no transfer). */
        e->dirty = false;
        e->running = true;
        entry_schedule(e, SYNC_RESCAN_USEC);
        e->w->due(e->w, e->name, e->w->userdata);
}

static void event_cb(uv_fs_event_t *ev, const char *filename, int events, int status) {
        SyncEntry *e = ev->data;

        if (status < 0) {
                /* The directory went away: stop, and try again at the next rescan. */
                (void) uv_fs_event_stop(&e->event);
                e->watching = false;
                return;
        }
        /* Temporary files of our own file:// copies live elsewhere; any change here counts. */
        e->dirty = true;
        if (!e->running)
                entry_schedule(e, SYNC_QUIET_USEC);
}

void sync_watch_done(SyncWatch *w, const char *upload, bool again) {
        if (!w || w->closing)
                return;
        for (size_t i = 0; i < w->n; i++) {
                SyncEntry *e = &w->entries[i];

                if (!streq(e->name, upload))
                        continue;
                e->running = false;
                if (again)
                        e->dirty = true;
                entry_schedule(e, e->dirty ? SYNC_QUIET_USEC : SYNC_RESCAN_USEC);
        }
}

/* The directory whose changes matter: the source if it is one, else the glob's or file's directory. */
static char *source_dir(const char *source) {
        _cleanup_free_ char *copy = strdup(source);
        struct stat st;

        if (!copy)
                return NULL;
        if (stat(source, &st) >= 0 && S_ISDIR(st.st_mode))
                return strdup(source);
        return strdup(dirname(copy));
}

static void handle_closed(uv_handle_t *h) {
        SyncEntry *e = h->data;
        SyncWatch *w = e->w;

        if (--w->n_handles > 0)
                return;
        for (size_t i = 0; i < w->n; i++) {
                free(w->entries[i].name);
                free(w->entries[i].dir);
        }
        free(w->entries);
        free(w);
}

SyncWatch *sync_watch_free(SyncWatch *w) {
        if (!w || w->closing)
                return NULL;
        w->closing = true;
        if (w->n_handles == 0) {
                free(w->entries);
                free(w);
                return NULL;
        }
        for (size_t i = 0; i < w->n; i++) {
                uv_close((uv_handle_t *) &w->entries[i].event, handle_closed);
                uv_close((uv_handle_t *) &w->entries[i].timer, handle_closed);
        }
        return NULL;
}

int sync_watch_new(uv_loop_t *loop, const UploadConfig *uploads, size_t n_uploads, SyncDueFn due, void *userdata,
                   SyncWatch **ret) {
        SyncWatch *w;
        size_t n = 0;

        assert(loop && due && ret);
        for (size_t i = 0; i < n_uploads; i++)
                if (uploads[i].sync == UPLOAD_SYNC_CONTINUOUS)
                        n++;
        *ret = NULL;
        if (n == 0)
                return 0;

        w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->entries = calloc(n, sizeof(SyncEntry));
        if (!w->entries) {
                free(w);
                return -ENOMEM;
        }
        w->loop = loop;
        w->due = due;
        w->userdata = userdata;
        for (size_t i = 0; i < n_uploads; i++) {
                SyncEntry *e;

                if (uploads[i].sync != UPLOAD_SYNC_CONTINUOUS)
                        continue;
                e = &w->entries[w->n];
                e->w = w;
                e->name = strdup(uploads[i].name);
                e->dir = source_dir(uploads[i].source);
                if (!e->name || !e->dir) {
                        free(e->name);
                        free(e->dir);
                        sync_watch_free(w);
                        return -ENOMEM;
                }
                w->n++;
                (void) uv_fs_event_init(loop, &e->event);
                (void) uv_timer_init(loop, &e->timer);
                e->event.data = e->timer.data = e;
                w->n_handles += 2;
                e->dirty = true;
                watch_try(e);
                /* The first run soon after start: what appeared while the daemon was down. */
                entry_schedule(e, SYNC_QUIET_USEC);
        }
        *ret = w;
        return 0;
}
