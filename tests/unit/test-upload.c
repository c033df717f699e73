/* SPDX-License-Identifier: MIT */
/*
 * test-upload.c - the upload stage (file:// destinations) against real files
 * in a private mkdtemp() directory and a real uv loop: selection (newest=,
 * directories, globs, symlinks), byte-identical copies, chunking that keeps
 * the loop responsive, the manifest (skip, re-send when changed), a source
 * that changes while it is read, the deadline, unwritable destinations and
 * closing in the middle. No mocks. Every test runs its loop to completion
 * and checks uv_loop_close() == 0, so a leaked handle fails it.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "action.h"
#include "config.h"
#include "shared/macro.h"
#include "tests.h"

#define MIB (1024U * 1024U)
#define OBJECTS_KEPT 64U

static char tmpdir[] = "/tmp/test-upload-XXXXXX";

/* ---- helpers ------------------------------------------------------------ */

_printf_(1, 2) static char *path_of(const char *fmt, ...) {
        _cleanup_free_ char *rel = NULL;
        va_list ap;
        char *p;

        va_start(ap, fmt);
        ASSERT_TRUE(vasprintf(&rel, fmt, ap) >= 0);
        va_end(ap);
        ASSERT_TRUE(asprintf(&p, "%s/%s", tmpdir, rel) >= 0);
        return p;
}

static void make_dir(const char *path) {
        ASSERT_EQ(mkdir(path, 0755), 0);
}

/* @size bytes of a pattern that depends on @seed, so different seeds give different content. */
static void write_data(const char *path, size_t size, unsigned seed) {
        _cleanup_free_ uint8_t *buf = malloc(MIB);
        size_t done = 0;
        uint32_t x = seed * 2654435761U + 1;
        int fd;

        ASSERT_TRUE(buf);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        ASSERT_TRUE(fd >= 0);
        while (done < size) {
                size_t n = MIN((size_t) MIB, size - done);

                for (size_t i = 0; i < n; i++) {
                        x = x * 1103515245U + 12345U;
                        buf[i] = (uint8_t) (x >> 16);
                }
                ASSERT_EQ(write(fd, buf, n), (ssize_t) n);
                done += n;
        }
        ASSERT_EQ(close(fd), 0);
}

static void append_data(const char *path, size_t size) {
        char buf[4096];
        int fd;

        memset(buf, 'x', sizeof(buf));
        fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
        ASSERT_TRUE(fd >= 0);
        ASSERT_EQ(write(fd, buf, MIN(size, sizeof(buf))), (ssize_t) MIN(size, sizeof(buf)));
        ASSERT_EQ(close(fd), 0);
}

static void set_mtime(const char *path, time_t sec, long nsec) {
        struct timespec ts[2] = { { .tv_sec = sec, .tv_nsec = nsec }, { .tv_sec = sec, .tv_nsec = nsec } };

        ASSERT_EQ(utimensat(AT_FDCWD, path, ts, 0), 0);
}

static bool exists(const char *path) {
        struct stat st;

        return lstat(path, &st) == 0;
}

static bool files_equal(const char *a, const char *b) {
        FILE *fa = fopen(a, "re"), *fb = fopen(b, "re");
        bool equal = fa && fb;

        while (equal) {
                int ca = getc(fa), cb = getc(fb);

                if (ca != cb)
                        equal = false;
                if (ca == EOF)
                        break;
        }
        if (fa)
                fclose(fa);
        if (fb)
                fclose(fb);
        return equal;
}

/* Entries of @dir (all but . and ..); -1 if it does not exist. */
static int count_entries(const char *dir, const char *containing) {
        struct dirent *de;
        DIR *d = opendir(dir);
        int n = 0;

        if (!d)
                return -1;
        while ((de = readdir(d)))
                if (!streq(de->d_name, ".") && !streq(de->d_name, "..") &&
                    (!containing || strstr(de->d_name, containing)))
                        n++;
        closedir(d);
        return n;
}

static int count_temp_files(const char *dir) {
        return MAX(count_entries(dir, ".spotwatch-tmp-"), 0);
}

static char *tmp_file_of(const char *dest, const char *name) {
        char *p;

        ASSERT_TRUE(asprintf(&p, "%s/.%s.spotwatch-tmp-%d", dest, name, (int) getpid()) >= 0);
        return p;
}

static char *file_url(const char *dir, const char *name) {
        char *p;

        ASSERT_TRUE(asprintf(&p, "file://%s/%s", dir, name) >= 0);
        return p;
}

static UploadConfig upload_config(const char *name, const char *source, const char *dest, unsigned newest) {
        UploadConfig u = {
                .name = (char *) name,
                .source = (char *) source,
                .scheme = UPLOAD_FILE,
                .dest_path = (char *) dest,
                .newest = newest,
        };

        return u;
}

/* ---- running a stage ------------------------------------------------------ */

typedef struct Object {
        char *upload, *source, *object, *detail;
        uint64_t bytes;
        bool skipped;
        int error;
} Object;

