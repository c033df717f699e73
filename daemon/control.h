/* SPDX-License-Identifier: MIT */
/*
 * control.h - the control socket server: a Unix stream socket on the loop,
 * one request line at a time per connection (see shared/control-proto.h),
 * replies built with control_client_reply_*(). It parses and frames; what a
 * command means is manager's business (through the ControlRequestFn).
 *
 * Limits: CONTROL_CLIENTS_MAX connections, CONTROL_LINE_MAX per line,
 * CONTROL_REPLY_MAX per reply. A reply may be deferred (e.g. trigger with
 * wait): take a reference, answer later; if the peer has gone by then the
 * answer is dropped.
 */
#pragma once

#include <stdbool.h>
#include <sys/types.h>
#include <uv.h>

#include "shared/control-proto.h"
#include "shared/macro.h"

#define CONTROL_CLIENTS_MAX 64
#define CONTROL_REPLY_MAX (64 * 1024)

typedef struct ControlServer ControlServer;
typedef struct ControlClient ControlClient;

/* Called for each parsed request; must eventually answer with _ok() or _error(). */
typedef void (*ControlRequestFn)(ControlClient *c, const ControlRequest *req, void *userdata);

/**
 * control_server_new() - bind @path (its directory is created 0755; a stale
 * socket there is replaced, anything else there is -EEXIST), mode 0666 (each
 * command checks the caller's credentials), listen.
 */
int control_server_new(uv_loop_t *loop, const char *path, ControlRequestFn fn, void *userdata,
                       ControlServer **ret);
/** control_server_close() - close the listener and all connections, unlink the socket, free later. */
void control_server_close(ControlServer *s);
const char *control_server_path(ControlServer *s);

ControlClient *control_client_ref(ControlClient *c);
ControlClient *control_client_unref(ControlClient *c);
/** Peer credentials (SO_PEERCRED) taken at accept. */
uid_t control_client_uid(ControlClient *c);
pid_t control_client_pid(ControlClient *c);
bool control_client_is_connected(ControlClient *c);

/** control_client_reply_kv() - add "KEY=VALUE" (value formatted, then encoded) to the pending reply. */
void control_client_reply_kv(ControlClient *c, const char *key, const char *fmt, ...) _printf_(3, 4);
/** control_client_reply_ok() - finish the reply with "ok" and send it; the next request is read. */
void control_client_reply_ok(ControlClient *c);
/** control_client_reply_error() - drop pending KEY=VALUE lines, send "error MESSAGE". */
void control_client_reply_error(ControlClient *c, const char *fmt, ...) _printf_(2, 3);
/** control_client_reply_failed() - like _error(), but the pending KEY=VALUE lines are sent before it. */
void control_client_reply_failed(ControlClient *c, const char *fmt, ...) _printf_(2, 3);
