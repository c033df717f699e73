/* SPDX-License-Identifier: MIT */
/*
 * parse.c - typed parsers for config values and protocol fields: durations,
 * booleans, signals, integers, RFC 3339 timestamps and shell-like word lists.
 * Every function here is pure: no I/O, no logging, no global state, and an
 * output parameter is written only on success. Callers turn the -errno
 * results into messages.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "macro.h"
#include "parse.h"

/* ---- durations ---------------------------------------------------------- */

typedef struct DurationUnit {
        const char *suffix;
        uint64_t usec;
} DurationUnit;

/* Two-letter suffixes first, so "ms" is not read as "m" followed by "s". */
static const DurationUnit duration_units[] = {
        { "us", UINT64_C(1) },
        { "ms", USEC_PER_MSEC },
        { "s", USEC_PER_SEC },
        { "m", 60 * USEC_PER_SEC },
        { "h", 3600 * USEC_PER_SEC },
        { "d", 86400 * USEC_PER_SEC },
};

static int add_u64(uint64_t a, uint64_t b, uint64_t *ret) {
        if (a > UINT64_MAX - b)
                return -ERANGE;
        *ret = a + b;
        return 0;
}

static int mul_u64(uint64_t a, uint64_t b, uint64_t *ret) {
        if (b != 0 && a > UINT64_MAX / b)
                return -ERANGE;
        *ret = a * b;
        return 0;
}

/*
 * One "NUMBER[UNIT]" component at *p. @bare_ok allows a missing unit
 * (seconds); that is only accepted when the component is the whole string.
 */
static int parse_duration_component(const char **p, bool bare_ok, uint64_t *ret_usec) {
        const char *s = *p, *int_start, *frac_start = NULL, *frac_end = NULL;
        const DurationUnit *unit = NULL;
        uint64_t whole = 0, usec, frac_usec = 0;
        bool overflow = false;
        int r;

        int_start = s;
        while (*s >= '0' && *s <= '9') {
                /* Keep scanning on overflow so that "99999999999999999999s" is -ERANGE, not -EINVAL. */
                if (mul_u64(whole, 10, &whole) < 0 || add_u64(whole, (uint64_t) (*s - '0'), &whole) < 0)
                        overflow = true;
                s++;
        }
        if (s == int_start)
                return -EINVAL;
        if (*s == '.') {
                s++;
                frac_start = s;
                while (*s >= '0' && *s <= '9')
                        s++;
                frac_end = s;
                if (frac_start == frac_end)
                        return -EINVAL;
        }

        for (size_t i = 0; i < ELEMENTSOF(duration_units); i++) {
                size_t n = strlen(duration_units[i].suffix);

                if (strncmp(s, duration_units[i].suffix, n) == 0) {
                        unit = &duration_units[i];
                        s += n;
                        break;
                }
        }
        if (!unit) {
                if (!bare_ok || *s != '\0')
                        return -EINVAL;
                unit = &duration_units[2]; /* seconds */
        }
        if (overflow)
                return -ERANGE;

        r = mul_u64(whole, unit->usec, &usec);
        if (r < 0)
                return r;

        /* Fraction digits beyond the unit's resolution are dropped (truncated). */
        if (frac_start) {
                uint64_t scale = unit->usec;

                for (const char *f = frac_start; f < frac_end && scale > 1; f++) {
                        scale /= 10;
                        frac_usec += (uint64_t) (*f - '0') * scale;
                }
        }
        r = add_u64(usec, frac_usec, &usec);
        if (r < 0)
                return r;

        *p = s;
        *ret_usec = usec;
        return 0;
}

int parse_duration(const char *s, uint64_t *ret_usec) {
        uint64_t total = 0;
        const char *p;
        bool first = true;
        int r;

        if (isempty(s))
                return -EINVAL;

        p = s;
        while (*p) {
                uint64_t part;

                r = parse_duration_component(&p, first, &part);
                if (r < 0)
                        return r;
                r = add_u64(total, part, &total);
                if (r < 0)
                        return r;
                first = false;
        }

        /* USEC_INFINITY means "forever" elsewhere; a finite duration never equals it. */
        if (total == USEC_INFINITY)
                return -ERANGE;

        *ret_usec = total;
        return 0;
}