typedef struct Run Run;
struct Run {
        uv_loop_t loop;
        UploadStage *stage;
        Object objects[OBJECTS_KEPT];
        size_t n_objects;       /* all reported; the first OBJECTS_KEPT are kept */
        unsigned n_deadline;    /* objects failed with "deadline reached" */
        unsigned n_done;
        unsigned n_ok, n_skipped, n_failed;
        uint64_t bytes;
        unsigned n_manifest_errors;

        /* An optional 1 ms repeating timer, running from the start to on_done. */
        uv_timer_t timer;
        bool timer_on;
        void (*tick)(Run *r);
        unsigned ticks, ticks_at_first_object;
        const char *watch;      /* a file the tick function looks at */
        const char *source;     /* ... and one it modifies */
        bool fired;
};

static void on_object(UploadStage *s, const char *upload, const char *source, const char *object,
                      uint64_t bytes, uint64_t duration_usec, bool skipped, int error, const char *detail,
                      void *userdata) {
        Run *r = userdata;

        ASSERT_TRUE(s == r->stage);
        ASSERT_TRUE(upload && source && object);
        ASSERT_EQ(r->n_done, 0);
        if (error < 0) {
                ASSERT_TRUE(detail);
                ASSERT_FALSE(skipped);
        }
        if (error == -ETIME) {
                ASSERT_STREQ(detail, "deadline reached");
                r->n_deadline++;
        }
        if (r->n_objects == 0)
                r->ticks_at_first_object = r->ticks;
        if (r->n_objects < OBJECTS_KEPT) {
                Object *o = &r->objects[r->n_objects];

                *o = (Object) { .bytes = bytes, .skipped = skipped, .error = error };
                o->upload = strdup(upload);
                o->source = strdup(source);
                o->object = strdup(object);
                o->detail = detail ? strdup(detail) : NULL;
                ASSERT_TRUE(o->upload && o->source && o->object);
        }
        r->n_objects++;
}

static void timer_close(Run *r) {
        if (!r->timer_on)
                return;
        r->timer_on = false;
        uv_close((uv_handle_t *) &r->timer, NULL);
}

static void on_done(UploadStage *s, unsigned n_ok, unsigned n_skipped, unsigned n_failed, uint64_t bytes,
                    void *userdata) {
        Run *r = userdata;

        ASSERT_TRUE(s == r->stage);
        r->n_done++;
        r->n_ok = n_ok;
        r->n_skipped = n_skipped;
        r->n_failed = n_failed;
        r->bytes = bytes;
        ASSERT_EQ(n_ok + n_skipped + n_failed, r->n_objects);
        timer_close(r);
        upload_stage_close(s);
        r->stage = NULL;
}

static void on_manifest(UploadStage *s, int error, const char *detail, void *userdata) {
        Run *r = userdata;

        fprintf(stderr, "manifest: %s\n", detail);
        r->n_manifest_errors++;
}

static const UploadStageCallbacks callbacks = {
        .on_object = on_object,
        .on_done = on_done,
        .on_manifest = on_manifest,
};

static void timer_cb(uv_timer_t *t) {
        Run *r = container_of(t, Run, timer);

        r->ticks++;
        if (r->tick)
                r->tick(r);
}

static void run_free(Run *r) {
        for (size_t i = 0; i < MIN(r->n_objects, (size_t) OBJECTS_KEPT); i++) {
                free(r->objects[i].upload);
                free(r->objects[i].source);
                free(r->objects[i].object);
                free(r->objects[i].detail);
        }
}

/* Run one stage to its end; @r may preset tick/watch/source. */
static void run_stage(Run *r, const UploadConfig *uploads, size_t n, const char *only, const char *state_dir,
                      uint64_t until_usec) {
        ASSERT_EQ(uv_loop_init(&r->loop), 0);
        ASSERT_OK(upload_stage_new(&r->loop, uploads, n, only, state_dir, NULL, until_usec, &callbacks, r,
                                   &r->stage));
        if (r->tick) {
                ASSERT_EQ(uv_timer_init(&r->loop, &r->timer), 0);
                r->timer_on = true;
                ASSERT_EQ(uv_timer_start(&r->timer, timer_cb, 1, 1), 0);
        }
        ASSERT_OK(upload_stage_start(r->stage));
        /* Never from inside start. */
        ASSERT_EQ(r->n_objects, 0);
        ASSERT_EQ(r->n_done, 0);
        ASSERT_EQ(upload_stage_start(r->stage), -EBUSY);

        (void) uv_run(&r->loop, UV_RUN_DEFAULT);
        ASSERT_EQ(uv_loop_close(&r->loop), 0);
}

static char *read_text(const char *path) {
        _cleanup_free_ char *buf = malloc(65536);
        FILE *f = fopen(path, "re");
        size_t n;

        if (!f)
                return NULL;
        ASSERT_TRUE(buf);
        n = fread(buf, 1, 65535, f);
        buf[n] = '\0';
        fclose(f);
        return TAKE_PTR(buf);
}

/* ---- tests -------------------------------------------------------------- */

