/* SPDX-License-Identifier: MIT */
/*
 * control.c - the control socket server (see control.h). Owns the listening
 * uv_pipe_t and one uv_pipe_t per connection; frames lines, parses them with
 * control-proto, hands requests to manager and writes replies. It never
 * executes a command itself.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "control.h"
#include "shared/log.h"

struct ControlServer {
        uv_loop_t *loop;
        uv_pipe_t listener;
        char *path;
        ControlRequestFn fn;
        void *userdata;
        ControlClient *clients;  /* list of live connections */
        unsigned n_clients;
        uint64_t refused, last_refused_log_msec;
        bool closing;
};

struct ControlClient {
        ControlServer *server;
        ControlClient *next, *prev;
        uv_pipe_t pipe;
        unsigned n_ref;
        bool connected;          /* the pipe is open */
        bool busy;               /* a request is waiting for its reply */
        uid_t uid;
        pid_t pid;
        char in[CONTROL_LINE_MAX + 1];
        size_t in_len;
        char *out;               /* pending reply lines */
        size_t out_len;
        bool out_overflow;
        bool close_after_write;  /* a fatal framing error: answer, then hang up */
        bool read_paused;        /* input buffer full while a reply is pending */
        bool eof;                /* the peer will send no more */
};

typedef struct WriteReq {
        uv_write_t req;
        ControlClient *client;
        char data[];
} WriteReq;

static void client_process(ControlClient *c);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

const char *control_server_path(ControlServer *s) {
        return s->path;
}

ControlClient *control_client_ref(ControlClient *c) {
        c->n_ref++;
        return c;
}

static void client_free(ControlClient *c) {
        free(c->out);
        free(c);
}

ControlClient *control_client_unref(ControlClient *c) {
        if (!c)
                return NULL;
        if (--c->n_ref == 0)
                client_free(c);
        return NULL;
}

uid_t control_client_uid(ControlClient *c) {
        return c->uid;
}

pid_t control_client_pid(ControlClient *c) {
        return c->pid;
}

bool control_client_is_connected(ControlClient *c) {
        return c->connected;
}

static void on_client_closed(uv_handle_t *h) {
        ControlClient *c = container_of((uv_pipe_t *) h, ControlClient, pipe);
        control_client_unref(c);
}

static void client_disconnect(ControlClient *c) {
        ControlServer *s = c->server;

        if (!c->connected)
                return;
        c->connected = false;
        if (c->prev)
                c->prev->next = c->next;
        else
                s->clients = c->next;
        if (c->next)
                c->next->prev = c->prev;
        c->next = c->prev = NULL;
        s->n_clients--;
        uv_close((uv_handle_t *) &c->pipe, on_client_closed);
}

static void out_append(ControlClient *c, const char *line) {
        size_t n = strlen(line);
        char *p;

        if (c->out_overflow)
                return;
        if (c->out_len + n + 1 > CONTROL_REPLY_MAX) {
                c->out_overflow = true;
                return;
        }
        p = realloc(c->out, c->out_len + n + 2);
        if (!p) {
                c->out_overflow = true;
                return;
        }
        c->out = p;
        memcpy(c->out + c->out_len, line, n);
        c->out_len += n;
        c->out[c->out_len++] = '\n';
        c->out[c->out_len] = 0;
}

static void on_written(uv_write_t *req, int status) {
        WriteReq *w = container_of(req, WriteReq, req);
        ControlClient *c = w->client;

        free(w);
        if (status < 0)
                log_debug_errno(status, "Control: write failed: %m");
        if (status < 0 || c->close_after_write)
                client_disconnect(c);
        control_client_unref(c);
}

static void client_flush(ControlClient *c, const char *final) {
        WriteReq *w;
        size_t n;
        uv_buf_t b;
        int r;

        if (!c->busy)
                return;
        c->busy = false;
        if (!c->connected)
                goto out;

        if (c->out_overflow) {
                c->out_len = 0;
                final = "error reply too large";
        }
        n = c->out_len + strlen(final) + 1;
        w = malloc(sizeof(*w) + n + 1);
        if (!w) {
                client_disconnect(c);
                goto out;
        }
        memcpy(w->data, c->out ? c->out : "", c->out_len);
        memcpy(w->data + c->out_len, final, strlen(final));
        w->data[n - 1] = '\n';
        w->client = control_client_ref(c);
        b = uv_buf_init(w->data, (unsigned) n);
        r = uv_write(&w->req, (uv_stream_t *) &c->pipe, &b, 1, on_written);
        if (r < 0) {
                control_client_unref(c);
                free(w);
                client_disconnect(c);
                goto out;
        }
out:
        c->out_len = 0;
        c->out_overflow = false;
        /* More requests may already be buffered. */
        if (c->connected && !c->close_after_write) {
                client_process(c);
                if (c->connected && c->eof && !c->busy)
                        client_disconnect(c);
                else if (c->connected && c->read_paused && !c->busy) {
                        c->read_paused = false;
                        if (uv_read_start((uv_stream_t *) &c->pipe, on_alloc, on_read) < 0)
                                client_disconnect(c);
                }
        }
}