static void format_duration_into(char *buf, size_t size, uint64_t usec) {
        static const struct {
                const char *suffix;
                uint64_t usec;
                unsigned decimals; /* 0: whole units only, the remainder is formatted after it */
        } units[] = {
                { "d", 86400 * USEC_PER_SEC, 0 },
                { "h", 3600 * USEC_PER_SEC, 0 },
                { "m", 60 * USEC_PER_SEC, 0 },
                { "s", USEC_PER_SEC, 6 },
                { "ms", USEC_PER_MSEC, 3 },
                { "us", 1, 0 },
        };

        if (size == 0)
                return;

        for (size_t i = 0; i < ELEMENTSOF(units); i++) {
                uint64_t n, rest;
                char frac[8];
                int k;

                if (usec < units[i].usec)
                        continue;
                n = usec / units[i].usec;
                rest = usec % units[i].usec;

                if (rest == 0) {
                        (void) snprintf(buf, size, "%" PRIu64 "%s", n, units[i].suffix);
                        return;
                }
                if (units[i].decimals == 0) {
                        /* "1m30s": whole units, then the remainder in smaller ones. */
                        k = snprintf(buf, size, "%" PRIu64 "%s", n, units[i].suffix);
                        if (k < 0 || (size_t) k >= size)
                                return;
                        format_duration_into(buf + k, size - (size_t) k, rest);
                        return;
                }

                /* "1.5s", "2.25ms": the fraction with trailing zeros cut. */
                (void) snprintf(frac, sizeof(frac), "%0*" PRIu64, (int) units[i].decimals, rest);
                for (k = (int) strlen(frac); k > 0 && frac[k - 1] == '0'; k--)
                        frac[k - 1] = '\0';
                (void) snprintf(buf, size, "%" PRIu64 ".%s%s", n, frac, units[i].suffix);
                return;
        }

        (void) snprintf(buf, size, "0");
}

char *format_duration(char *buf, size_t size, uint64_t usec) {
        if (size == 0)
                return buf;
        buf[0] = '\0';
        if (usec == USEC_INFINITY)
                (void) snprintf(buf, size, "infinity");
        else
                format_duration_into(buf, size, usec);
        return buf;
}

/* ---- booleans and integers ---------------------------------------------- */

int parse_bool(const char *s, bool *ret) {
        static const char *const yes[] = { "yes", "true", "on", "1" };
        static const char *const no[] = { "no", "false", "off", "0" };

        if (!s)
                return -EINVAL;
        for (size_t i = 0; i < ELEMENTSOF(yes); i++)
                if (strcasecmp(s, yes[i]) == 0) {
                        *ret = true;
                        return 0;
                }
        for (size_t i = 0; i < ELEMENTSOF(no); i++)
                if (strcasecmp(s, no[i]) == 0) {
                        *ret = false;
                        return 0;
                }
        return -EINVAL;
}

int parse_int(const char *s, long min, long max, long *ret) {
        const char *p;
        char *end = NULL;
        long v;

        if (isempty(s))
                return -EINVAL;
        /* strtol() would skip leading whitespace; we accept digits and one sign only. */
        p = s;
        if (*p == '-' || *p == '+')
                p++;
        if (*p < '0' || *p > '9')
                return -EINVAL;

        errno = 0;
        v = strtol(s, &end, 10);
        if (!end || *end != '\0')
                return -EINVAL;
        if (errno == ERANGE)
                return -ERANGE;
        if (errno != 0)
                return -EINVAL;
        if (v < min || v > max)
                return -ERANGE;

        *ret = v;
        return 0;
}

/* ---- signals ------------------------------------------------------------ */

