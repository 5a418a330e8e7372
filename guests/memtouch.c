/*
 * memtouch: a guest whose memory contents can be checked after a migration.
 *
 * It allocates N MiB of 4 KiB pages and keeps a generation number per page.
 * Every 64-bit word of a page is a pure function of (page, generation, word),
 * so after the guest has moved, verifying every page against the generation
 * table proves that each page arrived with the content that matches the
 * table -- which itself lives in guest memory and moved with it.
 *
 * Output (stdout, line buffered):
 *   START pages=<n> data_offset=<addr> reserve_offset=<addr> reserve_bytes=<n>
 *   SEQ <n> pages_written=<total> gen=<max>     every --report-ms, n = 1, 2, 3, ...
 *   VERIFY OK <pages> | VERIFY FAIL <count>     then exit 0 / 1
 * Exit 2 on bad arguments, 3 if memory cannot be allocated.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define PAGE_SIZE 4096u
#define WORDS_PER_PAGE (PAGE_SIZE / 8u)
#define WASM_PAGE_SIZE 65536u

static const char *usage_text =
    "usage: memtouch [--mib N] [--reserve-mib R] [--rate PAGES_PER_SEC] [--rounds K]\n"
    "                [--seconds S] [--verify-file PATH] [--report-ms MS] [--random] [--idle]\n"
    "                [--read-mib N]   (read, never write, the first N MiB of the reserve)\n";

struct options {
  uint32_t mib;
  uint32_t reserve_mib;
  uint32_t read_mib;    /* pages of the reserve only ever read: present, but never written */
  uint64_t rate;        /* pages per second; 0 = as fast as possible */
  uint64_t rounds;      /* stop after rounds * pages page writes; 0 = no limit */
  double seconds;       /* stop after this long; 0 = no limit */
  const char *verify_file;
  uint64_t report_ms;
  int random_order;
  int idle;
};

static int bad_args(const char *why, const char *arg) {
  fprintf(stderr, "memtouch: %s%s%s\n%s", why, arg ? ": " : "", arg ? arg : "", usage_text);
  exit(2);
}

static uint64_t parse_u64(const char *flag, const char *text, uint64_t max) {
  if (text == NULL) bad_args("missing value for", flag);
  if (*text < '0' || *text > '9') bad_args("not a non-negative integer", text);
  char *end = NULL;
  errno = 0;
  unsigned long long v = strtoull(text, &end, 10);
  if (errno != 0 || *end != '\0' || v > max) bad_args("value out of range", text);
  return (uint64_t)v;
}

static double parse_seconds(const char *text) {
  if (text == NULL) bad_args("missing value for", "--seconds");
  char *end = NULL;
  errno = 0;
  double v = strtod(text, &end);
  if (errno != 0 || *end != '\0' || end == text || !(v >= 0.0) || v > 1e9)
    bad_args("bad --seconds value", text);
  return v;
}

static void parse_options(int argc, char **argv, struct options *o) {
  memset(o, 0, sizeof *o);
  o->mib = 64;
  o->report_ms = 100;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--mib") == 0) { o->mib = (uint32_t)parse_u64(a, v, 3072); i++; }
    else if (strcmp(a, "--reserve-mib") == 0) { o->reserve_mib = (uint32_t)parse_u64(a, v, 3072); i++; }
    else if (strcmp(a, "--read-mib") == 0) { o->read_mib = (uint32_t)parse_u64(a, v, 3072); i++; }
    else if (strcmp(a, "--rate") == 0) { o->rate = parse_u64(a, v, 1000000000ull); i++; }
    else if (strcmp(a, "--rounds") == 0) { o->rounds = parse_u64(a, v, 1000000000ull); i++; }
    else if (strcmp(a, "--seconds") == 0) { o->seconds = parse_seconds(v); i++; }
    else if (strcmp(a, "--verify-file") == 0) {
      if (v == NULL || *v == '\0') bad_args("missing value for", a);
      o->verify_file = v; i++;
    }
    else if (strcmp(a, "--report-ms") == 0) { o->report_ms = parse_u64(a, v, 3600000ull); i++; }
    else if (strcmp(a, "--random") == 0) o->random_order = 1;
    else if (strcmp(a, "--idle") == 0) o->idle = 1;
    else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) { fputs(usage_text, stdout); exit(0); }
    else bad_args("unknown argument", a);
  }
  if (o->mib == 0) bad_args("--mib must be at least 1", NULL);
  if (o->report_ms == 0) bad_args("--report-ms must be at least 1", NULL);
  if (o->read_mib > o->reserve_mib) bad_args("--read-mib must not exceed --reserve-mib", NULL);
  if ((uint64_t)o->mib + o->reserve_mib > 3584) bad_args("--mib + --reserve-mib exceed 3584", NULL);
}