void control_client_reply_kv(ControlClient *c, const char *key, const char *fmt, ...) {
        char value[CONTROL_LINE_MAX], enc[CONTROL_LINE_MAX * 3 + 1], line[sizeof(enc) + 64];
        va_list ap;

        va_start(ap, fmt);
        (void) vsnprintf(value, sizeof(value), fmt, ap);
        va_end(ap);
        if (control_encode(enc, sizeof(enc), value) < 0)
                return;
        (void) snprintf(line, sizeof(line), "%s=%s", key, enc);
        out_append(c, line);
}

void control_client_reply_ok(ControlClient *c) {
        client_flush(c, "ok");
}

static void reply_error_va(ControlClient *c, bool keep, const char *fmt, va_list ap) _printf_(3, 0);
static void reply_error_va(ControlClient *c, bool keep, const char *fmt, va_list ap) {
        char line[1024] = "error ";

        (void) vsnprintf(line + 6, sizeof(line) - 6, fmt, ap);
        /* One line, whatever the message held. */
        for (char *p = line; *p; p++)
                if (*p == '\n' || *p == '\r')
                        *p = ' ';
        if (!keep) {
                c->out_len = 0;
                c->out_overflow = false;
        }
        client_flush(c, line);
}

void control_client_reply_error(ControlClient *c, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        reply_error_va(c, false, fmt, ap);
        va_end(ap);
}

void control_client_reply_failed(ControlClient *c, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        reply_error_va(c, true, fmt, ap);
        va_end(ap);
}

/* Handle complete lines in the input buffer, one request at a time. */
static void client_process(ControlClient *c) {
        while (c->connected && !c->busy) {
                char *nl = memchr(c->in, '\n', c->in_len);
                ControlRequest req;
                const char *err = NULL;
                size_t len;
                int r;

                if (!nl) {
                        if (c->in_len >= CONTROL_LINE_MAX) {
                                c->in_len = 0;
                                c->busy = true;
                                c->close_after_write = true;
                                (void) uv_read_stop((uv_stream_t *) &c->pipe);
                                control_client_reply_error(c, "request line longer than %d bytes",
                                                           CONTROL_LINE_MAX);
                        }
                        break;
                }
                len = (size_t) (nl - c->in);
                r = control_request_parse(c->in, len, &req, &err);
                memmove(c->in, nl + 1, c->in_len - len - 1);
                c->in_len -= len + 1;

                c->busy = true;
                if (r < 0) {
                        control_client_reply_error(c, "bad request: %s", err);
                        continue;
                }
                control_client_ref(c);
                c->server->fn(c, &req, c->server->userdata);
                control_client_unref(c);
        }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
        ControlClient *c = container_of((uv_pipe_t *) h, ControlClient, pipe);
        size_t room = CONTROL_LINE_MAX - c->in_len;

        *buf = uv_buf_init(c->in + c->in_len, (unsigned) room);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
        ControlClient *c = container_of((uv_pipe_t *) stream, ControlClient, pipe);

        if (nread == UV_ENOBUFS) {
                /* The buffer is full of lines queued behind a pending reply:
                 * stop reading until that reply is sent. */
                (void) uv_read_stop(stream);
                c->read_paused = true;
                return;
        }
        if (nread == UV_EOF) {
                /* EOF: the peer has sent all it will; answer what is buffered
                 * only if a request is pending, else go. A half-closed peer
                 * waiting for a deferred reply keeps the connection. */
                c->eof = true;
                if (!c->busy)
                        client_disconnect(c);
                return;
        }
        if (nread < 0) {
                client_disconnect(c);
                return;
        }
        c->in_len += (size_t) nread;
        control_client_ref(c);
        client_process(c);
        control_client_unref(c);
}

