// Ferry's page data plane: shared declarations of the native threads that carry postcopy's fault
// path (dp_fault.c on the destination, dp_answer.c on the source), precopy's stream (dp_precopy.c),
// a lazy snapshot restore's fault path (dp_file.c), an eager one's load (dp_load.c) and its chunk
// check (dp_check.c), their encrypted framing (dp_wire.c), what the fault threads share
// (dp_uffd.c) and the N-API glue that starts and stops them (dp_addon.c).
// Nothing here calls into JavaScript while a thread runs: counters and fault latencies go to
// SharedArrayBuffers the TypeScript side reads, and a thread's end (with its error, if any) is
// reported once, through a thread-safe function.
#ifndef FERRY_DP_H
#define FERRY_DP_H
#include <openssl/evp.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define DP_PAGE 4096u
#define DP_HDR 8u            /* u32 body length (BE), u8 type, 3 zero bytes */
#define DP_TAG 16u           /* AES-256-GCM tag after the body */
#define DP_HELLO 40u         /* cleartext: "FERRYDP1" + 32 random bytes */
#define DP_MAX_RUN 16u       /* pages per PAGES frame */
#define DP_MAX_BODY (8u + DP_MAX_RUN * DP_PAGE)
#define DP_MAX_FRAME (DP_HDR + DP_MAX_BODY + DP_TAG)
#define DP_MAX_REQUEST 512u  /* pages per REQUEST */
#define DP_SECRET 32u        /* bytes of the TLS exporter secret the keys come from */
#define DP_ERR 256
/* Bulk mode: the answer thread adds a bulk frame only while fewer unsent bytes than this wait in the
 * socket (TCP_NOTSENT_LOWAT), and the fault thread's receive buffer is capped, so an answer never
 * queues behind more than a few frames of bulk data. */
#define DP_BULK_LOWAT (64u << 10)
#define DP_BULK_RCVBUF (256u << 10)

enum dp_type { DP_FINISHED = 1, DP_REQUEST = 2, DP_PAGES = 3,
               DP_ZERO = 4,  /* precopy: pages that read as zero (first, count; no bytes) */
               DP_MARK = 5,  /* precopy: the end of a pass (pass, 0) */
               DP_CLOSE = 6  /* precopy: the end of the precopy session, each way (0, 0) */ };
enum dp_role { DP_CONNECTOR = 0, DP_ACCEPTOR = 1 };

/* One direction of a connection: its AEAD key (in ctx), its IV, and its frame counter. */
typedef struct {
  EVP_CIPHER_CTX *ctx;
  uint8_t iv[12];
  uint64_t seq;
} dp_dir;

/* A non-blocking stream socket with its keys and buffers. */
typedef struct {
  int fd;
  dp_dir tx, rx;
  uint8_t *rbuf; /* received, not yet processed (at most one frame plus what followed it) */
  size_t roff, rlen, rcap, consume;
  uint8_t *tbuf; /* sealed frames not yet written */
  size_t toff, tlen, tcap;
  uint8_t *plain; /* the body of the frame just opened */
  double bytes_in, bytes_out;
  int eof;
  char err[DP_ERR];
} dp_conn;

/* The frame dp_conn_next() opened. */
typedef struct {
  uint8_t type;
  const uint8_t *body;
  uint32_t len;
} dp_frame;

int dp_conn_init(dp_conn *c, int fd, size_t tcap);
void dp_conn_free(dp_conn *c);
/* Hello exchange and key schedule, then the FINISHED frames; 0 on success, -1 with c->err set.
 * Returns early with -1 and "stopped" when *stop becomes non-zero (checked at each wake of wakefd). */
int dp_handshake(dp_conn *c, const uint8_t secret[DP_SECRET], int role, const char *channel, int timeout_ms, int wakefd,
                 volatile int *stop);
/* Seals one frame of `type` whose body is the concatenation of a (alen) and b (blen) into tbuf. */
int dp_conn_queue(dp_conn *c, uint8_t type, const uint8_t *a, uint32_t alen, const uint8_t *b, uint32_t blen);
/* Writes what it can of tbuf: 0, or -1 with err set (the peer is gone). */
int dp_conn_flush(dp_conn *c);
/* Reads what the socket has, up to the space left: 0, or -1 with err set. Sets eof at the end of the stream. */
int dp_conn_fill(dp_conn *c);
/* 1 with *f set when a whole frame was opened; 0 when more bytes are needed; -1 with err set when the
 * frame is refused (too long, failed authentication, unknown type). Consumes the frame returned by the
 * previous call first. */
