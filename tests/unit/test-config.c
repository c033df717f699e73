/* SPDX-License-Identifier: MIT */
/*
 * test-config.c - unit tests for config.c: defaults, a file with every key,
 * comments and inih's pitfalls, hook ordering, [upload] sections and their
 * file:// URLs, the shipped and demo configs, and a table with one case per
 * error path, each checked for its exact "FILE:LINE: [SECTION] KEY: ..."
 * message. Files are written under a
 * mkdtemp() directory, removed at the end.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "shared/macro.h"
#include "shared/parse.h"
#include "tests.h"

#define SEC USEC_PER_SEC
#define MSEC USEC_PER_MSEC

static char tmpdir[] = "/tmp/test-config-XXXXXX";
static unsigned file_counter;

static char *mfree(char *p) {
        free(p);
        return NULL;
}

/* @s with every "@DIR@" replaced by the temporary directory. */
static char *subst(const char *s) {
        size_t n = 0, dl = strlen(tmpdir);
        char *out, *o;

        for (const char *p = s; (p = strstr(p, "@DIR@")); p += 5)
                n++;
        out = malloc(strlen(s) + n * dl + 1);
        ASSERT_TRUE(out);
        o = out;
        for (const char *p = s; *p;) {
                if (strncmp(p, "@DIR@", 5) == 0) {
                        memcpy(o, tmpdir, dl);
                        o += dl;
                        p += 5;
                } else
                        *o++ = *p++;
        }
        *o = '\0';
        return out;
}

static char *write_file_mode(const char *name, const char *data, size_t size, mode_t mode) {
        char *path;
        int fd;

        ASSERT_TRUE(asprintf(&path, "%s/%s", tmpdir, name) > 0);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
        ASSERT_TRUE(fd >= 0);
        ASSERT_EQ(write(fd, data, size), (ssize_t) size);
        ASSERT_EQ(fchmod(fd, mode), 0);
        ASSERT_EQ(close(fd), 0);
        return path;
}

/* Writes @ini (after subst()) to a fresh file; returns its path. */
static char *write_config(const char *ini) {
        _cleanup_free_ char *text = subst(ini);
        char name[32];

        (void) snprintf(name, sizeof(name), "config-%u.ini", ++file_counter);
        return write_file_mode(name, text, strlen(text), 0644);
}

static int remove_one(const char *path, const struct stat *st, int type, struct FTW *ftw) {
        return remove(path);
}

static void setup(void) {
        static const char script[] = "#!/bin/sh\nexit 0\n";
        _cleanup_free_ char *subdir = NULL;

        ASSERT_TRUE(mkdtemp(tmpdir));
        free(write_file_mode("hook.sh", script, strlen(script), 0755));
        free(write_file_mode("noexec.sh", script, strlen(script), 0644));
        ASSERT_TRUE(asprintf(&subdir, "%s/subdir", tmpdir) > 0);
        ASSERT_EQ(mkdir(subdir, 0755), 0);
}

static void teardown(void) {
        ASSERT_EQ(nftw(tmpdir, remove_one, 16, FTW_DEPTH | FTW_PHYS), 0);
}

static Config *load_ok(const char *ini) {
        _cleanup_free_ char *path = write_config(ini), *error = NULL;
        Config *c = NULL;
        int r;

        r = config_load(path, &c, &error);
        if (r < 0)
                TEST_FAIL("config_load(\"%s\") = %d: %s", path, r, strna(error));
        ASSERT_TRUE(c);
        ASSERT_TRUE(error == NULL);
        ASSERT_STREQ(c->path, path);
        return c;
}

static void assert_defaults(const Config *c) {
        ASSERT_EQ(c->cloud, CLOUD_AUTO);
        ASSERT_TRUE(c->metadata_url == NULL);
        ASSERT_U64_EQ(c->poll_interval_usec, 1 * SEC);
        ASSERT_U64_EQ(c->request_timeout_usec, 2 * SEC);
        ASSERT_EQ(c->events_mask, EVENT_MASK(EVENT_TERMINATE) | EVENT_MASK(EVENT_STOP) |
                                          EVENT_MASK(EVENT_HIBERNATE) | EVENT_MASK(EVENT_PREEMPT));
        ASSERT_STREQ(c->control_socket, "/run/spotwatchd/control.sock");
        ASSERT_STREQ(c->state_dir, "/var/lib/spotwatchd");
        ASSERT_EQ(c->log, LOG_TARGET_AUTO);
        ASSERT_FALSE(c->imds_v1);
        ASSERT_U64_EQ(c->token_ttl_usec, 6 * 3600 * SEC);
        ASSERT_U64_EQ(c->deadline_margin_usec, 2 * SEC);
        ASSERT_U64_EQ(c->default_deadline_usec, 120 * SEC);
        ASSERT_U64_EQ(c->probe_timeout_usec, 1 * SEC);
        ASSERT_FALSE(c->aws_asg);
        ASSERT_FALSE(c->gcp_shutdown_script);
        ASSERT_U64_EQ(c->gcp_wait_usec, 60 * SEC);
        ASSERT_FALSE(c->azure_ack);
        ASSERT_FALSE(c->alibaba_token);
        ASSERT_EQ(c->n_processes, 0);
        ASSERT_EQ(c->n_hooks, 0);
        ASSERT_EQ(c->n_uploads, 0);
        ASSERT_TRUE(c->uploads == NULL);
}

static void test_defaults(void) {
        static const char *const files[] = {
                "",
                "[daemon]\n",
                "# only comments\n; and more\n\n",
        };
        _cleanup_(config_freep) Config *c = NULL;

        ASSERT_OK(config_new_default(&c));
        ASSERT_TRUE(c->path == NULL);
        assert_defaults(c);

        for (size_t i = 0; i < ELEMENTSOF(files); i++) {
                _cleanup_(config_freep) Config *f = load_ok(files[i]);

                assert_defaults(f);
        }

        /* A [process]/[hook] gets its own defaults. */
        {
                _cleanup_(config_freep) Config *f = load_ok("[process \"p\"]\n"
                                                            "pidfile = /run/p.pid\n"
                                                            "[hook \"h\"]\n"
                                                            "exec = @DIR@/hook.sh\n");

                ASSERT_EQ(f->n_processes, 1);
                ASSERT_EQ(f->processes[0].signal, SIGUSR1);
                ASSERT_U64_EQ(f->processes[0].wait_usec, 0);
                ASSERT_TRUE(f->processes[0].match == NULL);
                ASSERT_EQ(f->n_hooks, 1);
                ASSERT_U64_EQ(f->hooks[0].timeout_usec, 30 * SEC);
                ASSERT_EQ(f->hooks[0].order, 0);
                ASSERT_TRUE(f->hooks[0].user == NULL);
        }
}

