/* SPDX-License-Identifier: MIT */
/*
 * log.c - diagnostic messages to the journal (sd_journal_send with CODE_*
 * fields) or to stderr as "spotwatchd[PID]: <level> message". It keeps only
 * the target and the level; it never exits.
 */
#define SD_JOURNAL_SUPPRESS_LOCATION 1

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include "log.h"

static LogTarget log_target = LOG_TARGET_STDERR;
static int log_max_level = LOG_INFO;

static const char *const log_target_table[_LOG_TARGET_MAX] = {
        [LOG_TARGET_AUTO] = "auto",
        [LOG_TARGET_JOURNAL] = "journal",
        [LOG_TARGET_STDERR] = "stderr",
};

const char *log_target_to_string(LogTarget t) {
        if (t < 0 || t >= _LOG_TARGET_MAX)
                return NULL;
        return log_target_table[t];
}

LogTarget log_target_from_string(const char *s) {
        if (!s)
                return _LOG_TARGET_INVALID;
        for (LogTarget t = 0; t < _LOG_TARGET_MAX; t++)
                if (streq(log_target_table[t], s))
                        return t;
        return _LOG_TARGET_INVALID;
}

void log_open(LogTarget target) {
        if (target == LOG_TARGET_AUTO)
                target = access("/run/systemd/journal/socket", W_OK) >= 0 ? LOG_TARGET_JOURNAL
                                                                            : LOG_TARGET_STDERR;
        log_target = target;
}

bool log_is_journal(void) {
        return log_target == LOG_TARGET_JOURNAL;
}

void log_set_max_level(int level) {
        log_max_level = level;
}

int log_get_max_level(void) {
        return log_max_level;
}

static const char *level_name(int level) {
        static const char *const names[] = {
                [LOG_EMERG] = "emerg",  [LOG_ALERT] = "alert",   [LOG_CRIT] = "crit",
                [LOG_ERR] = "error",    [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
                [LOG_INFO] = "info",    [LOG_DEBUG] = "debug",
        };
        if (level < 0 || level > LOG_DEBUG)
                return "?";
        return names[level];
}

int log_internal(int level, int error, const char *file, int line, const char *func, const char *fmt, ...) {
        char buf[2048];
        va_list ap;

        if (error < 0)
                error = -error;
        if (level > log_max_level)
                return -error;

        /* Let %m print the error we were given, not whatever errno holds. */
        errno = error;
        va_start(ap, fmt);
        (void) vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);

        if (log_target == LOG_TARGET_JOURNAL) {
                char lbuf[16];
                (void) snprintf(lbuf, sizeof(lbuf), "%d", line);
                if (error > 0)
                        (void) sd_journal_send("MESSAGE=%s", buf, "PRIORITY=%d", level,
                                               "SYSLOG_IDENTIFIER=spotwatchd", "CODE_FILE=%s", file,
                                               "CODE_LINE=%s", lbuf, "CODE_FUNC=%s", func, "ERRNO=%d", error,
                                               NULL);
                else
                        (void) sd_journal_send("MESSAGE=%s", buf, "PRIORITY=%d", level,
                                               "SYSLOG_IDENTIFIER=spotwatchd", "CODE_FILE=%s", file,
                                               "CODE_LINE=%s", lbuf, "CODE_FUNC=%s", func, NULL);
        } else
                (void) fprintf(stderr, "spotwatchd[%d]: %s: %s\n", (int) getpid(), level_name(level), buf);

        return -error;
}
