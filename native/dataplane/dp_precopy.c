// Native precopy (issue 14): the precopy passes' page stream on the data plane connection, before
// the commit. TypeScript keeps the policy (which pages each pass sends, when a pass ends, when
// precopy ends); these two threads move the bytes.
//  - source (dp_presend_run): for each pass TypeScript fills a bitmap of pages and bumps the job
//    counter; the thread reads those pages from the running guest's memory, sends runs of
//    all-zero pages as ZERO frames and the rest as PAGES (<= DP_MAX_RUN pages), then MARK(pass),
//    and publishes the pass as done once every byte is written. Pass 0 may send every page not in
//    the bitmap as ZERO (never touched, or mapped to the zero page). CLOSE ends the session: the
//    thread waits for the destination's CLOSE back, so nothing of a later session on this
//    connection can be read by the destination's thread.
//  - destination (dp_prerecv_run): authenticates each frame, then places it: a hole (pending or
//    known-zero page) with UFFDIO_COPY, a page already received by memcpy (present: it cannot
//    block, and the guest does not run before the commit); ZERO makes a hole known-zero and
//    zeroes a received page. It records the --verify digest of every page from the frame's bytes
//    and publishes each MARK, which TypeScript waits for before it takes the bulk channel's
//    PASS_END (so everything after it on the bulk channel sees the pass placed). Pages beyond the
//    memory's size wait (the frame is held) until the bulk channel's GROW has been taken: TypeScript
//    raises the limit and wakes the thread (its eventfd), with a slow poll as the fallback.
// A pass can be cut short (PJ_CUT): the thread sends no more of its bitmap's pages, as data or ZERO,
// from where it notices, and says where that was (PS_CUT_AT); its ZERO ranges still go, and its MARK.
// The source's policy cuts a pass 0 that a busy guest makes futile (send/precopy.ts).
// --max-bandwidth caps the source's stream with a token bucket (pace()), lifted at the switchover
// as the bulk channel's is.
// The guest may rewrite a page while it is sealed: AES-GCM reads each plaintext byte once, so the
// frame is still consistent, and the dirty tracker sends the page again in a later pass.
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../uapi.h"
#include "dp.h"

/* Sealed frames queued before the thread waits for the socket to drain. */
#define PRE_TX_BYTES (4u << 20)
/* How long a frame beyond the memory may wait for the bulk channel's GROW. */
#define GROW_WAIT_US (30.0 * 1000 * 1000)
/* While a frame is held, setPageCount() wakes the thread through its eventfd; this poll is only the
 * fallback (a limit raised without a wake), long enough that the wait costs no CPU to speak of. */
#define GROW_POLL_MS 100

static const uint8_t ZERO_PAGE[DP_PAGE];

static int page_is_zero(const uint8_t *p) {
  const uint64_t *w = (const uint64_t *)p;
  uint64_t acc = 0;
  for (size_t i = 0; i < DP_PAGE / 8; i += 8)
    acc |= w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] | w[i + 7];
  return acc == 0;
}

static int bit(const uint32_t *words, uint32_t p) { return (__atomic_load_n(&words[p >> 5], __ATOMIC_RELAXED) >> (p & 31)) & 1; }

/* ------------------------------------------------------------------ source */

/* Writes until fewer than `below` bytes wait; polls the socket (and the stop eventfd). With a
 * deadline (µs, CLOCK_MONOTONIC; 0: none) a socket that does not drain in time fails. */
static int drain_until(dp_presend_args *a, dp_conn *c, size_t below, double deadline_us) {
  while (dp_conn_pending_tx(c) > below) {
    if (dp_conn_flush(c) < 0) return -1;
    if (dp_conn_pending_tx(c) <= below) break;
    int ready = deadline_us > 0 ? dp_wait_until(c, a->sock, POLLOUT, a->wakefd, a->stop, deadline_us) : dp_wait(c, a->sock, POLLOUT, a->wakefd, a->stop, -1);
    if (ready == DP_WAIT_TIMEOUT) {
      dp_set_err(c->err, "the peer did not read what was sent within %d ms", a->timeout_ms);
      return -1;
    }
    if (ready < 0) return -1;
    if (ready & (POLLERR | POLLHUP)) {
      dp_set_err(c->err, "the connection failed while sending (poll revents 0x%x)", ready);
      return -1;
    }
  }
  return 0;
}

