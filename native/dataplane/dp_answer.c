// The source's answer thread. It reads the destination's REQUEST frames and answers each at once
// with the requested pages, sealed straight from the guest's memory (same process; after the commit
// the guest is paused, so its memory is still and has no holes). A request's first page — the one
// a thread faulted on — is answered even when the bulk stream has claimed it already, if that
// stream runs on another connection (the JavaScript bulk channel): a fault must never wait behind
// bulk data, and a page that crosses twice stays within the 2 x memory bound (faults are few). The
// claim is still set, so the bulk stream skips the page if it has not reached it yet. When this
// thread is the bulk stream (bulk mode, below) a claimed page is already ahead in this very byte
// stream, and is not sent again. The pages asked ahead of the fault (fault-around) go only if
// nobody claimed them: a claimed one is on its way already, and sending it again would make every
// fault-around page cross twice on a slow link, where the bulk stream's bytes in flight run ahead
// of the faults (measured over 1 Gbit/s: 2.7-2.9 x memory sent before this rule).
// Bulk mode (args.bulk): this thread is the bulk stream too. Whenever no answer waits to be written
// and the socket holds fewer than DP_BULK_LOWAT unsent bytes, it claims the next pending page
// nobody claimed — from just after the last request, as the faults lead, wrapping once — and sends
// a run of up to DP_MAX_RUN of them. Answers go first, and behind at most a few frames of bulk.
// --max-bandwidth paces the bulk frames with a token bucket (dp_bucket); answers are never paced.
#define _GNU_SOURCE
#include <errno.h>
#include <linux/tcp.h> /* struct tcp_info with the byte counters and delivery rate (glibc's lacks them) */
#include <netinet/in.h>
#include <poll.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
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

/* How much bulk may be ahead of an answer on a slow link, as time at the link's rate: an answer
 * is queued behind whatever the socket has not sent and whatever is in flight, so there that must
 * stay small (at 1 Gbit/s, 64 KiB is half a millisecond). The bound is twice the path's
 * bandwidth-delay product plus AHEAD_US, so the link stays full. A link is slow once the smoothed
 * round trip is QUEUED_US above the path's minimum, and twice it: a standing queue in the network
 * (over the 1 Gbit/s veth link of the benchmark, unbounded: 2.2-3.8 ms). On loopback the round
 * trip stays within 14-172 us, and the rate the thread sees moves with the CPU the guest leaves it
 * (0.26-1.09 GB/s within one demo run): a bound there only took bytes from an idle link (more
 * faults, more blocked time). It is lifted again if the rate doubles. */
#define AHEAD_US 250.0
#define QUEUED_US 1000.0
#define MAX_WAIT_US 1000.0
#define RATE_WINDOW_US 10000.0

/* The link's rate as this thread sees it: bytes acknowledged per RATE_WINDOW_US, the largest of the
 * recent windows (each older one counts a fifth less per window), so a window in which the stream
 * had nothing to send does not shrink it at once. Not TCP_INFO's delivery rate: behind a token
 * bucket (a rate-limited link) it measures the bucket's bursts: up to 11x the link's rate over
 * the benchmark's 1 Gbit/s veth link (1.3 GB/s against 120 MB/s acknowledged). */
typedef struct {
  double t0, acked0, rate;
  double slow_at; /* > 0: the link is slow; the rate when that was found */
} link_rate;

static void link_rate_update(link_rate *l, double acked) {
  double now = dp_now_us();
  if (l->t0 == 0 || acked < l->acked0) {
    l->t0 = now, l->acked0 = acked;
    return;
  }
  if (now - l->t0 < RATE_WINDOW_US) return;
  double inst = (acked - l->acked0) / ((now - l->t0) / 1e6);
  l->rate = inst > l->rate * 0.8 ? inst : l->rate * 0.8;
  l->t0 = now, l->acked0 = acked;
}

/* Before a bulk frame: 0 if one may go now, with *run its pages (fewer on a slow link, so a frame
 * on the wire is short too), else the microseconds until the bytes ahead will have drained. */
