// C reference for a page stream into fresh memory, the work of Ferry's native precopy stream
// without its framing and encryption: a sender process writes N pages over loopback TCP, the
// receiver reads them into a 64 KiB buffer and places them with UFFDIO_COPY into a region
// registered for MISSING faults (each page freshly allocated, as on a destination).
// Prints "MB/s cpu_s_per_gib ok|BAD": MB/s of page bytes from the receiver's accept to the last
// page placed; CPU seconds of both processes over their stream (the sender's own filling of its
// source pages is not counted), per GiB. Usage: stream_ref <mib>
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ref_io.h"

#define PAGE 4096
#define RUN 16 /* pages per read and per UFFDIO_COPY, as a PAGES frame carries */

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double cpu_s(void) {
  struct rusage u;
  getrusage(RUSAGE_SELF, &u);
  return (double)u.ru_utime.tv_sec + (double)u.ru_utime.tv_usec / 1e6 + (double)u.ru_stime.tv_sec +
         (double)u.ru_stime.tv_usec / 1e6;
}

static uint32_t pattern(uint64_t page) { return (uint32_t)(page * 2654435761u + 1); }

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: stream_ref <mib>\n");
    return 2;
  }
  size_t pages = (size_t)atol(argv[1]) * 256;
  int lsock = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t alen = sizeof addr;
  if (lsock < 0 || bind(lsock, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lsock, 1) < 0 ||
      getsockname(lsock, (struct sockaddr *)&addr, &alen) < 0)
    die("listen");
  int cpu_pipe[2];
  if (pipe(cpu_pipe) < 0) die("pipe");
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) { /* sender */
    char *src = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (src == MAP_FAILED) die("mmap source");
    for (size_t p = 0; p < pages; p++)
      for (size_t w = 0; w < PAGE; w += 256) *(uint32_t *)(src + p * PAGE + w) = pattern(p) ^ (uint32_t)w;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    double c0 = cpu_s();
    if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
    full_write(s, src, pages * PAGE);
    close(s);
    double used = cpu_s() - c0;
    if (write(cpu_pipe[1], &used, sizeof used) != sizeof used) die("write cpu");
    _exit(0);
  }
  char *dst = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (dst == MAP_FAILED) die("mmap destination");
  int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
  struct uffdio_api api = {.api = UFFD_API};
  struct uffdio_register reg = {.range = {.start = (uintptr_t)dst, .len = pages * PAGE}, .mode = UFFDIO_REGISTER_MODE_MISSING};
  if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) < 0 || ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) die("userfaultfd");
  char *buf = aligned_alloc(PAGE, RUN * PAGE);
  int s = accept(lsock, NULL, NULL);
  if (s < 0) die("accept");
  double t0 = now_s(), c0 = cpu_s();
  for (size_t p = 0; p < pages; p += RUN) {
    size_t n = pages - p < RUN ? pages - p : RUN;
    if (full_read(s, buf, n * PAGE) < 0) die("read");
    struct uffdio_copy cp = {.dst = (uintptr_t)(dst + p * PAGE), .src = (uintptr_t)buf, .len = n * PAGE};
    if (ioctl(uffd, UFFDIO_COPY, &cp) < 0) die("UFFDIO_COPY");
  }
  double secs = now_s() - t0, used = cpu_s() - c0, sender = 0;
  if (read(cpu_pipe[0], &sender, sizeof sender) != sizeof sender) die("read cpu");
  waitpid(child, NULL, 0);
  int ok = 1;
  for (size_t p = 0; p < pages; p += 97)
    if (*(uint32_t *)(dst + p * PAGE) != pattern(p)) ok = 0;
  printf("%.1f %.3f %s\n", (double)pages * PAGE / 1e6 / secs, (used + sender) * (1024.0 * 1024 * 1024) / ((double)pages * PAGE),
         ok ? "ok" : "BAD");
  return ok ? 0 : 1;
}
