/* SPDX-License-Identifier: MIT */
/*
 * control-proto.h - the control socket's line protocol, shared by the daemon
 * and spotwatchctl (as sway shares ipc.h with swaymsg). Pure: no I/O.
 *
 * Request, one line:   COMMAND [KEY=VALUE ...]\n
 * Reply, zero or more: KEY=VALUE\n      then exactly one of:  ok\n | error MESSAGE\n
 *
 * Values are percent-encoded: every byte but A-Za-z0-9 and ._-:/+@,~ is %XX,
 * so a value never holds a space, '=' or a newline. So, from Python:
 *
 *     s = socket.socket(socket.AF_UNIX); s.connect("/run/spotwatchd/control.sock")
 *     s.sendall(b"register pid=%d\n" % os.getpid())
 *     print(s.recv(4096).decode())        # "ok\n"
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#define CONTROL_LINE_MAX 4096
#define CONTROL_ARGS_MAX 16
#define CONTROL_SOCKET_DEFAULT "/run/spotwatchd/control.sock"

typedef struct ControlRequest {
        char *command;
        size_t n_args;
        char *keys[CONTROL_ARGS_MAX];
        char *values[CONTROL_ARGS_MAX];
        char buf[CONTROL_LINE_MAX + 1];
} ControlRequest;

/**
 * control_request_parse() - parse one line (without its '\n'). -EINVAL for a
 * bad command word, a word without '=', a bad %XX or a duplicate key; -E2BIG
 * for more than CONTROL_ARGS_MAX arguments; -EMSGSIZE for a line over
 * CONTROL_LINE_MAX. @ret_error gets a static description on failure.
 */
int control_request_parse(const char *line, size_t len, ControlRequest *ret, const char **ret_error);
/** control_request_get() - the decoded value of @key, or NULL. */
const char *control_request_get(const ControlRequest *r, const char *key);
/** control_request_check_keys() - -EINVAL if an argument is not in the NULL-terminated @allowed; *ret_bad names it. */
int control_request_check_keys(const ControlRequest *r, const char *const *allowed, const char **ret_bad);

/** control_encode() - percent-encode @value into @buf; -ENOBUFS if it does not fit. */
int control_encode(char *buf, size_t size, const char *value);
/** control_decode() - in place; -EINVAL for a bad escape or an encoded NUL. */
int control_decode(char *s);

/**
 * control_parse_reply_line() - classify one reply line (modified in place):
 * returns 0 for KEY=VALUE (decoded into *ret_key / *ret_value), 1 for "ok",
 * 2 for "error MSG" (*ret_value = MSG), -EBADMSG otherwise.
 */
int control_parse_reply_line(char *line, char **ret_key, char **ret_value);