static double bulk_room_us(int sock, link_rate *l, uint32_t *run) {
  *run = DP_MAX_RUN;
  /* A link not found slow needs a look only when a rate window ends (where it may be found
   * slow), not a system call per frame: 16 000 per GiB of 64 KiB frames. */
  if (l->slow_at == 0 && l->t0 != 0 && dp_now_us() - l->t0 < RATE_WINDOW_US) return 0;
  struct tcp_info ti;
  socklen_t len = sizeof ti;
  memset(&ti, 0, sizeof ti);
  if (getsockopt(sock, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0 || len < offsetof(struct tcp_info, tcpi_bytes_retrans) + 8)
    return 0; /* not TCP (a test's socket pair): the socket's own limits apply */
  link_rate_update(l, (double)ti.tcpi_bytes_acked);
  if (l->rate <= 0) return 0; /* no rate measured yet */
  double min_rtt = (double)ti.tcpi_min_rtt, rtt = (double)ti.tcpi_rtt;
  if (l->slow_at > 0 && l->rate > 2 * l->slow_at) l->slow_at = 0;
  /* A standing queue: a millisecond above the minimum, and as long again as the path itself (a
   * long path's jitter alone is not one). */
  if (l->slow_at == 0 && rtt > min_rtt + QUEUED_US && rtt > 2 * min_rtt) l->slow_at = l->rate;
  if (l->slow_at == 0) return 0;
  /* Twice the path's bandwidth-delay product (as BBR's window gain: round trips that vary up to
   * the path's own length do not starve the link), plus AHEAD_US. The rate it is reckoned at
   * never falls below half the one the link was found slow at: a rate measured while bounded
   * could otherwise shrink the bound window after window. */
  double rate = l->rate > l->slow_at / 2 ? l->rate : l->slow_at / 2;
  double allowance = rate * (2 * min_rtt + AHEAD_US) / 1e6;
  double r = rate * AHEAD_US / 1e6 / 2 / DP_PAGE; /* a frame is at most half of AHEAD_US on the wire */
  *run = r >= DP_MAX_RUN ? DP_MAX_RUN : r < 1 ? 1 : (uint32_t)r;
  double frame = DP_HDR + 8 + (double)*run * DP_PAGE + DP_TAG;
  if (allowance < 2 * frame) allowance = 2 * frame;
  int64_t in_flight = (int64_t)(ti.tcpi_bytes_sent - ti.tcpi_bytes_retrans) - (int64_t)ti.tcpi_bytes_acked;
  double ahead = (double)ti.tcpi_notsent_bytes + (double)(in_flight > 0 ? in_flight : 0);
  if (ahead + frame <= allowance) return 0;
  double wait = (ahead + frame - allowance) / rate * 1e6;
  return wait < MAX_WAIT_US ? wait : MAX_WAIT_US; /* then it looks again */
}

/* While the bulk stream runs on a slow link, a request's pages after its first (fault-around; the
 * pages a new connection asks for again) go as the bulk stream's next frames, not with the answer:
 * sent at once, up to 15 pages would be ahead of the next fault's answer on the wire (on a 1 Gbit/s
 * link, half a millisecond). The ranges wait here, oldest first. */
#define NEXT_RANGES 256
typedef struct {
  uint32_t start[NEXT_RANGES], end[NEXT_RANGES];
  uint32_t head, count;
} next_ranges;

/* False when full: the caller then sends the pages with the answer. */
static int next_ranges_add(next_ranges *r, uint32_t start, uint32_t end) {
  if (r->count == NEXT_RANGES) return 0;
  uint32_t i = (r->head + r->count++) % NEXT_RANGES;
  r->start[i] = start;
  r->end[i] = end;
  return 1;
}

/* Claims the first page of the oldest range that is pending and nobody claimed, or -1. */
static int64_t next_in_ranges(dp_answer_args *a, next_ranges *r, uint32_t *limit) {
  while (r->count) {
    uint32_t i = r->head;
    while (r->start[i] < r->end[i]) {
      uint32_t p = r->start[i]++;
      if (is_pending(a, p) && !claim(a, p)) {
        *limit = r->end[i];
        return p;
      }
    }
    r->head = (r->head + 1) % NEXT_RANGES;
    r->count--;
  }
  return -1;
}

/* One bulk frame of up to `run` pages, from the oldest waiting range, else from the cursor on:
 * 1 sent, 0 none left, -1 failed. */
static int push_bulk(dp_answer_args *a, dp_conn *c, next_ranges *ranges, uint32_t *cursor, uint32_t run) {
  uint32_t limit = a->page_count;
  int64_t first = next_in_ranges(a, ranges, &limit);
  int from_range = first >= 0;
  if (!from_range) first = next_unclaimed(a, *cursor);
  if (first < 0) return 0;
  uint32_t p = (uint32_t)first, q = p + 1;
  while (q < limit && q - p < run && is_pending(a, q) && !claim(a, q)) q++;
  if (from_range) ranges->start[ranges->head] = q; /* the pages up to q are claimed */
  uint8_t head[8];
  dp_put_be32(head, p);
  dp_put_be32(head + 4, q - p);
  if (dp_conn_queue(c, DP_PAGES, head, 8, a->memory + (size_t)p * DP_PAGE, (q - p) * DP_PAGE) < 0) return -1;
  a->stats[SS_PAGES_SENT] += q - p;
  a->stats[SS_PUSHED] += q - p;
  if (!from_range) *cursor = q;
  return 1;
}

/* ranges: while the bulk stream runs (else NULL), where the request's pages after its first go
 * when they are more than `run`, the pages a frame may carry at the link's rate (bulk_room_us): on
 * a fast link they go with the answer, which costs the next fault little there, and each page the
 * bulk stream brings a moment later is one more fault (loopback demo job, four runs each: 933-2914
 * faults sent with the answer, 2163-2897 by the bulk stream). */
static int on_request(dp_answer_args *a, dp_conn *c, const dp_frame *f, next_ranges *ranges, uint32_t run) {
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
  if (ranges && n - 1 > run && next_ranges_add(ranges, first + 1, end)) end = first + 1;
  for (uint32_t p = first; p < end;) {
    if (!is_pending(a, p)) { /* the destination holds it: nothing to send */
      p++;
      continue;
    }
    if (claim(a, p)) { /* sent already (the bulk stream, an earlier answer) */
      /* In bulk mode that copy went into this connection's byte stream (claims are per connection:
       * a recovery starts from fresh ones), so it is ahead of any answer written now: sending the
       * page again could not bring it sooner, only cross a third time (precopy, bulk, answer). */
      if (p != first || a->bulk) {
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
  next_ranges *ranges = NULL;
  int rc = -1;
  dp_prefer_latency(a->raise_priority);
  if (dp_conn_init(&c, a->sock, TX_BYTES + (DP_MAX_REQUEST / DP_MAX_RUN + 1) * DP_MAX_FRAME) < 0) goto out;
  a->stats[SS_STATE] = DP_STATE_HANDSHAKE;
  if (dp_handshake(&c, a->secret, a->role, "urgent", a->timeout_ms, a->wakefd, a->stop) < 0) goto out;
  a->stats[SS_STATE] = DP_STATE_RUNNING;
  /* Bulk mode: POLLOUT then means fewer than DP_BULK_LOWAT bytes wait unsent in the socket. */
  int bulk = a->bulk;
  uint32_t cursor = 0, seen_cursor = 0;
  link_rate lr = {0};
  if (bulk) ranges = calloc(1, sizeof *ranges);
  if (bulk && !ranges) {
    dp_set_err(a->err, "out of memory");
    goto out;
  }
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
    /* Nor while the bytes ahead of a would-be answer are at their bound: the timeout is when they
     * will have drained. */
    uint32_t run = DP_MAX_RUN;
    double room_us = bulk && debt_ms <= 0 ? bulk_room_us(a->sock, &lr, &run) : 0;
    int bulk_ready = bulk && debt_ms <= 0 && room_us <= 0;
    double wait_us = buffered ? 0 : debt_ms > 0 ? (debt_ms > 1000 ? 1000 : debt_ms + 1) * 1000 : room_us > 0 ? room_us : -1;
    int64_t wait_whole_us = wait_us < 0 ? 0 : (int64_t)wait_us; /* at most the bucket's 1 s + 1 ms */
    struct timespec ts = {.tv_sec = (time_t)(wait_whole_us / 1000000), .tv_nsec = (long)(wait_whole_us % 1000000) * 1000};
    struct pollfd pf[2] = {
        {.fd = a->sock, .events = (short)((full ? 0 : POLLIN) | (dp_conn_pending_tx(&c) || bulk_ready ? POLLOUT : 0))},
        {.fd = a->wakefd, .events = POLLIN},
    };
    if (ppoll(pf, 2, wait_us < 0 ? NULL : &ts, NULL) < 0 && errno != EINTR) {
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
      if (on_request(a, &c, &f, bulk ? ranges : NULL, run) < 0) goto out;
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
      int r = push_bulk(a, &c, ranges, &cursor, run);
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
  free(ranges);
  return rc;
}
