// The destination's fault thread. It reads the guest memory's userfaultfd and, per fault, decides
// as src/memory/fault-worker.ts does from the page-state table: a known-zero page is filled here
// (UFFDIO_ZEROPAGE), a received one is woken, a pending one is asked of the source once (however
// many threads fault on it) with a REQUEST frame. It reads the source's PAGES answers, checks them
// (authentication first, then the page range) and places them with UFFDIO_COPY, which wakes every
// thread blocked on those pages; EEXIST means the bulk stream placed the page first, and is fine.
// It never touches guest memory, so a hole can never block it.
// Shared with the TypeScript side, which places the bulk stream from another thread: the state
// table (pending -> received by compare-and-swap: the winner counts the page), the request times
// (whoever places a requested page takes its time and records the fault's latency) and counters.
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../uapi.h"
#include "dp.h"

#define TX_BYTES (1u << 20)
#define EVENTS 64

typedef struct {
  dp_fault_args *a;
  dp_conn c;
  dp_pool pool;
  uint32_t pool_pages; /* the pool to make at the first PAGES frame (0: none) */
} fault_ctx;


static void count(fault_ctx *x, int slot, double v) { x->a->stats[slot] += v; }

static void record_latency(fault_ctx *x, double us) { dp_record_latency(x->a->stats, DS_LATENCY_COUNT, x->a->latencies, x->a->latency_ring, us); }

static uint8_t state_of(dp_fault_args *a, uint32_t p) { return dp_state_of(a->states, p); }
static int mark_received(dp_fault_args *a, uint32_t p) { return dp_mark_received(a->states, a->state_counts, p); }
static void wake(dp_fault_args *a, uint32_t p) { dp_wake(a->uffd, a->base, p); }

