// The data plane's framing on a plain stream socket: a cleartext hello exchange, keys derived from
// the TLS exporter secret and both hellos' random nonces (HKDF-SHA256, RFC 5869), then AES-256-GCM
// frames whose nonces are a per-direction IV xor a frame counter (as TLS 1.3 does, RFC 8446 §5.3).
// The counter is never sent: a frame that is replayed, dropped, reordered or altered fails
// authentication. Layout and reasons: docs/wire-format.md, "Native data plane".
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "dp.h"

static const uint8_t MAGIC[8] = {'F', 'E', 'R', 'R', 'Y', 'D', 'P', '1'};

void dp_set_err(char *err, const char *fmt, ...) {
  if (err[0]) return; /* the first cause is the one worth reporting */
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, DP_ERR, fmt, ap);
  va_end(ap);
}

uint32_t dp_be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
void dp_put_be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

void dp_bucket_init(dp_bucket *b, double rate) {
  b->rate = rate > 0 ? rate : 0;
  b->burst = 4.0 * DP_MAX_FRAME;
  b->tokens = b->last_us = 0;
  b->full = 0;
}

double dp_bucket_wait_ms(dp_bucket *b) {
  if (b->rate <= 0) return 0;
  double now = dp_now_us();
  if (!b->full) {
    b->tokens = b->burst;
    b->last_us = now;
    b->full = 1;
  }
  b->tokens += (now - b->last_us) / 1e6 * b->rate;
  if (b->tokens > b->burst) b->tokens = b->burst;
  b->last_us = now;
  return b->tokens >= 0 ? 0 : -b->tokens / b->rate * 1000;
}

void dp_bucket_take(dp_bucket *b, size_t bytes) {
  if (b->rate > 0) b->tokens -= (double)bytes;
}

double dp_now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

int64_t dp_epoch_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return (int64_t)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

/* The fault path's threads sleep almost always and must run soon after they wake: nice -10 where
 * allowed, else as they are. Not real-time, as the JavaScript-era threads were (src/sys/sched.ts):
 * a SCHED_FIFO thread wakes on the core it last ran on, which on an idle virtual machine means an
 * interrupt to wake that core, where a normal thread woken by a socket's sender runs on the
 * sender's core at once; and a real-time thread that also places the bulk stream takes its core
 * from the guest. Measured (docs/design-notes.md, 2026-12-07): fault p50 idle 142-149 -> 92-97 us,
 * beside the C reference's 80-90; while the bulk streams 94-97 -> 37-39 us (C 26), p99 1.5 ms ->
 * 77-133 us; on the demo job, longest stall 0.7-9 -> 2.7-3.8 ms and total 4.2-5.2 -> 3.5-4.6 s. */
void dp_prefer_latency(int raise_priority) {
  if (!raise_priority) return;
  (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), -10);
}

int dp_conn_init(dp_conn *c, int fd, size_t tcap) {
  memset(c, 0, sizeof *c);
  c->fd = fd;
  c->rcap = 2 * DP_MAX_FRAME;
  c->tcap = tcap < DP_MAX_FRAME ? DP_MAX_FRAME : tcap;
  c->rbuf = malloc(c->rcap);
  c->tbuf = malloc(c->tcap);
  c->plain = malloc(DP_MAX_BODY);
  c->tx.ctx = EVP_CIPHER_CTX_new();
  c->rx.ctx = EVP_CIPHER_CTX_new();
  if (!c->rbuf || !c->tbuf || !c->plain || !c->tx.ctx || !c->rx.ctx) {
    dp_set_err(c->err, "out of memory");
    return -1;
  }
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
    dp_set_err(c->err, "fcntl(O_NONBLOCK) on the connection: %s", strerror(errno));
    return -1;
  }
  int one = 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* not a TCP socket in some tests */
  return 0;
}

void dp_conn_free(dp_conn *c) {
  if (c->tx.ctx) EVP_CIPHER_CTX_free(c->tx.ctx);
  if (c->rx.ctx) EVP_CIPHER_CTX_free(c->rx.ctx);
  free(c->rbuf);
  free(c->tbuf);
  if (c->plain) OPENSSL_cleanse(c->plain, DP_MAX_BODY);
  free(c->plain);
  c->rbuf = c->tbuf = c->plain = NULL;
  c->tx.ctx = c->rx.ctx = NULL;
}

size_t dp_conn_pending_tx(const dp_conn *c) { return c->tlen - c->toff; }