static int drain(dp_presend_args *a, dp_conn *c, size_t below) { return drain_until(a, c, below, 0); }

/* The rate cap: waits until the bucket holds tokens, then takes `bytes`. The wait wakes on the
 * thread's eventfd, so lifting the cap (PJ_UNCAPPED, at the switchover) takes effect at once. */
static int pace(dp_presend_args *a, dp_conn *c, uint32_t bytes) {
  if (a->bucket.rate <= 0) return 0;
  for (;;) {
    if (__atomic_load_n(&a->job[PJ_UNCAPPED], __ATOMIC_ACQUIRE)) {
      a->bucket.full = 0; /* put back later: full again, as the bulk channel's new TokenBucket */
      return 0;
    }
    double wait_ms = dp_bucket_wait_ms(&a->bucket);
    if (wait_ms <= 0) {
      dp_bucket_take(&a->bucket, bytes);
      return 0;
    }
    /* In debt: what is queued goes out meanwhile, then sleep until the debt is paid. */
    if (dp_conn_flush(c) < 0) return -1;
    if (dp_wait(c, -1, 0, a->wakefd, a->stop, wait_ms > 1000 ? 1000 : (int)wait_ms + 1) == -1) return -1;
  }
}

/* Queues one frame, then writes while more than PRE_TX_BYTES wait (capped: writes what the socket
 * takes at once, so the paced frames leave paced, not in bursts of PRE_TX_BYTES; while the cap is
 * lifted — the switchover's last pass — frames collect as without one). */
static int send_frame(dp_presend_args *a, dp_conn *c, uint8_t type, const uint8_t head[8], const uint8_t *data, uint32_t len) {
  if (pace(a, c, DP_HDR + 8 + len + DP_TAG) < 0) return -1;
  if (dp_conn_queue(c, type, head, 8, data, len) < 0) return -1;
  int capped = a->bucket.rate > 0 && !__atomic_load_n(&a->job[PJ_UNCAPPED], __ATOMIC_ACQUIRE);
  if (capped && dp_conn_flush(c) < 0) return -1;
  return drain(a, c, PRE_TX_BYTES);
}

static int send_zero(dp_presend_args *a, dp_conn *c, uint32_t p, uint32_t n) {
  uint8_t head[8];
  dp_put_be32(head, p);
  dp_put_be32(head + 4, n);
  a->stats[PS_ZERO_PAGES] += n;
  return send_frame(a, c, DP_ZERO, head, NULL, 0);
}

/* Whether the pass is cut at page p: TypeScript asked (PJ_CUT), and then every page of the bitmap from
 * the first one it was noticed at (PS_CUT_AT) on is left out, as data and as ZERO alike. */
static int cut_at(dp_presend_args *a, uint32_t p, uint32_t *cut) {
  if (*cut != UINT32_MAX) return 1;
  if (!__atomic_load_n(&a->job[PJ_CUT], __ATOMIC_ACQUIRE)) return 0;
  *cut = p;
  return 1;
}

/* Pages [p, q) as data, split into runs of zero pages (ZERO) and of others (PAGES, <= DP_MAX_RUN);
 * a cut leaves out the rest. */
static int send_data(dp_presend_args *a, dp_conn *c, uint32_t p, uint32_t q, uint32_t *cut) {
  int next = -1; /* whether page p is zero, when the run before it already looked */
  while (p < q) {
    if (cut_at(a, p, cut)) return 0;
    a->stats[PS_CURSOR] = p;
    const uint8_t *at = a->memory + (size_t)p * DP_PAGE;
    int zero = next >= 0 ? next : page_is_zero(at);
    next = -1;
    uint32_t e = p + 1;
    while (e < q && (zero || e - p < DP_MAX_RUN)) {
      int z = page_is_zero(a->memory + (size_t)e * DP_PAGE);
      if (z != zero) {
        next = z; /* the page that ends this run begins the next: looked at once */
        break;
      }
      e++;
    }
    if (zero) {
      if (send_zero(a, c, p, e - p) < 0) return -1;
    } else {
      uint8_t head[8];
      dp_put_be32(head, p);
      dp_put_be32(head + 4, e - p);
      a->stats[PS_DATA_PAGES] += e - p;
      if (send_frame(a, c, DP_PAGES, head, at, (e - p) * DP_PAGE) < 0) return -1;
    }
    p = e;
  }
  return 0;
}

