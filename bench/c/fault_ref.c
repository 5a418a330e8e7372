// C reference for the fault round trip: a pthread touches holes in a userfaultfd-registered anonymous
// region; a handler thread does a blocking read() of the fault and a 4 KiB UFFDIO_COPY; the toucher times
// each touch. Prints "p50_us p99_us faults". Usage: fault_ref <pages>
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int uffd;
static char *region, *image;
static long pages;

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void *handler(void *arg) {
  struct uffd_msg msg;
  for (;;) {
    ssize_t r = read(uffd, &msg, sizeof msg);
    if (r != sizeof msg) continue;
    if (msg.event != UFFD_EVENT_PAGEFAULT) continue;
    uint64_t addr = msg.arg.pagefault.address & ~4095ull;
    struct uffdio_copy c = {.dst = addr, .src = (uintptr_t)(image + (addr - (uintptr_t)region)), .len = 4096, .mode = 0};
    if (ioctl(uffd, UFFDIO_COPY, &c) != 0) { perror("UFFDIO_COPY"); exit(1); }
  }
  return NULL;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  pages = argc > 1 ? atol(argv[1]) : 50000;
  size_t len = (size_t)pages * 4096;
  region = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  image = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  for (long p = 0; p < pages; p++) ((int *)(image + p * 4096))[0] = (int)p;
  uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
  struct uffdio_api api = {.api = UFFD_API};
  if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api)) { perror("userfaultfd"); return 1; }
  struct uffdio_register reg = {.range = {.start = (uintptr_t)region, .len = len}, .mode = UFFDIO_REGISTER_MODE_MISSING};
  if (ioctl(uffd, UFFDIO_REGISTER, &reg)) { perror("UFFDIO_REGISTER"); return 1; }
  pthread_t h;
  pthread_create(&h, NULL, handler, NULL);
  double *lat = malloc(sizeof(double) * pages);
  volatile long sum = 0;
  for (long p = 0; p < pages; p++) {
    double t0 = now_us();
    sum += ((volatile int *)(region + p * 4096))[0];
    lat[p] = now_us() - t0;
  }
  qsort(lat, pages, sizeof(double), cmp);
  long expect = pages * (pages - 1) / 2;
  printf("%.3f %.3f %ld %s\n", lat[pages / 2], lat[(long)(pages * 0.99)], pages, sum == expect ? "ok" : "BADSUM");
  return 0;
}
