/* SPDX-License-Identifier: MIT */
/*
 * spotwatchctl.c - the client of spotwatchd's control socket. Builds one
 * request line per command with control-proto, prints the reply. Blocking
 * I/O is fine here: it is a short-lived command.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "build-config.h"
#include "config.h"
#include "shared/control-proto.h"
#include "shared/macro.h"

static void help(void) {
        printf("Usage: spotwatchctl [--socket PATH | -c FILE] COMMAND [OPTIONS]\n"
               "\n"
               "Commands:\n"
               "  status                          what the daemon watches, its last poll, the plan\n"
               "  trigger [--wait] [--event KIND] run the response plan now (a manual notice, or KIND:\n"
               "                                  preempt, terminate, shutdown, ...); --wait returns\n"
               "                                  when the plan has finished. A KIND whose plan already\n"
               "                                  ran (from the cloud's notice) does not run it again\n"
               "  done [--pid PID]                tell the running plan that PID (default: the process\n"
               "                                  that runs spotwatchctl) has checkpointed\n"
               "  fake-notice [--action|--event E] [--in SECONDS] [--clear]\n"
               "                                  fake-metadata mode: put a notice on the fake metadata\n"
               "                                  service; E is the cloud's word (aws: terminate, stop,\n"
               "                                  hibernate, rebalance, ...; gcp: preempt, maintenance;\n"
               "                                  azure: preempt, terminate, reboot, ...); its time is\n"
               "                                  SECONDS from now (120)\n"
               "  fake-credentials ACCESS_KEY_ID SECRET [--token T] [--expires-in SECONDS]\n"
               "  fake-credentials --token T [--expires-in SECONDS]\n"
               "  fake-credentials --none\n"
               "                                  fake-metadata mode: the instance credentials the fake\n"
               "                                  serves: aws: the instance role's key pair (--token: its\n"
               "                                  session token); gcp, azure: the bearer token. Each\n"
               "                                  answer expires SECONDS after it (3600); --none: no\n"
               "                                  instance role, service account or identity\n"
               "  upload [NAME]                   send the files of every [upload] (or of NAME) now,\n"
               "                                  newest first, skipping unchanged ones; prints each\n"
               "  ping                            check that the daemon answers\n"
               "\n"
               "  --socket PATH   the daemon's control socket (default %s)\n"
               "  -c FILE         read control_socket from the daemon's configuration FILE\n"
               "  -h, --help      show this help\n"
               "  --version       show the version\n",
               CONTROL_SOCKET);
}

/* Append " key=encoded(value)" to the request line. */
static int add_arg(char *line, size_t size, const char *key, const char *value) {
        char enc[CONTROL_LINE_MAX];
        size_t n = strlen(line);
        int k;

        if (control_encode(enc, sizeof(enc), value) < 0)
                return -ENOBUFS;
        k = snprintf(line + n, size - n, " %s=%s", key, enc);
        if (k < 0 || (size_t) k >= size - n)
                return -ENOBUFS;
        return 0;
}

static int connect_to(const char *path, bool wait_forever) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        struct timeval tv = { .tv_sec = 30 };
        int fd;

        if (strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        strcpy(sa.sun_path, path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (!wait_forever)
                (void) setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
                int e = -errno;
                close(fd);
                return e;
        }
        return fd;
}