static void test_full(void) {
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_free_ char *hook = NULL;

        c = load_ok("# every key\n"
                    "[daemon]\n"
                    "cloud = gcp\n"
                    "metadata_url = http://127.0.0.1:8080//\n"
                    "poll_interval = 250ms\n"
                    "request_timeout = 1.5s\n"
                    "events = terminate preempt  rebalance\tmanual\n"
                    "control_socket = /run/test/control.sock\n"
                    "state_dir = /var/lib/test\n"
                    "log = stderr\n"
                    "imds_v1 = yes\n"
                    "token_ttl = 1h30m\n"
                    "deadline_margin = 5s\n"
                    "default_deadline = 90s\n"
                    "\n"
                    "[process \"trainer\"]\n"
                    "pidfile = /run/trainer.pid\n"
                    "signal = SIGUSR2\n"
                    "wait = 1m\n"
                    "\n"
                    "[process \"by-match\"]\n"
                    "match = python3 train.py --epochs 3\n"
                    "signal = RTMIN+1\n"
                    "\n"
                    "[hook \"flush\"]\n"
                    "exec = @DIR@/hook.sh --fast \"two words\" 'x y' a\\ b\n"
                    "timeout = 45s\n"
                    "order = 10\n"
                    "user = root\n"
                    "\n"
                    "[hook \"notify\"]\n"
                    "exec = @DIR@/hook.sh\n"
                    "order = -3\n");

        ASSERT_EQ(c->cloud, CLOUD_GCP);
        ASSERT_STREQ(c->metadata_url, "http://127.0.0.1:8080"); /* trailing '/' dropped */
        ASSERT_U64_EQ(c->poll_interval_usec, 250 * MSEC);
        ASSERT_U64_EQ(c->request_timeout_usec, 1500 * MSEC);
        ASSERT_EQ(c->events_mask, EVENT_MASK(EVENT_TERMINATE) | EVENT_MASK(EVENT_PREEMPT) |
                                          EVENT_MASK(EVENT_REBALANCE) | EVENT_MASK(EVENT_MANUAL));
        ASSERT_STREQ(c->control_socket, "/run/test/control.sock");
        ASSERT_STREQ(c->state_dir, "/var/lib/test");
        ASSERT_EQ(c->log, LOG_TARGET_STDERR);
        ASSERT_TRUE(c->imds_v1);
        ASSERT_U64_EQ(c->token_ttl_usec, 5400 * SEC);
        ASSERT_U64_EQ(c->deadline_margin_usec, 5 * SEC);
        ASSERT_U64_EQ(c->default_deadline_usec, 90 * SEC);

        ASSERT_EQ(c->n_processes, 2);
        ASSERT_STREQ(c->processes[0].name, "trainer");
        ASSERT_STREQ(c->processes[0].pidfile, "/run/trainer.pid");
        ASSERT_TRUE(c->processes[0].match == NULL);
        ASSERT_EQ(c->processes[0].signal, SIGUSR2);
        ASSERT_U64_EQ(c->processes[0].wait_usec, 60 * SEC);
        ASSERT_EQ(c->processes[0].line, 16);
        ASSERT_STREQ(c->processes[1].name, "by-match");
        ASSERT_TRUE(c->processes[1].pidfile == NULL);
        ASSERT_STREQ(c->processes[1].match, "python3 train.py --epochs 3");
        ASSERT_EQ(c->processes[1].signal, SIGRTMIN + 1);
        ASSERT_U64_EQ(c->processes[1].wait_usec, 0);
        ASSERT_EQ(c->processes[1].line, 21);

        /* Sorted by order: notify (-3) before flush (10). */
        hook = subst("@DIR@/hook.sh");
        ASSERT_EQ(c->n_hooks, 2);
        ASSERT_STREQ(c->hooks[0].name, "notify");
        ASSERT_EQ(c->hooks[0].order, -3);
        ASSERT_EQ(strv_length(c->hooks[0].argv), 1);
        ASSERT_STREQ(c->hooks[0].argv[0], hook);
        ASSERT_U64_EQ(c->hooks[0].timeout_usec, 30 * SEC);
        ASSERT_EQ(c->hooks[0].line, 31);
        ASSERT_STREQ(c->hooks[1].name, "flush");
        ASSERT_EQ(strv_length(c->hooks[1].argv), 5);
        ASSERT_STREQ(c->hooks[1].argv[0], hook);
        ASSERT_STREQ(c->hooks[1].argv[1], "--fast");
        ASSERT_STREQ(c->hooks[1].argv[2], "two words");
        ASSERT_STREQ(c->hooks[1].argv[3], "x y");
        ASSERT_STREQ(c->hooks[1].argv[4], "a b");
        ASSERT_U64_EQ(c->hooks[1].timeout_usec, 45 * SEC);
        ASSERT_EQ(c->hooks[1].order, 10);
        ASSERT_STREQ(c->hooks[1].user, "root");
        ASSERT_EQ(c->hooks[1].line, 25);
}

/*
 * Comments and the inih r55 rules that we keep (documented in
 * conf/spotwatchd.ini): ';' after whitespace starts a comment anywhere,
 * ';' glued to text does not, '#' only at the start of a line, ':' works
 * like '=', a BOM and CRLF line ends are fine, indented comments are fine.
 */
static void test_comments(void) {
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_free_ char *hook = subst("@DIR@/hook.sh");

        c = load_ok("\xEF\xBB\xBF; a comment after a byte order mark\r\n"
                    "# a hash comment\r\n"
                    "[daemon] ; a comment after the header\r\n"
                    "cloud = aws ; an inline comment\r\n"
                    "log = stderr\t; after a tab too\n"
                    "   \n"
                    "    ; an indented comment is still a comment\n"
                    "\t# so is this\n"
                    "poll_interval: 3s\n"
                    "metadata_url =\n"
                    "[process \"p\"]\n"
                    "match = train.py;epoch=3 ; comment\n"
                    "[hook \"h\"]\n"
                    "exec = @DIR@/hook.sh a;b --sep \\; ;the rest is a comment\n");

        ASSERT_EQ(c->cloud, CLOUD_AWS);
        ASSERT_EQ(c->log, LOG_TARGET_STDERR);
        ASSERT_U64_EQ(c->poll_interval_usec, 3 * SEC);
        ASSERT_TRUE(c->metadata_url == NULL);
        ASSERT_STREQ(c->processes[0].match, "train.py;epoch=3");
        ASSERT_EQ(c->n_hooks, 1);
        ASSERT_EQ(strv_length(c->hooks[0].argv), 4);
        ASSERT_STREQ(c->hooks[0].argv[0], hook);
        ASSERT_STREQ(c->hooks[0].argv[1], "a;b");
        ASSERT_STREQ(c->hooks[0].argv[2], "--sep");
        ASSERT_STREQ(c->hooks[0].argv[3], ";");
        /* A " ;" inside quotes is cut as a comment, too: see test_errors(). */
}

static void test_hook_order(void) {
        static const struct {
                const char *name;
                long order;
        } expected[] = {
                { "d", -5 }, { "a", 0 }, { "e", 0 }, { "c", 10 }, { "b", 10 }, { "f", 11 },
        };
        _cleanup_(config_freep) Config *c = NULL;

        c = load_ok("[hook \"c\"]\nexec = @DIR@/hook.sh\norder = 10\n"
                    "[hook \"a\"]\nexec = @DIR@/hook.sh\n"
                    "[hook \"f\"]\nexec = @DIR@/hook.sh\norder = 11\n"
                    "[hook \"b\"]\nexec = @DIR@/hook.sh\norder = 10\n"
                    "[hook \"d\"]\nexec = @DIR@/hook.sh\norder = -5\n"
                    "[hook \"e\"]\norder = 0\nexec = @DIR@/hook.sh\n");

        ASSERT_EQ(c->n_hooks, ELEMENTSOF(expected));
        for (size_t i = 0; i < ELEMENTSOF(expected); i++) {
                ASSERT_STREQ(c->hooks[i].name, expected[i].name);
                ASSERT_EQ(c->hooks[i].order, expected[i].order);
        }
        /* Same order keeps file order: c (line 1) before b (line 10), a before e. */
        ASSERT_TRUE(c->hooks[3].line < c->hooks[4].line);
        ASSERT_TRUE(c->hooks[1].line < c->hooks[2].line);
}

