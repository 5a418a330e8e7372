// The source's answer thread. It reads the destination's REQUEST frames and answers each at once
// with the requested pages, sealed straight from the guest's memory (same process; after the commit
// the guest is paused, so its memory is still and has no holes). A request's first page — the one
// a thread faulted on — is answered even when the bulk stream has claimed it already: a fault must
// never wait behind bulk data, and a page that crosses twice stays within the 2 x memory bound
// (faults are few). The claim is still set, so the bulk stream skips the page if it has not reached
// it yet. The pages asked ahead of the fault (fault-around) go only if nobody claimed them: a
// claimed one is on its way already, and sending it again would make every fault-around page cross
// twice on a slow link, where the bulk stream's bytes in flight run ahead of the faults (measured
// over 1 Gbit/s: 2.7-2.9 x memory sent before this rule).
// Bulk mode (args.bulk): this thread is the bulk stream too. Whenever no answer waits to be written
// and the socket holds fewer than DP_BULK_LOWAT unsent bytes, it claims the next pending page
// nobody claimed — from just after the last request, as the faults lead, wrapping once — and sends
// a run of up to DP_MAX_RUN of them. Answers go first, and behind at most a few frames of bulk.
// --max-bandwidth paces the bulk frames with a token bucket (dp_bucket); answers are never paced.
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "dp.h"

/* Answers queue here while the socket is full; requests wait unread beyond half of it. */
#define TX_BYTES (8u << 20)

static int is_pending(const dp_answer_args *a, uint32_t p) {
  return (__atomic_load_n(&a->pending[p >> 5], __ATOMIC_ACQUIRE) >> (p & 31)) & 1;
}

/* Sets the claim; true if the bulk stream (or an earlier request) had claimed the page already. */
static int claim(dp_answer_args *a, uint32_t p) {
  uint32_t m = 1u << (p & 31);
  return (__atomic_fetch_or(&a->claims[p >> 5], m, __ATOMIC_ACQ_REL) & m) != 0;
}

/* Claims and returns the next pending page nobody claimed at or after *cur (wrapping once); -1 when
 * there is none left. Claims only grow and pending pages only go while a thread runs, so once none
 * is found none ever will be. */
static int64_t next_unclaimed(dp_answer_args *a, uint32_t cur) {
  uint32_t words = (a->page_count + 31) / 32;
  if (words == 0) return -1;
  if (cur >= a->page_count) cur = 0;
  uint32_t w0 = cur >> 5;
  for (uint32_t i = 0; i <= words; i++) {
    uint32_t w = (w0 + i) % words;
    uint32_t avail = __atomic_load_n(&a->pending[w], __ATOMIC_ACQUIRE) & ~__atomic_load_n(&a->claims[w], __ATOMIC_ACQUIRE);
    if (i == 0) avail &= ~0u << (cur & 31); /* the pages before cur in its word come last, on the wrap */
    while (avail) {
      uint32_t b = (uint32_t)__builtin_ctz(avail);
      avail &= avail - 1;
      uint32_t p = w * 32 + b;
      if (p >= a->page_count) break;
      if (!claim(a, p)) return p;
    }
  }
  return -1;
}

/* One bulk frame from the cursor on: 1 sent, 0 none left, -1 failed. */
static int push_bulk(dp_answer_args *a, dp_conn *c, uint32_t *cursor) {
  int64_t first = next_unclaimed(a, *cursor);
  if (first < 0) return 0;
  uint32_t p = (uint32_t)first, q = p + 1;
  while (q < a->page_count && q - p < DP_MAX_RUN && is_pending(a, q) && !claim(a, q)) q++;
  uint8_t head[8];
  dp_put_be32(head, p);
  dp_put_be32(head + 4, q - p);
  if (dp_conn_queue(c, DP_PAGES, head, 8, a->memory + (size_t)p * DP_PAGE, (q - p) * DP_PAGE) < 0) return -1;
  a->stats[SS_PAGES_SENT] += q - p;
  a->stats[SS_PUSHED] += q - p;
  *cursor = q;
  return 1;
}

static int on_request(dp_answer_args *a, dp_conn *c, const dp_frame *f) {
  if (f->len != 8) {
    dp_set_err(a->err, "refused REQUEST with a body of %u bytes", f->len);
    return -1;
  }
  uint32_t first = dp_be32(f->body), n = dp_be32(f->body + 4);
  if (n == 0 || n > DP_MAX_REQUEST) {
    dp_set_err(a->err, "refused REQUEST for %u pages (1..%u)", n, DP_MAX_REQUEST);
    return -1;
  }
  if (first >= a->page_count || n > a->page_count - first) {
    dp_set_err(a->err, "refused REQUEST for pages [%u, %llu): outside the memory of %u pages", first,
               (unsigned long long)first + n, a->page_count);
    return -1;
  }
  a->stats[SS_REQUESTS] += 1;
  a->stats[SS_CURSOR] = first + n; /* the bulk stream continues from here */
  uint32_t end = first + n;
  for (uint32_t p = first; p < end;) {
    if (!is_pending(a, p)) { /* the destination holds it: nothing to send */
      p++;
      continue;
    }
    if (claim(a, p)) { /* sent already (the bulk stream, an earlier answer) */
      if (p != first) {
        p++;
        continue;
      }
      a->stats[SS_TWICE] += 1; /* the faulting page goes again: it must not wait behind bulk data */
    }
    /* The faulting page goes in a frame of its own: the destination places it, and wakes the
     * thread, after sealing, sending and opening 4 KiB rather than a whole run. */
    uint32_t q = p + 1;
    while (p != first && q < end && q - p < DP_MAX_RUN && is_pending(a, q) && !claim(a, q)) q++;
    uint8_t head[8];
    dp_put_be32(head, p);
    dp_put_be32(head + 4, q - p);
    if (dp_conn_queue(c, DP_PAGES, head, 8, a->memory + (size_t)p * DP_PAGE, (q - p) * DP_PAGE) < 0) return -1;
    a->stats[SS_PAGES_SENT] += q - p;
    p = q;
  }
  return 0;
}