static const char *const signal_names[] = {
        [SIGHUP] = "SIGHUP",       [SIGINT] = "SIGINT",       [SIGQUIT] = "SIGQUIT",
        [SIGILL] = "SIGILL",       [SIGTRAP] = "SIGTRAP",     [SIGABRT] = "SIGABRT",
        [SIGBUS] = "SIGBUS",       [SIGFPE] = "SIGFPE",       [SIGKILL] = "SIGKILL",
        [SIGUSR1] = "SIGUSR1",     [SIGSEGV] = "SIGSEGV",     [SIGUSR2] = "SIGUSR2",
        [SIGPIPE] = "SIGPIPE",     [SIGALRM] = "SIGALRM",     [SIGTERM] = "SIGTERM",
        [SIGSTKFLT] = "SIGSTKFLT", [SIGCHLD] = "SIGCHLD",     [SIGCONT] = "SIGCONT",
        [SIGSTOP] = "SIGSTOP",     [SIGTSTP] = "SIGTSTP",     [SIGTTIN] = "SIGTTIN",
        [SIGTTOU] = "SIGTTOU",     [SIGURG] = "SIGURG",       [SIGXCPU] = "SIGXCPU",
        [SIGXFSZ] = "SIGXFSZ",     [SIGVTALRM] = "SIGVTALRM", [SIGPROF] = "SIGPROF",
        [SIGWINCH] = "SIGWINCH",   [SIGIO] = "SIGIO",         [SIGPWR] = "SIGPWR",
        [SIGSYS] = "SIGSYS",
};

/* Other names the kernel headers give the same signals. */
static const struct {
        const char *name;
        int sig;
} signal_aliases[] = {
        { "SIGIOT", SIGABRT },
        { "SIGPOLL", SIGIO },
        { "SIGCLD", SIGCHLD },
};

/* Names for real-time signals as offsets from SIGRTMIN, so they need no buffer. */
static const char *const signal_rt_names[] = {
        "SIGRTMIN",    "SIGRTMIN+1",  "SIGRTMIN+2",  "SIGRTMIN+3",  "SIGRTMIN+4",  "SIGRTMIN+5",
        "SIGRTMIN+6",  "SIGRTMIN+7",  "SIGRTMIN+8",  "SIGRTMIN+9",  "SIGRTMIN+10", "SIGRTMIN+11",
        "SIGRTMIN+12", "SIGRTMIN+13", "SIGRTMIN+14", "SIGRTMIN+15", "SIGRTMIN+16", "SIGRTMIN+17",
        "SIGRTMIN+18", "SIGRTMIN+19", "SIGRTMIN+20", "SIGRTMIN+21", "SIGRTMIN+22", "SIGRTMIN+23",
        "SIGRTMIN+24", "SIGRTMIN+25", "SIGRTMIN+26", "SIGRTMIN+27", "SIGRTMIN+28", "SIGRTMIN+29",
        "SIGRTMIN+30", "SIGRTMIN+31", "SIGRTMIN+32",
};

const char *signal_to_string(int sig) {
        if (sig > 0 && (size_t) sig < ELEMENTSOF(signal_names) && signal_names[sig])
                return signal_names[sig];
        if (sig >= SIGRTMIN && sig <= SIGRTMAX && (size_t) (sig - SIGRTMIN) < ELEMENTSOF(signal_rt_names))
                return signal_rt_names[sig - SIGRTMIN];
        return NULL;
}

/* "RTMIN", "RTMIN+N", "RTMAX", "RTMAX-N" (without the SIG prefix). */
static int parse_signal_rt(const char *s, int *ret_sig) {
        int base, sign, sig;
        long n = 0;
        int r;

        if (strncasecmp(s, "RTMIN", 5) == 0) {
                base = SIGRTMIN;
                sign = '+';
        } else if (strncasecmp(s, "RTMAX", 5) == 0) {
                base = SIGRTMAX;
                sign = '-';
        } else
                return -EINVAL;

        s += 5;
        if (*s != '\0') {
                if (*s != sign)
                        return -EINVAL;
                s++;
                if (*s < '0' || *s > '9')
                        return -EINVAL;
                r = parse_int(s, 0, SIGRTMAX - SIGRTMIN, &n);
                if (r < 0)
                        return -EINVAL;
        }

        sig = sign == '+' ? base + (int) n : base - (int) n;
        if (sig < SIGRTMIN || sig > SIGRTMAX)
                return -EINVAL;
        *ret_sig = sig;
        return 0;
}