/* One pass: the bitmap's pages below the limit as data, the rest as ZERO when asked; then MARK. A cut
 * (PJ_CUT) leaves out the bitmap's pages from where it was noticed; the ZERO ranges still go, so the
 * pages the destination lacks are exactly the bitmap's from PS_CUT_AT on. */
static int send_pass(dp_presend_args *a, dp_conn *c, uint32_t pass, uint32_t limit, int others_zero) {
  uint32_t cut = UINT32_MAX;
  for (uint32_t p = 0; p < limit;) {
    int set = bit(a->pages, p);
    uint32_t q = p + 1, whole = set ? ~0u : 0u;
    while (q < limit) {
      if ((q & 31) == 0 && __atomic_load_n(&a->pages[q >> 5], __ATOMIC_RELAXED) == whole) { /* a word at once */
        q += 32;
        continue;
      }
      if (bit(a->pages, q) != set) break;
      q++;
    }
    if (q > limit) q = limit;
    if (set) {
      if (send_data(a, c, p, q, &cut) < 0) return -1;
    } else if (others_zero && send_zero(a, c, p, q - p) < 0) return -1;
    a->stats[PS_BYTES_SENT] = c->bytes_out;
    a->stats[PS_CURSOR] = q;
    p = q;
  }
  a->stats[PS_CUT_AT] = cut == UINT32_MAX ? limit : cut;
  uint8_t head[8];
  dp_put_be32(head, pass);
  dp_put_be32(head + 4, 0);
  if (send_frame(a, c, DP_MARK, head, NULL, 0) < 0 || drain(a, c, 0) < 0) return -1;
  a->stats[PS_BYTES_SENT] = c->bytes_out;
  return 0;
}

int dp_presend_run(dp_presend_args *a) {
  dp_conn c;
  int rc = -1;
  if (dp_conn_init(&c, a->sock, PRE_TX_BYTES + DP_MAX_FRAME) < 0) goto out;
  a->stats[PS_STATE] = DP_STATE_HANDSHAKE;
  if (dp_handshake(&c, a->secret, a->role, "precopy", a->timeout_ms, a->wakefd, a->stop) < 0) goto out;
  a->stats[PS_STATE] = DP_STATE_RUNNING;
  int32_t done = 0;
  for (;;) {
    int32_t want = __atomic_load_n(&a->job[PJ_PASS_SEQ], __ATOMIC_ACQUIRE);
    if (want != done) {
      uint32_t pass = (uint32_t)__atomic_load_n(&a->job[PJ_PASS], __ATOMIC_ACQUIRE);
      uint32_t limit = (uint32_t)__atomic_load_n(&a->job[PJ_LIMIT], __ATOMIC_ACQUIRE);
      int others_zero = __atomic_load_n(&a->job[PJ_OTHERS_ZERO], __ATOMIC_ACQUIRE);
      /* A pass never reads past the bitmap nor past the memory's view (setMemory hands over a
       * grown one between passes): the pages beyond are not the guest's, or not mapped. */
      uint32_t memory_pages = __atomic_load_n(&a->memory_pages, __ATOMIC_ACQUIRE);
      if (limit > a->max_pages) {
        dp_set_err(a->err, "refused pass %u: its limit of %u pages is past the bitmap's %u", pass, limit, a->max_pages);
        goto out;
      }
      if (limit > memory_pages) {
        dp_set_err(a->err, "refused pass %u: its limit of %u pages is past the memory view's %u", pass, limit, memory_pages);
        goto out;
      }
      if (send_pass(a, &c, pass, limit, others_zero) < 0) goto out;
      done = want;
      __atomic_thread_fence(__ATOMIC_RELEASE);
      a->stats[PS_PASS_DONE] = done;
      continue;
    }
    if (__atomic_load_n(&a->job[PJ_CLOSE], __ATOMIC_ACQUIRE)) {
      /* One absolute deadline for the whole exchange: CLOSE out, CLOSE back. */
      double deadline = dp_now_us() + (double)a->timeout_ms * 1000;
      uint8_t head[8] = {0};
      if (dp_conn_queue(&c, DP_CLOSE, head, 8, NULL, 0) < 0 || drain_until(a, &c, 0, deadline) < 0) goto out;
      /* The destination's CLOSE back: after it, nothing of this session is left in either direction. */
      for (;;) {
        dp_frame f;
        int r = dp_conn_next(&c, &f);
        if (r < 0) goto out;
        if (r > 0) {
          if (f.type != DP_CLOSE) {
            dp_set_err(a->err, "refused a frame of type %u from the destination (only CLOSE may come)", f.type);
            goto out;
          }
          rc = 0;
          goto out;
        }
        int ready = dp_wait_until(&c, a->sock, POLLIN, a->wakefd, a->stop, deadline);
        if (ready == DP_WAIT_TIMEOUT) {
          dp_set_err(a->err, "the destination did not close the precopy stream within %d ms", a->timeout_ms);
          goto out;
        }
        if (ready < 0) goto out;
        if (dp_conn_fill(&c) < 0) goto out;
        if (c.eof) {
          dp_conn_eof_error(&c);
          goto out;
        }
      }
    }
    /* Idle between passes: wait for a job, and notice a destination that goes away. */
    int ready = dp_wait(&c, a->sock, POLLIN, a->wakefd, a->stop, -1);
    if (ready < 0) goto out;
    if (ready > 0) {
      if (dp_conn_fill(&c) < 0) goto out;
      dp_frame f;
      int r = dp_conn_next(&c, &f);
      if (r < 0) goto out;
      if (r > 0) {
        dp_set_err(a->err, "refused a frame of type %u from the destination during precopy", f.type);
        goto out;
      }
      if (c.eof) {
        dp_conn_eof_error(&c);
        goto out;
      }
    }
  }
out:
  a->stats[PS_BYTES_SENT] = c.bytes_out;
  a->stats[PS_BYTES_RECEIVED] = c.bytes_in;
  if (rc < 0 && !a->err[0]) dp_set_err(a->err, "%s", c.err[0] ? c.err : "failed");
  a->stats[PS_STATE] = rc == 0 ? DP_STATE_STOPPED : DP_STATE_FAILED;
  dp_conn_free(&c);
  return rc;
}