int dp_conn_next(dp_conn *c, dp_frame *f);
size_t dp_conn_pending_tx(const dp_conn *c);
void dp_conn_eof_error(dp_conn *c);
/* Waits until `fd` is ready for `events` (fd < 0: only a wake-up counts), the thread's wake-up
 * eventfd fires (drained here) or timeout_ms passes (-1: no limit). Returns the fd's revents (> 0),
 * 0 when only woken, DP_WAIT_TIMEOUT when the time ran out, or -1 with c->err set when poll failed
 * or the thread was asked to stop. */
enum { DP_WAIT_TIMEOUT = -2 };
int dp_wait(dp_conn *c, int fd, short events, int wakefd, volatile int *stop, int timeout_ms);
/* dp_wait against an absolute CLOCK_MONOTONIC deadline (µs): DP_WAIT_TIMEOUT once it has passed. A
 * wait bounded by a deadline, not by a timeout restarted at each wake-up, cannot be stretched by a
 * peer that dribbles a byte at a time. */
int dp_wait_until(dp_conn *c, int fd, short events, int wakefd, volatile int *stop, double deadline_us);

/* --max-bandwidth: a token bucket over whole frames' bytes (CLOCK_MONOTONIC). rate 0: no cap. The
 * burst is a few frames; a frame larger than the tokens left borrows, so no frame is ever split and
 * the average still converges to the rate. */
typedef struct {
  double rate, burst, tokens, last_us;
  int full; /* 0: the bucket is full again at the next look (at the start, or when a lifted cap is put back) */
} dp_bucket;
void dp_bucket_init(dp_bucket *b, double rate);
/* Refills, then the milliseconds to wait before a frame may go (0: now; always 0 without a cap). */
double dp_bucket_wait_ms(dp_bucket *b);
void dp_bucket_take(dp_bucket *b, size_t bytes);