/* A directory with three files and newest = 2: the two newest, in that order, byte-identical. */
static void test_directory_newest(void) {
        _cleanup_free_ char *src = path_of("dir-src"), *dest = path_of("dir-dest/sub"),
                            *state = path_of("dir-state"), *a = path_of("dir-src/a.pt"),
                            *b = path_of("dir-src/b.pt"), *c = path_of("dir-src/c.pt"),
                            *hidden = path_of("dir-src/.hidden"), *subdir = path_of("dir-src/subdir"),
                            *db = NULL, *dc = NULL, *url_b = NULL, *url_c = NULL, *manifest = NULL,
                            *text = NULL;
        UploadConfig u;
        Run r = {};

        make_dir(src);
        make_dir(subdir);
        write_data(a, 1000, 1);
        write_data(b, 2000, 2);
        write_data(c, 3000, 3);
        write_data(hidden, 10, 4);
        set_mtime(a, 1000000000, 0);
        set_mtime(b, 1000000002, 5);
        set_mtime(c, 1000000001, 0);
        set_mtime(hidden, 1000000009, 0);

        u = upload_config("ckpt", src, dest, 2);
        run_stage(&r, &u, 1, NULL, state, USEC_INFINITY);

        db = path_of("dir-dest/sub/b.pt");
        dc = path_of("dir-dest/sub/c.pt");
        url_b = file_url(dest, "b.pt");
        url_c = file_url(dest, "c.pt");
        ASSERT_EQ(r.n_done, 1);
        ASSERT_EQ(r.n_objects, 2);
        /* Newest first. */
        ASSERT_STREQ(r.objects[0].object, url_b);
        ASSERT_STREQ(r.objects[0].source, b);
        ASSERT_STREQ(r.objects[0].upload, "ckpt");
        ASSERT_EQ(r.objects[0].error, 0);
        ASSERT_FALSE(r.objects[0].skipped);
        ASSERT_U64_EQ(r.objects[0].bytes, 2000);
        ASSERT_STREQ(r.objects[1].object, url_c);
        ASSERT_U64_EQ(r.objects[1].bytes, 3000);
        ASSERT_EQ(r.n_ok, 2);
        ASSERT_EQ(r.n_skipped, 0);
        ASSERT_EQ(r.n_failed, 0);
        ASSERT_U64_EQ(r.bytes, 5000);
        ASSERT_EQ(r.n_manifest_errors, 0);

        ASSERT_TRUE(files_equal(b, db));
        ASSERT_TRUE(files_equal(c, dc));
        ASSERT_EQ(count_entries(dest, NULL), 2); /* not a.pt, not .hidden, no temporary file */

        /* The manifest: a header and one line per object, with size, mtime and SHA-256. */
        manifest = path_of("dir-state/" UPLOAD_MANIFEST_FILE);
        text = read_text(manifest);
        ASSERT_TRUE(text);
        ASSERT_CONTAINS(text, url_b);
        ASSERT_CONTAINS(text, " 2000 1000000002000000005 ");
        ASSERT_CONTAINS(text, " 3000 1000000001000000000 ");
        run_free(&r);
}

static void tick_count(Run *r) {
}

/* A 20 MiB file goes in several loop turns: a 1 ms timer runs between the chunks. */
static void test_large_file_chunks(void) {
        _cleanup_free_ char *src = path_of("big-src"), *dest = path_of("big-dest"),
                            *f = path_of("big-src/model.pt"), *df = path_of("big-dest/model.pt"),
                            *url = NULL;
        UploadConfig u;
        Run r = { .tick = tick_count };

        make_dir(src);
        write_data(f, 20 * MIB + 12345, 7);

        /* A single file as the source; the destination directory is created. */
        u = upload_config("big", f, dest, 0);
        run_stage(&r, &u, 1, NULL, NULL, USEC_INFINITY);

        url = file_url(dest, "model.pt");
        ASSERT_EQ(r.n_objects, 1);
        ASSERT_STREQ(r.objects[0].object, url);
        ASSERT_EQ(r.objects[0].error, 0);
        ASSERT_U64_EQ(r.objects[0].bytes, 20 * MIB + 12345);
        ASSERT_EQ(r.n_ok, 1);
        ASSERT_U64_EQ(r.bytes, 20 * MIB + 12345);
        ASSERT_TRUE(files_equal(f, df));
        ASSERT_EQ(count_temp_files(dest), 0);
        /* 5 turns of copying and 5 of verifying, at least: the timer got its turns in between. */
        if (r.ticks_at_first_object < 3)
                TEST_FAIL("the 1 ms timer ran only %u times during a 20 MiB copy", r.ticks_at_first_object);
        run_free(&r);
}