/* ------------------------------------------------------------------ destination */

static uint8_t state_of(dp_prerecv_args *a, uint32_t p) { return dp_state_of(a->states, p); }

/* Moves a page to `to` from whatever it was, keeping the counts. */
static void move_state(dp_prerecv_args *a, uint32_t p, uint8_t to) {
  uint8_t cur = state_of(a, p);
  while (cur != to) {
    if (__atomic_compare_exchange_n(&a->states[p], &cur, to, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
      __atomic_fetch_sub(&a->state_counts[cur], 1, __ATOMIC_ACQ_REL);
      __atomic_fetch_add(&a->state_counts[to], 1, __ATOMIC_ACQ_REL);
      return;
    }
  }
}

static void set_digest(dp_prerecv_args *a, uint32_t p, const uint8_t *page) {
  if (!a->digest || p >= a->digest_pages) return;
  uint32_t h[2];
  dp_page_hash(page, h);
  __atomic_store_n(&a->digest[2 * p], h[0], __ATOMIC_RELAXED);
  __atomic_store_n(&a->digest[2 * p + 1], h[1], __ATOMIC_RELAXED);
}

/* Holes [p, p+n) from src: moved in from the pool where it has the pages made (dp_pool.c), the rest
 * with one UFFDIO_COPY; a page found present after all (EEXIST) is copied with memcpy, which cannot
 * block on a present page. */
static int copy_holes(dp_prerecv_args *a, uint32_t p, uint32_t n, const uint8_t *src) {
  double eexist = 0; /* overwritten with memcpy there, not counted */
  uint64_t done = a->pool ? (uint64_t)dp_pool_place_run(a->pool, a->uffd, a->base, p, n, src, 1, &a->stats[PR_MOVED], &eexist) * DP_PAGE : 0;
  uint64_t len = (uint64_t)n * DP_PAGE;
  while (done < len) {
    struct uffdio_copy cp = {.dst = a->base + (uint64_t)p * DP_PAGE + done, .src = (uint64_t)(uintptr_t)(src + done), .len = len - done};
    if (ioctl(a->uffd, UFFDIO_COPY, &cp) == 0) return 0;
    if (cp.copy > 0) done += (uint64_t)cp.copy;
    else if (errno == EEXIST) {
      memcpy((uint8_t *)(uintptr_t)(a->base + (uint64_t)p * DP_PAGE + done), src + done, DP_PAGE);
      done += DP_PAGE;
    } else if (errno != EAGAIN && errno != EINTR) {
      dp_set_err(a->err, "UFFDIO_COPY of page %llu: %s", (unsigned long long)(p + done / DP_PAGE), strerror(errno));
      return -1;
    }
  }
  return 0;
}

static int place_pages(dp_prerecv_args *a, uint32_t first, uint32_t n, const uint8_t *data) {
  for (uint32_t i = 0; i < n;) {
    uint32_t p = first + i;
    if (state_of(a, p) == PS_RECEIVED) { /* present: overwrite */
      memcpy((uint8_t *)(uintptr_t)(a->base + (uint64_t)p * DP_PAGE), data + (size_t)i * DP_PAGE, DP_PAGE);
      i++;
      continue;
    }
    uint32_t j = i + 1;
    while (j < n && state_of(a, first + j) != PS_RECEIVED) j++;
    if (copy_holes(a, p, j - i, data + (size_t)i * DP_PAGE) < 0) return -1;
    for (uint32_t k = i; k < j; k++) move_state(a, first + k, PS_RECEIVED);
    i = j;
  }
  for (uint32_t i = 0; i < n; i++) set_digest(a, first + i, data + (size_t)i * DP_PAGE);
  a->stats[PR_DATA_PAGES] += n;
  return 0;
}

static uint32_t zero_page_hash[2];
static void hash_zero_page(void) { dp_page_hash(ZERO_PAGE, zero_page_hash); }

static void place_zero(dp_prerecv_args *a, uint32_t first, uint32_t n) {
  for (uint32_t p = first; p < first + n; p++) {
    if (state_of(a, p) == PS_RECEIVED) memset((uint8_t *)(uintptr_t)(a->base + (uint64_t)p * DP_PAGE), 0, DP_PAGE);
    else move_state(a, p, PS_KNOWN_ZERO);
  }
  if (a->digest && first < a->digest_pages) {
    static pthread_once_t hashed = PTHREAD_ONCE_INIT;
    pthread_once(&hashed, hash_zero_page); /* one hash for every zero page of every frame */
    const uint32_t *h = zero_page_hash;
    uint32_t end = first + n < a->digest_pages ? first + n : a->digest_pages;
    for (uint32_t p = first; p < end; p++) {
      __atomic_store_n(&a->digest[2 * p], h[0], __ATOMIC_RELAXED);
      __atomic_store_n(&a->digest[2 * p + 1], h[1], __ATOMIC_RELAXED);
    }
  }
  a->stats[PR_ZERO_PAGES] += n;
}

/* 1 placed, 0 held (beyond the memory: wait for GROW), -1 refused. */
static int on_frame(dp_prerecv_args *a, const dp_frame *f) {
  if (f->type == DP_MARK) {
    if (f->len != 8) {
      dp_set_err(a->err, "refused MARK with a body of %u bytes", f->len);
      return -1;
    }
    uint32_t pass = dp_be32(f->body);
    a->stats[PR_MARK_RING + pass % PR_RING_LEN] = a->stats[PR_DATA_PAGES] + a->stats[PR_ZERO_PAGES];
    __atomic_thread_fence(__ATOMIC_RELEASE); /* the pass's pages (and its count) before the mark that publishes them */
    a->stats[PR_MARK] = (double)pass + 1;
    return 1;
  }
  if (f->type != DP_PAGES && f->type != DP_ZERO) {
    dp_set_err(a->err, "refused a frame of type %u from the source during precopy", f->type);
    return -1;
  }
  if (f->len < 8) {
    dp_set_err(a->err, "refused a page frame with a body of %u bytes", f->len);
    return -1;
  }
  uint32_t first = dp_be32(f->body), n = dp_be32(f->body + 4);
  if (n == 0 || (f->type == DP_PAGES ? (n > DP_MAX_RUN || f->len != 8 + n * DP_PAGE) : f->len != 8)) {
    dp_set_err(a->err, "refused %s of %u pages in a body of %u bytes", f->type == DP_PAGES ? "PAGES" : "ZERO", n, f->len);
    return -1;
  }
  if (first >= a->table_pages || n > a->table_pages - first) {
    dp_set_err(a->err, "refused pages [%u, %llu): outside the reservation of %u pages", first, (unsigned long long)first + n, a->table_pages);
    return -1;
  }
  uint32_t limit = (uint32_t)__atomic_load_n(&a->limit[0], __ATOMIC_ACQUIRE);
  if (first + n > limit) return 0;
  a->stats[PR_FRAMES] += 1;
  if (f->type == DP_ZERO) place_zero(a, first, n);
  else if (place_pages(a, first, n, f->body + 8) < 0) return -1;
  return 1;
}

/* Pool pages made ahead of their use at most (128 MiB): a precopy does not know how many holes it
 * will fill (never-touched and zero pages are not sent), so the pool must not run far ahead. */
#define PRECOPY_POOL_WINDOW 32768u

int dp_prerecv_run(dp_prerecv_args *a) {
  dp_conn c;
  int rc = -1;
  dp_pool pool;
  a->pool = a->move_pool && dp_pool_start(&pool, (uint32_t)a->limit[0], PRECOPY_POOL_WINDOW, &a->stats[PR_POOL_READY]) == 0 ? &pool : NULL;
  if (dp_conn_init(&c, a->sock, DP_MAX_FRAME) < 0) goto out;
  a->stats[PR_STATE] = DP_STATE_HANDSHAKE;
  if (dp_handshake(&c, a->secret, a->role, "precopy", a->timeout_ms, a->wakefd, a->stop) < 0) goto out;
  a->stats[PR_STATE] = DP_STATE_RUNNING;
  dp_frame held;
  int holding = 0;
  double held_since = 0;
  int buffered = 1; /* frames that came with FINISHED are in rbuf already */
  for (;;) {
    if (!buffered || holding) {
      if (dp_wait(&c, holding ? -1 : a->sock, POLLIN, a->wakefd, a->stop, holding ? GROW_POLL_MS : -1) == -1) goto out;
      if (!holding && dp_conn_fill(&c) < 0) goto out;
    }
    buffered = 0;
    if (holding) {
      int r = on_frame(a, &held);
      if (r < 0) goto out;
      if (r == 0) {
        if (dp_now_us() - held_since > GROW_WAIT_US) {
          dp_set_err(a->err, "refused pages beyond the memory's %u pages (no GROW came)", (uint32_t)a->limit[0]);
          goto out;
        }
        continue;
      }
      holding = 0;
    }
    for (;;) {
      dp_frame f;
      int r = dp_conn_next(&c, &f);
      if (r < 0) goto out;
      if (r == 0) break;
      if (f.type == DP_CLOSE) {
        /* The source's last precopy frame: answer it and end without reading further (the
         * connection's next session, postcopy's, starts after the commit with its own hello). */
        if (c.rlen - c.roff - c.consume != 0) {
          dp_set_err(a->err, "refused bytes after the source's CLOSE");
          goto out;
        }
        uint8_t head[8] = {0};
        if (dp_conn_queue(&c, DP_CLOSE, head, 8, NULL, 0) < 0) goto out;
        /* An absolute deadline: a source that does not read the answer cannot hold this thread. */
        double deadline = dp_now_us() + (double)a->timeout_ms * 1000;
        while (dp_conn_pending_tx(&c)) {
          if (dp_conn_flush(&c) < 0) goto out;
          if (!dp_conn_pending_tx(&c)) break;
          int ready = dp_wait_until(&c, a->sock, POLLOUT, a->wakefd, a->stop, deadline);
          if (ready == DP_WAIT_TIMEOUT) {
            dp_set_err(a->err, "the source did not take the CLOSE answer within %d ms", a->timeout_ms);
            goto out;
          }
          if (ready < 0) goto out;
        }
        a->stats[PR_CLOSED] = 1;
        rc = 0;
        goto out;
      }
      int placed = on_frame(a, &f);
      if (placed < 0) goto out;
      if (placed == 0) {
        held = f;
        holding = 1;
        held_since = dp_now_us();
        break;
      }
    }
    if (!holding && c.eof) {
      dp_conn_eof_error(&c);
      goto out;
    }
    a->stats[PR_BYTES_RECEIVED] = c.bytes_in;
  }
out:
  a->stats[PR_BYTES_SENT] = c.bytes_out;
  a->stats[PR_BYTES_RECEIVED] = c.bytes_in;
  if (rc < 0 && !a->err[0]) dp_set_err(a->err, "%s", c.err[0] ? c.err : "failed");
  a->stats[PR_STATE] = rc == 0 ? DP_STATE_STOPPED : DP_STATE_FAILED;
  dp_conn_free(&c);
  if (a->pool) dp_pool_stop(a->pool);
  a->pool = NULL;
  return rc;
}
