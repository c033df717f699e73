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
        UPLOAD_S3,    /* s3://bucket/prefix/ : S3 or an S3-compatible store (endpoint =) */
        UPLOAD_GS,    /* gs://bucket/prefix/ : Google Cloud Storage through its S3-compatible XML API */
        UPLOAD_AZ,    /* az://account/container/prefix/ : Azure Blob Storage (block blobs) */
        _UPLOAD_SCHEME_MAX,
        _UPLOAD_SCHEME_INVALID = -EINVAL,
} UploadScheme;

/* What each request (each part) carries for the store to verify. */
typedef enum UploadChecksum {
        UPLOAD_CHECKSUM_MD5,    /* Content-MD5 (S3, RGW, GCS, Azure all verify it); the default */
        UPLOAD_CHECKSUM_CRC32C, /* x-amz-checksum-crc32c (AWS S3 verifies; RGW ignores it) / x-ms-content-crc64 n/a */
        UPLOAD_CHECKSUM_SHA256, /* x-amz-content-sha256 = the payload's real hash (signed) */
        UPLOAD_CHECKSUM_NONE,   /* UNSIGNED-PAYLOAD, nothing per request: TCP/TLS only */
        _UPLOAD_CHECKSUM_MAX,
        _UPLOAD_CHECKSUM_INVALID = -EINVAL,
} UploadChecksum;

typedef enum UploadSync {
        UPLOAD_SYNC_NOTICE,     /* only in the plan and by hand (spotwatchctl upload) */
        UPLOAD_SYNC_CONTINUOUS, /* also in the background as files appear or change */
        _UPLOAD_SYNC_MAX,
        _UPLOAD_SYNC_INVALID = -EINVAL,
} UploadSync;

#define UPLOAD_DEFAULT_CONCURRENCY 4U
#define UPLOAD_CONCURRENCY_MAX 64U
#define UPLOAD_PART_SIZE_MIN (5U * 1024U * 1024U)           /* S3's minimum but for the last part */
#define UPLOAD_PART_SIZE_MAX (UINT64_C(5) * 1024U * 1024U * 1024U) /* S3's maximum part */
#define UPLOAD_DEFAULT_REGION "us-east-1"

typedef struct UploadConfig {
        char *name;
        char *source;       /* a file, a directory (its regular files) or a glob */
        char *destination;  /* as written, e.g. "file:///mnt/backup/run-42/" */
        UploadScheme scheme;
        char *dest_path;    /* UPLOAD_FILE: the absolute directory, no trailing '/' */
        unsigned newest;    /* only the newest N matching files; 0 = all */

        /* s3://, gs://, az:// */
        char *account;      /* UPLOAD_AZ: the storage account; else NULL */
        char *bucket;       /* the bucket (UPLOAD_AZ: the container) */
        char *prefix;       /* key prefix, unescaped: "" or ending in '/' */
        char *endpoint;     /* endpoint = "http://127.0.0.1:7480" (path-style); NULL = the store's public one */
        char *region;       /* region = ; NULL = UPLOAD_DEFAULT_REGION (s3), "auto" (gs) */
        uint64_t part_size; /* part_size = ; 0 = adapt to the file size */
        unsigned concurrency; /* concurrency = parts in flight per object; default UPLOAD_DEFAULT_CONCURRENCY */
        UploadChecksum checksum;
        char *access_key_id;     /* s3/gs (HMAC): access_key_id = ; NULL = not set */
        char *secret_access_key; /* secret_access_key = */
        char *session_token;     /* session_token = */
        char *account_key;       /* az: account_key = (base64 shared key) */
        char *sas_token;         /* az: sas_token = (without a leading '?') */
        UploadSync sync;
        uint64_t sync_rate;      /* sync_rate = bytes/s for continuous sync, 0 = unlimited */

        unsigned line;
} UploadConfig;

/** upload_scheme_to_string() - "file"; NULL for an invalid scheme. */
const char *upload_scheme_to_string(UploadScheme s);
/** upload_checksum_to_string() - "md5", "crc32c", "sha256", "none"; NULL if invalid. */
const char *upload_checksum_to_string(UploadChecksum c);

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
