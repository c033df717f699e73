/* SPDX-License-Identifier: MIT */
/*
 * manager.h - owns the one uv loop and wires every module together: config
 * and reload, the provider (and the fake metadata server), the notice state
 * machine, the plan, the control socket, signals and sd_notify. The only
 * module that connects the others.
 */
#pragma once

#include "config.h"
#include "event.h"

typedef struct Manager Manager;

typedef struct ManagerOptions {
        const char *config_path;   /* for reload; NULL when running on built-in defaults */
        CloudKind fake_cloud;      /* _CLOUD_INVALID: no fake; else serve this cloud in-process */
} ManagerOptions;

/** manager_new() - takes ownership of @config (already loaded and checked). */
int manager_new(Config *config, const ManagerOptions *opts, Manager **ret);
/** manager_run() - start everything, run the loop until SIGTERM/SIGINT; returns 0 or -errno. */
int manager_run(Manager *m);
Manager *manager_free(Manager *m);
DEFINE_TRIVIAL_CLEANUP_FUNC(Manager *, manager_free);