/* A second run skips what the manifest says is there unchanged, and leaves the object alone. */
static void test_manifest_skip(void) {
        _cleanup_free_ char *src = path_of("skip-src"), *dest = path_of("skip-dest"),
                            *state = path_of("skip-state"), *f = path_of("skip-src/a.pt"),
                            *g = path_of("skip-src/b.pt"), *df = path_of("skip-dest/a.pt"),
                            *dg = path_of("skip-dest/b.pt"),
                            *manifest = path_of("skip-state/" UPLOAD_MANIFEST_FILE), *url = NULL,
                            *text = NULL, *garbage = NULL;
        struct stat before, after, mbefore, mafter;
        UploadConfig u;

        make_dir(src);
        write_data(f, 5 * MIB + 3, 11);
        write_data(g, 100, 12);
        set_mtime(f, 1700000000, 1);
        set_mtime(g, 1600000000, 1);
        u = upload_config("ckpt", src, dest, 0);
        url = file_url(dest, "a.pt");

        {
                Run r = {};

                run_stage(&r, &u, 1, NULL, state, USEC_INFINITY);
                ASSERT_EQ(r.n_ok, 2);
                run_free(&r);
        }
        ASSERT_EQ(stat(df, &before), 0);
        ASSERT_EQ(stat(manifest, &mbefore), 0);

        {
                Run r = {};

                run_stage(&r, &u, 1, NULL, state, USEC_INFINITY);
                ASSERT_EQ(r.n_objects, 2);
                ASSERT_STREQ(r.objects[0].object, url);
                ASSERT_TRUE(r.objects[0].skipped);
                ASSERT_EQ(r.objects[0].error, 0);
                ASSERT_U64_EQ(r.objects[0].bytes, 5 * MIB + 3);
                ASSERT_TRUE(r.objects[1].skipped);
                ASSERT_EQ(r.n_ok, 0);
                ASSERT_EQ(r.n_skipped, 2);
                ASSERT_U64_EQ(r.bytes, 0);
                run_free(&r);
        }
        /* Not rewritten: same inode, same mtime; nor the manifest (nothing new to record). */
        ASSERT_EQ(stat(df, &after), 0);
        ASSERT_U64_EQ(after.st_ino, before.st_ino);
        ASSERT_EQ(after.st_mtim.tv_sec, before.st_mtim.tv_sec);
        ASSERT_EQ(after.st_mtim.tv_nsec, before.st_mtim.tv_nsec);
        ASSERT_EQ(stat(manifest, &mafter), 0);
        ASSERT_U64_EQ(mafter.st_ino, mbefore.st_ino);

        /* The object went missing at the destination: sent again, although the manifest has it. */
        ASSERT_EQ(unlink(dg), 0);
        /* Garbage in the manifest is ignored, and dropped at the next write. */
        text = read_text(manifest);
        ASSERT_TRUE(asprintf(&garbage, "%sgarbage line\nfile:///x 12 34 nothex\n\x01\n%s", text,
                             "file:///torn 1 2 ab") >= 0);
        {
                FILE *m = fopen(manifest, "we");

                ASSERT_TRUE(m);
                ASSERT_TRUE(fputs(garbage, m) >= 0);
                ASSERT_EQ(fclose(m), 0);
        }
        {
                Run r = {};

                run_stage(&r, &u, 1, NULL, state, USEC_INFINITY);
                ASSERT_EQ(r.n_skipped, 1);
                ASSERT_EQ(r.n_ok, 1);
                ASSERT_TRUE(r.objects[0].skipped);
                ASSERT_FALSE(r.objects[1].skipped);
                ASSERT_EQ(r.n_manifest_errors, 0);
                run_free(&r);
        }
        ASSERT_TRUE(files_equal(g, dg));
        free(text);
        text = read_text(manifest);
        ASSERT_TRUE(text);
        ASSERT_TRUE(strstr(text, "garbage") == NULL);
        ASSERT_TRUE(strstr(text, "torn") == NULL);
        ASSERT_CONTAINS(text, url);
}

/* A source with new content is sent again, even when size and mtime were put back as they were. */
static void test_changed_source(void) {
        _cleanup_free_ char *src = path_of("chg-src"), *dest = path_of("chg-dest"),
                            *state = path_of("chg-state"), *f = path_of("chg-src/a.pt"),
                            *df = path_of("chg-dest/a.pt");
        UploadConfig u;

        make_dir(src);
        write_data(f, 300000, 21);
        set_mtime(f, 1700000000, 0);
        u = upload_config("ckpt", src, dest, 0);
        {
                Run r = {};

                run_stage(&r, &u, 1, NULL, state, USEC_INFINITY);
                ASSERT_EQ(r.n_ok, 1);
                run_free(&r);
        }

        /* Same size, same mtime, different bytes: the SHA-256 check catches it. */
        write_data(f, 300000, 22);
        set_mtime(f, 1700000000, 0);
        ASSERT_FALSE(files_equal(f, df));
        {
                Run r = {};

                run_stage(&r, &u, 1, NULL, state, USEC_INFINITY);
                ASSERT_EQ(r.n_objects, 1);
                ASSERT_FALSE(r.objects[0].skipped);
                ASSERT_EQ(r.objects[0].error, 0);
                ASSERT_EQ(r.n_ok, 1);
                run_free(&r);
        }
        ASSERT_TRUE(files_equal(f, df));

        /* New content and mtime, as a trainer writes it. */
        write_data(f, 400000, 23);
        set_mtime(f, 1700000100, 0);
        {
                Run r = {};

                run_stage(&r, &u, 1, NULL, state, USEC_INFINITY);
                ASSERT_EQ(r.n_ok, 1);
                ASSERT_U64_EQ(r.bytes, 400000);
                run_free(&r);
        }
        ASSERT_TRUE(files_equal(f, df));
}