/* [upload] sections: values, defaults, file:// URLs into paths. */
static void test_upload(void) {
        static const struct {
                const char *destination;
                const char *dest_path;
        } urls[] = {
                { "file:///mnt/backup/run-42/", "/mnt/backup/run-42" },
                { "file:///mnt/backup/run-42", "/mnt/backup/run-42" },
                { "file:///mnt/backup//", "/mnt/backup" },
                { "file:///", "/" },
                { "file:////", "/" },
                { "file:///mnt/my%20dir/%41%62c%2f/", "/mnt/my dir/Abc" },
                { "file:///mnt/100%25/", "/mnt/100%" },
                { "file:///mnt/with space/", "/mnt/with space" },
        };
        _cleanup_(config_freep) Config *c = NULL;

        c = load_ok("[upload \"checkpoints\"]\n"
                    "source = /data/checkpoints/*.pt\n"
                    "destination = file:///mnt/backup/checkpoints/\n"
                    "newest = 2\n"
                    "\n"
                    "[hook \"flush\"]\n"
                    "exec = @DIR@/hook.sh\n"
                    "\n"
                    "[upload \"logs\"]\n"
                    "destination = file:///mnt/backup/logs\n"
                    "source = /var/log/trainer\n"
                    "\n"
                    "[upload \"one\"]\n"
                    "source = /data/final.pt\n"
                    "destination = file:///mnt/backup/\n"
                    "newest = 10000\n");

        ASSERT_EQ(c->n_uploads, 3);
        ASSERT_EQ(c->n_hooks, 1);
        ASSERT_STREQ(c->uploads[0].name, "checkpoints");
        ASSERT_STREQ(c->uploads[0].source, "/data/checkpoints/*.pt");
        ASSERT_STREQ(c->uploads[0].destination, "file:///mnt/backup/checkpoints/");
        ASSERT_EQ(c->uploads[0].scheme, UPLOAD_FILE);
        ASSERT_STREQ(c->uploads[0].dest_path, "/mnt/backup/checkpoints");
        ASSERT_EQ(c->uploads[0].newest, 2);
        ASSERT_EQ(c->uploads[0].line, 1);
        ASSERT_STREQ(c->uploads[1].name, "logs");
        ASSERT_STREQ(c->uploads[1].source, "/var/log/trainer");
        ASSERT_STREQ(c->uploads[1].dest_path, "/mnt/backup/logs");
        ASSERT_EQ(c->uploads[1].newest, 0); /* default: all */
        ASSERT_EQ(c->uploads[1].line, 9);
        ASSERT_STREQ(c->uploads[2].dest_path, "/mnt/backup");
        ASSERT_EQ(c->uploads[2].newest, 10000);
        ASSERT_STREQ(upload_scheme_to_string(UPLOAD_FILE), "file");
        ASSERT_TRUE(upload_scheme_to_string(_UPLOAD_SCHEME_MAX) == NULL);
        ASSERT_TRUE(upload_scheme_to_string(_UPLOAD_SCHEME_INVALID) == NULL);

        for (size_t i = 0; i < ELEMENTSOF(urls); i++) {
                _cleanup_free_ char *ini = NULL;
                _cleanup_(config_freep) Config *u = NULL;

                ASSERT_TRUE(asprintf(&ini, "[upload \"u\"]\nsource = /x\ndestination = %s\n",
                                     urls[i].destination) > 0);
                u = load_ok(ini);
                ASSERT_EQ(u->n_uploads, 1);
                ASSERT_STREQ(u->uploads[0].destination, urls[i].destination);
                ASSERT_STREQ(u->uploads[0].dest_path, urls[i].dest_path);
                ASSERT_EQ(u->uploads[0].scheme, UPLOAD_FILE);
        }
}

/* Values at the edges of what is allowed. */
static void test_limits(void) {
        _cleanup_(config_freep) Config *c = NULL;

        c = load_ok("[daemon]\n"
                    "poll_interval = 100ms\n"
                    "request_timeout = 10m\n"
                    "token_ttl = 21600\n"
                    "deadline_margin = 0\n"
                    "default_deadline = 1s\n"
                    /* 107 bytes: the longest path a sockaddr_un takes. */
                    "control_socket = /run/0123456789012345678901234567890123456789012345678901234567890123"
                    "456789012345678901234567890123456789/s\n"
                    "events = preempt\n"
                    "imds_v1 = off\n"
                    /* Header of 49 bytes: the most inih keeps. */
                    "[process \"p01234567890123456789012345678901234567\"]\n"
                    "match = x\n"
                    "signal = 64\n"
                    "wait = 1h\n"
                    "[hook \"h\"]\n"
                    "exec = @DIR@/hook.sh\n"
                    "timeout = 10ms\n"
                    "order = -2147483648\n");

        ASSERT_U64_EQ(c->poll_interval_usec, 100 * MSEC);
        ASSERT_U64_EQ(c->request_timeout_usec, 600 * SEC);
        ASSERT_U64_EQ(c->token_ttl_usec, 21600 * SEC);
        ASSERT_U64_EQ(c->deadline_margin_usec, 0);
        ASSERT_U64_EQ(c->default_deadline_usec, 1 * SEC);
        ASSERT_EQ(strlen(c->control_socket), 107);
        ASSERT_EQ(c->events_mask, EVENT_MASK(EVENT_PREEMPT));
        ASSERT_EQ(c->processes[0].signal, 64);
        ASSERT_U64_EQ(c->processes[0].wait_usec, 3600 * SEC);
        ASSERT_EQ(strlen(c->processes[0].name), 39);
        ASSERT_U64_EQ(c->hooks[0].timeout_usec, 10 * MSEC);
        ASSERT_EQ(c->hooks[0].order, -2147483648L);
}

#define DIGITS10 "0123456789"
#define DIGITS100 DIGITS10 DIGITS10 DIGITS10 DIGITS10 DIGITS10 DIGITS10 DIGITS10 DIGITS10 DIGITS10 DIGITS10

