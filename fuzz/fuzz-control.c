/* SPDX-License-Identifier: MIT */
/*
 * fuzz-control.c - the control socket's line protocol (shared/control-proto.h)
 * with arbitrary bytes: the input is one request line for the daemon's
 * control_request_parse(), and, split at '\n', the reply lines that
 * spotwatchctl hands to control_parse_reply_line(). Checks that a parsed
 * request's values survive control_encode() and control_decode().
 */
#include <errno.h>

#include "fuzz.h"
#include "shared/control-proto.h"

static void fuzz_request(const uint8_t *data, size_t size) {
        static const char *const allowed[] = { "pid", "action", "in", "name", NULL };
        ControlRequest r;
        const char *error = NULL, *bad = NULL;
        char enc[CONTROL_LINE_MAX * 3 + 1], dec[sizeof(enc)];

        if (control_request_parse((const char *) data, size, &r, &error) < 0) {
                FUZZ_CHECK(error);
                return;
        }
        FUZZ_CHECK(r.command && r.n_args <= CONTROL_ARGS_MAX);
        for (size_t i = 0; i < r.n_args; i++) {
                FUZZ_CHECK(r.keys[i] && r.values[i]);
                FUZZ_CHECK(control_request_get(&r, r.keys[i]) == r.values[i]);

                /* Every value we accept, we can send back and read again. */
                FUZZ_CHECK(control_encode(enc, sizeof(enc), r.values[i]) == 0);
                FUZZ_CHECK(strpbrk(enc, " =\n") == NULL);
                memcpy(dec, enc, strlen(enc) + 1);
                FUZZ_CHECK(control_decode(dec) == 0);
                FUZZ_CHECK(strcmp(dec, r.values[i]) == 0);
        }
        if (control_request_check_keys(&r, allowed, &bad) < 0)
                FUZZ_CHECK(bad);
}

static void fuzz_reply(const uint8_t *data, size_t size) {
        char *text = fuzz_strndup(data, size), *line, *next;

        if (!text)
                return;
        for (line = text; line; line = next) {
                char *key = NULL, *value = NULL;
                int r;

                next = strchr(line, '\n');
                if (next)
                        *next++ = '\0';
                r = control_parse_reply_line(line, &key, &value);
                FUZZ_CHECK(r == 0 || r == 1 || r == 2 || r == -EBADMSG);
                if (r == 0)
                        FUZZ_CHECK(key && value);
                if (r == 2)
                        FUZZ_CHECK(value);
        }
        free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        fuzz_request(data, size);
        fuzz_reply(data, size);
        return 0;
}