/* HKDF-Expand with one block (L <= 32): HMAC(prk, info || 0x01). */
static int expand(const uint8_t prk[32], const char *info, uint8_t *out, size_t len) {
  uint8_t msg[128];
  size_t n = strlen(info);
  if (n + 1 > sizeof msg || len > 32) return -1;
  memcpy(msg, info, n);
  msg[n] = 1;
  uint8_t block[32];
  unsigned int bl = 0;
  if (!HMAC(EVP_sha256(), prk, 32, msg, n + 1, block, &bl) || bl != 32) return -1;
  memcpy(out, block, len);
  OPENSSL_cleanse(block, sizeof block);
  return 0;
}

static int set_dir(dp_dir *d, const uint8_t prk[32], const char *channel, const char *dir, int encrypt) {
  char info[96];
  uint8_t key[32];
  snprintf(info, sizeof info, "ferry dp1 %s %s key", channel, dir);
  if (expand(prk, info, key, 32) < 0) return -1;
  snprintf(info, sizeof info, "ferry dp1 %s %s iv", channel, dir);
  if (expand(prk, info, d->iv, 12) < 0) return -1;
  int ok = encrypt ? EVP_EncryptInit_ex(d->ctx, EVP_aes_256_gcm(), NULL, key, NULL)
                   : EVP_DecryptInit_ex(d->ctx, EVP_aes_256_gcm(), NULL, key, NULL);
  OPENSSL_cleanse(key, sizeof key);
  d->seq = 0;
  return ok == 1 ? 0 : -1;
}

static void nonce_of(const dp_dir *d, uint8_t nonce[12]) {
  memcpy(nonce, d->iv, 12);
  for (int i = 0; i < 8; i++) nonce[4 + i] ^= (uint8_t)(d->seq >> (56 - 8 * i));
}

/* Waits (poll) for `events` on the connection or a wake; -1 with err on timeout, stop or error. */
static int wait_io(dp_conn *c, short events, double deadline_us, int wakefd, volatile int *stop) {
  for (;;) {
    if (*stop) {
      dp_set_err(c->err, "stopped");
      return -1;
    }
    double left = deadline_us - dp_now_us();
    if (left <= 0) {
      dp_set_err(c->err, "the data plane handshake timed out");
      return -1;
    }
    struct pollfd p[2] = {{.fd = c->fd, .events = events}, {.fd = wakefd, .events = POLLIN}};
    int n = poll(p, 2, (int)(left / 1000) + 1);
    if (n < 0 && errno != EINTR) {
      dp_set_err(c->err, "poll: %s", strerror(errno));
      return -1;
    }
    if (n > 0 && p[1].revents) {
      uint64_t v;
      (void)!read(wakefd, &v, sizeof v);
      continue; /* re-check stop */
    }
    if (n > 0 && p[0].revents) return 0;
  }
}

int dp_handshake(dp_conn *c, const uint8_t secret[DP_SECRET], int role, const char *channel, int timeout_ms, int wakefd,
                 volatile int *stop) {
  double deadline = dp_now_us() + (double)timeout_ms * 1000;
  uint8_t mine[DP_HELLO], theirs[DP_HELLO];
  memcpy(mine, MAGIC, 8);
  if (RAND_bytes(mine + 8, 32) != 1) {
    dp_set_err(c->err, "RAND_bytes failed");
    return -1;
  }
  /* Both sides send their hello at once: neither waits for the other's. */
  size_t sent = 0, got = 0;
  while (sent < DP_HELLO || got < DP_HELLO) {
    if (wait_io(c, (short)((sent < DP_HELLO ? POLLOUT : 0) | (got < DP_HELLO ? POLLIN : 0)), deadline, wakefd, stop) < 0)
      return -1;
    if (sent < DP_HELLO) {
      ssize_t w = send(c->fd, mine + sent, DP_HELLO - sent, MSG_NOSIGNAL);
      if (w < 0 && errno != EAGAIN && errno != EINTR) {
        dp_set_err(c->err, "sending the data plane hello: %s", strerror(errno));
        return -1;
      }
      if (w > 0) sent += (size_t)w, c->bytes_out += (double)w;
    }
    if (got < DP_HELLO) {
      ssize_t r = read(c->fd, theirs + got, DP_HELLO - got);
      if (r == 0) {
        dp_set_err(c->err, "the peer closed the connection during the data plane hello (%zu of %u bytes)", got, DP_HELLO);
        return -1;
      }
      if (r < 0 && errno != EAGAIN && errno != EINTR) {
        dp_set_err(c->err, "reading the data plane hello: %s", strerror(errno));
        return -1;
      }
      if (r > 0) got += (size_t)r, c->bytes_in += (double)r;
      if (got >= 8 && memcmp(theirs, MAGIC, 8) != 0) {
        dp_set_err(c->err, "the peer is not a Ferry data plane of version 1 (bad hello)");
        return -1;
      }
    }
  }
  /* HKDF-Extract(salt = connector nonce || acceptor nonce, IKM = exporter secret). Each side's fresh
   * nonce makes the keys of every connection new, so a counter restarting at 0 never repeats a nonce. */
  uint8_t salt[64], prk[32];
  memcpy(salt, (role == DP_CONNECTOR ? mine : theirs) + 8, 32);
  memcpy(salt + 32, (role == DP_CONNECTOR ? theirs : mine) + 8, 32);
  unsigned int pl = 0;
  if (!HMAC(EVP_sha256(), salt, sizeof salt, secret, DP_SECRET, prk, &pl) || pl != 32 ||
      set_dir(&c->tx, prk, channel, role == DP_CONNECTOR ? "c2a" : "a2c", 1) < 0 ||
      set_dir(&c->rx, prk, channel, role == DP_CONNECTOR ? "a2c" : "c2a", 0) < 0) {
    OPENSSL_cleanse(prk, sizeof prk);
    dp_set_err(c->err, "deriving the data plane keys failed");
    return -1;
  }
  OPENSSL_cleanse(prk, sizeof prk);
  /* FINISHED each way: proof that the peer holds the same exporter secret. */
  if (dp_conn_queue(c, DP_FINISHED, NULL, 0, NULL, 0) < 0) return -1;
  for (;;) {
    if (dp_conn_flush(c) < 0) return -1;
    dp_frame f;
    int r = dp_conn_next(c, &f);
    if (r < 0) return -1;
    if (r > 0) {
      if (f.type != DP_FINISHED || f.len != 0) {
        dp_set_err(c->err, "the peer's first frame is not FINISHED");
        return -1;
      }
      break;
    }
    if (wait_io(c, (short)(POLLIN | (dp_conn_pending_tx(c) ? POLLOUT : 0)), deadline, wakefd, stop) < 0) return -1;
    if (dp_conn_fill(c) < 0) return -1;
    if (c->eof) {
      dp_set_err(c->err, "the peer closed the connection before FINISHED: it does not hold this session's keys");
      return -1;
    }
  }
  return 0;
}