/* Notes a request for page p made at t (epoch µs): false if it needs none (placed meanwhile) or has one. */
static int note_request(dp_fault_args *a, uint32_t p, int64_t t) {
  if (state_of(a, p) != PS_PENDING) return 0;
  int64_t zero = 0;
  if (!__atomic_compare_exchange_n(&a->times[p], &zero, t, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) return 0;
  __atomic_fetch_add(a->waiting, 1, __ATOMIC_ACQ_REL);
  /* Placed between the check and the note: take the note back, unless the placer already did. */
  if (state_of(a, p) != PS_PENDING) {
    int64_t mine = t;
    if (__atomic_compare_exchange_n(&a->times[p], &mine, 0, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
      __atomic_fetch_sub(a->waiting, 1, __ATOMIC_ACQ_REL);
    return 0;
  }
  return 1;
}

static int on_fault(fault_ctx *x, uint64_t address) {
  dp_fault_args *a = x->a;
  count(x, DS_FAULTS, 1);
  if (address < a->base || (address - a->base) / DP_PAGE >= a->table_pages) return 0; /* not ours: cannot be registered */
  uint32_t p = (uint32_t)((address - a->base) / DP_PAGE);
  switch (state_of(a, p)) {
    case PS_KNOWN_ZERO: {
      /* Never leaves the machine. EEXIST: another thread's fault on it was served already. A
       * failure ends the thread with its reason (as dp_file.c's does): the faulting guest thread
       * would otherwise wait on the hole for ever, with nothing said. */
      count(x, DS_ZERO_FILLS, 1);
      if (dp_zero_page(a->uffd, a->base, p) < 0) {
        dp_set_err(a->err, "UFFDIO_ZEROPAGE of page %u: %s", p, strerror(errno));
        return -1;
      }
      return 0;
    }
    case PS_RECEIVED:
      /* Placed between the fault and now: the copy woke most waiters; wake the rest. */
      count(x, DS_WAKES, 1);
      wake(a, p);
      return 0;
    default: {
      int64_t t = dp_epoch_us();
      if (p >= a->page_count || !note_request(a, p, t)) {
        /* Asked already (another thread waits on it too), or placed just now: then wake. */
        if (state_of(a, p) == PS_RECEIVED) wake(a, p);
        else {
          /* Asked ahead of a fault (negative time, below): a thread waits on it now, from now. */
          int64_t ahead = __atomic_load_n(&a->times[p], __ATOMIC_ACQUIRE);
          if (ahead < 0) (void)__atomic_compare_exchange_n(&a->times[p], &ahead, t, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
          count(x, DS_DEDUPED, 1);
        }
        return 0;
      }
      /* Fault-around: the pending pages that follow go in the same request, noted with the time
       * negated: no thread waits on them, so their placement records no fault latency. */
      uint32_t n = 1;
      while (n < a->fault_around && p + n < a->page_count && note_request(a, p + n, -t)) n++;
      uint8_t body[8];
      dp_put_be32(body, p);
      dp_put_be32(body + 4, n);
      count(x, DS_REQUESTS, 1);
      return dp_conn_queue(&x->c, DP_REQUEST, body, 8, NULL, 0);
    }
  }
}

#define ROTL(v, n) (((v) << (n)) | ((v) >> (32 - (n))))
void dp_page_hash(const uint8_t *page, uint32_t out[2]) {
  const uint32_t P1 = 0x9e3779b1u, P2 = 0x85ebca77u, P3 = 0xc2b2ae3du, P4 = 0x27d4eb2fu;
  uint32_t a = 0x243f6a88u, b = 0x85a308d3u, c = 0x13198a2eu, d = 0x03707344u;
  for (size_t i = 0; i < DP_PAGE; i += 16) {
    uint32_t w[4];
    memcpy(w, page + i, 16); /* little-endian words, as the TypeScript side reads them on this host */
    a = ROTL((a ^ w[0]) * P1, 13);
    b = ROTL((b ^ w[1]) * P2, 17);
    c = ROTL((c ^ w[2]) * P3, 11);
    d = ROTL((d ^ w[3]) * P4, 19);
  }
  uint32_t lo = ((a ^ (c >> 7)) * P2) ^ d;
  uint32_t hi = ((b ^ (d >> 5)) * P3) ^ c;
  lo ^= lo >> 16;
  lo *= 0x85ebca6bu;
  lo ^= lo >> 13;
  hi = (hi ^ lo) * 0xc2b2ae35u;
  hi ^= hi >> 16;
  out[0] = lo;
  out[1] = hi;
}

/* True if a thread waits on a page of [p, end): one of them faulted on it (its time is positive). */
static int waited_on(dp_fault_args *a, uint32_t p, uint32_t end) {
  for (; p < end; p++)
    if (__atomic_load_n(&a->times[p], __ATOMIC_ACQUIRE) > 0) return 1;
  return 0;
}

static int on_pages(fault_ctx *x, const dp_frame *f) {
  dp_fault_args *a = x->a;
  if (f->len < 8) {
    dp_set_err(a->err, "refused PAGES: a body of %u bytes", f->len);
    return -1;
  }
  uint32_t first = dp_be32(f->body), n = dp_be32(f->body + 4);
  if (n == 0 || n > DP_MAX_RUN || f->len != 8 + n * DP_PAGE) {
    dp_set_err(a->err, "refused PAGES of %u pages in a body of %u bytes", n, f->len);
    return -1;
  }
  if (first >= a->page_count || n > a->page_count - first) {
    dp_set_err(a->err, "refused PAGES [%u, %llu): outside the memory of %u pages", first, (unsigned long long)first + n,
               a->page_count);
    return -1;
  }
  count(x, DS_PAGES_RECEIVED, n);
  if (x->pool_pages) { /* the first frame: the switchover's downtime is over or nearly */
    (void)dp_pool_start(&x->pool, x->pool_pages, 0, &a->stats[DS_POOL_READY]);
    x->pool_pages = 0;
  }
  const uint8_t *data = f->body + 8;
  for (uint32_t i = 0; i < n;) {
    if (state_of(a, first + i) != PS_PENDING) { /* arrived already (the bulk stream, or asked twice) */
      i++;
      continue;
    }
    uint32_t j = i + 1;
    while (j < n && state_of(a, first + j) == PS_PENDING) j++;
    const uint8_t *run = data + (size_t)i * DP_PAGE;
    /* A run a guest thread waits on goes by copy, not from the pool: a move flushes the pool
     * page's old address from the TLB of every CPU that ran this process (an IPI, and in a VM an
     * exit per CPU), inside the wait; a copy into a fresh page flushes nothing. */
    uint32_t k = waited_on(a, first + i, first + j) ? 0 : dp_pool_place_run(&x->pool, a->uffd, a->base, first + i, j - i, run, 0, &a->stats[DS_MOVED], &a->stats[DS_EEXIST]);
    if (k < j - i && dp_place_run(a->uffd, a->base, first + i + k, j - i - k, run + (size_t)k * DP_PAGE, &a->stats[DS_EEXIST], a->err) < 0) return -1;
    /* The digest records what was sent; a page sent on both channels carries the same bytes. */
    if (a->digest)
      for (uint32_t p = first + i; p < first + j && p < a->digest_pages; p++) {
        uint32_t h[2];
        dp_page_hash(data + (size_t)(p - first) * DP_PAGE, h);
        __atomic_store_n(&a->digest[2 * p], h[0], __ATOMIC_RELAXED);
        __atomic_store_n(&a->digest[2 * p + 1], h[1], __ATOMIC_RELAXED);
      }
    double now = 0;
    for (uint32_t p = first + i; p < first + j; p++) {
      if (!mark_received(a, p)) continue;
      count(x, DS_PAGES_PLACED, 1);
      int64_t t = __atomic_exchange_n(&a->times[p], 0, __ATOMIC_ACQ_REL);
      if (t != 0) {
        count(x, DS_PLACED_ASKED, 1);
        __atomic_fetch_sub(a->waiting, 1, __ATOMIC_ACQ_REL);
        if (t < 0) continue; /* asked ahead: no thread waited on it */
        if (now == 0) now = (double)dp_epoch_us();
        record_latency(x, now - (double)t);
      }
    }
    i = j;
  }
  return 0;
}

/* A new connection's first job: ask again for every page a fault still waits on (a lost connection
 * may have swallowed the request or its answer). */
static int ask_again(fault_ctx *x) {
  dp_fault_args *a = x->a;
  for (uint32_t p = 0; p < a->page_count;) {
    if (__atomic_load_n(&a->times[p], __ATOMIC_ACQUIRE) == 0 || state_of(a, p) != PS_PENDING) {
      p++;
      continue;
    }
    uint32_t n = 1;
    while (n < DP_MAX_REQUEST && p + n < a->page_count && __atomic_load_n(&a->times[p + n], __ATOMIC_ACQUIRE) != 0) n++;
    uint8_t body[8];
    dp_put_be32(body, p);
    dp_put_be32(body + 4, n);
    count(x, DS_REQUESTS, 1);
    if (dp_conn_queue(&x->c, DP_REQUEST, body, 8, NULL, 0) < 0) return -1;
    if (dp_conn_pending_tx(&x->c) > TX_BYTES / 2 && dp_conn_flush(&x->c) < 0) return -1;
    p += n;
  }
  return dp_conn_flush(&x->c);
}

static void publish(fault_ctx *x) {
  x->a->stats[DS_BYTES_SENT] = x->c.bytes_out;
  x->a->stats[DS_BYTES_RECEIVED] = x->c.bytes_in;
}

int dp_fault_run(dp_fault_args *a) {
  fault_ctx x = {.a = a};
  dp_prefer_latency(a->raise_priority);
  int rc = -1;
  /* As many pages made ahead as are pending now: each is placed once at most. Made from the first
   * PAGES frame on, not now: the thread starts inside the switchover, and a thread populating pages
   * at the fault thread's priority there took CPU from the guest's resumption (demo job, five
   * alternating pairs: pause -> running 7.61 ms median against 6.28 without the pool). */
  int32_t pending = __atomic_load_n(&a->state_counts[PS_PENDING], __ATOMIC_ACQUIRE);
  if (a->move_pool && pending > 0) x.pool_pages = (uint32_t)pending;
  if (dp_conn_init(&x.c, a->sock, TX_BYTES) < 0) goto out;
  /* The source may stream the bulk over this connection too: what waits in this socket is what an
   * answer queues behind, so keep it to a few frames (this thread reads as fast as it places). */
  int rcvbuf = DP_BULK_RCVBUF;
  (void)setsockopt(a->sock, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  a->stats[DS_STATE] = DP_STATE_HANDSHAKE;
  if (dp_handshake(&x.c, a->secret, a->role, "urgent", a->timeout_ms, a->wakefd, a->stop) < 0) goto out;
  a->stats[DS_STATE] = DP_STATE_RUNNING;
  if (ask_again(&x) < 0) goto out;
  publish(&x);
  struct uffd_msg msgs[EVENTS];
  /* Frames that came with the peer's FINISHED are already in rbuf: no poll would report them. */
  int buffered = 1;
  for (;;) {
    /* A source that stops reading requests: stop reading faults (they wait in the kernel) until it does. */
    int tx_full = dp_conn_pending_tx(&x.c) > TX_BYTES / 2;
    struct pollfd pf[3] = {
        {.fd = tx_full ? -1 : a->uffd, .events = POLLIN},
        {.fd = a->sock, .events = (short)(POLLIN | (dp_conn_pending_tx(&x.c) ? POLLOUT : 0))},
        {.fd = a->wakefd, .events = POLLIN},
    };
    if (poll(pf, 3, buffered ? 0 : -1) < 0 && errno != EINTR) {
      dp_set_err(x.c.err, "poll: %s", strerror(errno));
      goto out;
    }
    if (*a->stop) {
      rc = 0;
      goto out;
    }
    if (pf[2].revents) {
      uint64_t v;
      (void)!read(a->wakefd, &v, sizeof v);
    }
    if (pf[0].revents & POLLIN) {
      for (;;) {
        ssize_t r = read(a->uffd, msgs, sizeof msgs);
        if (r < 0) {
          if (errno == EAGAIN || errno == EINTR) break;
          dp_set_err(x.c.err, "reading the userfaultfd: %s", strerror(errno));
          goto out;
        }
        size_t k = (size_t)r / sizeof msgs[0];
        for (size_t i = 0; i < k; i++)
          if (msgs[i].event == UFFD_EVENT_PAGEFAULT && on_fault(&x, msgs[i].arg.pagefault.address) < 0) goto out;
        if (k < EVENTS) break;
      }
    } else if (pf[0].revents & (POLLERR | POLLNVAL)) {
      dp_set_err(x.c.err, "the userfaultfd failed (poll revents 0x%x)", pf[0].revents);
      goto out;
    }
    if (pf[1].revents || buffered) {
      buffered = 0;
      if (pf[1].revents && dp_conn_fill(&x.c) < 0) goto out;
      for (;;) {
        dp_frame f;
        int r = dp_conn_next(&x.c, &f);
        if (r < 0) goto out;
        if (r == 0) break;
        if (f.type != DP_PAGES) {
          dp_set_err(a->err, "refused a frame of type %u from the source (only PAGES may come)", f.type);
          goto out;
        }
        if (on_pages(&x, &f) < 0) goto out;
      }
      if (x.c.eof) {
        dp_conn_eof_error(&x.c);
        goto out;
      }
    }
    if (dp_conn_flush(&x.c) < 0) goto out;
    publish(&x);
  }
out:
  publish(&x);
  if (rc < 0 && !a->err[0]) dp_set_err(a->err, "%s", x.c.err[0] ? x.c.err : "failed");
  if (rc < 0 && strcmp(a->err, "stopped") == 0) rc = 0; /* stopped during the handshake */
  a->stats[DS_STATE] = rc == 0 ? DP_STATE_STOPPED : DP_STATE_FAILED;
  dp_conn_free(&x.c);
  dp_pool_stop(&x.pool);
  return rc;
}