int dp_answer_run(dp_answer_args *a) {
  dp_conn c;
  int rc = -1;
  dp_prefer_latency(a->raise_priority);
  if (dp_conn_init(&c, a->sock, TX_BYTES + (DP_MAX_REQUEST / DP_MAX_RUN + 1) * DP_MAX_FRAME) < 0) goto out;
  a->stats[SS_STATE] = DP_STATE_HANDSHAKE;
  if (dp_handshake(&c, a->secret, a->role, "urgent", a->timeout_ms, a->wakefd, a->stop) < 0) goto out;
  a->stats[SS_STATE] = DP_STATE_RUNNING;
  /* Bulk mode: POLLOUT then means fewer than DP_BULK_LOWAT bytes wait unsent in the socket. */
  int bulk = a->bulk;
  uint32_t cursor = 0, seen_cursor = 0;
  if (bulk) {
    int lowat = DP_BULK_LOWAT;
    if (setsockopt(a->sock, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof lowat) < 0) {
      dp_set_err(a->err, "TCP_NOTSENT_LOWAT: %s", strerror(errno));
      goto out;
    }
  }
  /* Requests that came with the peer's FINISHED are already in rbuf: no poll would report them. */
  int buffered = 1;
  for (;;) {
    int full = dp_conn_pending_tx(&c) > TX_BYTES / 2;
    /* --max-bandwidth: while the bucket is in debt the bulk stream does not ask for POLLOUT (the
     * socket would report room at once, a busy loop); the poll's timeout is the end of the debt. */
    double debt_ms = bulk ? dp_bucket_wait_ms(&a->bucket) : 0;
    int bulk_ready = bulk && debt_ms <= 0;
    int timeout = buffered ? 0 : debt_ms > 0 ? (debt_ms > 1000 ? 1000 : (int)debt_ms + 1) : -1;
    struct pollfd pf[2] = {
        {.fd = a->sock, .events = (short)((full ? 0 : POLLIN) | (dp_conn_pending_tx(&c) || bulk_ready ? POLLOUT : 0))},
        {.fd = a->wakefd, .events = POLLIN},
    };
    if (poll(pf, 2, timeout) < 0 && errno != EINTR) {
      dp_set_err(c.err, "poll: %s", strerror(errno));
      goto out;
    }
    if (*a->stop) {
      rc = 0;
      goto out;
    }
    if (pf[1].revents) {
      uint64_t v;
      (void)!read(a->wakefd, &v, sizeof v);
    }
    if (pf[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      if (!full && dp_conn_fill(&c) < 0) goto out;
    }
    for (;;) {
      if (dp_conn_pending_tx(&c) > TX_BYTES / 2) { /* the rest waits in rbuf until the socket drains (POLLOUT) */
        buffered = 0;
        break;
      }
      dp_frame f;
      int r = dp_conn_next(&c, &f);
      if (r < 0) goto out;
      if (r == 0) {
        buffered = 0; /* what is left is part of a frame: poll reports the rest */
        break;
      }
      if (f.type != DP_REQUEST) {
        dp_set_err(a->err, "refused a frame of type %u from the destination (only REQUEST may come)", f.type);
        goto out;
      }
      if (on_request(a, &c, &f) < 0) goto out;
    }
    if (c.eof && dp_conn_pending_tx(&c) <= TX_BYTES / 2) {
      dp_conn_eof_error(&c);
      goto out;
    }
    if (dp_conn_flush(&c) < 0) goto out;
    /* The bulk stream: one frame when nothing else waits to be written and the socket has room. */
    if (bulk_ready && dp_conn_pending_tx(&c) == 0 && (pf[0].revents & POLLOUT)) {
      uint32_t led = (uint32_t)a->stats[SS_CURSOR];
      if (led != seen_cursor) cursor = seen_cursor = led; /* follow the faults */
      int r = push_bulk(a, &c, &cursor);
      if (r < 0) goto out;
      if (r == 0) {
        bulk = 0;
        __atomic_thread_fence(__ATOMIC_RELEASE);
        a->stats[SS_BULK_DONE] = 1;
      } else {
        dp_bucket_take(&a->bucket, dp_conn_pending_tx(&c)); /* the one frame just queued (nothing waited before it) */
        if (dp_conn_flush(&c) < 0) goto out;
      }
    }
    a->stats[SS_BYTES_SENT] = c.bytes_out;
    a->stats[SS_BYTES_RECEIVED] = c.bytes_in;
  }
out:
  a->stats[SS_BYTES_SENT] = c.bytes_out;
  a->stats[SS_BYTES_RECEIVED] = c.bytes_in;
  if (rc < 0 && !a->err[0]) dp_set_err(a->err, "%s", c.err[0] ? c.err : "failed");
  if (rc < 0 && strcmp(a->err, "stopped") == 0) rc = 0;
  a->stats[SS_STATE] = rc == 0 ? DP_STATE_STOPPED : DP_STATE_FAILED;
  dp_conn_free(&c);
  return rc;
}
