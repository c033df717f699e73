/* SPDX-License-Identifier: MIT */
/*
 * control-proto.c - parse and encode the control socket's line protocol
 * (see control-proto.h). Pure functions; no allocation, no I/O.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "control-proto.h"
#include "macro.h"

static bool is_plain(unsigned char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               strchr("._-:/+@,~", c) != NULL;
}

static bool is_word(const char *s) {
        if (isempty(s))
                return false;
        for (; *s; s++)
                if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '-' || *s == '_'))
                        return false;
        return true;
}

static int unhex(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -EINVAL;
}

int control_encode(char *buf, size_t size, const char *value) {
        static const char hex[] = "0123456789ABCDEF";
        size_t n = 0;

        for (const unsigned char *p = (const unsigned char *) value; *p; p++) {
                if (is_plain(*p)) {
                        if (n + 1 >= size)
                                return -ENOBUFS;
                        buf[n++] = (char) *p;
                } else {
                        if (n + 3 >= size)
                                return -ENOBUFS;
                        buf[n++] = '%';
                        buf[n++] = hex[*p >> 4];
                        buf[n++] = hex[*p & 15];
                }
        }
        if (n >= size)
                return -ENOBUFS;
        buf[n] = 0;
        return 0;
}

int control_decode(char *s) {
        char *w = s;

        for (char *r = s; *r; r++) {
                if (*r != '%') {
                        *w++ = *r;
                        continue;
                }
                int hi = unhex(r[1]), lo = hi >= 0 ? unhex(r[2]) : -EINVAL;
                if (hi < 0 || lo < 0)
                        return -EINVAL;
                if (hi == 0 && lo == 0)
                        return -EINVAL;
                *w++ = (char) (hi << 4 | lo);
                r += 2;
        }
        *w = 0;
        return 0;
}

int control_request_parse(const char *line, size_t len, ControlRequest *ret, const char **ret_error) {
        char *p, *word, *save = NULL;

        if (len > CONTROL_LINE_MAX) {
                *ret_error = "line too long";
                return -EMSGSIZE;
        }
        if (memchr(line, 0, len)) {
                *ret_error = "NUL byte in request";
                return -EINVAL;
        }
        memcpy(ret->buf, line, len);
        ret->buf[len] = 0;
        if (len > 0 && ret->buf[len - 1] == '\r')
                ret->buf[len - 1] = 0;
        ret->n_args = 0;
        ret->command = NULL;

        p = ret->buf;
        word = strtok_r(p, " \t", &save);
        if (!word || !is_word(word)) {
                *ret_error = "bad or missing command word";
                return -EINVAL;
        }
        ret->command = word;

        while ((word = strtok_r(NULL, " \t", &save))) {
                char *eq = strchr(word, '=');
                if (!eq || eq == word) {
                        *ret_error = "argument is not KEY=VALUE";
                        return -EINVAL;
                }
                *eq = 0;
                if (!is_word(word)) {
                        *ret_error = "bad argument name";
                        return -EINVAL;
                }
                if (ret->n_args >= CONTROL_ARGS_MAX) {
                        *ret_error = "too many arguments";
                        return -E2BIG;
                }
                if (control_decode(eq + 1) < 0) {
                        *ret_error = "bad %XX escape in value";
                        return -EINVAL;
                }
                for (size_t i = 0; i < ret->n_args; i++)
                        if (streq(ret->keys[i], word)) {
                                *ret_error = "duplicate argument";
                                return -EINVAL;
                        }
                ret->keys[ret->n_args] = word;
                ret->values[ret->n_args] = eq + 1;
                ret->n_args++;
        }
        return 0;
}

const char *control_request_get(const ControlRequest *r, const char *key) {
        for (size_t i = 0; i < r->n_args; i++)
                if (streq(r->keys[i], key))
                        return r->values[i];
        return NULL;
}

int control_request_check_keys(const ControlRequest *r, const char *const *allowed, const char **ret_bad) {
        for (size_t i = 0; i < r->n_args; i++) {
                bool ok = false;
                for (const char *const *a = allowed; a && *a; a++)
                        if (streq(*a, r->keys[i]))
                                ok = true;
                if (!ok) {
                        *ret_bad = r->keys[i];
                        return -EINVAL;
                }
        }
        return 0;
}

int control_parse_reply_line(char *line, char **ret_key, char **ret_value) {
        char *eq;
        size_t n = strlen(line);

        if (n > 0 && line[n - 1] == '\r')
                line[--n] = 0;
        if (streq(line, "ok"))
                return 1;
        if (strncmp(line, "error", 5) == 0 && (line[5] == 0 || line[5] == ' ')) {
                *ret_value = line[5] ? line + 6 : line + 5;
                return 2;
        }
        eq = strchr(line, '=');
        if (!eq || eq == line)
                return -EBADMSG;
        *eq = 0;
        if (!is_word(line) || control_decode(eq + 1) < 0)
                return -EBADMSG;
        *ret_key = line;
        *ret_value = eq + 1;
        return 0;
}