/* Names that need escaping in a URL: the object says so, the manifest line stays parseable. */
static void test_escaped_name(void) {
        _cleanup_free_ char *src = path_of("esc-src"), *dest = path_of("esc-dest"), *state = path_of("esc-state"),
                            *f = path_of("esc-src/my ckpt%%1\tä.pt"), *url = NULL;
        UploadConfig u;

        make_dir(src);
        write_data(f, 1234, 71);
        ASSERT_TRUE(asprintf(&url, "file://%s/my%%20ckpt%%251%%09%%C3%%A4.pt", dest) >= 0);
        u = upload_config("esc", src, dest, 0);
        for (unsigned i = 0; i < 2; i++) {
                Run r = {};

                run_stage(&r, &u, 1, NULL, state, USEC_INFINITY);
                ASSERT_EQ(r.n_objects, 1);
                ASSERT_STREQ(r.objects[0].object, url);
                ASSERT_EQ(r.objects[0].error, 0);
                /* Sent, then skipped: the manifest line was read back. */
                ASSERT_EQ(r.objects[0].skipped, i == 1);
                run_free(&r);
        }
}

/* Two stages at once, one state_dir: neither drops the other's manifest entries. */
static void test_manifest_merge(void) {
        _cleanup_free_ char *src1 = path_of("merge-src1"), *src2 = path_of("merge-src2"),
                            *dest = path_of("merge-dest"), *state = path_of("merge-state"),
                            *a = path_of("merge-src1/a"), *b = path_of("merge-src2/b"),
                            *manifest = path_of("merge-state/" UPLOAD_MANIFEST_FILE), *text = NULL, *ua = NULL,
                            *ub = NULL;
        UploadConfig u1, u2;
        Run r1 = {}, r2 = {};

        make_dir(src1);
        make_dir(src2);
        write_data(a, 3 * MIB, 81);
        write_data(b, 5 * MIB, 82);
        u1 = upload_config("one", src1, dest, 0);
        u2 = upload_config("two", src2, dest, 0);

        ASSERT_EQ(uv_loop_init(&r1.loop), 0);
        ASSERT_OK(upload_stage_new(&r1.loop, &u1, 1, NULL, state, NULL, USEC_INFINITY, &callbacks, &r1, &r1.stage));
        ASSERT_OK(upload_stage_new(&r1.loop, &u2, 1, NULL, state, NULL, USEC_INFINITY, &callbacks, &r2, &r2.stage));
        ASSERT_OK(upload_stage_start(r1.stage));
        ASSERT_OK(upload_stage_start(r2.stage));
        (void) uv_run(&r1.loop, UV_RUN_DEFAULT);
        ASSERT_EQ(uv_loop_close(&r1.loop), 0);

        ASSERT_EQ(r1.n_ok, 1);
        ASSERT_EQ(r2.n_ok, 1);
        ua = file_url(dest, "a");
        ub = file_url(dest, "b");
        text = read_text(manifest);
        ASSERT_TRUE(text);
        ASSERT_CONTAINS(text, ua);
        ASSERT_CONTAINS(text, ub);
        run_free(&r1);
        run_free(&r2);
}

/* Append to the source once, as soon as the first chunk is in the temporary file. */
static void tick_append_once(Run *r) {
        struct stat st;

        if (r->fired || stat(r->watch, &st) < 0 || st.st_size == 0)
                return;
        r->fired = true;
        append_data(r->source, 1000);
}

/* Append to the source at every tick: it never settles. */
static void tick_append_always(Run *r) {
        append_data(r->source, 4096);
}

static void test_source_changes_once(void) {
        _cleanup_free_ char *src = path_of("once-src"), *dest = path_of("once-dest"),
                            *f = path_of("once-src/m.pt"), *df = path_of("once-dest/m.pt"), *tmp = NULL;
        UploadConfig u;
        Run r = { .tick = tick_append_once };

        make_dir(src);
        write_data(f, 20 * MIB, 31);
        tmp = tmp_file_of(dest, "m.pt");
        r.watch = tmp;
        r.source = f;
        u = upload_config("ckpt", f, dest, 0);
        run_stage(&r, &u, 1, NULL, NULL, USEC_INFINITY);

        ASSERT_TRUE(r.fired);
        ASSERT_EQ(r.n_objects, 1);
        ASSERT_EQ(r.objects[0].error, 0);
        /* Read again from the start: the copy is the final source, appended bytes included. */
        ASSERT_U64_EQ(r.objects[0].bytes, 20 * MIB + 1000);
        ASSERT_TRUE(files_equal(f, df));
        ASSERT_EQ(count_temp_files(dest), 0);
        run_free(&r);
}

static void test_source_keeps_changing(void) {
        _cleanup_free_ char *src = path_of("busy-src"), *dest = path_of("busy-dest"),
                            *f = path_of("busy-src/m.pt"), *df = path_of("busy-dest/m.pt");
        UploadConfig u;
        Run r = { .tick = tick_append_always };

        make_dir(src);
        write_data(f, 20 * MIB, 41);
        r.source = f;
        u = upload_config("ckpt", f, dest, 0);
        run_stage(&r, &u, 1, NULL, NULL, USEC_INFINITY);

        ASSERT_EQ(r.n_objects, 1);
        ASSERT_EQ(r.objects[0].error, -EBUSY);
        ASSERT_STREQ(r.objects[0].detail, "source changed while being read");
        ASSERT_EQ(r.n_failed, 1);
        ASSERT_EQ(r.n_ok, 0);
        /* Nothing torn at the destination, no temporary file left. */
        ASSERT_FALSE(exists(df));
        ASSERT_EQ(count_entries(dest, NULL), 0);
        run_free(&r);
}