int dp_conn_queue(dp_conn *c, uint8_t type, const uint8_t *a, uint32_t alen, const uint8_t *b, uint32_t blen) {
  uint32_t len = alen + blen;
  size_t need = DP_HDR + len + DP_TAG;
  if (len > DP_MAX_BODY) {
    dp_set_err(c->err, "internal: a frame body of %u bytes", len);
    return -1;
  }
  if (c->tcap - c->tlen < need && c->toff > 0) { /* compact */
    memmove(c->tbuf, c->tbuf + c->toff, c->tlen - c->toff);
    c->tlen -= c->toff;
    c->toff = 0;
  }
  if (c->tcap - c->tlen < need) {
    dp_set_err(c->err, "the transmit buffer is full: the peer does not read");
    return -1;
  }
  if (c->tx.seq == UINT64_MAX) {
    dp_set_err(c->err, "the frame counter is exhausted");
    return -1;
  }
  uint8_t *hdr = c->tbuf + c->tlen;
  dp_put_be32(hdr, len);
  hdr[4] = type;
  hdr[5] = hdr[6] = hdr[7] = 0;
  uint8_t nonce[12];
  nonce_of(&c->tx, nonce);
  int n = 0;
  uint8_t *out = hdr + DP_HDR;
  if (EVP_EncryptInit_ex(c->tx.ctx, NULL, NULL, NULL, nonce) != 1 || EVP_EncryptUpdate(c->tx.ctx, NULL, &n, hdr, DP_HDR) != 1 ||
      (alen && EVP_EncryptUpdate(c->tx.ctx, out, &n, a, (int)alen) != 1) ||
      (blen && EVP_EncryptUpdate(c->tx.ctx, out + alen, &n, b, (int)blen) != 1) ||
      EVP_EncryptFinal_ex(c->tx.ctx, out + len, &n) != 1 ||
      EVP_CIPHER_CTX_ctrl(c->tx.ctx, EVP_CTRL_GCM_GET_TAG, DP_TAG, out + len) != 1) {
    dp_set_err(c->err, "sealing a frame failed");
    return -1;
  }
  c->tx.seq++;
  c->tlen += need;
  return 0;
}

int dp_conn_flush(dp_conn *c) {
  while (c->toff < c->tlen) {
    ssize_t w = send(c->fd, c->tbuf + c->toff, c->tlen - c->toff, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EAGAIN || errno == EINTR) return 0;
      dp_set_err(c->err, "the connection failed while sending: %s", strerror(errno));
      return -1;
    }
    c->toff += (size_t)w;
    c->bytes_out += (double)w;
  }
  c->toff = c->tlen = 0;
  return 0;
}