static void on_connection(uv_stream_t *listener, int status) {
        ControlServer *s = container_of((uv_pipe_t *) listener, ControlServer, listener);
        ControlClient *c;
        struct ucred cred = {};
        socklen_t sl = sizeof(cred);
        uv_os_fd_t fd;
        int r;

        if (status < 0) {
                log_debug_errno(status, "Control: accept failed: %m, ignoring");
                return;
        }
        c = calloc(1, sizeof(*c));
        if (!c) {
                log_oom();
                return;
        }
        c->server = s;
        c->n_ref = 1; /* owned by the open pipe */
        r = uv_pipe_init(s->loop, &c->pipe, 0);
        if (r < 0) {
                free(c);
                return;
        }
        r = uv_accept(listener, (uv_stream_t *) &c->pipe);
        if (r < 0) {
                uv_close((uv_handle_t *) &c->pipe, on_client_closed);
                return;
        }
        c->connected = true;
        c->next = s->clients;
        if (s->clients)
                s->clients->prev = c;
        s->clients = c;
        s->n_clients++;

        if (uv_fileno((uv_handle_t *) &c->pipe, &fd) < 0 ||
            getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &sl) < 0) {
                client_disconnect(c);
                return;
        }
        c->uid = cred.uid;
        c->pid = cred.pid;

        if (s->n_clients > CONTROL_CLIENTS_MAX) {
                /* A client that floods us must not flood the journal too: one line a minute. */
                uint64_t now = uv_now(s->loop);
                if (s->refused == 0 || now - s->last_refused_log_msec >= 60 * 1000) {
                        log_warning("Control: more than %d connections, refusing one from PID %d "
                                    "(%" PRIu64 " refused since the last message)",
                                    CONTROL_CLIENTS_MAX, (int) c->pid, s->refused);
                        s->last_refused_log_msec = now;
                        s->refused = 0;
                }
                s->refused++;
                client_disconnect(c);
                return;
        }
        r = uv_read_start((uv_stream_t *) &c->pipe, on_alloc, on_read);
        if (r < 0)
                client_disconnect(c);
}

static int mkdir_parent(const char *path) {
        _cleanup_free_ char *dir = strdup(path);
        char *slash;

        if (!dir)
                return -ENOMEM;
        slash = strrchr(dir, '/');
        if (!slash || slash == dir)
                return 0;
        *slash = 0;
        for (char *p = dir + 1; *p; p++)
                if (*p == '/') {
                        *p = 0;
                        if (mkdir(dir, 0755) < 0 && errno != EEXIST)
                                return -errno;
                        *p = '/';
                }
        if (mkdir(dir, 0755) < 0 && errno != EEXIST)
                return -errno;
        return 0;
}

static void on_server_closed(uv_handle_t *h) {
        ControlServer *s = container_of((uv_pipe_t *) h, ControlServer, listener);
        free(s->path);
        free(s);
}

int control_server_new(uv_loop_t *loop, const char *path, ControlRequestFn fn, void *userdata,
                       ControlServer **ret) {
        ControlServer *s;
        struct stat st;
        int r;

        if (strlen(path) >= sizeof(((struct sockaddr_un *) NULL)->sun_path))
                return -ENAMETOOLONG;
        r = mkdir_parent(path);
        if (r < 0)
                return r;
        if (lstat(path, &st) >= 0) {
                if (!S_ISSOCK(st.st_mode))
                        return -EEXIST;
                (void) unlink(path);
        }

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->loop = loop;
        s->fn = fn;
        s->userdata = userdata;
        s->path = strdup(path);
        if (!s->path) {
                free(s);
                return -ENOMEM;
        }
        r = uv_pipe_init(loop, &s->listener, 0);
        if (r < 0) {
                free(s->path);
                free(s);
                return r;
        }
        r = uv_pipe_bind(&s->listener, path);
        if (r >= 0)
                r = uv_pipe_chmod(&s->listener, UV_READABLE | UV_WRITABLE);
        if (r >= 0)
                r = uv_listen((uv_stream_t *) &s->listener, 16, on_connection);
        if (r < 0) {
                uv_close((uv_handle_t *) &s->listener, on_server_closed);
                return r;
        }
        *ret = s;
        return 0;
}

void control_server_close(ControlServer *s) {
        if (!s || s->closing)
                return;
        s->closing = true;
        while (s->clients)
                client_disconnect(s->clients);
        (void) unlink(s->path);
        uv_close((uv_handle_t *) &s->listener, on_server_closed);
}