/* The deadline has passed before the start: every file is reported, nothing is written. */
static void test_deadline_past(void) {
        _cleanup_free_ char *src = path_of("late-src"), *dest = path_of("late-dest"),
                            *a = path_of("late-src/a"), *b = path_of("late-src/b"),
                            *c = path_of("late-src/c");
        UploadConfig u[2];
        Run r = {};

        make_dir(src);
        write_data(a, 10, 1);
        write_data(b, 10, 2);
        write_data(c, 10, 3);
        u[0] = upload_config("one", src, dest, 0);
        u[1] = upload_config("two", a, dest, 0);
        run_stage(&r, u, 2, NULL, NULL, 0);

        ASSERT_EQ(r.n_objects, 4);
        ASSERT_EQ(r.n_deadline, 4);
        ASSERT_EQ(r.n_failed, 4);
        ASSERT_EQ(r.n_ok, 0);
        ASSERT_U64_EQ(r.bytes, 0);
        ASSERT_STREQ(r.objects[3].upload, "two");
        ASSERT_FALSE(exists(dest));
        run_free(&r);
}

/* The deadline comes in the middle of a large file: cut, removed, reported. */
static void test_deadline_midway(void) {
        _cleanup_free_ char *src = path_of("cut-src"), *dest = path_of("cut-dest"), *f = path_of("cut-src/big"),
                            *g = path_of("cut-src/small");
        UploadConfig u;
        Run r = {};
        int fd;

        make_dir(src);
        /*
         * 1 GiB (sparse, so quick to make) cannot be read, hashed, written and
         * verified in 250 ms, even at SHA-NI speed; the small one, newest and
         * so first, is done long before.
         */
        fd = open(f, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        ASSERT_TRUE(fd >= 0);
        ASSERT_EQ(ftruncate(fd, 1024 * MIB), 0);
        ASSERT_EQ(close(fd), 0);
        write_data(g, 1000, 52);
        set_mtime(f, 1600000000, 0);
        set_mtime(g, 1700000000, 0);
        u = upload_config("ckpt", src, dest, 0);
        run_stage(&r, &u, 1, NULL, NULL, now_monotonic_usec() + 250 * USEC_PER_MSEC);

        ASSERT_EQ(r.n_objects, 2);
        ASSERT_EQ(r.objects[0].error, 0);
        ASSERT_STREQ(r.objects[1].source, f);
        ASSERT_EQ(r.objects[1].error, -ETIME);
        ASSERT_STREQ(r.objects[1].detail, "deadline reached");
        ASSERT_U64_EQ(r.objects[1].bytes, 1024 * MIB);
        ASSERT_EQ(r.n_ok, 1);
        ASSERT_EQ(r.n_failed, 1);
        ASSERT_U64_EQ(r.bytes, 1000);
        /* Only the small one arrived: the cut copy is gone. */
        ASSERT_EQ(count_temp_files(dest), 0);
        ASSERT_EQ(count_entries(dest, NULL), 1);
        run_free(&r);
        ASSERT_EQ(unlink(f), 0);
}

/* A destination under a regular file: each file fails, saying why. */
static void test_destination_not_writable(void) {
        _cleanup_free_ char *src = path_of("nw-src"), *file = path_of("nw-file"),
                            *dest = path_of("nw-file/sub"), *a = path_of("nw-src/a"),
                            *b = path_of("nw-src/b");
        UploadConfig u;
        Run r = {};

        make_dir(src);
        write_data(a, 10, 1);
        write_data(b, 10, 2);
        write_data(file, 10, 3);
        u = upload_config("ckpt", src, dest, 0);
        run_stage(&r, &u, 1, NULL, NULL, USEC_INFINITY);

        ASSERT_EQ(r.n_objects, 2);
        ASSERT_EQ(r.n_failed, 2);
        for (size_t i = 0; i < 2; i++) {
                ASSERT_EQ(r.objects[i].error, -ENOTDIR);
                ASSERT_CONTAINS(r.objects[i].detail, "cannot create destination directory '");
                ASSERT_CONTAINS(r.objects[i].detail, "nw-file/sub': Not a directory");
        }
        run_free(&r);
}

/* Globs: symlinks to files are followed, others are not files; no match is no object; missing dirs are. */
static void test_glob(void) {
        _cleanup_free_ char *src = path_of("glob-src"), *dest = path_of("glob-dest"),
                            *a = path_of("glob-src/a.pt"), *b = path_of("glob-src/b.pt"),
                            *txt = path_of("glob-src/c.txt"), *link = path_of("glob-src/link.pt"),
                            *dangling = path_of("glob-src/dangling.pt"), *dir = path_of("glob-src/dir.pt"),
                            *pattern = path_of("glob-src/*.pt"), *none = path_of("glob-src/*.none"),
                            *missing = path_of("no-such-dir/*.pt"),
                            *missing_file = path_of("no-such-file.pt"),
                            *dlink = path_of("glob-dest/link.pt"), *missing_dir = path_of("no-such-dir"),
                            *detail = NULL;
        UploadConfig u;

        make_dir(src);
        make_dir(dir);
        write_data(a, 100, 1);
        write_data(b, 200, 2);
        write_data(txt, 300, 3);
        ASSERT_EQ(symlink(txt, link), 0);
        ASSERT_EQ(symlink("no-such-target", dangling), 0);

        {
                Run r = {};

                u = upload_config("glob", pattern, dest, 0);
                run_stage(&r, &u, 1, NULL, NULL, USEC_INFINITY);
                ASSERT_EQ(r.n_objects, 3);
                ASSERT_EQ(r.n_ok, 3);
                ASSERT_U64_EQ(r.bytes, 600);
                /* The link is sent as the file it points to, under its own name. */
                ASSERT_TRUE(files_equal(txt, dlink));
                {
                        struct stat st;

                        ASSERT_EQ(lstat(dlink, &st), 0);
                        ASSERT_TRUE(S_ISREG(st.st_mode));
                }
                run_free(&r);
        }
        {
                Run r = {};

                u = upload_config("none", none, dest, 0);
                run_stage(&r, &u, 1, NULL, NULL, USEC_INFINITY);
                ASSERT_EQ(r.n_done, 1);
                ASSERT_EQ(r.n_objects, 0);
                ASSERT_EQ(r.n_ok + r.n_skipped + r.n_failed, 0);
                run_free(&r);
        }
        {
                _cleanup_free_ char *url = NULL;
                Run r = {};

                u = upload_config("missing", missing, dest, 0);
                run_stage(&r, &u, 1, NULL, NULL, USEC_INFINITY);
                ASSERT_EQ(r.n_objects, 1);
                ASSERT_EQ(r.objects[0].error, -ENOENT);
                ASSERT_STREQ(r.objects[0].source, missing);
                ASSERT_TRUE(asprintf(&url, "file://%s/", dest) >= 0);
                ASSERT_STREQ(r.objects[0].object, url);
                ASSERT_TRUE(asprintf(&detail, "cannot read directory '%s': No such file or directory",
                                     missing_dir) >= 0);
                ASSERT_STREQ(r.objects[0].detail, detail);
                run_free(&r);
        }
        {
                Run r = {};

                u = upload_config("missing-file", missing_file, dest, 0);
                run_stage(&r, &u, 1, NULL, NULL, USEC_INFINITY);
                ASSERT_EQ(r.n_objects, 1);
                ASSERT_EQ(r.objects[0].error, -ENOENT);
                ASSERT_STREQ(r.objects[0].detail, "cannot read source: No such file or directory");
                run_free(&r);
        }
}

/* Two matches with the same name would overwrite each other: only the newer is sent. */
static void test_same_name(void) {
        _cleanup_free_ char *x = path_of("same-src"), *xa = path_of("same-src/a"),
                            *xb = path_of("same-src/b"), *fa = path_of("same-src/a/ckpt.pt"),
                            *fb = path_of("same-src/b/ckpt.pt"), *pattern = path_of("same-src/*/ckpt.pt"),
                            *dest = path_of("same-dest"), *df = path_of("same-dest/ckpt.pt");
        UploadConfig u;
        Run r = {};

        make_dir(x);
        make_dir(xa);
        make_dir(xb);
        write_data(fa, 100, 1);
        write_data(fb, 100, 2);
        set_mtime(fa, 1700000000, 0);
        set_mtime(fb, 1600000000, 0);
        u = upload_config("same", pattern, dest, 0);
        run_stage(&r, &u, 1, NULL, NULL, USEC_INFINITY);

        ASSERT_EQ(r.n_objects, 2);
        ASSERT_EQ(r.n_ok, 1);
        ASSERT_EQ(r.n_failed, 1);
        ASSERT_STREQ(r.objects[0].source, fa);
        ASSERT_EQ(r.objects[0].error, 0);
        ASSERT_STREQ(r.objects[1].source, fb);
        ASSERT_EQ(r.objects[1].error, -EEXIST);
        ASSERT_CONTAINS(r.objects[1].detail, "a newer file of the same name");
        ASSERT_TRUE(files_equal(fa, df));
        run_free(&r);
}

/* Close the stage once the copy is under way. */
static void tick_close(Run *r) {
        struct stat st;

        if (r->fired || stat(r->watch, &st) < 0 || st.st_size == 0)
                return;
        r->fired = true;
        upload_stage_close(r->stage);
        r->stage = NULL;
        /* Removed at once, not later. */
        ASSERT_FALSE(exists(r->watch));
        timer_close(r);
}

static void test_close_midway(void) {
        _cleanup_free_ char *src = path_of("close-src"), *dest = path_of("close-dest"),
                            *f = path_of("close-src/m.pt"), *tmp = NULL;
        UploadConfig u;
        Run r = { .tick = tick_close };

        make_dir(src);
        write_data(f, 20 * MIB, 61);
        tmp = tmp_file_of(dest, "m.pt");
        r.watch = tmp;
        u = upload_config("ckpt", f, dest, 0);
        run_stage(&r, &u, 1, NULL, NULL, USEC_INFINITY);

        ASSERT_TRUE(r.fired);
        ASSERT_EQ(r.n_objects, 0);
        ASSERT_EQ(r.n_done, 0);
        ASSERT_EQ(count_entries(dest, NULL), 0);
        run_free(&r);
}

/* Closing before start, and a stage with nothing to do, both end cleanly. */
static void test_close_and_empty(void) {
        uv_loop_t loop;
        UploadStage *s = NULL;

        ASSERT_EQ(uv_loop_init(&loop), 0);
        ASSERT_OK(upload_stage_new(&loop, NULL, 0, NULL, NULL, NULL, USEC_INFINITY, &callbacks, NULL, &s));
        upload_stage_close(s);
        (void) uv_run(&loop, UV_RUN_DEFAULT);
        ASSERT_EQ(uv_loop_close(&loop), 0);

        {
                Run r = {};

                run_stage(&r, NULL, 0, NULL, NULL, USEC_INFINITY);
                ASSERT_EQ(r.n_done, 1);
                ASSERT_EQ(r.n_objects, 0);
                run_free(&r);
        }
}

/* only= selects one [upload] by name; an unknown name is -ENOENT. */
static void test_only(void) {
        _cleanup_free_ char *src = path_of("only-src"), *dest1 = path_of("only-dest1"),
                            *dest2 = path_of("only-dest2"), *a = path_of("only-src/a");
        UploadConfig u[2];
        uv_loop_t loop;
        UploadStage *s = NULL;
        Run r = {};

        make_dir(src);
        write_data(a, 10, 1);
        u[0] = upload_config("first", src, dest1, 0);
        u[1] = upload_config("second", src, dest2, 0);

        ASSERT_EQ(uv_loop_init(&loop), 0);
        ASSERT_ERR(upload_stage_new(&loop, u, 2, "third", NULL, NULL, USEC_INFINITY, &callbacks, NULL, &s),
                   ENOENT);
        ASSERT_TRUE(s == NULL);
        ASSERT_EQ(uv_loop_close(&loop), 0);

        run_stage(&r, u, 2, "second", NULL, USEC_INFINITY);
        ASSERT_EQ(r.n_objects, 1);
        ASSERT_STREQ(r.objects[0].upload, "second");
        ASSERT_FALSE(exists(dest1));
        ASSERT_EQ(count_entries(dest2, NULL), 1);
        run_free(&r);
}

/* More than UPLOAD_FILES_MAX files: the oldest are reported as not sent. */
static void test_too_many_files(void) {
        _cleanup_free_ char *src = path_of("many-src"), *dest = path_of("many-dest");
        UploadConfig u;
        Run r = {};
        bool seen = false;

        make_dir(src);
        for (unsigned i = 0; i < UPLOAD_FILES_MAX + 2; i++) {
                _cleanup_free_ char *p = path_of("many-src/f%05u", i);
                int fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);

                ASSERT_TRUE(fd >= 0);
                ASSERT_EQ(close(fd), 0);
                /* f00000 and f00001 are the oldest. */
                set_mtime(p, 1600000000 + i, 0);
        }
        /* The deadline has passed: nothing is copied, but everything is reported. */
        u = upload_config("many", src, dest, 0);
        run_stage(&r, &u, 1, NULL, NULL, 0);

        ASSERT_EQ(r.n_objects, UPLOAD_FILES_MAX + 2);
        ASSERT_EQ(r.n_failed, UPLOAD_FILES_MAX + 2);
        ASSERT_EQ(r.n_deadline, UPLOAD_FILES_MAX);
        for (size_t i = 0; i < MIN(r.n_objects, (size_t) OBJECTS_KEPT); i++)
                if (r.objects[i].error == -E2BIG)
                        seen = true;
        /* The over-the-cap ones come after the 10000 newest, beyond what we keep; counts say enough. */
        ASSERT_FALSE(seen);
        ASSERT_FALSE(exists(dest));
        run_free(&r);
}

static int remove_one(const char *path, const struct stat *st, int type, struct FTW *ftw) {
        return remove(path);
}

int main(void) {
        ASSERT_TRUE(mkdtemp(tmpdir));
        RUN(test_directory_newest);
        RUN(test_large_file_chunks);
        RUN(test_manifest_skip);
        RUN(test_changed_source);
        RUN(test_escaped_name);
        RUN(test_manifest_merge);
        RUN(test_source_changes_once);
        RUN(test_source_keeps_changing);
        RUN(test_deadline_past);
        RUN(test_deadline_midway);
        RUN(test_destination_not_writable);
        RUN(test_glob);
        RUN(test_same_name);
        RUN(test_close_midway);
        RUN(test_close_and_empty);
        RUN(test_only);
        RUN(test_too_many_files);
        ASSERT_EQ(nftw(tmpdir, remove_one, 16, FTW_DEPTH | FTW_PHYS), 0);
        return 0;
}
