// kvserver: a small key-value server speaking a subset of the Redis protocol (RESP2) on the
// listening socket the runtime preopens for it (`ferry run --listen HOST:PORT`, like
// `wasmtime --tcplisten`). One thread, one poll() over the listener and every client, non-blocking
// sockets, partial reads and writes, and per-client output buffers so a slow reader's large
// replies wait in the server (backpressure: a client with much unsent output is not read from).
//
// Commands: PING [msg], ECHO msg, SET key value, GET key, INCR key, DEL key..., DBSIZE,
// BIG n [seed] (a bulk string of n bytes: byte i is 'a' + (i * 7 + seed) % 26), QUIT,
// CONFIG GET save|appendonly (what redis-benchmark reads at start: nothing persisted), other
// CONFIG ... and COMMAND ... (empty arrays, for redis-benchmark and redis-cli). Inline commands
// (space-separated words on a line) work too.
//
//   kvserver [--fd N] [--max-clients N]
//
// Without --fd it serves the first socket among fds 3..63 (fstat S_ISSOCK). It prints
// "kvserver: serving fd N" once, and a line per client closed with an error on stderr.
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define READ_CHUNK 16384
#define OUT_HIGH_WATER (1u << 20) /* stop reading a client whose unsent output exceeds this */
#define MAX_BULK (64u << 20)
#define MAX_ARGS 1024

typedef struct {
  char *p;
  size_t len, cap, off; /* off: consumed (input) or sent (output) prefix */
} buf_t;

static void buf_reserve(buf_t *b, size_t more) {
  if (b->len + more <= b->cap) return;
  if (b->off > 0) { /* compact first */
    memmove(b->p, b->p + b->off, b->len - b->off);
    b->len -= b->off;
    b->off = 0;
    if (b->len + more <= b->cap) return;
  }
  size_t cap = b->cap ? b->cap : 4096;
  while (cap < b->len + more) cap *= 2;
  char *p = realloc(b->p, cap);
  if (!p) {
    fprintf(stderr, "kvserver: out of memory\n");
    exit(1);
  }
  b->p = p;
  b->cap = cap;
}

static void buf_put(buf_t *b, const void *data, size_t n) {
  buf_reserve(b, n);
  memcpy(b->p + b->len, data, n);
  b->len += n;
}

static void buf_puts(buf_t *b, const char *s) { buf_put(b, s, strlen(s)); }

static void buf_free(buf_t *b) {
  free(b->p);
  memset(b, 0, sizeof *b);
}

/* ---- the store: a chained hash table of byte strings ---- */

typedef struct entry {
  struct entry *next;
  size_t klen, vlen;
  char *key, *val;
} entry_t;

static entry_t **table;
static size_t nbuckets = 1024, nkeys;

static uint64_t hash(const char *k, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)k[i]) * 1099511628211ull;
  return h;
}

static entry_t **find(const char *k, size_t n) {
  entry_t **e = &table[hash(k, n) % nbuckets];
  while (*e && !((*e)->klen == n && memcmp((*e)->key, k, n) == 0)) e = &(*e)->next;
  return e;
}

static void grow(void) {
  size_t nb = nbuckets * 2;
  entry_t **t = calloc(nb, sizeof *t);
  if (!t) return;
  for (size_t i = 0; i < nbuckets; i++) {
    for (entry_t *e = table[i], *next; e; e = next) {
      next = e->next;
      size_t j = hash(e->key, e->klen) % nb;
      e->next = t[j];
      t[j] = e;
    }
  }
  free(table);
  table = t;
  nbuckets = nb;
}

static void set(const char *k, size_t kn, const char *v, size_t vn) {
  entry_t **slot = find(k, kn);
  entry_t *e = *slot;
  if (!e) {
    e = calloc(1, sizeof *e);
    e->key = malloc(kn ? kn : 1);
    memcpy(e->key, k, kn);
    e->klen = kn;
    *slot = e;
    if (++nkeys > nbuckets * 2) grow();
  }
  free(e->val);
  e->val = malloc(vn ? vn : 1);
  memcpy(e->val, v, vn);
  e->vlen = vn;
}

