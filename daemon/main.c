/* SPDX-License-Identifier: MIT */
/*
 * main.c - spotwatchd's command line: parse argv, load and check the
 * configuration, hand it to the manager, turn the result into an exit code.
 * The only place that exits.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "build-config.h"
#include "config.h"
#include "manager.h"
#include "shared/log.h"

static void help(void) {
        printf("Usage: spotwatchd [OPTIONS]\n"
               "\n"
               "Watch the cloud's instance metadata service and, when a spot/preemption\n"
               "notice appears, signal the registered processes, run the hooks and record\n"
               "the outcome, once per notice, inside the deadline the cloud gave.\n"
               "\n"
               "  -c, --config FILE          configuration file (default %s)\n"
               "      --check-config         check the configuration and exit 0 (valid) or 1\n"
               "      --fake-metadata[=CLOUD] serve a fake metadata service (aws, gcp, azure, alibaba;\n"
               "                             default aws) on 127.0.0.1 from inside\n"
               "                             the daemon and watch it (spotwatchctl fake-notice)\n"
               "  -v, --verbose              log debug messages\n"
               "  -h, --help                 show this help\n"
               "      --version              show the version\n",
               CONFIG_PATH);
}

int main(int argc, char *argv[]) {
        enum { ARG_CHECK = 0x100, ARG_FAKE, ARG_VERSION };
        static const struct option options[] = {
                { "config", required_argument, NULL, 'c' },
                { "check-config", no_argument, NULL, ARG_CHECK },
                { "fake-metadata", optional_argument, NULL, ARG_FAKE },
                { "verbose", no_argument, NULL, 'v' },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                {},
        };
        _cleanup_(manager_freep) Manager *m = NULL;
        _cleanup_(config_freep) Config *config = NULL;
        _cleanup_free_ char *err = NULL;
        const char *path = NULL;
        bool check = false, verbose = false, defaults = false;
        CloudKind fake = _CLOUD_INVALID;
        int c, r;

        while ((c = getopt_long(argc, argv, "c:vh", options, NULL)) >= 0)
                switch (c) {
                case 'c':
                        path = optarg;
                        break;
                case ARG_CHECK:
                        check = true;
                        break;
                case ARG_FAKE:
                        fake = cloud_kind_from_string(optarg ? optarg : "aws");
                        if (fake <= CLOUD_AUTO) {
                                fprintf(stderr, "spotwatchd: --fake-metadata=%s: expected aws, gcp, azure or "
                                                "alibaba\n", optarg);
                                return 1;
                        }
                        break;
                case 'v':
                        verbose = true;
                        break;
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("spotwatchd %s\n", PACKAGE_VERSION);
                        return 0;
                default:
                        fprintf(stderr, "Try 'spotwatchd --help'.\n");
                        return 1;
                }
        if (optind < argc) {
                fprintf(stderr, "spotwatchd: unexpected argument '%s'\nTry 'spotwatchd --help'.\n", argv[optind]);
                return 1;
        }

        /* In fake-metadata mode on a laptop there may be no installed config:
         * then run on the built-in defaults rather than fail. */
        if (!path && fake != _CLOUD_INVALID && !check && access(CONFIG_PATH, F_OK) < 0)
                defaults = true;
        if (!path)
                path = CONFIG_PATH;

        if (defaults)
                r = config_new_default(&config);
        else
                r = config_load(path, &config, &err);
        if (r < 0) {
                if (err)
                        fprintf(stderr, "spotwatchd: %s\n", err);
                else
                        fprintf(stderr, "spotwatchd: %s: %s\n", path, strerror(-r));
                return 1;
        }
        if (check) {
                printf("spotwatchd: %s: configuration is valid (%zu processes, %zu hooks, %zu uploads)\n", path,
                       config->n_processes, config->n_hooks, config->n_uploads);
                return 0;
        }

        uv_disable_stdio_inheritance();
        /* A control client that hangs up before its answer must not kill us;
         * write errors come back as EPIPE instead. (libuv resets signal
         * dispositions in the children it spawns.) */
        (void) signal(SIGPIPE, SIG_IGN);
        /* One pidfd per waited-for process: 1024 descriptors is too few for
         * a large fan-out. Hooks inherit the raised limit, which is harmless. */
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) >= 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                (void) setrlimit(RLIMIT_NOFILE, &rl);
        }
        log_open(config->log);
        if (verbose)
                log_set_max_level(LOG_DEBUG);
        if (defaults)
                log_info("No configuration at %s: running on built-in defaults", CONFIG_PATH);

        ManagerOptions opts = {
                .config_path = defaults ? NULL : path,
                .fake_cloud = fake,
        };
        r = manager_new(TAKE_PTR(config), &opts, &m);
        if (r < 0) {
                log_error_errno(r, "Failed to set up: %m");
                return 1;
        }
        r = manager_run(m);
        return r < 0 ? 1 : 0;
}
