/* SPDX-License-Identifier: MIT */
/*
 * config.h - the parsed ini file. config_load() fills defaults, reads the file
 * with inih through a line-counting reader, then runs one pass of cross-field
 * checks. It never logs: the first error comes back as a message naming
 * file, line and key, for the caller to print. A Config is immutable once
 * loaded; reload builds a new one and swaps it only if it is valid.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "event.h"
#include "shared/log.h"

#define CONFIG_DEFAULT_PATH "/etc/spotwatchd/spotwatchd.ini"
/* The SPEC's defaults; they match the unit's RuntimeDirectory= and StateDirectory=. */
#define CONFIG_DEFAULT_CONTROL_SOCKET "/run/spotwatchd/control.sock"
#define CONFIG_DEFAULT_STATE_DIR "/var/lib/spotwatchd"
#define CONFIG_DEFAULT_HOOK_TIMEOUT_USEC (30 * USEC_PER_SEC)

typedef struct ProcessConfig {
        char *name;
        char *pidfile;      /* NULL if not set */
        char *match;        /* substring of the command line; NULL if not set */
        int signal;         /* default SIGUSR1 */
        uint64_t wait_usec; /* 0 = do not wait for exit/done */
        unsigned line;      /* line of the section header, for messages */
} ProcessConfig;

typedef struct HookConfig {
        char *name;
        char **argv;        /* split from exec =; argv[0] is absolute and executable */
        uint64_t timeout_usec;
        long order;
        char *user;         /* NULL = run as the daemon's user */
        unsigned line;
} HookConfig;

typedef enum UploadScheme {
        UPLOAD_FILE,  /* file:///path/ : a directory on this machine (NFS, a second disk) */
        _UPLOAD_SCHEME_MAX,
        _UPLOAD_SCHEME_INVALID = -EINVAL,
} UploadScheme;

typedef struct UploadConfig {
        char *name;
        char *source;       /* a file, a directory (its regular files) or a glob */
        char *destination;  /* as written, e.g. "file:///mnt/backup/run-42/" */
        UploadScheme scheme;
        char *dest_path;    /* UPLOAD_FILE: the absolute directory, no trailing '/' */
        unsigned newest;    /* only the newest N matching files; 0 = all */
        unsigned line;
} UploadConfig;

/** upload_scheme_to_string() - "file"; NULL for an invalid scheme. */
const char *upload_scheme_to_string(UploadScheme s);

typedef struct Config {
        char *path;

        /* [daemon] */
        CloudKind cloud;
        char *metadata_url;          /* NULL = the cloud's own address; never ends in '/' */
        uint64_t poll_interval_usec;
        uint64_t request_timeout_usec;
        unsigned events_mask;        /* EVENT_MASK() bits that start the plan */
        char *control_socket;
        char *state_dir;
        LogTarget log;
        bool imds_v1;                /* AWS: fall back to IMDSv1 when no token can be had */
        uint64_t token_ttl_usec;     /* AWS: TTL asked for the IMDSv2 token */
        uint64_t deadline_margin_usec; /* stages stop this long before the deadline */
        uint64_t default_deadline_usec; /* manual trigger / no cloud deadline: plan budget */
        uint64_t probe_timeout_usec;  /* cloud = auto: each metadata probe */
        bool aws_asg;                /* AWS: watch autoscaling/target-lifecycle-state */
        bool gcp_shutdown_script;    /* GCP: run the instance's shutdown-script at a preemption */
        uint64_t gcp_wait_usec;      /* GCP: timeout_sec of the hanging GETs */
        bool azure_ack;              /* Azure: StartRequests the event once the plan is done */
        bool alibaba_token;          /* Alibaba: hardened mode, session token on every GET */

        ProcessConfig *processes;
        size_t n_processes;
        HookConfig *hooks;           /* sorted by order, then file position */
        size_t n_hooks;
        UploadConfig *uploads;
        size_t n_uploads;
} Config;

/**
 * config_new_default() - a Config with every default and no sections; used by
 * --fake-metadata without -c and by tests.
 */
int config_new_default(Config **ret);

/**
 * config_load() - parse @path. On failure returns -errno and, if @ret_error is
 * non-NULL, a malloc'd message such as
 * "/etc/spotwatchd/spotwatchd.ini:12: [hook \"x\"] timeout: invalid duration 'abc'"
 * (NULL only if even that allocation failed). Errors opening or reading the
 * file come back as they are (-ENOENT, -EACCES, -EISDIR, -EFBIG: "PATH: what");
 * anything wrong inside the file is -EINVAL ("PATH:LINE: ..."); -ENOMEM. @ret
 * may be NULL to only check the file (--check-config); *ret is written only
 * on success.
 */
int config_load(const char *path, Config **ret, char **ret_error);

Config *config_free(Config *c);
DEFINE_TRIVIAL_CLEANUP_FUNC(Config *, config_free);