/* Send @line, print the reply; returns the exit code. */
static int run(const char *path, const char *command, const char *line, bool wait_forever) {
        _cleanup_close_ int fd = -EBADF;
        char buf[CONTROL_LINE_MAX * 4];
        size_t len = 0;
        size_t n = strlen(line);

        fd = connect_to(path, wait_forever);
        if (fd < 0) {
                fprintf(stderr, "spotwatchctl: cannot connect to '%s': %s (is spotwatchd running?)\n", path,
                        strerror(-fd));
                return 1;
        }
        if (write(fd, line, n) != (ssize_t) n || write(fd, "\n", 1) != 1) {
                fprintf(stderr, "spotwatchctl: failed to send the request: %m\n");
                return 1;
        }

        for (;;) {
                char *nl;
                ssize_t k;

                while ((nl = memchr(buf, '\n', len))) {
                        char *key = NULL, *value = NULL;
                        *nl = 0;
                        int t = control_parse_reply_line(buf, &key, &value);
                        if (t == 1)
                                return 0;
                        if (t == 2) {
                                fprintf(stderr, "spotwatchctl: %s: %s\n", command, value);
                                return 1;
                        }
                        if (t == 0)
                                printf("%-18s %s\n", key, value);
                        else
                                fprintf(stderr, "spotwatchctl: garbled reply line ignored\n");
                        len -= (size_t) (nl + 1 - buf);
                        memmove(buf, nl + 1, len);
                }
                if (len >= sizeof(buf)) {
                        fprintf(stderr, "spotwatchctl: reply line too long\n");
                        return 1;
                }
                k = read(fd, buf + len, sizeof(buf) - len);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0) {
                        fprintf(stderr, "spotwatchctl: no answer from '%s': %m\n", path);
                        return 1;
                }
                if (k == 0) {
                        fprintf(stderr, "spotwatchctl: the daemon closed the connection without an answer\n");
                        return 1;
                }
                len += (size_t) k;
        }
}

