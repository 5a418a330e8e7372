// The snapshot fault thread: a lazy restore's guest faults on a hole, and this thread serves it from
// the snapshot's layer files, as dp_fault.c serves a postcopy destination's from the source host —
// the same page states and placement (dp_uffd.c), another source of pages. Per fault: a known-zero
// page is filled (UFFDIO_ZEROPAGE), a received one woken, a pending one read with pread from the
// newest layer holding it, with up to fault_around following pending pages, and placed with
// UFFDIO_COPY, which wakes every thread blocked on them. The TypeScript side's background loader
// places the rest from another thread meanwhile (EEXIST here means it came first: fine).
// Pages served here are not checked against their chunk's sha256 first (a chunk is 1 MiB; a fault
// wants 4 KiB now): the loader checks every chunk and stops the guest on a damaged one
// (docs/snapshot-format.md). A file that ends early fails the thread: the guest stays blocked and
// the owner sees the error. It never touches guest memory, so a hole can never block it.
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../uapi.h"
#include "dp.h"

#define EVENTS 64

static void record_latency(dp_file_args *a, double us) { dp_record_latency(a->stats, FS_LATENCY_COUNT, a->latencies, a->latency_ring, us); }

static int layer_of(dp_file_args *a, uint32_t p) { return p < a->location_pages ? a->location[p] : -1; }

/* Pages [p, p+n) into buf, each run from the layer holding it (zeros where none). */
static int read_pages(dp_file_args *a, uint32_t p, uint32_t n, uint8_t *buf) {
  for (uint32_t i = 0; i < n;) {
    int layer = layer_of(a, p + i);
    uint32_t j = i + 1;
    while (j < n && layer_of(a, p + j) == layer) j++;
    uint8_t *at = buf + (size_t)i * DP_PAGE;
    size_t len = (size_t)(j - i) * DP_PAGE;
    if (layer < 0) memset(at, 0, len);
    else if ((uint32_t)layer >= a->nfds) {
      dp_set_err(a->err, "page %u: layer %d of a chain of %u", p + i, layer, a->nfds);
      return -1;
    } else {
      off_t pos = (off_t)(p + i) * DP_PAGE;
      size_t done = 0;
      int r = dp_pread_full(a->fds[layer], at, len, pos, &done);
      if (r < 0) {
        dp_set_err(a->err, "reading page %llu of layer %d: %s", (unsigned long long)((pos + (off_t)done) / DP_PAGE), layer, strerror(errno));
        return -1;
      }
      if (r > 0) {
        dp_set_err(a->err, "layer %d ends at byte %lld, inside page %lld (truncated or changed while in use?)", layer,
                   (long long)(pos + (off_t)done), (long long)((pos + (off_t)done) / DP_PAGE));
        return -1;
      }
    }
    i = j;
  }
  return 0;
}

static int on_fault(dp_file_args *a, uint64_t address, double t0, uint8_t *buf) {
  a->stats[FS_FAULTS] += 1;
  if (address < a->base || (address - a->base) / DP_PAGE >= a->table_pages) return 0; /* not ours: cannot be registered */
  uint32_t p = (uint32_t)((address - a->base) / DP_PAGE);
  switch (dp_state_of(a->states, p)) {
    case PS_KNOWN_ZERO:
      a->stats[FS_ZERO_FILLS] += 1;
      if (dp_zero_page(a->uffd, a->base, p) < 0) {
        dp_set_err(a->err, "UFFDIO_ZEROPAGE of page %u: %s", p, strerror(errno));
        return -1;
      }
      record_latency(a, dp_now_us() - t0);
      return 0;
    case PS_RECEIVED:
      /* Placed between the fault and now (the loader): the copy woke most waiters; wake the rest. */
      a->stats[FS_WAKES] += 1;
      dp_wake(a->uffd, a->base, p);
      return 0;
    default: {
      uint32_t n = 1;
      while (n < a->fault_around && p + n < a->table_pages && dp_state_of(a->states, p + n) == PS_PENDING) n++;
      a->stats[FS_REQUESTS] += 1;
      if (read_pages(a, p, n, buf) < 0) return -1;
      if (dp_place_run(a->uffd, a->base, p, n, buf, &a->stats[FS_EEXIST], a->err) < 0) return -1;
      for (uint32_t i = 0; i < n; i++)
        if (dp_mark_received(a->states, a->state_counts, p + i)) a->stats[FS_PAGES_PLACED] += 1;
      record_latency(a, dp_now_us() - t0);
      return 0;
    }
  }
}

int dp_file_run(dp_file_args *a) {
  dp_prefer_latency(a->raise_priority); /* a guest thread is blocked every time this one wakes */
  uint8_t *buf = aligned_alloc(DP_PAGE, (size_t)a->fault_around * DP_PAGE);
  if (!buf) {
    dp_set_err(a->err, "out of memory");
    return -1;
  }
  struct uffd_msg msgs[EVENTS];
  int rc = -1;
  for (;;) {
    struct pollfd pf[2] = {{.fd = a->uffd, .events = POLLIN}, {.fd = a->wakefd, .events = POLLIN}};
    if (poll(pf, 2, -1) < 0 && errno != EINTR) {
      dp_set_err(a->err, "poll: %s", strerror(errno));
      break;
    }
    if (*a->stop) {
      rc = 0;
      break;
    }
    if (pf[1].revents) {
      uint64_t v;
      (void)!read(a->wakefd, &v, sizeof v);
    }
    if (pf[0].revents & (POLLERR | POLLNVAL)) {
      dp_set_err(a->err, "the userfaultfd failed (poll revents 0x%x)", pf[0].revents);
      break;
    }
    if (!(pf[0].revents & POLLIN)) continue;
    int failed = 0;
    for (;;) {
      ssize_t r = read(a->uffd, msgs, sizeof msgs);
      if (r < 0) {
        if (errno == EAGAIN || errno == EINTR) break;
        dp_set_err(a->err, "reading the userfaultfd: %s", strerror(errno));
        failed = 1;
        break;
      }
      double t0 = dp_now_us();
      size_t k = (size_t)r / sizeof msgs[0];
      for (size_t i = 0; i < k && !failed; i++)
        if (msgs[i].event == UFFD_EVENT_PAGEFAULT && on_fault(a, msgs[i].arg.pagefault.address, t0, buf) < 0) failed = 1;
      if (failed || k < EVENTS) break;
    }
    if (failed) break;
  }
  free(buf);
  return rc;
}