static int del(const char *k, size_t n) {
  entry_t **slot = find(k, n);
  entry_t *e = *slot;
  if (!e) return 0;
  *slot = e->next;
  free(e->key);
  free(e->val);
  free(e);
  nkeys--;
  return 1;
}

/* ---- clients ---- */

typedef struct {
  int fd;
  buf_t in, out;
  int closing; /* QUIT: close once the output is sent */
} client_t;

static client_t *clients;
static struct pollfd *pfds;
static size_t nclients, max_clients = 1024;

static void reply_bulk(buf_t *o, const char *p, size_t n) {
  char head[32];
  snprintf(head, sizeof head, "$%zu\r\n", n);
  buf_puts(o, head);
  buf_put(o, p, n);
  buf_puts(o, "\r\n");
}

static void reply_int(buf_t *o, long long v) {
  char s[32];
  snprintf(s, sizeof s, ":%lld\r\n", v);
  buf_puts(o, s);
}

static int eq(const char *a, size_t n, const char *word) {
  size_t w = strlen(word);
  if (n != w) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = a[i];
    if (c >= 'a' && c <= 'z') c -= 32;
    if (c != word[i]) return 0;
  }
  return 1;
}

static int parse_ll(const char *p, size_t n, long long *out) {
  if (n == 0 || n > 20) return 0;
  char tmp[24];
  memcpy(tmp, p, n);
  tmp[n] = 0;
  char *end;
  errno = 0;
  long long v = strtoll(tmp, &end, 10);
  if (errno || *end) return 0;
  *out = v;
  return 1;
}

static void execute(client_t *c, int argc, const char **argv, const size_t *lens) {
  buf_t *o = &c->out;
  if (argc == 0) return;
  const char *cmd = argv[0];
  size_t cl = lens[0];
  if (eq(cmd, cl, "PING")) {
    if (argc > 1) reply_bulk(o, argv[1], lens[1]);
    else buf_puts(o, "+PONG\r\n");
  } else if (eq(cmd, cl, "ECHO") && argc == 2) {
    reply_bulk(o, argv[1], lens[1]);
  } else if (eq(cmd, cl, "SET") && argc >= 3) {
    set(argv[1], lens[1], argv[2], lens[2]);
    buf_puts(o, "+OK\r\n");
  } else if (eq(cmd, cl, "GET") && argc == 2) {
    entry_t *e = *find(argv[1], lens[1]);
    if (e) reply_bulk(o, e->val, e->vlen);
    else buf_puts(o, "$-1\r\n");
  } else if (eq(cmd, cl, "INCR") && argc == 2) {
    entry_t *e = *find(argv[1], lens[1]);
    long long v = 0;
    if (e && !parse_ll(e->val, e->vlen, &v)) {
      buf_puts(o, "-ERR value is not an integer or out of range\r\n");
      return;
    }
    v++;
    char s[24];
    int n = snprintf(s, sizeof s, "%lld", v);
    set(argv[1], lens[1], s, (size_t)n);
    reply_int(o, v);
  } else if (eq(cmd, cl, "DEL") && argc >= 2) {
    long long n = 0;
    for (int i = 1; i < argc; i++) n += del(argv[i], lens[i]);
    reply_int(o, n);
  } else if (eq(cmd, cl, "DBSIZE")) {
    reply_int(o, (long long)nkeys);
  } else if (eq(cmd, cl, "BIG") && (argc == 2 || argc == 3)) {
    long long n, seed = 0;
    if (!parse_ll(argv[1], lens[1], &n) || n < 0 || n > (long long)MAX_BULK || (argc == 3 && !parse_ll(argv[2], lens[2], &seed))) {
      buf_puts(o, "-ERR BIG needs a length up to 64 MiB and an integer seed\r\n");
      return;
    }
    char head[32];
    snprintf(head, sizeof head, "$%lld\r\n", n);
    buf_puts(o, head);
    buf_reserve(o, (size_t)n + 2);
    char *p = o->p + o->len;
    for (long long i = 0; i < n; i++) p[i] = (char)('a' + (int)((i * 7 + seed) % 26 + 26) % 26);
    o->len += (size_t)n;
    buf_puts(o, "\r\n");
  } else if (eq(cmd, cl, "QUIT")) {
    buf_puts(o, "+OK\r\n");
    c->closing = 1;
  } else if (eq(cmd, cl, "CONFIG") && argc == 3 && eq(argv[1], lens[1], "GET") && (eq(argv[2], lens[2], "SAVE") || eq(argv[2], lens[2], "APPENDONLY"))) {
    /* redis-benchmark asks for these two at start (and warns without them): nothing is persisted. */
    buf_puts(o, "*2\r\n");
    reply_bulk(o, argv[2], lens[2]);
    if (eq(argv[2], lens[2], "SAVE")) reply_bulk(o, "", 0);
    else reply_bulk(o, "no", 2);
  } else if (eq(cmd, cl, "CONFIG") || eq(cmd, cl, "COMMAND")) {
    buf_puts(o, "*0\r\n");
  } else {
    buf_puts(o, "-ERR unknown command or wrong number of arguments\r\n");
  }
}