uint32_t dp_be32(const uint8_t *p);
void dp_put_be32(uint8_t *p, uint32_t v);
double dp_now_us(void);       /* CLOCK_MONOTONIC */
int64_t dp_epoch_us(void);    /* CLOCK_REALTIME: what the TypeScript side's request times use */
void dp_prefer_latency(int raise_priority);
void dp_set_err(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- destination: the fault thread ---- */
enum { /* Float64 slots of the destination's stats */
  DS_FAULTS, DS_ZERO_FILLS, DS_REQUESTS, DS_DEDUPED, DS_WAKES, DS_PAGES_PLACED, DS_EEXIST, DS_LATENCY_COUNT,
  DS_BYTES_SENT, DS_BYTES_RECEIVED, DS_PAGES_RECEIVED, DS_STATE,
  DS_PLACED_ASKED, /* of DS_PAGES_PLACED, those a request asked for (a fault, or fault-around); the rest came unasked: bulk */
  DS_MOVED,        /* pages placed by UFFDIO_MOVE from the pool (dp_pool.c); the rest by UFFDIO_COPY */
  DS_POOL_READY,   /* pool pages made so far (the pool's thread stores it) */
  DS_SLOTS = 16
};
/* Float64 slots of the source's stats */
enum {
  SS_REQUESTS, SS_PAGES_SENT, SS_CURSOR, SS_TWICE, SS_BYTES_SENT, SS_BYTES_RECEIVED,
  SS_PUSHED,    /* of SS_PAGES_SENT, those the bulk stream sent (bulk mode) */
  SS_BULK_DONE, /* 1 once the bulk stream has claimed, sealed and written every pending page (bulk mode) */
  SS_STATE = 11, SS_SLOTS = 16
};
enum { DP_STATE_HANDSHAKE = 0, DP_STATE_RUNNING = 1, DP_STATE_STOPPED = 2, DP_STATE_FAILED = 3 };
enum { PS_KNOWN_ZERO = 0, PS_PENDING = 1, PS_RECEIVED = 2 }; /* src/memory/page-state.ts */

/* ---- pages made ahead for UFFDIO_MOVE (dp_pool.c) ---- */
typedef struct {
  uint8_t *mem;
  uint32_t cap;
  uint32_t next;      /* the first slot not used yet (written by the placing thread only, read by both) */
  uint32_t ready;     /* slots populated so far (written by the populating thread only) */
  uint32_t window;    /* slots populated ahead of `next` at most; 0: no bound */
  int broken;         /* the errno of a move the kernel refused: copy from then on */
  int started;
  volatile int stop;
  pthread_t th;
  double *ready_stat; /* where `ready` is published too (DS_POOL_READY), or NULL */
} dp_pool;
/* -1: no pool (no memory or thread); the caller copies. */
int dp_pool_start(dp_pool *p, uint32_t pages, uint32_t window, double *ready_stat);
void dp_pool_stop(dp_pool *p);
/* Places holes [page, page+n) from src through the pool, adding the pages moved to *moved. A page
 * found present is overwritten with memcpy when `overwrite` (precopy: nothing can fault on it), else
 * counted in *eexist and its waiters woken (as dp_place_run). Returns how many pages from `page` it
 * dealt with: n, or fewer (0 when the pool has not made enough pages yet; more after a move the
 * kernel refused, which stops the pool's use): the caller places the rest its own way. */
uint32_t dp_pool_place_run(dp_pool *p, int uffd, uint64_t base, uint32_t page, uint32_t n, const uint8_t *src, int overwrite, double *moved, double *eexist);

typedef struct {
  int uffd, sock, wakefd, role, timeout_ms, raise_priority;
  uint64_t base;          /* address of guest page 0 */
  uint32_t page_count;    /* pages the source may send (the memory at the commit) */
  uint32_t table_pages;   /* pages in the state table (the reservation) */
  uint32_t fault_around;
  int move_pool;          /* place through a pool of pages made ahead with UFFDIO_MOVE (dp_pool.c); the uffd has UFFD_FEATURE_MOVE */
  uint8_t *states;        /* PageStateTable bytes */
  int32_t *state_counts;  /* [known-zero, pending, received] */
  int64_t *times;         /* per page: epoch µs of the fault that asked for it, 0 = none, negated = asked ahead (fault-around) */
  int32_t *waiting;       /* pages with a request outstanding */
  double *stats;          /* DS_SLOTS */
  double *latencies;      /* ring of fault latencies (µs), latency_ring long */
  uint32_t latency_ring;
  uint32_t *digest;       /* --verify: two u32 per page (src/migration/verify/digest.ts), or NULL */
  uint32_t digest_pages;
  uint8_t secret[DP_SECRET];
  volatile int *stop;
  char err[DP_ERR];
} dp_fault_args;

typedef struct {
  int sock, wakefd, role, timeout_ms, raise_priority;
  const uint8_t *memory;  /* guest page 0 (the source's memory: no holes) */
  uint32_t page_count;
  uint32_t *pending;      /* PageBitmap words: pages the destination lacks */
  uint32_t *claims;       /* PageClaims words shared with the bulk stream */
  int bulk;               /* stream every pending page nobody claimed, after the answers (the postcopy bulk stream) */
  dp_bucket bucket;       /* --max-bandwidth: paces the bulk frames (never the answers) */
  double *stats;          /* SS_SLOTS */
  uint8_t secret[DP_SECRET];
  volatile int *stop;
  char err[DP_ERR];
} dp_answer_args;

/* ---- native precopy (dp_precopy.c) ---- */
enum { PJ_PASS_SEQ, PJ_PASS, PJ_LIMIT, PJ_OTHERS_ZERO, PJ_CLOSE,
       PJ_UNCAPPED, /* 1: the rate cap is lifted (the switchover's downtime); 0: it holds again, with a full bucket */
       PJ_CUT,      /* 1: the pass in flight sends no more of its pages as data (its ZERO ranges still go) */
       PJ_SLOTS = 8 }; /* Int32 job slots TypeScript writes */
/* PS_CUT_AT: the first page of the last pass that PJ_CUT kept back (every page of its bitmap from there
 * on was left out), or the pass's limit when nothing was; PS_CURSOR: the page the pass in flight is at. */
enum { PS_PASS_DONE, PS_DATA_PAGES, PS_ZERO_PAGES, PS_BYTES_SENT, PS_BYTES_RECEIVED, PS_STATE, PS_CUT_AT, PS_CURSOR, PS_SLOTS = 8 };
/* PR_MARK_RING: from this slot, per pass (pass % PR_RING_LEN), the pages placed (data + zero) when its
 * MARK came: the source runs ahead, so at PASS_END the pages of later passes may be placed already. */
enum { PR_MARK, PR_DATA_PAGES, PR_ZERO_PAGES, PR_FRAMES, PR_BYTES_SENT, PR_BYTES_RECEIVED, PR_STATE, PR_CLOSED,
       PR_MOVED,      /* holes placed by UFFDIO_MOVE from the pool (dp_pool.c) */
       PR_POOL_READY, /* pool pages made so far */
       PR_MARK_RING = 10, PR_RING_LEN = 256, PR_SLOTS = PR_MARK_RING + PR_RING_LEN };

typedef struct {
  int sock, wakefd, role, timeout_ms;
  /* Guest page 0 of the running guest's memory, and the pages its view covers: a pass never reads
   * past them. Replaced (setMemory) only between passes, when the memory has grown. */
  const uint8_t *memory;
  uint32_t memory_pages;
  uint32_t max_pages;     /* pages the bitmap covers */
  dp_bucket bucket;       /* --max-bandwidth (PJ_UNCAPPED lifts it) */
  uint32_t *pages;        /* PageBitmap words: the pass's pages */
  int32_t *job;           /* PJ_SLOTS */
  double *stats;          /* PS_SLOTS */
  uint8_t secret[DP_SECRET];
  volatile int *stop;
  char err[DP_ERR];
} dp_presend_args;

typedef struct {
  int uffd, sock, wakefd, role, timeout_ms;
  uint64_t base;
  uint32_t table_pages;   /* pages in the state table (the reservation) */
  int32_t *limit;         /* [0]: pages in the memory now (TypeScript raises it at GROW) */
  uint8_t *states;
  int32_t *state_counts;
  double *stats;          /* PR_SLOTS */
  uint32_t *digest;
  uint32_t digest_pages;
  int move_pool;          /* holes placed through a pool made ahead (dp_pool.c), as dp_fault_args.move_pool */
  dp_pool *pool;          /* the thread's own, while it runs */
  uint8_t secret[DP_SECRET];
  volatile int *stop;
  char err[DP_ERR];
} dp_prerecv_args;

int dp_presend_run(dp_presend_args *a);
int dp_prerecv_run(dp_prerecv_args *a);

/* The verify digest's 64-bit hash of one page as [lo, hi] (the same function as
 * src/migration/verify/digest.ts hashWords; a checksum, not cryptographic). */
void dp_page_hash(const uint8_t *page, uint32_t out[2]);

/* ---- the snapshot fault thread (dp_file.c): pages from layer files ---- */
#define DP_MAX_LAYERS 64
enum { /* Float64 slots of its stats: the layout of src/memory/fault-stats.ts (STAT) */
  FS_FAULTS, FS_ZERO_FILLS, FS_REQUESTS, FS_DEDUPED, FS_WAKES, FS_PAGES_PLACED, FS_EEXIST, FS_LATENCY_COUNT, FS_SLOTS
};

typedef struct {
  int uffd, wakefd, raise_priority;
  uint64_t base;          /* address of guest page 0 */
  uint32_t table_pages;   /* pages in the state table (the reservation) */
  uint32_t fault_around;
  uint8_t *states;
  int32_t *state_counts;
  double *stats;          /* FS_SLOTS */
  double *latencies;      /* ring of fault latencies (µs, event read -> page placed) */
  uint32_t latency_ring;
  int fds[DP_MAX_LAYERS]; /* each layer's memory file, root first: page p at byte p * 4096 (owned: dups) */
  uint32_t nfds;
  const int16_t *location; /* per page, the newest layer holding it, -1: none (zero) */
  uint32_t location_pages;
  volatile int *stop;
  char err[DP_ERR];
} dp_file_args;

/* ---- an eager snapshot restore's load (dp_load.c) ---- */
#define DP_LOAD_CHUNK_PAGES 256 /* docs/snapshot-format.md: a chunk is at most 256 pages */
#define DP_LOAD_MAX_THREADS 8
typedef struct {
  uint8_t *memory;        /* guest page 0 */
  uint64_t memory_bytes;
  int fds[DP_MAX_LAYERS]; /* each layer's memory file, root first (owned: dups) */
  uint32_t nfds;
  const int16_t *location; /* per page, the newest layer holding it, -1: none */
  uint32_t location_pages;
  const uint32_t *chunk_layer, *chunk_page, *chunk_count;
  const uint8_t *chunk_sha; /* 32 bytes a chunk */
  const uint8_t *chunk_crc; /* DP_CHECK bytes a chunk (dp_chunk_check; zeros: none), or NULL: the sha256s are checked */
  uint32_t nchunks;
  uint32_t threads;       /* this one and threads - 1 more: 1 to DP_LOAD_MAX_THREADS */
  int populate;           /* 1: a chunk read in place is populated (MADV_POPULATE_WRITE) before it is read */
  uint32_t next;          /* the next chunk to take (atomic) */
  int failed;             /* atomic: the first failure wrote err */
  volatile int *stop;
  char err[DP_ERR];
} dp_load_args;

/* ---- a switchover's walk for written pages (dp_scan.c) ---- */
enum { DP_SCAN_RUNNING = 0, DP_SCAN_DONE = 1, DP_SCAN_OVERFLOW = 2, DP_SCAN_FAILED = 3 };
typedef struct {
  uint64_t base, end;     /* the guest memory's bytes to walk (page aligned) */
  uint32_t *runs;         /* out: [start, end) page index pairs, merged where adjacent */
  uint32_t max_runs;
  int32_t *status;        /* out: [0] DP_SCAN_* (stored last, release), [1] the runs written */
  int raise_priority;     /* SCHED_FIFO 1 where allowed, else nice -10 */
  int armed;              /* set up, then wait for a wake (wakefd) before walking: started ahead of the pause */
  int wakefd;
  volatile int *stop;
  char err[DP_ERR];
} dp_scan_args;
int dp_scan_run(dp_scan_args *a);

/* ---- the source's --verify digest (dp_digest.c) ---- */
typedef struct {
  const uint8_t *memory;   /* the frozen guest memory from page 0 */
  uint32_t page_count;
  const uint32_t *present; /* bitmap words of the pages present; the others hash as zero, unread */
  uint32_t *hashes;        /* out: 2 u32 per page, dp_page_hash's [lo, hi] */
  volatile int *stop;
  char err[DP_ERR];
} dp_digest_args;
int dp_digest_run(dp_digest_args *a);

/* A snapshot chunk's fast check (dp_check.c): CRC-32C of each quarter of its bytes, 4 x u32 LE. */
#define DP_CHECK 16u
void dp_chunk_check(const uint8_t *p, size_t len, uint8_t out[DP_CHECK]);

/* ---- the guest memory's userfaultfd and page states (dp_uffd.c), shared by the fault threads ---- */
uint8_t dp_state_of(const uint8_t *states, uint32_t p);
/* pending -> received by compare-and-swap; 1 for the caller that made the move (it counts the page). */
int dp_mark_received(uint8_t *states, int32_t *counts, uint32_t p);
void dp_wake(int uffd, uint64_t base, uint32_t p);
/* UFFDIO_ZEROPAGE; a page present already (another fault's) is woken instead. -1 with errno on failure. */
int dp_zero_page(int uffd, uint64_t base, uint32_t p);
/* UFFDIO_COPY of pages [p, p+n) from src, page by page after a partial copy; a page placed by
 * another thread first (EEXIST) is counted in *eexist, its waiters woken. -1 with err set. */
int dp_place_run(int uffd, uint64_t base, uint32_t p, uint32_t n, const uint8_t *src, double *eexist, char *err);
/* One fault's latency (µs) into a thread's ring, then the count that publishes it (stats[count_slot]). */
void dp_record_latency(double *stats, int count_slot, double *ring, uint32_t ring_len, double us);
/* pread of exactly len bytes at off: 0; 1 when the file ends first (*done: the bytes read); -1 with errno. */
int dp_pread_full(int fd, uint8_t *buf, size_t len, off_t off, size_t *done);

/* Thread bodies: return 0 when stopped, -1 with args->err set on failure. */
int dp_fault_run(dp_fault_args *a);
int dp_answer_run(dp_answer_args *a);
int dp_file_run(dp_file_args *a);
int dp_load_run(dp_load_args *a);

#endif