int parse_signal(const char *s, int *ret_sig) {
        const char *name;
        long n;

        if (isempty(s))
                return -EINVAL;

        if (*s >= '0' && *s <= '9') {
                if (parse_int(s, 1, SIGRTMAX, &n) < 0)
                        return -EINVAL;
                *ret_sig = (int) n;
                return 0;
        }

        name = strncasecmp(s, "SIG", 3) == 0 ? s + 3 : s;
        if (*name == '\0')
                return -EINVAL;

        for (size_t i = 1; i < ELEMENTSOF(signal_names); i++)
                if (signal_names[i] && strcasecmp(signal_names[i] + 3, name) == 0) {
                        *ret_sig = (int) i;
                        return 0;
                }
        for (size_t i = 0; i < ELEMENTSOF(signal_aliases); i++)
                if (strcasecmp(signal_aliases[i].name + 3, name) == 0) {
                        *ret_sig = signal_aliases[i].sig;
                        return 0;
                }
        return parse_signal_rt(name, ret_sig);
}

/* ---- RFC 3339 ----------------------------------------------------------- */

/* Exactly @n decimal digits at *p. */
static int parse_fixed_digits(const char **p, unsigned n, int *ret) {
        int v = 0;

        for (unsigned i = 0; i < n; i++) {
                char c = (*p)[i];

                if (c < '0' || c > '9')
                        return -EINVAL;
                v = v * 10 + (c - '0');
        }
        *p += n;
        *ret = v;
        return 0;
}

static int expect_char(const char **p, char c) {
        if (**p != c)
                return -EINVAL;
        (*p)++;
        return 0;
}