/* Guest state: all of it lives in linear memory, so it migrates with the pages. */
static uint8_t *data;       /* pages * PAGE_SIZE bytes, page aligned */
static uint32_t *gens;      /* generation of each page; 0 = never written */
static uint32_t pages;
static uint32_t max_gen;
static uint64_t pages_written;

/* splitmix64 finalizer: a cheap, well-mixed function of page and generation. */
static uint64_t mix64(uint64_t x) {
  x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27; x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

static uint64_t page_seed(uint32_t page, uint32_t gen) {
  return mix64(((uint64_t)page << 32) ^ gen ^ 0x6d656d746f756368ull);
}

/* Word w of a page is seed + w * odd constant: distinct words, cheap to check. */
static void write_page(uint32_t page) {
  uint32_t gen = gens[page] + 1;
  if (gen == 0) gen = 1; /* wrapped: 0 is reserved for "never written" */
  uint64_t seed = page_seed(page, gen);
  uint64_t *w = (uint64_t *)(data + (size_t)page * PAGE_SIZE);
  for (uint32_t i = 0; i < WORDS_PER_PAGE; i++) w[i] = seed + (uint64_t)i * 0x9e3779b97f4a7c15ull;
  gens[page] = gen;
  if (gen > max_gen) max_gen = gen;
  pages_written++;
}

static int page_ok(uint32_t page) {
  uint64_t seed = page_seed(page, gens[page]);
  const uint64_t *w = (const uint64_t *)(data + (size_t)page * PAGE_SIZE);
  for (uint32_t i = 0; i < WORDS_PER_PAGE; i++)
    if (w[i] != seed + (uint64_t)i * 0x9e3779b97f4a7c15ull) return 0;
  return 1;
}

static int verify_and_exit(void) {
  uint32_t bad = 0;
  for (uint32_t p = 0; p < pages; p++) {
    if (!page_ok(p)) {
      if (bad < 8) fprintf(stderr, "memtouch: page %u does not match generation %u\n", p, gens[p]);
      bad++;
    }
  }
  if (bad == 0) printf("VERIFY OK %u\n", pages);
  else printf("VERIFY FAIL %u\n", bad);
  fflush(stdout);
  exit(bad == 0 ? 0 : 1);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_ns(uint64_t ns) {
  struct timespec ts = { (time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull) };
  nanosleep(&ts, NULL);
}

static int file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

/* xorshift64: the order of page writes in --random mode. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t next_random_page(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (uint32_t)(rng_state % pages);
}

int main(int argc, char **argv) {
  struct options o;
  parse_options(argc, argv, &o);
  setvbuf(stdout, NULL, _IOLBF, 0);

  pages = o.mib * (1024u * 1024u / PAGE_SIZE);
  data = aligned_alloc(PAGE_SIZE, (size_t)pages * PAGE_SIZE);
  gens = calloc(pages, sizeof *gens);
  if (data == NULL || gens == NULL) {
    fprintf(stderr, "memtouch: cannot allocate %u MiB\n", o.mib);
    return 3;
  }

  /* The reserve grows linear memory directly, after every allocation, so that
   * not even an allocator header is ever written into it: those pages stay
   * never-touched for as long as the guest lives. */
  uint32_t reserve_offset = 0;
  uint32_t reserve_bytes = 0;
  if (o.reserve_mib > 0) {
    uint32_t wasm_pages = o.reserve_mib * (1024u * 1024u / WASM_PAGE_SIZE);
    int32_t old = (int32_t)__builtin_wasm_memory_grow(0, wasm_pages);
    if (old < 0) {
      fprintf(stderr, "memtouch: cannot reserve %u MiB\n", o.reserve_mib);
      return 3;
    }
    reserve_offset = (uint32_t)old * WASM_PAGE_SIZE;
    reserve_bytes = wasm_pages * WASM_PAGE_SIZE;
  }
  /* Read-only touches: each page is read once (the kernel maps the zero page or a real page of
   * zeros, depending on the kernel) and never written. */
  for (uint32_t off = 0; off < o.read_mib * 1024u * 1024u; off += PAGE_SIZE) {
    if (*(volatile const uint8_t *)(uintptr_t)(reserve_offset + off) != 0) {
      fprintf(stderr, "memtouch: reserve page at %u is not zero\n", reserve_offset + off);
      return 1;
    }
  }
  printf("START pages=%u data_offset=%lu reserve_offset=%u reserve_bytes=%u\n", pages,
         (unsigned long)(uintptr_t)data, reserve_offset, reserve_bytes);

  for (uint32_t p = 0; p < pages; p++) write_page(p);

  const uint64_t report_ns = o.report_ms * 1000000ull;
  const uint64_t start = now_ns();
  const uint64_t deadline = o.seconds > 0 ? start + (uint64_t)(o.seconds * 1e9) : UINT64_MAX;
  const uint64_t write_limit = o.rounds > 0 ? (uint64_t)pages * (o.rounds + 1) : UINT64_MAX;
  uint64_t next_report = start + report_ns;
  uint64_t seq = 0;
  uint32_t cursor = 0;
  double credit = 0.0;   /* pages we may write now under --rate */
  uint64_t last = start;

  for (;;) {
    uint64_t now = now_ns();
    if (now >= next_report) {
      seq++;
      printf("SEQ %llu pages_written=%llu gen=%u\n", (unsigned long long)seq,
             (unsigned long long)pages_written, max_gen);
      if (o.verify_file != NULL && file_exists(o.verify_file)) verify_and_exit();
      /* After a long stall (a pause, or a clock that moved with a migration)
       * start a fresh interval instead of printing a burst of lines. */
      next_report += report_ns;
      if (now >= next_report) next_report = now + report_ns;
    }
    if (now >= deadline || pages_written >= write_limit) verify_and_exit();

    if (o.idle) {
      uint64_t until = next_report < deadline ? next_report : deadline;
      if (until > now) sleep_ns(until - now);
      continue;
    }

    uint64_t batch;
    if (o.rate == 0) {
      batch = 64;
    } else {
      /* Token bucket, capped at one report interval of backlog so a stall does
       * not turn into a burst. */
      credit += (double)(now - last) * 1e-9 * (double)o.rate;
      double cap = (double)o.rate * (double)report_ns * 1e-9;
      if (cap < 1.0) cap = 1.0;
      if (credit > cap) credit = cap;
      batch = (uint64_t)credit;
      credit -= (double)batch;
    }
    last = now;
    if (batch > write_limit - pages_written) batch = write_limit - pages_written;
    for (uint64_t i = 0; i < batch; i++) {
      uint32_t p;
      if (o.random_order) p = next_random_page();
      else { p = cursor; cursor = cursor + 1 == pages ? 0 : cursor + 1; }
      write_page(p);
    }
    if (o.rate != 0 && batch == 0) {
      /* Sleep until the next page is due or the next report, whichever is first. */
      uint64_t due = now + (uint64_t)((1.0 - credit) / (double)o.rate * 1e9) + 1;
      uint64_t until = due < next_report ? due : next_report;
      if (until > deadline) until = deadline;
      if (until > now) sleep_ns(until - now);
    }
  }
}