/* Parses and runs every complete command in c->in. Returns -1 on a protocol error. */
static int process(client_t *c) {
  static const char *argv[MAX_ARGS];
  static size_t lens[MAX_ARGS];
  buf_t *in = &c->in;
  while (in->off < in->len && !c->closing) {
    char *p = in->p + in->off, *end = in->p + in->len;
    int argc = 0;
    if (*p == '*') {
      char *nl = memchr(p, '\n', (size_t)(end - p));
      if (!nl) return 0;
      long long n;
      if (nl[-1] != '\r' || !parse_ll(p + 1, (size_t)(nl - 1 - (p + 1)), &n) || n < 0 || n > MAX_ARGS) return -1;
      char *q = nl + 1;
      for (long long i = 0; i < n; i++) {
        if (q >= end) return 0;
        if (*q != '$') return -1;
        char *nl2 = memchr(q, '\n', (size_t)(end - q));
        if (!nl2) return 0;
        long long len;
        if (nl2[-1] != '\r' || !parse_ll(q + 1, (size_t)(nl2 - 1 - (q + 1)), &len) || len < 0 || len > (long long)MAX_BULK) return -1;
        char *data = nl2 + 1;
        if ((size_t)(end - data) < (size_t)len + 2) return 0;
        argv[argc] = data;
        lens[argc++] = (size_t)len;
        q = data + len + 2;
      }
      in->off = (size_t)(q - in->p);
    } else {
      char *nl = memchr(p, '\n', (size_t)(end - p));
      if (!nl) return (size_t)(end - p) > 65536 ? -1 : 0;
      char *q = p, *stop = nl > p && nl[-1] == '\r' ? nl - 1 : nl;
      while (q < stop && argc < MAX_ARGS) {
        while (q < stop && *q == ' ') q++;
        if (q == stop) break;
        char *w = q;
        while (q < stop && *q != ' ') q++;
        argv[argc] = w;
        lens[argc++] = (size_t)(q - w);
      }
      in->off = (size_t)(nl + 1 - in->p);
    }
    execute(c, argc, argv, lens);
  }
  if (in->off == in->len) in->off = in->len = 0;
  return 0;
}

static void drop(size_t i, const char *why) {
  if (why) fprintf(stderr, "kvserver: closing client fd %d: %s\n", clients[i].fd, why);
  close(clients[i].fd);
  buf_free(&clients[i].in);
  buf_free(&clients[i].out);
  clients[i] = clients[nclients - 1];
  nclients--;
}