/* One case per error path: the message must be "PATH" + @error, verbatim. */
static void test_errors(void) {
        static const struct {
                const char *ini;
                const char *error;
        } cases[] = {
                /* Sections. */
                { "[daemon]\n[foo]\n",
                  ":2: [foo]: unknown section (expected [daemon], [process \"NAME\"] or [hook \"NAME\"])" },
                { "[Daemon]\n", ":1: [Daemon]: unknown section" },
                { "[]\n", ":1: []: empty section name" },
                { "[process \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"]\n",
                  ":1: [process \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"]: section header is too "
                  "long (55 bytes, at most 49)" },
                { "[daemon\ncloud = aws\n", ":1: missing ']' in section header ('[daemon')" },
                { "[process \"a ;b\"]\n", ":1: missing ']' in section header ('[process \"a ;b\"]')" },
                { "[daemon] cloud = aws\n",
                  ":1: unexpected text after ']' in section header ('[daemon] cloud = aws')" },
                { "[daemon \"x\"]\n",
                  ":1: [daemon \"x\"]: the daemon section takes no name, write [daemon]" },
                { "[process]\n", ":1: [process]: missing name, write [process \"NAME\"]" },
                { "[hook flush]\n",
                  ":1: [hook flush]: the name must be in double quotes, write [hook \"NAME\"]" },
                { "[hook \"flush]\n", ":1: [hook \"flush]: the name must be in double quotes" },
                { "[hook \"\"]\n", ":1: [hook \"\"]: empty hook name" },
                { "[process \"\"]\n", ":1: [process \"\"]: empty process name" },
                { "[hook \"a b\"]\n",
                  ":1: [hook \"a b\"]: invalid name 'a b' (use letters, digits and - _ . : @ +)" },
                { "[daemon]\n[daemon]\n", ":2: [daemon]: duplicate section, first on line 1" },
                { "[process \"a\"]\npidfile = /run/a.pid\n\n[process \"a\"]\n",
                  ":4: [process \"a\"]: duplicate section, first on line 1" },
                { "[hook \"h\"]\nexec = @DIR@/hook.sh\n[hook \"h\"]\n",
                  ":3: [hook \"h\"]: duplicate section, first on line 1" },

                /* Lines inih would misread. */
                { "cloud = aws\n",
                  ":1: cloud: key outside of any section, put it under a [section] header ('aws')" },
                { "hello\n", ":1: expected a [section] header or 'key = value' ('hello')" },
                { "[daemon]\ncloud aws\n", ":2: [daemon]: expected 'key = value' ('cloud aws')" },
                { "[daemon]\ncloud ;= aws\n", ":2: [daemon]: expected 'key = value' ('cloud ;= aws')" },
                { "[daemon]\n= aws\n", ":2: [daemon]: missing key name before '=' ('= aws')" },
                { "[daemon]\nevents = terminate\n  preempt\n",
                  ":3: [daemon]: indented line would continue the value of 'events'; continuation lines "
                  "are not supported, remove the leading whitespace ('preempt')" },
                { "[daemon]\n\tcloud = aws\n",
                  ":2: [daemon]: indented line; remove the leading whitespace ('cloud = aws')" },
                { "  [daemon]\n", ":1: indented line; remove the leading whitespace ('[daemon]')" },

                /* Keys. */
                { "[daemon]\nfoo = 1\n", ":2: [daemon] foo: unknown key" },
                { "[daemon]\npidfile = /run/x.pid\n",
                  ":2: [daemon] pidfile: unknown key here, it belongs in a [process \"NAME\"] section" },
                { "[process \"a\"]\ncloud = aws\n",
                  ":2: [process \"a\"] cloud: unknown key here, it belongs in a [daemon] section" },
                { "[daemon]\ncloud = aws\ncloud = gcp\n",
                  ":3: [daemon] cloud: duplicate key, already set on line 2" },
                { "[hook \"h\"]\nexec = @DIR@/hook.sh\ntimeout = 1s\ntimeout = 2s\n",
                  ":4: [hook \"h\"] timeout: duplicate key, already set on line 3" },

                /* [daemon] values. */
                { "[daemon]\ncloud = foo\n",
                  ":2: [daemon] cloud: unknown cloud 'foo' (expected auto, aws, gcp, azure or alibaba)" },
                { "[daemon]\ncloud = AWS\n", ":2: [daemon] cloud: unknown cloud 'AWS'" },
                { "[daemon]\nmetadata_url = ftp://x\n",
                  ":2: [daemon] metadata_url: invalid URL 'ftp://x', must start with http:// or https://" },
                { "[daemon]\nmetadata_url = 127.0.0.1:8080\n",
                  ":2: [daemon] metadata_url: invalid URL '127.0.0.1:8080'" },
                { "[daemon]\nmetadata_url = http://\n",
                  ":2: [daemon] metadata_url: invalid URL 'http://', no host" },
                { "[daemon]\nmetadata_url = http://a b/\n",
                  ":2: [daemon] metadata_url: invalid URL 'http://a b/', contains whitespace" },
                { "[daemon]\npoll_interval = abc\n",
                  ":2: [daemon] poll_interval: invalid duration 'abc' (write e.g. 500ms, 2s, 5m)" },
                { "[daemon]\npoll_interval =\n", ":2: [daemon] poll_interval: invalid duration ''" },
                { "[daemon]\npoll_interval = -1s\n", ":2: [daemon] poll_interval: invalid duration '-1s'" },
                { "[daemon]\npoll_interval = 50ms\n",
                  ":2: [daemon] poll_interval: duration '50ms' is out of range, must be between 100ms and "
                  "1h" },
                { "[daemon]\npoll_interval = 61m\n",
                  ":2: [daemon] poll_interval: duration '61m' is out of range, must be between 100ms and "
                  "1h" },
                { "[daemon]\npoll_interval = 99999999999999999999s\n",
                  ":2: [daemon] poll_interval: duration '99999999999999999999s' is out of range" },
                { "[daemon]\npoll_interval = 2s # two seconds\n",
                  ":2: [daemon] poll_interval: invalid duration '2s # two seconds' (write e.g. 500ms, 2s, "
                  "5m); note: '#' starts a comment only at the start of a line" },
                { "[daemon]\nrequest_timeout = 0\n",
                  ":2: [daemon] request_timeout: duration '0' is out of range, must be between 10ms and "
                  "10m" },
                { "[daemon]\nevents = terminate reboot\n",
                  ":2: [daemon] events: unknown event 'reboot' (expected some of: terminate stop hibernate "
                  "preempt rebalance maintenance manual shutdown)" },
                { "[daemon]\nevents =\n", ":2: [daemon] events: empty value, list some of: terminate stop" },
                { "[daemon]\nevents = \"terminate\n",
                  ":2: [daemon] events: invalid list of events '\"terminate'" },
                { "[daemon]\ncontrol_socket = run/x.sock\n",
                  ":2: [daemon] control_socket: path 'run/x.sock' is not absolute" },
                { "[daemon]\ncontrol_socket = /run/" DIGITS100 "/x.sock\n",
                  ":2: [daemon] control_socket: path '/run/" DIGITS100 "/x.sock' "
                  "is too long for a unix socket (112 bytes, at most 107)" },
                { "[daemon]\nstate_dir =\n",
                  ":2: [daemon] state_dir: empty value, an absolute path is needed" },
                { "[daemon]\nstate_dir = ~/state\n",
                  ":2: [daemon] state_dir: path '~/state' is not absolute" },
                { "[daemon]\nlog = syslog\n",
                  ":2: [daemon] log: unknown log target 'syslog' (expected auto, journal or stderr)" },
                { "[daemon]\nimds_v1 = maybe\n",
                  ":2: [daemon] imds_v1: invalid boolean 'maybe' (expected yes or no)" },
                { "[daemon]\ntoken_ttl = 1.5s\n",
                  ":2: [daemon] token_ttl: duration '1.5s' is not a whole number of seconds" },
                { "[daemon]\ngcp_wait = 2500ms\n",
                  ":2: [daemon] gcp_wait: duration '2500ms' is not a whole number of seconds" },
                { "[daemon]\nprobe_timeout = 50ms\n", ":2: [daemon] probe_timeout: duration '50ms' is out of range" },
                { "[daemon]\nazure_ack = maybe\n", ":2: [daemon] azure_ack: " },
                { "[daemon]\naws_asg = 2\n", ":2: [daemon] aws_asg: " },
                { "[daemon]\ntoken_ttl = 7h\n",
                  ":2: [daemon] token_ttl: duration '7h' is out of range, must be between 1s and 6h" },
                { "[daemon]\ntoken_ttl = 500ms\n",
                  ":2: [daemon] token_ttl: duration '500ms' is out of range, must be between 1s and 6h" },
                { "[daemon]\ndeadline_margin = 11m\n",
                  ":2: [daemon] deadline_margin: duration '11m' is out of range, must be between 0 and "
                  "10m" },
                { "[daemon]\ndefault_deadline = 0\n",
                  ":2: [daemon] default_deadline: duration '0' is out of range, must be between 1s and 1h" },
                { "[daemon]\ndefault_deadline = 2h\n",
                  ":2: [daemon] default_deadline: duration '2h' is out of range, must be between 1s and "
                  "1h" },
                /* Cross-field: named at the key that was set. */
                { "[daemon]\ndefault_deadline = 1m\ndeadline_margin = 5m\n",
                  ":3: [daemon] deadline_margin: deadline_margin (5m) must be shorter than "
                  "default_deadline (1m)" },
                { "[daemon]\ncloud = aws\ndefault_deadline = 2s\n",
                  ":3: [daemon] default_deadline: deadline_margin (2s) must be shorter than "
                  "default_deadline (2s)" },

                /* [process] */
                { "[process \"a\"]\npidfile = a.pid\n",
                  ":2: [process \"a\"] pidfile: path 'a.pid' is not absolute" },
                { "[process \"a\"]\npidfile =\n",
                  ":2: [process \"a\"] pidfile: empty value, an absolute path is needed" },
                { "[process \"a\"]\nmatch =\n", ":2: [process \"a\"] match: empty value" },
                { "[process \"a\"]\nunit = trainer.service\n",
                  ":2: [process \"a\"] unit: not supported yet, use pidfile= or match= "
                  "('trainer.service')" },
                { "[process \"a\"]\npidfile = /run/a.pid\nsignal = SIGFOO\n",
                  ":3: [process \"a\"] signal: invalid signal 'SIGFOO' (write e.g. SIGUSR1, USR1 or 10)" },
                { "[process \"a\"]\npidfile = /run/a.pid\nsignal = 0\n",
                  ":3: [process \"a\"] signal: invalid signal '0'" },
                { "[process \"a\"]\npidfile = /run/a.pid\nwait = 2h\n",
                  ":3: [process \"a\"] wait: duration '2h' is out of range, must be between 0 and 1h" },
                { "[process \"a\"]\npidfile = /run/a.pid\nwait = soon\n",
                  ":3: [process \"a\"] wait: invalid duration 'soon'" },
                /* Cross-field: named at the section header. */
                { "\n[process \"a\"]\npidfile = /run/a.pid\nmatch = train.py\n",
                  ":2: [process \"a\"]: pidfile= and match= are mutually exclusive, give only one" },
                { "[process \"ok\"]\nmatch = x\n[process \"a\"]\nsignal = USR2\nwait = 5s\n",
                  ":3: [process \"a\"]: no pidfile= or match= given, give exactly one" },

                /* [hook] */
                { "[hook \"h\"]\ntimeout = 5s\n", ":1: [hook \"h\"]: no exec= given" },
                { "[hook \"h\"]\nexec = @DIR@/missing --x\n",
                  ":2: [hook \"h\"] exec: '@DIR@/missing' does not exist" },
                { "[hook \"h\"]\nexec = @DIR@/noexec.sh\n",
                  ":2: [hook \"h\"] exec: '@DIR@/noexec.sh' is not executable" },
                { "[hook \"h\"]\nexec = hook.sh --x\n",
                  ":2: [hook \"h\"] exec: 'hook.sh' is not an absolute path" },
                { "[hook \"h\"]\nexec = @DIR@/subdir\n",
                  ":2: [hook \"h\"] exec: '@DIR@/subdir' is not a regular file" },
                { "[hook \"h\"]\nexec = @DIR@/noexec.sh/x\n",
                  ":2: [hook \"h\"] exec: cannot access '@DIR@/noexec.sh/x': Not a directory" },
                { "[hook \"h\"]\nexec =\n", ":2: [hook \"h\"] exec: empty command" },
                { "[hook \"h\"]\nexec = \"\"\n", ":2: [hook \"h\"] exec: '' is not an absolute path" },
                { "[hook \"h\"]\nexec = @DIR@/hook.sh \"a b\n",
                  ":2: [hook \"h\"] exec: unterminated quote or trailing backslash in '@DIR@/hook.sh \"a "
                  "b'" },
                /* The ';' pitfall: inih cuts the value at " ;" even inside quotes. */
                { "[hook \"h\"]\nexec = @DIR@/hook.sh \"a ;b\"\n",
                  ":2: [hook \"h\"] exec: unterminated quote or trailing backslash in '@DIR@/hook.sh "
                  "\"a'; note: ';' after whitespace starts a comment, the rest of the line was ignored" },
                { "[hook \"h\"]\nexec = @DIR@/hook.sh\ntimeout = abc\n",
                  ":3: [hook \"h\"] timeout: invalid duration 'abc'" },
                { "[hook \"h\"]\nexec = @DIR@/hook.sh\ntimeout = 0\n",
                  ":3: [hook \"h\"] timeout: duration '0' is out of range, must be between 10ms and 1h" },
                { "[hook \"h\"]\nexec = @DIR@/hook.sh\norder = first\n",
                  ":3: [hook \"h\"] order: invalid integer 'first'" },
                { "[hook \"h\"]\nexec = @DIR@/hook.sh\norder = 1.5\n",
                  ":3: [hook \"h\"] order: invalid integer '1.5'" },
                { "[hook \"h\"]\nexec = @DIR@/hook.sh\norder = 99999999999\n",
                  ":3: [hook \"h\"] order: integer '99999999999' is out of range" },
                { "[hook \"h\"]\nexec = @DIR@/hook.sh\nuser = no-such-user-spotwatchd\n",
                  ":3: [hook \"h\"] user: unknown user 'no-such-user-spotwatchd'" },
                { "[hook \"h\"]\nexec = @DIR@/hook.sh\nuser =\n",
                  ":3: [hook \"h\"] user: empty value, a user name is needed" },

                /* [upload] */
                { "[upload]\n", ":1: [upload]: missing name, write [upload \"NAME\"]" },
                { "[upload ckpt]\n",
                  ":1: [upload ckpt]: the name must be in double quotes, write [upload \"NAME\"]" },
                { "[upload \"\"]\n", ":1: [upload \"\"]: empty upload name" },
                { "[upload \"a\"]\nsource = /x\ndestination = file:///y/\n\n[upload \"a\"]\n",
                  ":5: [upload \"a\"]: duplicate section, first on line 1" },
                { "[upload \"ckpt\"]\nsource = /x\n", ":1: [upload \"ckpt\"]: no destination= given" },
                { "[upload \"ok\"]\nsource = /x\ndestination = file:///y/\n"
                  "[upload \"ckpt\"]\ndestination = file:///x/\nnewest = 3\n",
                  ":4: [upload \"ckpt\"]: no source= given" },
                { "[upload \"a\"]\nsource = data/*.pt\n",
                  ":2: [upload \"a\"] source: path 'data/*.pt' is not absolute" },
                { "[upload \"a\"]\nsource =\n",
                  ":2: [upload \"a\"] source: empty value, an absolute path is needed" },
                { "[upload \"a\"]\nsource = /x\nsource = /y\n",
                  ":3: [upload \"a\"] source: duplicate key, already set on line 2" },
                { "[upload \"a\"]\nsource = /x\ndestination = s3://B/prefix/\n",
                  ":3: [upload \"a\"] destination: invalid destination 's3://B/prefix/', the bucket name must be "
                  "3-63 characters of a-z, 0-9, '-', '.' (write s3://BUCKET/PREFIX/)" },
                { "[upload \"a\"]\ndestination = gs://bucket/a?b\n",
                  ":2: [upload \"a\"] destination: invalid destination 'gs://bucket/a?b', write the prefix "
                  "without '?', '#', '%' or '\\'" },
                { "[upload \"a\"]\ndestination = az://Account/container/\n",
                  ":2: [upload \"a\"] destination: invalid destination 'az://Account/container/', must be "
                  "az://ACCOUNT/CONTAINER/PREFIX/ with a storage account name of 3-24 lower-case letters and "
                  "digits" },
                { "[upload \"a\"]\ndestination = s3://bucket/a//b/\n",
                  ":2: [upload \"a\"] destination: invalid destination 's3://bucket/a//b/', the prefix has an "
                  "empty or '..' part" },
                { "[upload \"a\"]\nsource = /x\ndestination = s3://bucket/p/\naccess_key_id = AK\n",
                  ":1: [upload \"a\"] secret_access_key: access_key_id and secret_access_key go together: set "
                  "both or neither" },
                { "[upload \"a\"]\nsource = /x\ndestination = file:///x/\nendpoint = http://127.0.0.1:1\n",
                  ":1: [upload \"a\"] endpoint: not used with a file:// destination" },
                { "[upload \"a\"]\nsource = /x\ndestination = s3://bucket/p/\naccount_key = abcd\n",
                  ":1: [upload \"a\"] account_key: not used with a s3:// destination" },
                { "[upload \"a\"]\nsource = /x\ndestination = az://acct/cont/\nchecksum = crc32c\n",
                  ":1: [upload \"a\"] checksum: az:// destinations take checksum = md5 or none" },
                { "[upload \"a\"]\nsource = /x\ndestination = az://acct/cont/\naccount_key = a b\n",
                  ":4: [upload \"a\"] account_key: contains a space or control character" },
                { "[upload \"a\"]\npart_size = 1M\n",
                  ":2: [upload \"a\"] part_size: size '1M' is out of range, must be between 5 MiB and 5120 MiB" },
                { "[upload \"a\"]\npart_size = 8X\n",
                  ":2: [upload \"a\"] part_size: invalid size '8X', write bytes or a number with K, M or G (e.g. "
                  "64M)" },
                { "[upload \"a\"]\nconcurrency = 0\n",
                  ":2: [upload \"a\"] concurrency: invalid concurrency '0', must be an integer between 1 and 64" },
                { "[upload \"a\"]\nchecksum = crc64\n",
                  ":2: [upload \"a\"] checksum: invalid checksum 'crc64', must be one of md5, crc32c, sha256, "
                  "none" },
                { "[upload \"a\"]\nsync = always\n",
                  ":2: [upload \"a\"] sync: invalid sync 'always', must be 'notice' or 'continuous'" },
                { "[upload \"a\"]\ndestination = http://backup/x/\n",
                  ":2: [upload \"a\"] destination: invalid destination 'http://backup/x/', must be "
                  "s3://BUCKET/PREFIX/, gs://BUCKET/PREFIX/, az://ACCOUNT/CONTAINER/PREFIX/ or file:///DIR/" },
                { "[upload \"a\"]\ndestination = /mnt/backup/\n",
                  ":2: [upload \"a\"] destination: invalid destination '/mnt/backup/', must be "
                  "s3://BUCKET/PREFIX/, gs://BUCKET/PREFIX/, az://ACCOUNT/CONTAINER/PREFIX/ or file:///DIR/" },
                { "[upload \"a\"]\ndestination = S3://bucket/\n",
                  ":2: [upload \"a\"] destination: invalid destination 'S3://bucket/'" },
                { "[upload \"a\"]\ndestination =\n",
                  ":2: [upload \"a\"] destination: empty value, a destination URL such as s3://BUCKET/PREFIX/ or file:///DIR/ is "
                  "needed" },
                { "[upload \"a\"]\ndestination = file://backup/x/\n",
                  ":2: [upload \"a\"] destination: invalid destination 'file://backup/x/', a file:// URL "
                  "has an empty host and an absolute path: write file:///DIR/" },
                { "[upload \"a\"]\ndestination = file://\n",
                  ":2: [upload \"a\"] destination: invalid destination 'file://', a file:// URL has an "
                  "empty host" },
                { "[upload \"a\"]\ndestination = file:///x/?y\n",
                  ":2: [upload \"a\"] destination: invalid destination 'file:///x/?y', a file:// URL "
                  "takes no '?' or '#' (write them as %3F and %23)" },
                { "[upload \"a\"]\ndestination = file:///x#y\n",
                  ":2: [upload \"a\"] destination: invalid destination 'file:///x#y', a file:// URL "
                  "takes no" },
                { "[upload \"a\"]\ndestination = file:///x%zz/\n",
                  ":2: [upload \"a\"] destination: invalid destination 'file:///x%zz/', bad %-escape (write "
                  "%XX with two hex digits, not %00)" },
                { "[upload \"a\"]\ndestination = file:///x%2\n",
                  ":2: [upload \"a\"] destination: invalid destination 'file:///x%2', bad %-escape" },
                { "[upload \"a\"]\ndestination = file:///x%00y\n",
                  ":2: [upload \"a\"] destination: invalid destination 'file:///x%00y', bad %-escape" },
                { "[upload \"a\"]\nnewest = 0\n",
                  ":2: [upload \"a\"] newest: integer '0' is out of range, must be between 1 and 10000" },
                { "[upload \"a\"]\nnewest = 10001\n",
                  ":2: [upload \"a\"] newest: integer '10001' is out of range, must be between 1 and "
                  "10000" },
                { "[upload \"a\"]\nnewest = -1\n",
                  ":2: [upload \"a\"] newest: integer '-1' is out of range" },
                { "[upload \"a\"]\nnewest = two\n",
                  ":2: [upload \"a\"] newest: invalid integer 'two' (the number of newest files to send)" },
                { "[upload \"a\"]\nnewest = 99999999999999999999\n",
                  ":2: [upload \"a\"] newest: integer '99999999999999999999' is out of range" },
                { "[upload \"a\"]\ncredentials = env\n", ":2: [upload \"a\"] credentials: unknown key" },
                { "[upload \"a\"]\ncloud = aws\n",
                  ":2: [upload \"a\"] cloud: unknown key here, it belongs in a [daemon] section" },
                { "[daemon]\nsource = /x\n",
                  ":2: [daemon] source: unknown key here, it belongs in an [upload \"NAME\"] section" },
                { "[hook \"h\"]\nexec = @DIR@/hook.sh\nnewest = 2\n",
                  ":3: [hook \"h\"] newest: unknown key here, it belongs in an [upload \"NAME\"] section" },

                /* Only the first error is reported. */
                { "[daemon]\ncloud = x\nlog = y\n[bad]\n", ":2: [daemon] cloud: unknown cloud 'x'" },
                /* Control characters of the user's never reach the terminal. */
                { "[daemon]\ncloud = \x1b[31mred\n", ":2: [daemon] cloud: unknown cloud '?[31mred'" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *path = write_config(cases[i].ini), *error = NULL, *expected = NULL,
                                    *want = NULL;
                Config *c = NULL;
                int r;

                expected = subst(cases[i].error);
                ASSERT_TRUE(asprintf(&want, "%s%s", path, expected) > 0);

                r = config_load(path, &c, &error);
                if (r != -EINVAL)
                        TEST_FAIL("case %zu: config_load() = %d, expected -EINVAL (%s)", i, r, strna(error));
                ASSERT_TRUE(c == NULL);
                ASSERT_TRUE(error);
                if (strncmp(error, want, strlen(want)) != 0)
                        TEST_FAIL("case %zu:\n   got: %s\nwanted: %s...", i, error, want);

                /* Without a place for the message, the result is the same. */
                ASSERT_ERR(config_load(path, NULL, NULL), EINVAL);
        }
}

