// C reference for the postcopy fault round trip, the path Ferry's destination takes:
//   fault (a thread touches a hole in a userfaultfd MISSING region)
//   -> handler thread reads the fault, sends an 8-byte page request over loopback TCP
//   -> a separate "source" process answers with the 4 KiB page
//   -> handler places it with UFFDIO_COPY, which wakes the faulting thread.
// The faulting thread times each touch (the time it is blocked). With --bulk, the source process
// also streams bulk data on a second TCP connection as fast as it can, to a reader thread that
// discards it, so the urgent round trip competes with a saturated loopback link as in Ferry.
// Prints "p50_us p99_us faults ok|BAD". Usage: postcopy_ref <pages> [--bulk]
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ref_io.h"

#define PAGE 4096
static int uffd, urgent_fd, bulk_fd;
static char *region;
static long pages;

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

/* The byte every page holds at offset i: a function of page number and i, checked after touch. */
static unsigned char pattern(uint64_t page, uint64_t i) { return (unsigned char)(page * 131 + i * 7 + 1); }

/* ---- source process: answers page requests; optionally streams bulk data ---- */
static void *bulk_writer(void *arg) {
  int fd = *(int *)arg;
  static char chunk[1 << 20];
  memset(chunk, 0x5a, sizeof chunk);
  for (;;) {
    ssize_t w = write(fd, chunk, sizeof chunk);
    if (w <= 0) return NULL;
  }
}

static void run_source(int listen_fd, int bulk) {
  int u = accept(listen_fd, NULL, NULL);
  if (u < 0) die("accept urgent");
  int one = 1;
  setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  pthread_t bt;
  int b = -1;
  if (bulk) {
    b = accept(listen_fd, NULL, NULL);
    if (b < 0) die("accept bulk");
    pthread_create(&bt, NULL, bulk_writer, &b);
  }
  char page[PAGE];
  uint64_t req;
  while (full_read(u, &req, sizeof req) == 0) {
    uint64_t pg = req / PAGE;
    for (int i = 0; i < PAGE; i++) page[i] = (char)pattern(pg, (uint64_t)i);
    full_write(u, page, PAGE);
  }
  _exit(0);
}

/* ---- destination: fault handler and bulk sink ---- */
static void *bulk_reader(void *arg) {
  static char sink[1 << 20];
  for (;;) {
    if (read(bulk_fd, sink, sizeof sink) <= 0) return NULL;
  }
}

static void *handler(void *arg) {
  struct uffd_msg msg;
  static char page[PAGE];
  for (;;) {
    ssize_t r = read(uffd, &msg, sizeof msg);
    if (r != sizeof msg || msg.event != UFFD_EVENT_PAGEFAULT) continue;
    uint64_t addr = msg.arg.pagefault.address & ~(uint64_t)(PAGE - 1);
    uint64_t off = addr - (uintptr_t)region;
    full_write(urgent_fd, &off, sizeof off);
    if (full_read(urgent_fd, page, PAGE) != 0) die("read page");
    struct uffdio_copy c = {.dst = addr, .src = (uintptr_t)page, .len = PAGE, .mode = 0};
    if (ioctl(uffd, UFFDIO_COPY, &c) != 0 && errno != EEXIST) die("UFFDIO_COPY");
  }
  return NULL;
}

static int connect_to(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) die("connect");
  return fd;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: postcopy_ref <pages> [--bulk]\n");
    return 2;
  }
  pages = atol(argv[1]);
  int bulk = argc > 2 && strcmp(argv[2], "--bulk") == 0;
  if (pages < 1 || pages > (1 << 20)) {
    fprintf(stderr, "pages must be 1..1048576\n");
    return 2;
  }

  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 4) != 0) die("listen");
  socklen_t al = sizeof a;
  getsockname(lfd, (struct sockaddr *)&a, &al);
  int port = ntohs(a.sin_port);
  pid_t child = fork();
  if (child == 0) run_source(lfd, bulk);
  close(lfd);

  urgent_fd = connect_to(port);
  int one = 1;
  setsockopt(urgent_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  pthread_t bt;
  if (bulk) {
    bulk_fd = connect_to(port);
    pthread_create(&bt, NULL, bulk_reader, NULL);
  }

  uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
  if (uffd < 0) die("userfaultfd");
  struct uffdio_api api = {.api = UFFD_API, .features = 0};
  if (ioctl(uffd, UFFDIO_API, &api) != 0) die("UFFDIO_API");
  region = mmap(NULL, (size_t)pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (region == MAP_FAILED) die("mmap");
  struct uffdio_register reg = {.range = {.start = (uintptr_t)region, .len = (uint64_t)pages * PAGE}, .mode = UFFDIO_REGISTER_MODE_MISSING};
  if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) die("UFFDIO_REGISTER");
  pthread_t ht;
  pthread_create(&ht, NULL, handler, NULL);
  if (bulk) usleep(100000); /* let the bulk stream fill the link first */

  /* Touch pages in a scrambled order (stride coprime with pages) so no readahead helps. */
  double *lat = malloc(sizeof(double) * (size_t)pages);
  long stride = 7919;
  while (pages % stride == 0) stride += 2;
  int ok = 1;
  for (long i = 0; i < pages; i++) {
    long pg = (i * stride) % pages;
    volatile unsigned char *p = (volatile unsigned char *)region + pg * PAGE;
    double t0 = now_us();
    unsigned char v = p[100];
    lat[i] = now_us() - t0;
    if (v != pattern((uint64_t)pg, 100)) ok = 0;
  }
  qsort(lat, (size_t)pages, sizeof(double), cmp);
  printf("%.2f %.2f %ld %s\n", lat[pages / 2], lat[(long)(pages * 0.99)], pages, ok ? "ok" : "BAD");
  kill(child, SIGKILL);
  waitpid(child, NULL, 0);
  return ok ? 0 : 1;
}