/* Sends what it can. Returns -1 when the client is gone. */
static int flush(client_t *c) {
  buf_t *o = &c->out;
  while (o->off < o->len) {
    ssize_t n = send(c->fd, o->p + o->off, o->len - o->off, 0);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
      return -1;
    }
    o->off += (size_t)n;
  }
  o->off = o->len = 0;
  if (o->cap > (4u << 20)) buf_free(o); /* do not keep a huge reply's buffer per client */
  return 0;
}

static int find_socket(void) {
  for (int fd = 3; fd < 64; fd++) {
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode)) return fd;
  }
  return -1;
}

int main(int argc, char **argv) {
  int lfd = -1;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--fd") == 0 && i + 1 < argc) lfd = atoi(argv[++i]);
    else if (strcmp(argv[i], "--max-clients") == 0 && i + 1 < argc) max_clients = (size_t)atol(argv[++i]);
    else {
      fprintf(stderr, "usage: kvserver [--fd N] [--max-clients N]\n");
      return 2;
    }
  }
  if (lfd < 0) lfd = find_socket();
  if (lfd < 0) {
    fprintf(stderr, "kvserver: no listening socket (run it with ferry run --listen HOST:PORT)\n");
    return 2;
  }
  if (fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) | O_NONBLOCK) != 0) {
    perror("kvserver: fcntl O_NONBLOCK on the listener");
    return 1;
  }
  table = calloc(nbuckets, sizeof *table);
  clients = calloc(max_clients, sizeof *clients);
  pfds = calloc(max_clients + 1, sizeof *pfds);
  if (!table || !clients || !pfds) return 1;
  printf("kvserver: serving fd %d\n", lfd);
  fflush(stdout);
  for (;;) {
    pfds[0].fd = lfd;
    pfds[0].events = nclients < max_clients ? POLLIN : 0;
    pfds[0].revents = 0;
    for (size_t i = 0; i < nclients; i++) {
      client_t *c = &clients[i];
      size_t pending = c->out.len - c->out.off;
      pfds[i + 1].fd = c->fd;
      pfds[i + 1].events = (short)((pending < OUT_HIGH_WATER && !c->closing ? POLLIN : 0) | (pending > 0 ? POLLOUT : 0));
      pfds[i + 1].revents = 0;
    }
    size_t polled = nclients;
    if (poll(pfds, polled + 1, -1) < 0) {
      if (errno == EINTR) continue;
      perror("kvserver: poll");
      return 1;
    }
    /* Clients first, from the last (drop() moves the last one into the hole). */
    for (size_t k = polled; k > 0; k--) {
      size_t i = k - 1;
      client_t *c = &clients[i];
      short re = pfds[k].revents;
      if (!re) continue;
      if (re & (POLLIN | POLLHUP | POLLERR)) {
        if (pfds[k].events & POLLIN) {
          buf_reserve(&c->in, READ_CHUNK);
          ssize_t n = recv(c->fd, c->in.p + c->in.len, READ_CHUNK, 0);
          if (n == 0) {
            drop(i, NULL);
            continue;
          }
          if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
              drop(i, strerror(errno));
              continue;
            }
          } else {
            c->in.len += (size_t)n;
            if (process(c) < 0) {
              buf_puts(&c->out, "-ERR protocol error\r\n");
              c->closing = 1;
            }
          }
        } else if (re & (POLLHUP | POLLERR) && !(re & POLLOUT)) {
          drop(i, "hangup while output was pending");
          continue;
        }
      }
      if (c->out.len > c->out.off && flush(c) < 0) {
        drop(i, strerror(errno));
        continue;
      }
      if (c->closing && c->out.len == c->out.off) drop(i, NULL);
    }
    if (pfds[0].revents & POLLIN) {
      while (nclients < max_clients) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
          if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ECONNABORTED) perror("kvserver: accept");
          break;
        }
        if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) {
          close(fd);
          continue;
        }
        memset(&clients[nclients], 0, sizeof clients[nclients]);
        clients[nclients++].fd = fd;
      }
    }
  }
}