/* inih r55 splits lines of 200+ bytes silently; the reader refuses them. */
static void test_long_lines(void) {
        static const struct {
                size_t len;             /* bytes of the second line, without its newline */
                bool newline;
                const char *error;      /* NULL: valid */
        } cases[] = {
                { 100, true, NULL },
                { 198, true, NULL },
                { 198, false, NULL },
                { 199, true, ":2: line is too long (199 bytes, at most 198)" },
                { 199, false, ":2: line is too long (199 bytes, at most 198)" },
                { 250, true, ":2: line is too long (250 bytes, at most 198)" },
                { 5000, true, ":2: line is too long (5000 bytes, at most 198)" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                for (int kind = 0; kind < 2; kind++) {
                        _cleanup_free_ char *ini = NULL, *path = NULL, *error = NULL, *want = NULL;
                        _cleanup_(config_freep) Config *c = NULL;
                        size_t n = 0, len = cases[i].len;
                        int r;

                        ini = malloc(len + 64);
                        ASSERT_TRUE(ini);
                        if (kind == 0) {
                                /* A comment line. */
                                n += (size_t) sprintf(ini, "[daemon]\n");
                                ini[n] = '#';
                                memset(ini + n + 1, 'x', len - 1);
                        } else {
                                n += (size_t) sprintf(ini, "[process \"p\"]\n");
                                /* A value: "match = xxx...". */
                                memcpy(ini + n, "match = ", 8);
                                memset(ini + n + 8, 'x', len - 8);
                        }
                        n += len;
                        if (cases[i].newline)
                                ini[n++] = '\n';
                        ini[n] = '\0';

                        path = write_file_mode("long.ini", ini, n, 0644);
                        r = config_load(path, &c, &error);
                        if (!cases[i].error) {
                                if (r < 0)
                                        TEST_FAIL("len %zu: %s", len, strna(error));
                                if (kind == 1) {
                                        ASSERT_EQ(c->n_processes, 1);
                                        ASSERT_EQ(strlen(c->processes[0].match), len - 8);
                                }
                                continue;
                        }
                        ASSERT_ERR(r, EINVAL);
                        ASSERT_TRUE(asprintf(&want, "%s%s", path, cases[i].error) > 0);
                        ASSERT_STREQ(error, want);
                }
        }
}

static void test_nul_byte(void) {
        static const char ini[] = "[daemon]\ncloud = aws\0gcp\n";
        _cleanup_free_ char *path = NULL, *error = NULL, *want = NULL;
        Config *c = NULL;

        path = write_file_mode("nul.ini", ini, sizeof(ini) - 1, 0644);
        ASSERT_ERR(config_load(path, &c, &error), EINVAL);
        ASSERT_TRUE(asprintf(&want, "%s:2: line contains a NUL byte", path) > 0);
        ASSERT_STREQ(error, want);
}

/* Errors about the file itself: "PATH: what", and the errno as it is. */
static void test_file_errors(void) {
        _cleanup_free_ char *missing = NULL, *dir = NULL, *big = NULL, *error = NULL, *want = NULL;
        Config *c = NULL;

        ASSERT_TRUE(asprintf(&missing, "%s/no-such.ini", tmpdir) > 0);
        ASSERT_ERR(config_load(missing, &c, &error), ENOENT);
        ASSERT_TRUE(c == NULL);
        ASSERT_TRUE(asprintf(&want, "%s: No such file or directory", missing) > 0);
        ASSERT_STREQ(error, want);
        error = mfree(error);
        want = mfree(want);

        ASSERT_TRUE(asprintf(&dir, "%s/subdir", tmpdir) > 0);
        ASSERT_ERR(config_load(dir, &c, &error), EISDIR);
        ASSERT_TRUE(asprintf(&want, "%s: Is a directory", dir) > 0);
        ASSERT_STREQ(error, want);
        error = mfree(error);
        want = mfree(want);

        /* More than 1 MiB of comments. */
        {
                size_t size = 10486 * 100; /* just over 1 MiB, whole 100-byte lines */
                _cleanup_free_ char *data = malloc(size);

                ASSERT_TRUE(data);
                for (size_t i = 0; i < size; i += 100) {
                        memset(data + i, '#', 99);
                        data[i + 99] = '\n';
                }
                big = write_file_mode("big.ini", data, size, 0644);
        }
        ASSERT_ERR(config_load(big, &c, &error), EFBIG);
        ASSERT_TRUE(asprintf(&want, "%s: file is too large", big) > 0);
        ASSERT_CONTAINS(error, want);
        error = mfree(error);

        ASSERT_ERR(config_load("", &c, &error), EINVAL);
        ASSERT_STREQ(error, "empty configuration file path");
        error = mfree(error);

        /* Root reads anything, so this case only means something for others. */
        if (geteuid() != 0) {
                _cleanup_free_ char *path = write_config("[daemon]\n");

                ASSERT_OK(chmod(path, 0));
                ASSERT_ERR(config_load(path, &c, &error), EACCES);
                ASSERT_CONTAINS(error, path);
        }
}

static char *read_source_file(const char *rel) {
        const char *root = getenv("SOURCE_ROOT");
        _cleanup_free_ char *path = NULL;
        char *data;
        FILE *f;
        long n;

        /* Tests run with workdir tests/unit. */
        ASSERT_TRUE(asprintf(&path, "%s/%s", root ? root : "../..", rel) > 0);
        f = fopen(path, "re");
        if (!f)
                TEST_FAIL("cannot open %s: %s", path, strerror(errno));
        ASSERT_EQ(fseek(f, 0, SEEK_END), 0);
        n = ftell(f);
        ASSERT_TRUE(n >= 0);
        rewind(f);
        data = calloc(1, (size_t) n + 1);
        ASSERT_TRUE(data);
        ASSERT_EQ(fread(data, 1, (size_t) n, f), (size_t) n);
        fclose(f);
        return data;
}

/* @text with the first @old replaced by @new. */
static char *replace_once(const char *text, const char *old, const char *new) {
        const char *at = strstr(text, old);
        char *out;

        if (!at)
                TEST_FAIL("\"%s\" not found", old);
        ASSERT_TRUE(asprintf(&out, "%.*s%s%s", (int) (at - text), text, new, at + strlen(old)) > 0);
        return out;
}

/*
 * The shipped file's examples with the '#' taken off: "#key = value" and
 * "#[section]" lines (no space after the '#'), not the prose.
 */
static char *uncomment_examples(const char *text) {
        char *all = malloc(strlen(text) + 1), *o = all;

        ASSERT_TRUE(all);
        for (const char *p = text; *p;) {
                const char *nl = strchrnul(p, '\n');

                bool key = p[1] >= 'a' && p[1] <= 'z' && memchr(p, '=', (size_t) (nl - p));

                if (p[0] == '#' && (key || p[1] == '['))
                        p++;
                memcpy(o, p, (size_t) (nl - p));
                o += nl - p;
                if (*nl)
                        *o++ = '\n';
                p = *nl ? nl + 1 : nl;
        }
        *o = '\0';
        return all;
}

/* conf/spotwatchd.ini is valid as shipped, on any machine. */
static void test_shipped(void) {
        _cleanup_free_ char *text = read_source_file("conf/spotwatchd.ini"), *all = NULL, *a = NULL,
                            *b = NULL, *examples = NULL;
        _cleanup_(config_freep) Config *c = NULL, *d = NULL;

        c = load_ok(text);
        ASSERT_EQ(c->cloud, CLOUD_AUTO);
        ASSERT_U64_EQ(c->poll_interval_usec, 1 * SEC);
        ASSERT_EQ(c->log, LOG_TARGET_AUTO);
        ASSERT_EQ(c->n_processes, 0);
        ASSERT_EQ(c->n_hooks, 0);
        ASSERT_EQ(c->n_uploads, 0);

        /*
         * Every commented-out key, uncommented, is valid too and gives the
         * default its comment documents. The examples' program and user need
         * not exist here, so swap in ours; match= is the alternative to
         * pidfile=, so it goes back to a comment.
         */
        all = uncomment_examples(text);
        a = replace_once(all, "exec = /usr/local/bin/flush-checkpoints", "exec = @DIR@/hook.sh");
        b = replace_once(a, "user = trainer", "user = root");
        examples = replace_once(b, "match = train.py", "#match = train.py");
        d = load_ok(examples);

        ASSERT_TRUE(d->metadata_url == NULL);
        ASSERT_U64_EQ(d->request_timeout_usec, 2 * SEC);
        ASSERT_EQ(d->events_mask, EVENT_MASK_DEFAULT);
        ASSERT_STREQ(d->control_socket, "/run/spotwatchd/control.sock");
        ASSERT_STREQ(d->state_dir, "/var/lib/spotwatchd");
        ASSERT_FALSE(d->imds_v1);
        ASSERT_U64_EQ(d->token_ttl_usec, 6 * 3600 * SEC);
        ASSERT_U64_EQ(d->deadline_margin_usec, 2 * SEC);
        ASSERT_U64_EQ(d->default_deadline_usec, 120 * SEC);
        ASSERT_U64_EQ(d->probe_timeout_usec, 1 * SEC);
        ASSERT_FALSE(d->aws_asg);
        ASSERT_FALSE(d->gcp_shutdown_script);
        ASSERT_U64_EQ(d->gcp_wait_usec, 60 * SEC);
        ASSERT_FALSE(d->azure_ack);
        ASSERT_FALSE(d->alibaba_token);
        ASSERT_EQ(d->n_processes, 1);
        ASSERT_STREQ(d->processes[0].pidfile, "/run/trainer.pid");
        ASSERT_EQ(d->processes[0].signal, SIGUSR1);
        ASSERT_EQ(d->n_hooks, 1);
        ASSERT_EQ(strv_length(d->hooks[0].argv), 2);
        ASSERT_U64_EQ(d->hooks[0].timeout_usec, 30 * SEC);
        ASSERT_EQ(d->n_uploads, 1);
        ASSERT_STREQ(d->uploads[0].name, "checkpoints");
        ASSERT_STREQ(d->uploads[0].source, "/data/checkpoints/*.pt");
        ASSERT_STREQ(d->uploads[0].destination, "s3://my-bucket/run-42/");
        ASSERT_EQ(d->uploads[0].scheme, UPLOAD_S3);
        ASSERT_STREQ(d->uploads[0].bucket, "my-bucket");
        ASSERT_STREQ(d->uploads[0].prefix, "run-42/");
        ASSERT_STREQ(d->uploads[0].endpoint, "http://127.0.0.1:7480");
        ASSERT_STREQ(d->uploads[0].region, "eu-west-1");
        ASSERT_U64_EQ(d->uploads[0].part_size, 64 * 1024 * 1024);
        ASSERT_EQ(d->uploads[0].concurrency, UPLOAD_DEFAULT_CONCURRENCY);
        ASSERT_EQ(d->uploads[0].checksum, UPLOAD_CHECKSUM_MD5);
        ASSERT_EQ(d->uploads[0].sync, UPLOAD_SYNC_NOTICE);
        ASSERT_U64_EQ(d->uploads[0].sync_rate, 100 * 1024 * 1024);
        ASSERT_EQ(d->uploads[0].newest, 2);
}

/* conf/demo.ini, with its hook where the demo script would have copied it. */
static void test_demo(void) {
        static const char hook_path[] = "/run/spotwatchd-demo/example-hook";
        _cleanup_free_ char *text = read_source_file("conf/demo.ini"), *fixed = NULL, *orig = NULL,
                            *error = NULL;
        _cleanup_(config_freep) Config *c = NULL;

        fixed = replace_once(text, hook_path, "@DIR@/hook.sh");

        c = load_ok(fixed);
        ASSERT_EQ(c->cloud, CLOUD_AWS);
        ASSERT_U64_EQ(c->poll_interval_usec, 1 * SEC);
        ASSERT_STREQ(c->control_socket, "/run/spotwatchd-demo/control.sock");
        ASSERT_STREQ(c->state_dir, "/run/spotwatchd-demo/state");
        ASSERT_EQ(c->n_processes, 1);
        ASSERT_STREQ(c->processes[0].name, "trainer");
        ASSERT_STREQ(c->processes[0].pidfile, "/run/spotwatchd-demo/trainer.pid");
        ASSERT_EQ(c->processes[0].signal, SIGUSR1);
        ASSERT_U64_EQ(c->processes[0].wait_usec, 20 * SEC);
        ASSERT_EQ(c->n_hooks, 1);
        ASSERT_STREQ(c->hooks[0].name, "example");
        ASSERT_U64_EQ(c->hooks[0].timeout_usec, 10 * SEC);
        ASSERT_EQ(c->n_uploads, 1);
        ASSERT_STREQ(c->uploads[0].name, "checkpoints");
        ASSERT_STREQ(c->uploads[0].source, "/run/spotwatchd-demo/checkpoints/*.json");
        ASSERT_STREQ(c->uploads[0].dest_path, "/run/spotwatchd-demo/uploaded");
        ASSERT_EQ(c->uploads[0].newest, 1);

        /* As is, it is valid exactly when the demo has put the hook in place. */
        orig = write_config(text);
        if (access(hook_path, X_OK) < 0) {
                ASSERT_ERR(config_load(orig, NULL, &error), EINVAL);
                ASSERT_CONTAINS(error, "[hook \"example\"] exec: "
                                       "'/run/spotwatchd-demo/example-hook' does not exist");
        }
}

int main(void) {
        setup();
        RUN(test_defaults);
        RUN(test_full);
        RUN(test_comments);
        RUN(test_hook_order);
        RUN(test_upload);
        RUN(test_limits);
        RUN(test_errors);
        RUN(test_long_lines);
        RUN(test_nul_byte);
        RUN(test_file_errors);
        RUN(test_shipped);
        RUN(test_demo);
        teardown();
        return 0;
}
