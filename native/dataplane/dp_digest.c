// The source's half of --verify on a native thread: the 64-bit hash of every page of the frozen
// guest memory (dp_page_hash, the same function the destination's fault thread records as it
// places pages, and verify/digest.ts computes in JavaScript), pages not present hashed as zero
// without being read (a read would map them). It runs while postcopy streams, on a host whose two
// cores the stream and the destination's guest already share: the JavaScript worker it replaces
// took a worker's start (~55 ms here) and hashed at ~2.2 GB/s, this loop at ~5 GB/s.
#include <string.h>

#include "dp.h"

int dp_digest_run(dp_digest_args *a) {
  static const uint8_t zero[DP_PAGE];
  uint32_t zh[2];
  dp_page_hash(zero, zh);
  for (uint32_t p = 0; p < a->page_count; p++) {
    if ((p & 4095) == 0 && *a->stop) {
      dp_set_err(a->err, "stopped");
      return -1;
    }
    if ((a->present[p >> 5] >> (p & 31)) & 1u) dp_page_hash(a->memory + (size_t)p * DP_PAGE, a->hashes + 2 * (size_t)p);
    else memcpy(a->hashes + 2 * (size_t)p, zh, sizeof zh);
  }
  return 0;
}