int dp_conn_fill(dp_conn *c) {
  if (c->rcap - c->rlen < DP_MAX_FRAME && c->roff > 0) { /* room for a whole frame after what is unread */
    memmove(c->rbuf, c->rbuf + c->roff, c->rlen - c->roff);
    c->rlen -= c->roff;
    c->roff = 0;
  }
  while (c->rlen < c->rcap) {
    size_t room = c->rcap - c->rlen;
    ssize_t r = read(c->fd, c->rbuf + c->rlen, room);
    if (r == 0) {
      c->eof = 1;
      return 0;
    }
    if (r < 0) {
      if (errno == EAGAIN || errno == EINTR) return 0;
      dp_set_err(c->err, "the connection failed while receiving: %s", strerror(errno));
      return -1;
    }
    c->rlen += (size_t)r;
    c->bytes_in += (double)r;
    if ((size_t)r < room) return 0; /* drained: a further read would only say EAGAIN */
  }
  return 0;
}

int dp_conn_next(dp_conn *c, dp_frame *f) {
  c->roff += c->consume;
  c->consume = 0;
  size_t have = c->rlen - c->roff;
  if (have < DP_HDR) return 0;
  const uint8_t *hdr = c->rbuf + c->roff;
  uint32_t len = dp_be32(hdr);
  if (len > DP_MAX_BODY) {
    dp_set_err(c->err, "refused a frame of %u bytes (at most %u)", len, DP_MAX_BODY);
    return -1;
  }
  if (have < DP_HDR + len + DP_TAG) return 0;
  uint8_t type = hdr[4];
  uint8_t nonce[12], tag[DP_TAG];
  nonce_of(&c->rx, nonce);
  memcpy(tag, hdr + DP_HDR + len, DP_TAG);
  int n = 0;
  /* The header is authenticated data: a changed length, type or padding fails like a changed body. */
  int ok = EVP_DecryptInit_ex(c->rx.ctx, NULL, NULL, NULL, nonce) == 1 && EVP_DecryptUpdate(c->rx.ctx, NULL, &n, hdr, DP_HDR) == 1 &&
           (len == 0 || EVP_DecryptUpdate(c->rx.ctx, c->plain, &n, hdr + DP_HDR, (int)len) == 1) &&
           EVP_CIPHER_CTX_ctrl(c->rx.ctx, EVP_CTRL_GCM_SET_TAG, DP_TAG, tag) == 1 &&
           EVP_DecryptFinal_ex(c->rx.ctx, c->plain + len, &n) == 1;
  if (!ok) {
    OPENSSL_cleanse(c->plain, len);
    dp_set_err(c->err, "refused frame %llu: it failed authentication (altered, replayed or not from this session)",
               (unsigned long long)c->rx.seq);
    return -1;
  }
  if (hdr[5] | hdr[6] | hdr[7]) {
    dp_set_err(c->err, "refused frame %llu: reserved header bytes are not zero", (unsigned long long)c->rx.seq);
    return -1;
  }
  if (type < DP_FINISHED || type > DP_CLOSE) {
    dp_set_err(c->err, "refused frame %llu: unknown type %u", (unsigned long long)c->rx.seq, type);
    return -1;
  }
  c->rx.seq++;
  c->consume = DP_HDR + len + DP_TAG;
  f->type = type;
  f->body = c->plain;
  f->len = len;
  return 1;
}

/* Why a connection that reached its end is an error: a clean close, or one inside a frame. */
void dp_conn_eof_error(dp_conn *c) {
  size_t left = c->rlen - c->roff - c->consume;
  if (left == 0) dp_set_err(c->err, "the peer closed the connection");
  else dp_set_err(c->err, "the connection ended halfway through a frame (%zu bytes of it received)", left);
}

int dp_wait(dp_conn *c, int fd, short events, int wakefd, volatile int *stop, int timeout_ms) {
  struct pollfd pf[2] = {{.fd = fd, .events = events}, {.fd = wakefd, .events = POLLIN}};
  int n = poll(pf, 2, timeout_ms);
  if (n < 0 && errno != EINTR) {
    dp_set_err(c->err, "poll: %s", strerror(errno));
    return -1;
  }
  if (*stop) {
    dp_set_err(c->err, "stopped");
    return -1;
  }
  if (n == 0) return DP_WAIT_TIMEOUT;
  if (pf[1].revents) {
    uint64_t v;
    (void)!read(wakefd, &v, sizeof v);
  }
  return n < 0 ? 0 : pf[0].revents;
}

int dp_wait_until(dp_conn *c, int fd, short events, int wakefd, volatile int *stop, double deadline_us) {
  double left = deadline_us - dp_now_us();
  if (left <= 0) return DP_WAIT_TIMEOUT;
  return dp_wait(c, fd, events, wakefd, stop, left > 3600e6 ? 3600000 : (int)(left / 1000) + 1);
}