static bool is_leap_year(int y) {
        return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int days_in_month(int year, int month) {
        static const int days[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };

        if (month == 2 && is_leap_year(year))
                return 29;
        return days[month - 1];
}

int parse_rfc3339(const char *s, uint64_t *ret_usec) {
        int year, month, day, hour, minute, second, off_h = 0, off_m = 0;
        int64_t offset_sec = 0;
        uint64_t frac_usec = 0;
        struct tm tm = {};
        const char *p;
        time_t t;

        if (isempty(s))
                return -EINVAL;

        p = s;
        if (parse_fixed_digits(&p, 4, &year) < 0 || expect_char(&p, '-') < 0 ||
            parse_fixed_digits(&p, 2, &month) < 0 || expect_char(&p, '-') < 0 ||
            parse_fixed_digits(&p, 2, &day) < 0)
                return -EINVAL;
        /* RFC 3339 §5.6 allows "t", and a space "for the sake of readability". */
        if (*p != 'T' && *p != 't' && *p != ' ')
                return -EINVAL;
        p++;
        if (parse_fixed_digits(&p, 2, &hour) < 0 || expect_char(&p, ':') < 0 ||
            parse_fixed_digits(&p, 2, &minute) < 0 || expect_char(&p, ':') < 0 ||
            parse_fixed_digits(&p, 2, &second) < 0)
                return -EINVAL;

        if (*p == '.') {
                uint64_t scale = USEC_PER_SEC;
                const char *f = ++p;

                while (*p >= '0' && *p <= '9') {
                        scale /= 10;
                        frac_usec += (uint64_t) (*p - '0') * scale; /* digits past usec add 0 */
                        p++;
                }
                if (p == f)
                        return -EINVAL;
        }

        if (*p == 'Z' || *p == 'z')
                p++;
        else if (*p == '+' || *p == '-') {
                int sign = *p == '-' ? -1 : 1;

                p++;
                if (parse_fixed_digits(&p, 2, &off_h) < 0 || expect_char(&p, ':') < 0 ||
                    parse_fixed_digits(&p, 2, &off_m) < 0)
                        return -EINVAL;
                if (off_h > 23 || off_m > 59)
                        return -EINVAL;
                offset_sec = sign * ((int64_t) off_h * 3600 + off_m * 60);
        } else
                return -EINVAL;
        if (*p != '\0')
                return -EINVAL;

        if (month < 1 || month > 12 || day < 1 || day > days_in_month(year, month) || hour > 23 ||
            minute > 59 || second > 60) /* 60: a leap second; timegm() carries it into the next minute */
                return -EINVAL;

        tm.tm_year = year - 1900;
        tm.tm_mon = month - 1;
        tm.tm_mday = day;
        tm.tm_hour = hour;
        tm.tm_min = minute;
        tm.tm_sec = second;
        errno = 0;
        t = timegm(&tm);
        if (t == (time_t) -1 && errno != 0)
                return -ERANGE;

        /* The local time minus its offset is UTC. */
        if ((int64_t) t - offset_sec < 0)
                return -ERANGE;
        *ret_usec = (uint64_t) ((int64_t) t - offset_sec) * USEC_PER_SEC + frac_usec;
        return 0;
}

char *format_rfc3339(char *buf, size_t size, uint64_t usec) {
        time_t t = (time_t) (usec / USEC_PER_SEC);
        struct tm tm;

        if (size == 0)
                return buf;
        if (!gmtime_r(&t, &tm) || strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
                buf[0] = '\0';
        return buf;
}

/* ---- word lists --------------------------------------------------------- */

char **strv_free(char **l) {
        if (!l)
                return NULL;
        for (char **i = l; *i; i++)
                free(*i);
        free(l);
        return NULL;
}

size_t strv_length(char *const *l) {
        size_t n = 0;

        if (!l)
                return 0;
        while (l[n])
                n++;
        return n;
}

int split_words(const char *s, char ***ret_strv) {
        _cleanup_(strv_freep) char **l = NULL;
        _cleanup_free_ char *word = NULL;
        size_t n = 0;

        if (!s)
                return -EINVAL;

        l = calloc(1, sizeof(char *));
        if (!l)
                return -ENOMEM;
        /* No word is longer than the input. */
        word = malloc(strlen(s) + 1);
        if (!word)
                return -ENOMEM;

        for (const char *p = s;;) {
                size_t len = 0;
                char **nl;

                while (*p == ' ' || *p == '\t')
                        p++;
                if (*p == '\0')
                        break;

                /* One word: unquoted text, quoted parts and escapes, up to unquoted blank. */
                while (*p != '\0' && *p != ' ' && *p != '\t') {
                        if (*p == '\\') {
                                if (p[1] == '\0')
                                        return -EINVAL;
                                word[len++] = p[1];
                                p += 2;
                        } else if (*p == '\'') {
                                p++;
                                while (*p != '\'') {
                                        if (*p == '\0')
                                                return -EINVAL;
                                        word[len++] = *p++;
                                }
                                p++;
                        } else if (*p == '"') {
                                p++;
                                while (*p != '"') {
                                        if (*p == '\0')
                                                return -EINVAL;
                                        /* As in sh: inside "", only \" and \\ are escapes. */
                                        if (*p == '\\' && (p[1] == '"' || p[1] == '\\'))
                                                p++;
                                        word[len++] = *p++;
                                }
                                p++;
                        } else
                                word[len++] = *p++;
                }
                word[len] = '\0';

                nl = reallocarray(l, n + 2, sizeof(char *));
                if (!nl)
                        return -ENOMEM;
                l = nl;
                l[n] = strdup(word);
                if (!l[n])
                        return -ENOMEM;
                l[++n] = NULL;
        }

        *ret_strv = TAKE_PTR(l);
        return 0;
}