int main(int argc, char *argv[]) {
        enum {
                ARG_SOCKET = 0x100,
                ARG_VERSION,
                ARG_WAIT,
                ARG_ACTION,
                ARG_EVENT,
                ARG_IN,
                ARG_CLEAR,
                ARG_PID,
                ARG_TOKEN,
                ARG_EXPIRES_IN,
                ARG_NONE,
        };
        static const struct option options[] = {
                { "socket", required_argument, NULL, ARG_SOCKET },
                { "config", required_argument, NULL, 'c' },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                { "wait", no_argument, NULL, ARG_WAIT },
                { "action", required_argument, NULL, ARG_ACTION },
                { "event", required_argument, NULL, ARG_EVENT },
                { "in", required_argument, NULL, ARG_IN },
                { "clear", no_argument, NULL, ARG_CLEAR },
                { "pid", required_argument, NULL, ARG_PID },
                { "token", required_argument, NULL, ARG_TOKEN },
                { "expires-in", required_argument, NULL, ARG_EXPIRES_IN },
                { "none", no_argument, NULL, ARG_NONE },
                {},
        };
        _cleanup_(config_freep) Config *config = NULL;
        const char *socket_path = NULL, *config_path = NULL, *command;
        const char *action = NULL, *event = NULL, *in = NULL, *pid = NULL, *token = NULL, *expires_in = NULL;
        bool wait = false, clear = false, none = false;
        char line[CONTROL_LINE_MAX];
        int c, r = 0;

        /* Options may come before or after the command word. */
        while ((c = getopt_long(argc, argv, "c:h", options, NULL)) >= 0)
                switch (c) {
                case ARG_SOCKET:
                        socket_path = optarg;
                        break;
                case 'c':
                        config_path = optarg;
                        break;
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("spotwatchctl %s\n", PACKAGE_VERSION);
                        return 0;
                case ARG_WAIT:
                        wait = true;
                        break;
                case ARG_ACTION:
                        action = optarg;
                        break;
                case ARG_EVENT:
                        event = optarg;
                        break;
                case ARG_IN:
                        in = optarg;
                        break;
                case ARG_CLEAR:
                        clear = true;
                        break;
                case ARG_PID:
                        pid = optarg;
                        break;
                case ARG_TOKEN:
                        token = optarg;
                        break;
                case ARG_EXPIRES_IN:
                        expires_in = optarg;
                        break;
                case ARG_NONE:
                        none = true;
                        break;
                default:
                        fprintf(stderr, "Try 'spotwatchctl --help'.\n");
                        return 1;
                }
        if (optind >= argc) {
                fprintf(stderr, "spotwatchctl: missing command\nTry 'spotwatchctl --help'.\n");
                return 1;
        }
        command = argv[optind];
        /*
         * Only `upload` takes a word after the command (the [upload] section's
         * name), and `fake-credentials` two (the key pair).
         */
        if (streq(command, "fake-credentials") && optind + 2 == argc) {
                fprintf(stderr, "spotwatchctl: fake-credentials: give both ACCESS_KEY_ID and SECRET\n");
                return 1;
        }
        if (optind + 1 < argc && !(streq(command, "upload") && optind + 2 == argc) &&
            !(streq(command, "fake-credentials") && optind + 3 == argc)) {
                fprintf(stderr, "spotwatchctl: unexpected argument '%s'\n", argv[optind + 1]);
                return 1;
        }

        if (!socket_path && config_path) {
                _cleanup_free_ char *err = NULL;
                r = config_load(config_path, &config, &err);
                if (r < 0) {
                        fprintf(stderr, "spotwatchctl: %s\n", err ? err : strerror(-r));
                        return 1;
                }
                socket_path = config->control_socket;
        }
        if (!socket_path)
                socket_path = CONTROL_SOCKET;

        (void) snprintf(line, sizeof(line), "%s", command);
        /* The options only fake-credentials takes. */
        if ((token || expires_in || none) && !streq(command, "fake-credentials"))
                goto bad_option;
        if (streq(command, "status") || streq(command, "ping")) {
                if (wait || action || event || in || clear || pid)
                        goto bad_option;
        } else if (streq(command, "trigger")) {
                if (action || in || clear || pid)
                        goto bad_option;
                if (wait)
                        r = add_arg(line, sizeof(line), "wait", "yes");
                if (r >= 0 && event)
                        r = add_arg(line, sizeof(line), "event", event);
        } else if (streq(command, "fake-notice")) {
                if (wait || pid || (action && event))
                        goto bad_option;
                /* --event is the same as --action: the cloud's own word. */
                if (action || event)
                        r = add_arg(line, sizeof(line), "action", action ?: event);
                if (r >= 0 && in)
                        r = add_arg(line, sizeof(line), "in", in);
                if (r >= 0 && clear)
                        r = add_arg(line, sizeof(line), "clear", "yes");
        } else if (streq(command, "fake-credentials")) {
                if (wait || action || event || in || clear || pid)
                        goto bad_option;
                if (optind + 3 == argc) {
                        r = add_arg(line, sizeof(line), "access_key_id", argv[optind + 1]);
                        if (r >= 0)
                                r = add_arg(line, sizeof(line), "secret_access_key", argv[optind + 2]);
                }
                if (r >= 0 && token)
                        r = add_arg(line, sizeof(line), "token", token);
                if (r >= 0 && expires_in)
                        r = add_arg(line, sizeof(line), "expires_in", expires_in);
                if (r >= 0 && none)
                        r = add_arg(line, sizeof(line), "none", "yes");
        } else if (streq(command, "upload")) {
                if (wait || action || event || in || clear || pid)
                        goto bad_option;
                if (optind + 1 < argc)
                        r = add_arg(line, sizeof(line), "name", argv[optind + 1]);
                /* Sending a large checkpoint takes as long as it takes: no answer timeout. */
                wait = true;
        } else if (streq(command, "done")) {
                if (wait || action || event || in || clear)
                        goto bad_option;
                /* Without --pid: the process that ran us, e.g. the trainer
                 * calling `spotwatchctl done` from its signal handler. */
                char ppid[32];
                (void) snprintf(ppid, sizeof(ppid), "%d", (int) getppid());
                r = add_arg(line, sizeof(line), "pid", pid ?: ppid);
        } else {
                fprintf(stderr, "spotwatchctl: unknown command '%s'\nTry 'spotwatchctl --help'.\n", command);
                return 1;
        }
        if (r < 0) {
                fprintf(stderr, "spotwatchctl: arguments too long\n");
                return 1;
        }
        return run(socket_path, command, line, wait);

bad_option:
        fprintf(stderr, "spotwatchctl: an option given does not apply to '%s'\nTry 'spotwatchctl --help'.\n",
                command);
        return 1;
}
