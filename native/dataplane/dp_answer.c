// The source's answer thread. It reads the destination's REQUEST frames and answers each at once
// with the requested pages, sealed straight from the guest's memory (same process; after the commit
// the guest is paused, so its memory is still and has no holes). A requested page is answered even
// when the bulk stream has claimed it already: a fault must never wait behind bulk data, and a page
// that crosses twice stays within the 2 x memory bound (faults are few). The claim is still set, so
// the bulk stream skips the page if it has not reached it yet.
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
    uint32_t q = p;
    while (q < end && q - p < DP_MAX_RUN && is_pending(a, q)) {
      if (claim(a, q)) a->stats[SS_TWICE] += 1;
      q++;
    }
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
  dp_prefer_latency(a->realtime);
  if (dp_conn_init(&c, a->sock, TX_BYTES + (DP_MAX_REQUEST / DP_MAX_RUN + 1) * DP_MAX_FRAME) < 0) goto out;
  a->stats[SS_STATE] = DP_STATE_HANDSHAKE;
  if (dp_handshake(&c, a->secret, a->role, "urgent", a->timeout_ms, a->wakefd, a->stop) < 0) goto out;
  a->stats[SS_STATE] = DP_STATE_RUNNING;
  /* Requests that came with the peer's FINISHED are already in rbuf: no poll would report them. */
  int buffered = 1;
  for (;;) {
    int full = dp_conn_pending_tx(&c) > TX_BYTES / 2;
    struct pollfd pf[2] = {
        {.fd = a->sock, .events = (short)((full ? 0 : POLLIN) | (dp_conn_pending_tx(&c) ? POLLOUT : 0))},
        {.fd = a->wakefd, .events = POLLIN},
    };
    if (poll(pf, 2, buffered ? 0 : -1) < 0 && errno != EINTR) {
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
