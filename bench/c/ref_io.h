// What the C references (postcopy_ref.c, stream_ref.c) share: dying with errno's text, and whole
// reads and writes on a blocking descriptor.
#ifndef FERRY_REF_IO_H
#define FERRY_REF_IO_H
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void die(const char *what) {
  perror(what);
  exit(1);
}

static void full_write(int fd, const void *buf, size_t n) {
  const char *p = buf;
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w <= 0) die("write");
    p += w;
    n -= (size_t)w;
  }
}

/* 0, or -1 at the end of the stream or on an error. */
static int full_read(int fd, void *buf, size_t n) {
  char *p = buf;
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r <= 0) return -1;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}
#endif
