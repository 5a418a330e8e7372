// Ferry's kernel-interface addon: syscalls and ioctls only, every argument validated here, no policy.
// Errors are JS Errors whose message names the operation and the errno name
// ("UFFDIO_COPY: EBADF (Bad file descriptor)") with .code (errno name), .syscall and .errno.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <sys/uio.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <linux/sockios.h>
#include <linux/if_packet.h>
#include <linux/if_ether.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <sys/mman.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "uapi.h"

#define PAGE 4096u
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25 /* 6.1+, missing from glibc 2.36 headers */
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* 5.14+ */
#endif
#define MAX_SAFE 9007199254740991.0 /* 2^53 - 1: addresses and sizes travel as JS numbers */
#define MAX_EVENTS 64

/* ------------------------------------------------------------------ errors */

static napi_value throw_errno(napi_env env, const char *op, int err, const char *detail) {
  const char *name = strerrorname_np(err);
  if (!name) name = "EUNKNOWN";
  char msg[512];
  if (detail && detail[0])
    snprintf(msg, sizeof msg, "%s: %s (%s): %s", op, name, strerror(err), detail);
  else
    snprintf(msg, sizeof msg, "%s: %s (%s)", op, name, strerror(err));
  napi_value code = NULL, message = NULL, error = NULL, sys = NULL, eno = NULL;
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message);
  napi_create_error(env, code, message, &error);
  napi_create_string_utf8(env, op, NAPI_AUTO_LENGTH, &sys);
  napi_create_int32(env, err, &eno);
  napi_set_named_property(env, error, "syscall", sys);
  napi_set_named_property(env, error, "errno", eno);
  napi_throw(env, error);
  return NULL;
}

/* Argument errors are reported as EINVAL with a detail naming the argument. */
static napi_value throw_arg(napi_env env, const char *op, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static napi_value throw_arg(napi_env env, const char *op, const char *fmt, ...) {
  char detail[384];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(detail, sizeof detail, fmt, ap);
  va_end(ap);
  return throw_errno(env, op, EINVAL, detail);
}

/* ------------------------------------------------------------------ argument parsing */

#define ARGS(n)                                                                     \
  size_t argc = (n);                                                                \
  napi_value argv[(n) > 0 ? (n) : 1];                                               \
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL; \
  if (argc < (n)) return throw_arg(env, OP, "expected %d arguments, got %zu", (int)(n), argc);

static int get_double(napi_env env, napi_value v, const char *op, const char *name, double *out) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t != napi_number) { throw_arg(env, op, "%s must be a number", name); return 0; }
  napi_get_value_double(env, v, out);
  return 1;
}

/* A non-negative integer that fits a JS number exactly (addresses, lengths, offsets). */
static int get_u64(napi_env env, napi_value v, const char *op, const char *name, uint64_t *out) {
  double d;
  if (!get_double(env, v, op, name, &d)) return 0;
  if (!(d >= 0) || d > MAX_SAFE || d != (double)(uint64_t)d) {
    throw_arg(env, op, "%s must be a non-negative integer, got %g", name, d);
    return 0;
  }
  *out = (uint64_t)d;
  return 1;
}

static int get_i32(napi_env env, napi_value v, const char *op, const char *name, int32_t *out) {
  double d;
  if (!get_double(env, v, op, name, &d)) return 0;
  if (d != (double)(int32_t)d) { throw_arg(env, op, "%s must be a 32-bit integer, got %g", name, d); return 0; }
  *out = (int32_t)d;
  return 1;
}

static int get_fd(napi_env env, napi_value v, const char *op, int *out) {
  int32_t fd;
  if (!get_i32(env, v, op, "fd", &fd)) return 0;
  if (fd < 0) { throw_errno(env, op, EBADF, "fd is negative"); return 0; }
  *out = fd;
  return 1;
}

static int get_bool(napi_env env, napi_value v, const char *op, const char *name, int *out) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t == napi_undefined) { *out = 0; return 1; }
  if (t != napi_boolean) { throw_arg(env, op, "%s must be a boolean", name); return 0; }
  bool b;
  napi_get_value_bool(env, v, &b);
  *out = b;
  return 1;
}

/* Bytes of a TypedArray, DataView or ArrayBuffer. A SharedArrayBuffer must be passed as a view
 * (N-API in Node 20 has no SharedArrayBuffer accessor; napi_get_typedarray_info works on views over one). */
static int get_bytes(napi_env env, napi_value v, const char *op, const char *name, uint8_t **ptr, size_t *len,
                     napi_typedarray_type *kind) {
  bool is;
  if (napi_is_typedarray(env, v, &is) == napi_ok && is) {
    napi_typedarray_type type;
    size_t count;
    void *data;
    napi_get_typedarray_info(env, v, &type, &count, &data, NULL, NULL);
    static const size_t widths[] = {1, 1, 1, 2, 2, 4, 4, 4, 8, 8, 8};
    *ptr = data;
    *len = count * ((unsigned)type < sizeof widths / sizeof widths[0] ? widths[type] : 1);
    if (kind) *kind = type;
    return 1;
  }
  if (napi_is_dataview(env, v, &is) == napi_ok && is) {
    void *data;
    napi_get_dataview_info(env, v, len, &data, NULL, NULL);
    *ptr = data;
    if (kind) *kind = (napi_typedarray_type)-1;
    return 1;
  }
  if (napi_is_arraybuffer(env, v, &is) == napi_ok && is) {
    void *data;
    napi_get_arraybuffer_info(env, v, &data, len);
    *ptr = data;
    if (kind) *kind = (napi_typedarray_type)-1;
    return 1;
  }
  throw_arg(env, op, "%s must be a TypedArray, DataView or ArrayBuffer (pass a view for a SharedArrayBuffer)", name);
  return 0;
}

static int get_typed(napi_env env, napi_value v, const char *op, const char *name, napi_typedarray_type want,
                     const char *want_name, void **ptr, size_t *count) {
  bool is = false;
  napi_is_typedarray(env, v, &is);
  napi_typedarray_type type;
  if (is) napi_get_typedarray_info(env, v, &type, count, ptr, NULL, NULL);
  if (!is || type != want) { throw_arg(env, op, "%s must be a %s", name, want_name); return 0; }
  return 1;
}

/* [offset, offset+length) must lie inside a buffer of buflen bytes. */
static int check_inside(napi_env env, const char *op, const char *name, uint64_t offset, uint64_t length, size_t buflen) {
  if (offset > buflen || length > buflen - offset) {
    throw_errno(env, op, ERANGE, "");
    napi_value e = NULL;
    napi_get_and_clear_last_exception(env, &e);
    char detail[256];
    snprintf(detail, sizeof detail, "%s [%llu, %llu) lies outside the buffer of %zu bytes", name,
             (unsigned long long)offset, (unsigned long long)(offset + length), buflen);
    throw_errno(env, op, ERANGE, detail);
    return 0;
  }
  return 1;
}

static int check_aligned(napi_env env, const char *op, const char *name, uint64_t v) {
  if (v % PAGE) { throw_arg(env, op, "%s 0x%llx is not a multiple of 4096", name, (unsigned long long)v); return 0; }
  return 1;
}

/* Every napi_value this file returns starts as NULL: a call the runtime refuses (its environment is
 * terminating) then returns "no value" instead of stack garbage. */
static napi_value num(napi_env env, double d) {
  napi_value v = NULL;
  napi_create_double(env, d, &v);
  return v;
}

static napi_value undef(napi_env env) {
  napi_value v = NULL;
  napi_get_undefined(env, &v);
  return v;
}

/* ------------------------------------------------------------------ memory */

#undef OP
#define OP "bufferAddress"
/* bufferAddress(view) -> address of the view's first byte. */
static napi_value f_buffer_address(napi_env env, napi_callback_info info) {
  ARGS(1);
  uint8_t *p;
  size_t len;
  if (!get_bytes(env, argv[0], OP, "buffer", &p, &len, NULL)) return NULL;
  return num(env, (double)(uintptr_t)p);
}

#undef OP
#define OP "madvise"
/* madvise(view, offset, length, advice): the range must be page-aligned and inside the view. */
static napi_value f_madvise(napi_env env, napi_callback_info info) {
  ARGS(4);
  uint8_t *p;
  size_t len;
  uint64_t off, n;
  int32_t advice;
  if (!get_bytes(env, argv[0], OP, "buffer", &p, &len, NULL) || !get_u64(env, argv[1], OP, "offset", &off) ||
      !get_u64(env, argv[2], OP, "length", &n) || !get_i32(env, argv[3], OP, "advice", &advice))
    return NULL;
  if (advice != MADV_DONTNEED && advice != MADV_HUGEPAGE && advice != MADV_NOHUGEPAGE && advice != MADV_WILLNEED &&
      advice != MADV_COLLAPSE && advice != MADV_POPULATE_WRITE)
    return throw_arg(env, OP, "advice %d is not one of DONTNEED, WILLNEED, HUGEPAGE, NOHUGEPAGE, COLLAPSE, POPULATE_WRITE", advice);
  if (!check_inside(env, OP, "range", off, n, len)) return NULL;
  uintptr_t addr = (uintptr_t)p + off;
  if (!check_aligned(env, OP, "address", addr) || !check_aligned(env, OP, "length", n)) return NULL;
  if (n == 0) return undef(env);
  if (madvise((void *)addr, n, advice) != 0) return throw_errno(env, OP, errno, NULL);
  return undef(env);
}

typedef struct {
  void *addr;
  size_t len;
} mapping_t;

static void unmap_finalize(napi_env env, void *data, void *hint) {
  mapping_t *m = hint;
  munmap(m->addr, m->len);
  free(m);
}

static napi_value wrap_mapping(napi_env env, void *addr, size_t len) {
  mapping_t *m = malloc(sizeof *m);
  if (!m) { munmap(addr, len); return throw_errno(env, "mmap", ENOMEM, NULL); }
  m->addr = addr;
  m->len = len;
  napi_value ab = NULL;
  if (napi_create_external_arraybuffer(env, addr, len, unmap_finalize, m, &ab) != napi_ok) {
    munmap(addr, len);
    free(m);
    return throw_errno(env, "mmap", EIO, "napi_create_external_arraybuffer failed");
  }
  return ab;
}

#undef OP
#define OP "mmap"
/* mmapAnonymous(length) -> ArrayBuffer over a private anonymous mapping, unmapped when collected. */
static napi_value f_mmap_anonymous(napi_env env, napi_callback_info info) {
  ARGS(1);
  uint64_t n;
  if (!get_u64(env, argv[0], OP, "length", &n)) return NULL;
  if (n == 0 || !check_aligned(env, OP, "length", n)) return n == 0 ? throw_arg(env, OP, "length must be > 0") : NULL;
  void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return throw_errno(env, OP, errno, NULL);
  return wrap_mapping(env, p, n);
}

/* mmapFd(fd, offset, length, shared) -> ArrayBuffer over a file mapping (e.g. a memfd), no copy. */
static napi_value f_mmap_fd(napi_env env, napi_callback_info info) {
  ARGS(4);
  int fd, shared;
  uint64_t off, n;
  if (!get_fd(env, argv[0], OP, &fd) || !get_u64(env, argv[1], OP, "offset", &off) ||
      !get_u64(env, argv[2], OP, "length", &n) || !get_bool(env, argv[3], OP, "shared", &shared))
    return NULL;
  if (n == 0) return throw_arg(env, OP, "length must be > 0");
  if (!check_aligned(env, OP, "offset", off) || !check_aligned(env, OP, "length", n)) return NULL;
  void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, shared ? MAP_SHARED : MAP_PRIVATE, fd, (off_t)off);
  if (p == MAP_FAILED) return throw_errno(env, OP, errno, NULL);
  return wrap_mapping(env, p, n);
}

#undef OP
#define OP "memfd_create"
static napi_value f_memfd_create(napi_env env, napi_callback_info info) {
  ARGS(2);
  char name[200];
  size_t nlen;
  if (napi_get_value_string_utf8(env, argv[0], name, sizeof name, &nlen) != napi_ok) {
    napi_value e = NULL;
    napi_get_and_clear_last_exception(env, &e);
    return throw_arg(env, OP, "name must be a string");
  }
  int32_t flags;
  if (!get_i32(env, argv[1], OP, "flags", &flags)) return NULL;
  int fd = memfd_create(name, (unsigned)flags);
  if (fd < 0) return throw_errno(env, OP, errno, NULL);
  return num(env, fd);
}

#undef OP
#define OP "countNonZeroPages"
/* BENCHMARK REFERENCE ONLY: counts 4 KiB pages of a view holding any non-zero byte by reading every
 * word. This is the slow way (it even maps the zero page into holes); Ferry uses PAGEMAP_SCAN. */
static napi_value f_count_nonzero_pages(napi_env env, napi_callback_info info) {
  ARGS(1);
  uint8_t *p;
  size_t len;
  if (!get_bytes(env, argv[0], OP, "buffer", &p, &len, NULL)) return NULL;
  if (((uintptr_t)p % 8) || len % PAGE) return throw_arg(env, OP, "buffer must be 8-byte aligned and a whole number of pages");
  size_t count = 0;
  for (size_t off = 0; off < len; off += PAGE) {
    const uint64_t *w = (const uint64_t *)(p + off);
    for (size_t i = 0; i < PAGE / 8; i++)
      if (w[i]) { count++; break; }
  }
  return num(env, (double)count);
}

/* ------------------------------------------------------------------ userfaultfd */

#undef OP
#define OP "userfaultfd"
/* uffdCreate(nonblock, cloexec) -> fd. Never UFFD_USER_MODE_ONLY: kernel-mode faults (a read() into a hole) must reach us. */
static napi_value f_uffd_create(napi_env env, napi_callback_info info) {
  ARGS(2);
  int nb, ce;
  if (!get_bool(env, argv[0], OP, "nonblock", &nb) || !get_bool(env, argv[1], OP, "cloexec", &ce)) return NULL;
  int fd = (int)syscall(SYS_userfaultfd, (nb ? O_NONBLOCK : 0) | (ce ? O_CLOEXEC : 0));
  if (fd < 0) return throw_errno(env, OP, errno, NULL);
  return num(env, fd);
}

#undef OP
#define OP "UFFDIO_API"
/* uffdApi(fd, features) -> { features: number, ioctls: bigint } granted. */
static napi_value f_uffd_api(napi_env env, napi_callback_info info) {
  ARGS(2);
  int fd;
  uint64_t features;
  if (!get_fd(env, argv[0], OP, &fd) || !get_u64(env, argv[1], OP, "features", &features)) return NULL;
  struct uffdio_api api = {.api = UFFD_API, .features = features};
  if (ioctl(fd, UFFDIO_API, &api) != 0) return throw_errno(env, OP, errno, NULL);
  napi_value o = NULL;
  napi_create_object(env, &o);
  napi_set_named_property(env, o, "features", num(env, (double)api.features));
  napi_value io = NULL; /* bit 63 (_UFFDIO_API) does not fit a double beside the low bits: a BigInt */
  napi_create_bigint_uint64(env, api.ioctls, &io);
  napi_set_named_property(env, o, "ioctls", io);
  return o;
}

static int get_range(napi_env env, napi_value *argv, const char *op, uint64_t *start, uint64_t *len) {
  if (!get_u64(env, argv[0], op, "start", start) || !get_u64(env, argv[1], op, "length", len)) return 0;
  if (!check_aligned(env, op, "start", *start) || !check_aligned(env, op, "length", *len)) return 0;
  if (*len == 0) { throw_arg(env, op, "length must be > 0"); return 0; }
  return 1;
}

#undef OP
#define OP "UFFDIO_REGISTER"
/* uffdRegister(fd, start, length, mode) -> ioctls available on the range (a BigInt bit mask). */
static napi_value f_uffd_register(napi_env env, napi_callback_info info) {
  ARGS(4);
  int fd;
  uint64_t start, len;
  int32_t mode;
  if (!get_fd(env, argv[0], OP, &fd) || !get_range(env, argv + 1, OP, &start, &len) ||
      !get_i32(env, argv[3], OP, "mode", &mode))
    return NULL;
  if (mode <= 0 || (mode & ~(UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP | UFFDIO_REGISTER_MODE_MINOR)))
    return throw_arg(env, OP, "mode %d must be a non-empty mask of MISSING|WP|MINOR", mode);
  struct uffdio_register r = {.range = {.start = start, .len = len}, .mode = (uint64_t)mode};
  if (ioctl(fd, UFFDIO_REGISTER, &r) != 0) return throw_errno(env, OP, errno, NULL);
  napi_value io = NULL;
  napi_create_bigint_uint64(env, r.ioctls, &io);
  return io;
}

#undef OP
#define OP "UFFDIO_UNREGISTER"
static napi_value f_uffd_unregister(napi_env env, napi_callback_info info) {
  ARGS(3);
  int fd;
  uint64_t start, len;
  if (!get_fd(env, argv[0], OP, &fd) || !get_range(env, argv + 1, OP, &start, &len)) return NULL;
  struct uffdio_range r = {.start = start, .len = len};
  if (ioctl(fd, UFFDIO_UNREGISTER, &r) != 0) return throw_errno(env, OP, errno, NULL);
  return undef(env);
}

#undef OP
#define OP "UFFDIO_WAKE"
static napi_value f_uffd_wake(napi_env env, napi_callback_info info) {
  ARGS(3);
  int fd;
  uint64_t start, len;
  if (!get_fd(env, argv[0], OP, &fd) || !get_range(env, argv + 1, OP, &start, &len)) return NULL;
  struct uffdio_range r = {.start = start, .len = len};
  if (ioctl(fd, UFFDIO_WAKE, &r) != 0) return throw_errno(env, OP, errno, NULL);
  return undef(env);
}

#undef OP
#define OP "UFFDIO_WRITEPROTECT"
/* uffdWriteprotect(fd, start, length, mode): mode WP sets protection, 0 clears it (and wakes unless DONTWAKE). */
static napi_value f_uffd_writeprotect(napi_env env, napi_callback_info info) {
  ARGS(4);
  int fd;
  uint64_t start, len;
  int32_t mode;
  if (!get_fd(env, argv[0], OP, &fd) || !get_range(env, argv + 1, OP, &start, &len) ||
      !get_i32(env, argv[3], OP, "mode", &mode))
    return NULL;
  if (mode & ~(UFFDIO_WRITEPROTECT_MODE_WP | UFFDIO_WRITEPROTECT_MODE_DONTWAKE))
    return throw_arg(env, OP, "mode %d must be a mask of WP|DONTWAKE", mode);
  struct uffdio_writeprotect w = {.range = {.start = start, .len = len}, .mode = (uint64_t)mode};
  if (ioctl(fd, UFFDIO_WRITEPROTECT, &w) != 0) return throw_errno(env, OP, errno, NULL);
  return undef(env);
}

/* Result convention of the filling ioctls (COPY, ZEROPAGE, CONTINUE): a number >= 0 is the bytes
 * filled (less than asked on a partial fill: continue after them); -EEXIST means the first page was
 * already present (a racing fill: success for Ferry) and -EAGAIN that the mm was changing (retry).
 * Every other failure throws. */
static napi_value fill_result(napi_env env, const char *op, int rc, int64_t done) {
  if (rc == 0) return num(env, (double)done);
  int err = errno;
  if (done > 0) return num(env, (double)done);
  if (err == EEXIST || err == EAGAIN) return num(env, -(double)err);
  if (done < 0 && (-done == EEXIST || -done == EAGAIN)) return num(env, (double)done);
  return throw_errno(env, op, err, NULL);
}

#undef OP
#define OP "UFFDIO_COPY"
/* uffdCopy(fd, dst, src, srcOffset, length, mode) -> bytes copied | -EEXIST | -EAGAIN. */
static napi_value f_uffd_copy(napi_env env, napi_callback_info info) {
  ARGS(6);
  int fd;
  uint64_t dst, off, len;
  uint8_t *src;
  size_t srclen;
  int32_t mode;
  if (!get_fd(env, argv[0], OP, &fd) || !get_u64(env, argv[1], OP, "dst", &dst) ||
      !get_bytes(env, argv[2], OP, "src", &src, &srclen, NULL) || !get_u64(env, argv[3], OP, "srcOffset", &off) ||
      !get_u64(env, argv[4], OP, "length", &len) || !get_i32(env, argv[5], OP, "mode", &mode))
    return NULL;
  if (!check_aligned(env, OP, "dst", dst) || !check_aligned(env, OP, "length", len)) return NULL;
  if (len == 0) return throw_arg(env, OP, "length must be > 0");
  if (!check_inside(env, OP, "src range", off, len, srclen)) return NULL;
  if (mode & ~(UFFDIO_COPY_MODE_DONTWAKE | UFFDIO_COPY_MODE_WP))
    return throw_arg(env, OP, "mode %d must be a mask of DONTWAKE|WP", mode);
  struct uffdio_copy c = {.dst = dst, .src = (uintptr_t)src + off, .len = len, .mode = (uint64_t)mode};
  int rc = ioctl(fd, UFFDIO_COPY, &c);
  return fill_result(env, OP, rc, c.copy);
}

#undef OP
#define OP "UFFDIO_ZEROPAGE"
static napi_value f_uffd_zeropage(napi_env env, napi_callback_info info) {
  ARGS(4);
  int fd;
  uint64_t start, len;
  int32_t mode;
  if (!get_fd(env, argv[0], OP, &fd) || !get_range(env, argv + 1, OP, &start, &len) ||
      !get_i32(env, argv[3], OP, "mode", &mode))
    return NULL;
  if (mode & ~UFFDIO_ZEROPAGE_MODE_DONTWAKE) return throw_arg(env, OP, "mode %d must be 0 or DONTWAKE", mode);
  struct uffdio_zeropage z = {.range = {.start = start, .len = len}, .mode = (uint64_t)mode};
  int rc = ioctl(fd, UFFDIO_ZEROPAGE, &z);
  return fill_result(env, OP, rc, z.zeropage);
}

#undef OP
#define OP "UFFDIO_CONTINUE"
static napi_value f_uffd_continue(napi_env env, napi_callback_info info) {
  ARGS(4);
  int fd;
  uint64_t start, len;
  int32_t mode;
  if (!get_fd(env, argv[0], OP, &fd) || !get_range(env, argv + 1, OP, &start, &len) ||
      !get_i32(env, argv[3], OP, "mode", &mode))
    return NULL;
  if (mode & ~(UFFDIO_CONTINUE_MODE_DONTWAKE | (1 << 1) /* MODE_WP */))
    return throw_arg(env, OP, "mode %d must be a mask of DONTWAKE|WP", mode);
  struct uffdio_continue c = {.range = {.start = start, .len = len}, .mode = (uint64_t)mode};
  int rc = ioctl(fd, UFFDIO_CONTINUE, &c);
  return fill_result(env, OP, rc, c.mapped);
}

/* Decodes uffd_msg records into 4 doubles each: [event, flags, address, arg]
 *   PAGEFAULT: flags = UFFD_PAGEFAULT_FLAG_*, address, arg = faulting thread id (with THREAD_ID)
 *   FORK: arg = new uffd;  REMAP: flags = len, address = from, arg = to;  REMOVE/UNMAP: address = start, arg = end */
static int decode_events(const struct uffd_msg *msgs, int n, double *out) {
  for (int i = 0; i < n; i++) {
    const struct uffd_msg *m = &msgs[i];
    double *o = out + 4 * i;
    o[0] = m->event;
    o[1] = o[2] = o[3] = 0;
    switch (m->event) {
      case UFFD_EVENT_PAGEFAULT:
        o[1] = (double)m->arg.pagefault.flags;
        o[2] = (double)m->arg.pagefault.address;
        o[3] = (double)m->arg.pagefault.feat.ptid;
        break;
      case UFFD_EVENT_FORK: o[3] = m->arg.fork.ufd; break;
      case UFFD_EVENT_REMAP:
        o[1] = (double)m->arg.remap.len;
        o[2] = (double)m->arg.remap.from;
        o[3] = (double)m->arg.remap.to;
        break;
      case UFFD_EVENT_REMOVE:
      case UFFD_EVENT_UNMAP:
        o[2] = (double)m->arg.remove.start;
        o[3] = (double)m->arg.remove.end;
        break;
    }
  }
  return n;
}

/* read() of uffd messages; EAGAIN -> 0. */
static int read_events(napi_env env, const char *op, int fd, double *out, size_t max, int *count) {
  struct uffd_msg msgs[MAX_EVENTS];
  if (max > MAX_EVENTS) max = MAX_EVENTS;
  ssize_t r;
  do r = read(fd, msgs, max * sizeof msgs[0]);
  while (r < 0 && errno == EINTR);
  if (r < 0) {
    if (errno == EAGAIN) { *count = 0; return 1; }
    throw_errno(env, op, errno, NULL);
    return 0;
  }
  *count = decode_events(msgs, (int)(r / (ssize_t)sizeof msgs[0]), out);
  return 1;
}

#undef OP
#define OP "uffd read"
/* uffdReadEvents(fd, out: Float64Array, wait) -> events decoded into out (4 slots each). With wait,
 * blocks (poll then read) until at least one event; without, returns 0 when none is queued. */
static napi_value f_uffd_read_events(napi_env env, napi_callback_info info) {
  ARGS(3);
  int fd, wait;
  double *out;
  size_t cap;
  if (!get_fd(env, argv[0], OP, &fd) ||
      !get_typed(env, argv[1], OP, "out", napi_float64_array, "Float64Array", (void **)&out, &cap) ||
      !get_bool(env, argv[2], OP, "wait", &wait))
    return NULL;
  if (cap < 4) return throw_arg(env, OP, "out must hold at least one event (4 slots)");
  for (;;) {
    if (wait) {
      struct pollfd p = {.fd = fd, .events = POLLIN};
      int pr = poll(&p, 1, -1);
      if (pr < 0 && errno != EINTR) return throw_errno(env, OP, errno, NULL);
      if (pr > 0 && (p.revents & POLLNVAL)) return throw_errno(env, OP, EBADF, NULL);
    }
    int n;
    if (!read_events(env, OP, fd, out, cap / 4, &n)) return NULL;
    if (n > 0 || !wait) return num(env, n);
  }
}

#undef OP
#define OP "uffd wait"
static double mono_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

/* uffdWait(uffd, wakeFd, out, timeoutMs, spinUs) -> events read (> 0), 0 on timeout, -1 when wakeFd is
 * readable (not consumed). One call per wakeup for the fault-serving loop: poll([uffd, wakeFd]) then read.
 * With spinUs > 0 (uffd must be O_NONBLOCK) it first retries a non-blocking read for up to spinUs
 * microseconds: in a burst of faults the next one usually arrives within a few microseconds of the last
 * fill, and catching it awake saves the sleep/wake-up of this thread (measured in bench/memory). */
static napi_value f_uffd_wait(napi_env env, napi_callback_info info) {
  ARGS(5);
  int fd, wfd;
  int32_t timeout, spin;
  double *out;
  size_t cap;
  if (!get_fd(env, argv[0], OP, &fd) || !get_fd(env, argv[1], OP, &wfd) ||
      !get_typed(env, argv[2], OP, "out", napi_float64_array, "Float64Array", (void **)&out, &cap) ||
      !get_i32(env, argv[3], OP, "timeoutMs", &timeout) || !get_i32(env, argv[4], OP, "spinUs", &spin))
    return NULL;
  if (cap < 4) return throw_arg(env, OP, "out must hold at least one event (4 slots)");
  if (spin < 0 || spin > 1000000) return throw_arg(env, OP, "spinUs must be in [0, 1000000]");
  if (spin > 0) {
    double until = mono_us() + spin;
    int n;
    do {
      if (!read_events(env, OP, fd, out, cap / 4, &n)) return NULL;
      if (n > 0) return num(env, n);
    } while (mono_us() < until);
  }
  for (;;) {
    struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = wfd, .events = POLLIN}};
    int pr = poll(p, 2, timeout);
    if (pr < 0) {
      if (errno == EINTR) continue;
      return throw_errno(env, OP, errno, NULL);
    }
    if (pr == 0) return num(env, 0);
    if ((p[0].revents | p[1].revents) & POLLNVAL) return throw_errno(env, OP, EBADF, NULL);
    if (p[1].revents) return num(env, -1);
    int n;
    if (!read_events(env, OP, fd, out, cap / 4, &n)) return NULL;
    if (n > 0) return num(env, n);
  }
}

/* ------------------------------------------------------------------ pagemap */

/* nowUs() -> CLOCK_MONOTONIC in microseconds: a cheaper clock than performance.now() for the fault path. */
static napi_value f_now_us(napi_env env, napi_callback_info info) { return num(env, mono_us()); }

#undef OP
#define OP "PAGEMAP_SCAN"
/* pagemapScan(fd, start, end, out: Float64Array, flags, categoryInverted, categoryMask, categoryAnyofMask,
 *             returnMask, maxPages) -> { count, walkEnd }. ONE ioctl; regions come back as 3 doubles
 * [start, end, categories] each, converted in place in the caller's buffer. Restarting from walkEnd is
 * the caller's job, and only when count === capacity (the kernel can stop early without being full). */
static napi_value f_pagemap_scan(napi_env env, napi_callback_info info) {
  ARGS(10);
  int fd;
  uint64_t start, end, maxPages;
  double *out;
  size_t cap;
  int32_t flags, inv, mask, anyof, ret;
  if (!get_fd(env, argv[0], OP, &fd) || !get_u64(env, argv[1], OP, "start", &start) ||
      !get_u64(env, argv[2], OP, "end", &end) ||
      !get_typed(env, argv[3], OP, "out", napi_float64_array, "Float64Array", (void **)&out, &cap) ||
      !get_i32(env, argv[4], OP, "flags", &flags) || !get_i32(env, argv[5], OP, "categoryInverted", &inv) ||
      !get_i32(env, argv[6], OP, "categoryMask", &mask) || !get_i32(env, argv[7], OP, "categoryAnyofMask", &anyof) ||
      !get_i32(env, argv[8], OP, "returnMask", &ret) || !get_u64(env, argv[9], OP, "maxPages", &maxPages))
    return NULL;
  if (!check_aligned(env, OP, "start", start) || !check_aligned(env, OP, "end", end)) return NULL;
  if (end < start) return throw_arg(env, OP, "end 0x%llx is below start", (unsigned long long)end);
  if (cap < 3) return throw_arg(env, OP, "out must hold at least one region (3 slots)");
  if (flags & ~(PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC)) return throw_arg(env, OP, "flags %d unknown", flags);
  if (ret == 0) return throw_arg(env, OP, "returnMask must not be 0");
  _Static_assert(sizeof(double) == sizeof(uint64_t), "in-place conversion");
  struct pm_scan_arg a = {
      .size = sizeof a,
      .flags = (uint64_t)flags,
      .start = start,
      .end = end,
      .vec = (uintptr_t)out,
      .vec_len = cap / 3,
      .max_pages = maxPages,
      .category_inverted = (uint64_t)(uint32_t)inv,
      .category_mask = (uint64_t)(uint32_t)mask,
      .category_anyof_mask = (uint64_t)(uint32_t)anyof,
      .return_mask = (uint64_t)(uint32_t)ret,
  };
  int n = ioctl(fd, PAGEMAP_SCAN, &a);
  if (n < 0) return throw_errno(env, OP, errno, NULL);
  uint64_t *raw = (uint64_t *)out;
  for (size_t i = 0; i < (size_t)n * 3; i++) out[i] = (double)raw[i];
  napi_value o = NULL;
  napi_create_object(env, &o);
  napi_set_named_property(env, o, "count", num(env, n));
  napi_set_named_property(env, o, "walkEnd", num(env, (double)a.walk_end));
  return o;
}

#undef OP
#define OP "PAGEMAP_SCAN bits"
static void set_bits(uint32_t *w, uint64_t a, uint64_t b) {
  while (a < b && (a & 31)) { w[a >> 5] |= 1u << (a & 31); a++; }
  if (a + 32 <= b) { memset(&w[a >> 5], 0xff, ((b - a) >> 5) * 4); a += (b - a) & ~(uint64_t)31; }
  while (a < b) { w[a >> 5] |= 1u << (a & 31); a++; }
}

/* pagemapScanBits(fd, start, end, flags, categoryInverted, categoryMask, categoryAnyofMask, returnMask,
 *                 bitmaps: Uint32Array[], selectors: Int32Array) -> { pages, regions }
 * The whole of [start, end) with as many PAGEMAP_SCAN calls as needed (restarting from walk_end only when
 * the output vector filled), each region's pages set as bits (page index = (addr - start) / 4096) in every
 * bitmaps[j] whose selectors[j] is 0 (any region) or shares a bit with the region's categories. Same
 * scan as pagemapScan, but a fragmented 4 GiB result never crosses into JS region by region. */
static napi_value f_pagemap_scan_bits(napi_env env, napi_callback_info info) {
  ARGS(10);
  int fd;
  uint64_t start, end;
  int32_t flags, inv, mask, anyof, ret, *sel;
  size_t nsel;
  if (!get_fd(env, argv[0], OP, &fd) || !get_u64(env, argv[1], OP, "start", &start) ||
      !get_u64(env, argv[2], OP, "end", &end) || !get_i32(env, argv[3], OP, "flags", &flags) ||
      !get_i32(env, argv[4], OP, "categoryInverted", &inv) || !get_i32(env, argv[5], OP, "categoryMask", &mask) ||
      !get_i32(env, argv[6], OP, "categoryAnyofMask", &anyof) || !get_i32(env, argv[7], OP, "returnMask", &ret) ||
      !get_typed(env, argv[9], OP, "selectors", napi_int32_array, "Int32Array", (void **)&sel, &nsel))
    return NULL;
  if (!check_aligned(env, OP, "start", start) || !check_aligned(env, OP, "end", end)) return NULL;
  if (end < start) return throw_arg(env, OP, "end is below start");
  if (flags & ~(PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC)) return throw_arg(env, OP, "flags %d unknown", flags);
  if (ret == 0) return throw_arg(env, OP, "returnMask must not be 0");
  bool isarr;
  uint32_t nb;
  napi_is_array(env, argv[8], &isarr);
  if (!isarr) return throw_arg(env, OP, "bitmaps must be an array of Uint32Array");
  napi_get_array_length(env, argv[8], &nb);
  if (nb != nsel || nb == 0 || nb > 8) return throw_arg(env, OP, "bitmaps and selectors must have the same length (1..8)");
  uint32_t *maps[8];
  uint64_t need = (end - start) / PAGE;
  for (uint32_t j = 0; j < nb; j++) {
    napi_value e = NULL;
    size_t words;
    napi_get_element(env, argv[8], j, &e);
    if (!get_typed(env, e, OP, "bitmaps[j]", napi_uint32_array, "Uint32Array", (void **)&maps[j], &words)) return NULL;
    if ((uint64_t)words * 32 < need) return throw_errno(env, OP, ERANGE, "a bitmap is smaller than the range");
  }
  enum { CAP = 32768 };
  struct page_region *vec = malloc(CAP * sizeof *vec);
  if (!vec) return throw_errno(env, OP, ENOMEM, NULL);
  double pages = 0, regions = 0;
  uint64_t from = start;
  for (;;) {
    struct pm_scan_arg a = {
        .size = sizeof a, .flags = (uint64_t)flags, .start = from, .end = end, .vec = (uintptr_t)vec, .vec_len = CAP,
        .category_inverted = (uint32_t)inv, .category_mask = (uint32_t)mask,
        .category_anyof_mask = (uint32_t)anyof, .return_mask = (uint32_t)ret,
    };
    int n = ioctl(fd, PAGEMAP_SCAN, &a);
    if (n < 0) { int err = errno; free(vec); return throw_errno(env, OP, err, NULL); }
    for (int i = 0; i < n; i++) {
      uint64_t s = (vec[i].start - start) / PAGE, e = (vec[i].end - start) / PAGE;
      pages += (double)(e - s);
      for (uint32_t j = 0; j < nb; j++)
        if (sel[j] == 0 || (vec[i].categories & (uint32_t)sel[j])) set_bits(maps[j], s, e);
    }
    regions += n;
    if (n < CAP || a.walk_end >= end) break;
    from = a.walk_end;
  }
  free(vec);
  napi_value o = NULL;
  napi_create_object(env, &o);
  napi_set_named_property(env, o, "pages", num(env, pages));
  napi_set_named_property(env, o, "regions", num(env, regions));
  return o;
}

#undef OP
#define OP "pagemap read"
/* pagemapRead(fd, address, out: BigUint64Array) -> entries read for pages starting at address. */
static napi_value f_pagemap_read(napi_env env, napi_callback_info info) {
  ARGS(3);
  int fd;
  uint64_t addr;
  void *out;
  size_t cap;
  if (!get_fd(env, argv[0], OP, &fd) || !get_u64(env, argv[1], OP, "address", &addr) ||
      !get_typed(env, argv[2], OP, "out", napi_biguint64_array, "BigUint64Array", &out, &cap))
    return NULL;
  if (!check_aligned(env, OP, "address", addr)) return NULL;
  ssize_t r;
  do r = pread(fd, out, cap * 8, (off_t)(addr / PAGE * 8));
  while (r < 0 && errno == EINTR);
  if (r < 0) return throw_errno(env, OP, errno, NULL);
  return num(env, (double)(r / 8));
}

/* ------------------------------------------------------------------ plain fds */

#undef OP
#define OP "poll"
/* poll(fds: Int32Array, events: Int32Array, revents: Int32Array, timeoutMs) -> ready count (0 on timeout or EINTR). */
static napi_value f_poll(napi_env env, napi_callback_info info) {
  ARGS(4);
  int32_t *fds, *ev, *rev, timeout;
  size_t n1, n2, n3;
  if (!get_typed(env, argv[0], OP, "fds", napi_int32_array, "Int32Array", (void **)&fds, &n1) ||
      !get_typed(env, argv[1], OP, "events", napi_int32_array, "Int32Array", (void **)&ev, &n2) ||
      !get_typed(env, argv[2], OP, "revents", napi_int32_array, "Int32Array", (void **)&rev, &n3) ||
      !get_i32(env, argv[3], OP, "timeoutMs", &timeout))
    return NULL;
  if (n1 != n2 || n1 != n3) return throw_arg(env, OP, "fds, events and revents must have the same length");
  if (n1 > 4096) return throw_arg(env, OP, "at most 4096 fds");
  struct pollfd small[64];
  struct pollfd *p = n1 <= 64 ? small : malloc(n1 * sizeof *p);
  if (!p) return throw_errno(env, OP, ENOMEM, NULL);
  for (size_t i = 0; i < n1; i++) {
    if (fds[i] < 0) {
      if (p != small) free(p);
      return throw_errno(env, OP, EBADF, "a negative fd");
    }
    p[i].fd = fds[i];
    p[i].events = (short)ev[i];
    p[i].revents = 0;
  }
  int r = poll(p, n1, timeout);
  int err = errno;
  if (r < 0 && err != EINTR) {
    if (p != small) free(p);
    return throw_errno(env, OP, err, NULL);
  }
  for (size_t i = 0; i < n1; i++) {
    rev[i] = r > 0 ? p[i].revents : 0;
    if (r > 0 && (p[i].revents & POLLNVAL)) {
      char d[64];
      snprintf(d, sizeof d, "fd %d is not open", fds[i]);
      if (p != small) free(p);
      return throw_errno(env, OP, EBADF, d);
    }
  }
  if (p != small) free(p);
  return num(env, r < 0 ? 0 : r);
}

static int get_io_args(napi_env env, napi_value *argv, const char *op, int *fd, uint8_t **p, uint64_t *len) {
  size_t blen;
  uint64_t off;
  if (!get_fd(env, argv[0], op, fd) || !get_bytes(env, argv[1], op, "buffer", p, &blen, NULL) ||
      !get_u64(env, argv[2], op, "offset", &off) || !get_u64(env, argv[3], op, "length", len))
    return 0;
  if (!check_inside(env, op, "range", off, *len, blen)) return 0;
  *p += off;
  return 1;
}

#undef OP
#define OP "read"
/* read(fd, buffer, offset, length) -> bytes read (throws EAGAIN on an empty non-blocking fd). */
static napi_value f_read(napi_env env, napi_callback_info info) {
  ARGS(4);
  int fd;
  uint8_t *p;
  uint64_t len;
  if (!get_io_args(env, argv, OP, &fd, &p, &len)) return NULL;
  ssize_t r;
  do r = read(fd, p, len);
  while (r < 0 && errno == EINTR);
  if (r < 0) return throw_errno(env, OP, errno, NULL);
  return num(env, (double)r);
}

#undef OP
#define OP "pread"
static napi_value f_pread(napi_env env, napi_callback_info info) {
  ARGS(5);
  int fd;
  uint8_t *p;
  uint64_t len, pos;
  if (!get_io_args(env, argv, OP, &fd, &p, &len) || !get_u64(env, argv[4], OP, "position", &pos)) return NULL;
  ssize_t r;
  do r = pread(fd, p, len, (off_t)pos);
  while (r < 0 && errno == EINTR);
  if (r < 0) return throw_errno(env, OP, errno, NULL);
  return num(env, (double)r);
}

#undef OP
#define OP "write"
static napi_value f_write(napi_env env, napi_callback_info info) {
  ARGS(4);
  int fd;
  uint8_t *p;
  uint64_t len;
  if (!get_io_args(env, argv, OP, &fd, &p, &len)) return NULL;
  ssize_t r;
  do r = write(fd, p, len);
  while (r < 0 && errno == EINTR);
  if (r < 0) return throw_errno(env, OP, errno, NULL);
  return num(env, (double)r);
}

#undef OP
#define OP "close"
static napi_value f_close(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (!get_fd(env, argv[0], OP, &fd)) return NULL;
  if (close(fd) != 0 && errno != EINTR) return throw_errno(env, OP, errno, NULL);
  return undef(env);
}

#undef OP
#define OP "dup"
/* dup(fd) -> a new close-on-exec descriptor of the same open file (fcntl F_DUPFD_CLOEXEC). */
static napi_value f_dup(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (!get_fd(env, argv[0], OP, &fd)) return NULL;
  int r = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (r < 0) return throw_errno(env, OP, errno, NULL);
  return num(env, r);
}

#undef OP
#define OP "setsockoptInt"
/* setsockopt(fd, SOL_SOCKET, SO_SNDBUF | SO_RCVBUF, value): only socket buffer sizes are exposed. */
static napi_value f_setsockopt_int(napi_env env, napi_callback_info info) {
  ARGS(3);
  int fd;
  int32_t opt, value;
  if (!get_fd(env, argv[0], OP, &fd) || !get_i32(env, argv[1], OP, "option", &opt) || !get_i32(env, argv[2], OP, "value", &value)) return NULL;
  if (opt != SO_SNDBUF && opt != SO_RCVBUF) return throw_arg(env, OP, "option %d is not SO_SNDBUF or SO_RCVBUF", opt);
  if (value < 4096) return throw_arg(env, OP, "value must be >= 4096");
  if (setsockopt(fd, SOL_SOCKET, opt, &value, sizeof value) != 0) return throw_errno(env, OP, errno, NULL);
  return undef(env);
}

#undef OP
#define OP "tcpInfo"
/* getsockopt(fd, IPPROTO_TCP, TCP_INFO) into buf (struct tcp_info as the kernel lays it out);
 * returns the bytes the kernel filled (older kernels fill less). */
static napi_value f_tcp_info(napi_env env, napi_callback_info info) {
  ARGS(2);
  int fd;
  uint8_t *buf;
  size_t len;
  if (!get_fd(env, argv[0], OP, &fd) || !get_bytes(env, argv[1], OP, "buf", &buf, &len, NULL)) return NULL;
  socklen_t got = len > 0x7fffffff ? 0x7fffffff : (socklen_t)len;
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, buf, &got) != 0) return throw_errno(env, OP, errno, NULL);
  return num(env, got);
}


/* ------------------------------------------------------------------ TCP sockets (guest sockets) */

static void set_num(napi_env env, napi_value o, const char *k, double v);

#undef OP
#define OP "tcpListen"
/* tcpListen(family 4|6, address: string (numeric), port, backlog, freebind) -> fd: a non-blocking,
 * close-on-exec TCP socket with SO_REUSEADDR (and IP_FREEBIND when asked: bound to an address this
 * host does not hold yet), bound and listening. */
static napi_value f_tcp_listen(napi_env env, napi_callback_info info) {
  ARGS(5);
  int32_t family, port, backlog;
  int freebind;
  char text[INET6_ADDRSTRLEN + 1];
  size_t tlen = 0;
  uint8_t a[16];
  if (!get_i32(env, argv[0], OP, "family", &family) || !get_i32(env, argv[2], OP, "port", &port) ||
      !get_i32(env, argv[3], OP, "backlog", &backlog) || !get_bool(env, argv[4], OP, "freebind", &freebind))
    return NULL;
  if (napi_get_value_string_utf8(env, argv[1], text, sizeof text, &tlen) != napi_ok) return throw_arg(env, OP, "address must be a string");
  if (family != 4 && family != 6) return throw_arg(env, OP, "family must be 4 or 6");
  if (inet_pton(family == 4 ? AF_INET : AF_INET6, text, a) != 1) return throw_arg(env, OP, "address %s is not a numeric IPv%d address", text, family);
  if (port < 0 || port > 65535) return throw_arg(env, OP, "port must be 0..65535");
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  socklen_t sl;
  if (family == 4) {
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t)port);
    memcpy(&in->sin_addr, a, 4);
    sl = sizeof *in;
  } else {
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)port);
    memcpy(&in6->sin6_addr, a, 16);
    sl = sizeof *in6;
  }
  int fd = socket(family == 4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, OP, errno, "socket");
  int one = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, OP, e, "SO_REUSEADDR");
  }
  if (freebind && setsockopt(fd, IPPROTO_IP, IP_FREEBIND, &one, sizeof one) != 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, OP, e, "IP_FREEBIND");
  }
  if (bind(fd, (struct sockaddr *)&ss, sl) != 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, OP, e, "bind");
  }
  if (listen(fd, backlog) != 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, OP, e, "listen");
  }
  return num(env, fd);
}


/* ------------------------------------------------------------------ TCP repair and link-layer sends
 * Syscalls for moving TCP connections (TCP_REPAIR) and announcing an address (gratuitous ARP):
 * generic socket options as bytes, queue-size ioctls, a socket bound/connected to a given address,
 * and a raw link-layer datagram. What to set in which order is src/net/'s business. */

/* An IPv4/IPv6 socket address from (family 4|6, numeric address, port). */
static int get_sockaddr(napi_env env, napi_value fv, napi_value av, napi_value pv, const char *op, struct sockaddr_storage *ss, socklen_t *sl) {
  int32_t family, port;
  char text[INET6_ADDRSTRLEN + 1];
  size_t tlen = 0;
  uint8_t a[16];
  if (!get_i32(env, fv, op, "family", &family) || !get_i32(env, pv, op, "port", &port)) return 0;
  if (napi_get_value_string_utf8(env, av, text, sizeof text, &tlen) != napi_ok) return throw_arg(env, op, "address must be a string"), 0;
  if (family != 4 && family != 6) return throw_arg(env, op, "family must be 4 or 6"), 0;
  if (inet_pton(family == 4 ? AF_INET : AF_INET6, text, a) != 1) return throw_arg(env, op, "address %s is not a numeric IPv%d address", text, family), 0;
  if (port < 0 || port > 65535) return throw_arg(env, op, "port must be 0..65535"), 0;
  memset(ss, 0, sizeof *ss);
  if (family == 4) {
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t)port);
    memcpy(&in->sin_addr, a, 4);
    *sl = sizeof *in;
  } else {
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)port);
    memcpy(&in6->sin6_addr, a, 16);
    *sl = sizeof *in6;
  }
  return 1;
}

#undef OP
#define OP "tcpSocket"
/* tcpSocket(family 4|6) -> fd: a new non-blocking, close-on-exec TCP socket. */
static napi_value f_tcp_socket(napi_env env, napi_callback_info info) {
  ARGS(1);
  int32_t family;
  if (!get_i32(env, argv[0], OP, "family", &family)) return NULL;
  if (family != 4 && family != 6) return throw_arg(env, OP, "family must be 4 or 6");
  int fd = socket(family == 4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, OP, errno, "socket");
  return num(env, fd);
}

#undef OP
#define OP "sockBind"
/* sockBind(fd, family, address, port): bind(2). */
static napi_value f_sock_bind(napi_env env, napi_callback_info info) {
  ARGS(4);
  int fd;
  struct sockaddr_storage ss;
  socklen_t sl;
  if (!get_fd(env, argv[0], OP, &fd) || !get_sockaddr(env, argv[1], argv[2], argv[3], OP, &ss, &sl)) return NULL;
  if (bind(fd, (struct sockaddr *)&ss, sl) != 0) return throw_errno(env, OP, errno, "bind");
  return undef(env);
}

#undef OP
#define OP "sockConnect"
/* sockConnect(fd, family, address, port): connect(2); EINPROGRESS is thrown like any error (a
 * socket in TCP_REPAIR connects at once, without a handshake). */
static napi_value f_sock_connect(napi_env env, napi_callback_info info) {
  ARGS(4);
  int fd;
  struct sockaddr_storage ss;
  socklen_t sl;
  if (!get_fd(env, argv[0], OP, &fd) || !get_sockaddr(env, argv[1], argv[2], argv[3], OP, &ss, &sl)) return NULL;
  int r;
  do r = connect(fd, (struct sockaddr *)&ss, sl);
  while (r != 0 && errno == EINTR);
  if (r != 0) return throw_errno(env, OP, errno, "connect");
  return undef(env);
}

#undef OP
#define OP "getsockoptBytes"
/* getsockoptBytes(fd, level, name, buf) -> bytes the kernel wrote into buf. */
static napi_value f_getsockopt_bytes(napi_env env, napi_callback_info info) {
  ARGS(4);
  int fd;
  int32_t level, name;
  uint8_t *buf;
  size_t len;
  if (!get_fd(env, argv[0], OP, &fd) || !get_i32(env, argv[1], OP, "level", &level) || !get_i32(env, argv[2], OP, "name", &name) ||
      !get_bytes(env, argv[3], OP, "buf", &buf, &len, NULL))
    return NULL;
  socklen_t got = len > 0x7fffffff ? 0x7fffffff : (socklen_t)len;
  if (getsockopt(fd, level, name, buf, &got) != 0) return throw_errno(env, OP, errno, NULL);
  return num(env, got);
}

#undef OP
#define OP "setsockoptBytes"
/* setsockoptBytes(fd, level, name, buf): setsockopt(2) with buf as the option value. */
static napi_value f_setsockopt_bytes(napi_env env, napi_callback_info info) {
  ARGS(4);
  int fd;
  int32_t level, name;
  uint8_t *buf;
  size_t len;
  if (!get_fd(env, argv[0], OP, &fd) || !get_i32(env, argv[1], OP, "level", &level) || !get_i32(env, argv[2], OP, "name", &name) ||
      !get_bytes(env, argv[3], OP, "buf", &buf, &len, NULL))
    return NULL;
  if (setsockopt(fd, level, name, len == 0 ? NULL : buf, (socklen_t)len) != 0) return throw_errno(env, OP, errno, NULL);
  return undef(env);
}

#undef OP
#define OP "ioctlInt"
/* ioctlInt(fd, request) -> the int the ioctl wrote (SIOCINQ, SIOCOUTQ, SIOCOUTQNSD). */
static napi_value f_ioctl_int(napi_env env, napi_callback_info info) {
  ARGS(2);
  int fd;
  int32_t req;
  if (!get_fd(env, argv[0], OP, &fd) || !get_i32(env, argv[1], OP, "request", &req)) return NULL;
  int v = 0;
  if (ioctl(fd, (unsigned long)(uint32_t)req, &v) != 0) return throw_errno(env, OP, errno, NULL);
  return num(env, v);
}

#undef OP
#define OP "netlinkRoute"
/* netlinkRoute(message) -> 0, or the errno the kernel's acknowledgement carries: one request (the
 * caller's nlmsghdr and payload, NLM_F_ACK set) on a new NETLINK_ROUTE socket, its NLMSG_ERROR
 * answer read, the socket closed. */
static napi_value f_netlink_route(napi_env env, napi_callback_info info) {
  ARGS(1);
  uint8_t *msg;
  size_t len;
  if (!get_bytes(env, argv[0], OP, "message", &msg, &len, NULL)) return NULL;
  if (len < sizeof(struct nlmsghdr) || len > 4096) return throw_arg(env, OP, "message must be %zu..4096 bytes", sizeof(struct nlmsghdr));
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (fd < 0) return throw_errno(env, OP, errno, "socket");
  struct sockaddr_nl kernel;
  memset(&kernel, 0, sizeof kernel);
  kernel.nl_family = AF_NETLINK;
  if (sendto(fd, msg, len, 0, (struct sockaddr *)&kernel, sizeof kernel) != (ssize_t)len) {
    int e = errno;
    close(fd);
    return throw_errno(env, OP, e, "sendto");
  }
  union { struct nlmsghdr h; char bytes[8192]; } reply;
  for (;;) {
    ssize_t n = recv(fd, reply.bytes, sizeof reply.bytes, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      close(fd);
      return throw_errno(env, OP, e, "recv");
    }
    size_t left = (size_t)n;
    for (struct nlmsghdr *h = &reply.h; NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
      if (h->nlmsg_type != NLMSG_ERROR) continue;
      int code = -((struct nlmsgerr *)NLMSG_DATA(h))->error;
      close(fd);
      return num(env, code);
    }
    if (n == 0) {
      close(fd);
      return throw_arg(env, OP, "the kernel closed without an acknowledgement");
    }
  }
}

#undef OP
#define OP "packetSend"
/* packetSend(ifindex, ethertype, dstMac: 6 bytes, payload): one datagram on an AF_PACKET
 * SOCK_DGRAM socket (the kernel adds the link header with the interface's own source address). */
static napi_value f_packet_send(napi_env env, napi_callback_info info) {
  ARGS(4);
  int32_t ifindex, ethertype;
  uint8_t *mac, *payload;
  size_t maclen, plen;
  if (!get_i32(env, argv[0], OP, "ifindex", &ifindex) || !get_i32(env, argv[1], OP, "ethertype", &ethertype) ||
      !get_bytes(env, argv[2], OP, "dstMac", &mac, &maclen, NULL) || !get_bytes(env, argv[3], OP, "payload", &payload, &plen, NULL))
    return NULL;
  if (maclen != 6) return throw_arg(env, OP, "dstMac must be 6 bytes");
  int fd = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, htons((uint16_t)ethertype));
  if (fd < 0) return throw_errno(env, OP, errno, "socket");
  struct sockaddr_ll ll;
  memset(&ll, 0, sizeof ll);
  ll.sll_family = AF_PACKET;
  ll.sll_protocol = htons((uint16_t)ethertype);
  ll.sll_ifindex = ifindex;
  ll.sll_halen = 6;
  memcpy(ll.sll_addr, mac, 6);
  ssize_t r = sendto(fd, payload, plen, 0, (struct sockaddr *)&ll, sizeof ll);
  int e = errno;
  close(fd);
  if (r < 0) return throw_errno(env, OP, e, "sendto");
  return num(env, (double)r);
}

#undef OP
#define OP "sockAddress"
/* sockAddress(fd, peer: boolean) -> { family: 4|6, address: string, port } (getsockname / getpeername). */
static napi_value f_sock_address(napi_env env, napi_callback_info info) {
  ARGS(2);
  int fd, peer;
  if (!get_fd(env, argv[0], OP, &fd) || !get_bool(env, argv[1], OP, "peer", &peer)) return NULL;
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  int r = peer ? getpeername(fd, (struct sockaddr *)&ss, &sl) : getsockname(fd, (struct sockaddr *)&ss, &sl);
  if (r != 0) return throw_errno(env, OP, errno, peer ? "getpeername" : "getsockname");
  char text[INET6_ADDRSTRLEN] = "";
  int family, port;
  if (ss.ss_family == AF_INET) {
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    inet_ntop(AF_INET, &in->sin_addr, text, sizeof text);
    family = 4;
    port = ntohs(in->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof text);
    family = 6;
    port = ntohs(in6->sin6_port);
  } else {
    return throw_errno(env, OP, EAFNOSUPPORT, "not an IP socket");
  }
  napi_value o = NULL, t = NULL;
  napi_create_object(env, &o);
  set_num(env, o, "family", family);
  set_num(env, o, "port", port);
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &t);
  napi_set_named_property(env, o, "address", t);
  return o;
}

#undef OP
#define OP "accept"
/* accept(fd) -> a new non-blocking, close-on-exec connected socket (accept4); throws EAGAIN when none waits. */
static napi_value f_accept(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (!get_fd(env, argv[0], OP, &fd)) return NULL;
  int r;
  do r = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  while (r < 0 && errno == EINTR);
  if (r < 0) return throw_errno(env, OP, errno, NULL);
  return num(env, r);
}

#define MAX_IOV 1024
/* The iovecs of an array of byte views (at most MAX_IOV). */
static int get_iovecs(napi_env env, napi_value arr, const char *op, struct iovec *iov, size_t *n) {
  bool is = false;
  napi_is_array(env, arr, &is);
  if (!is) { throw_arg(env, op, "views must be an array"); return 0; }
  uint32_t len;
  napi_get_array_length(env, arr, &len);
  if (len > MAX_IOV) { throw_arg(env, op, "at most %d views", MAX_IOV); return 0; }
  for (uint32_t i = 0; i < len; i++) {
    napi_value v = NULL;
    napi_get_element(env, arr, i, &v);
    uint8_t *p;
    size_t l;
    if (!get_bytes(env, v, op, "view", &p, &l, NULL)) return 0;
    iov[i].iov_base = p;
    iov[i].iov_len = l;
  }
  *n = len;
  return 1;
}

#undef OP
#define OP "recvmsg"
/* recvmsg(fd, views, flags) -> bytes received (0 at end of stream); throws EAGAIN on an empty non-blocking socket. */
static napi_value f_recvmsg(napi_env env, napi_callback_info info) {
  ARGS(3);
  int fd;
  int32_t flags;
  static __thread struct iovec iov[MAX_IOV];
  size_t n;
  if (!get_fd(env, argv[0], OP, &fd) || !get_iovecs(env, argv[1], OP, iov, &n) || !get_i32(env, argv[2], OP, "flags", &flags)) return NULL;
  struct msghdr mh;
  memset(&mh, 0, sizeof mh);
  mh.msg_iov = iov;
  mh.msg_iovlen = n;
  ssize_t r;
  do r = recvmsg(fd, &mh, flags);
  while (r < 0 && errno == EINTR);
  if (r < 0) return throw_errno(env, OP, errno, NULL);
  return num(env, (double)r);
}

#undef OP
#define OP "sendmsg"
/* sendmsg(fd, views, flags) -> bytes sent; MSG_NOSIGNAL is always added (EPIPE, never SIGPIPE). */
static napi_value f_sendmsg(napi_env env, napi_callback_info info) {
  ARGS(3);
  int fd;
  int32_t flags;
  static __thread struct iovec iov[MAX_IOV];
  size_t n;
  if (!get_fd(env, argv[0], OP, &fd) || !get_iovecs(env, argv[1], OP, iov, &n) || !get_i32(env, argv[2], OP, "flags", &flags)) return NULL;
  struct msghdr mh;
  memset(&mh, 0, sizeof mh);
  mh.msg_iov = iov;
  mh.msg_iovlen = n;
  ssize_t r;
  do r = sendmsg(fd, &mh, flags | MSG_NOSIGNAL);
  while (r < 0 && errno == EINTR);
  if (r < 0) return throw_errno(env, OP, errno, NULL);
  return num(env, (double)r);
}

#undef OP
#define OP "shutdown"
/* shutdown(fd, how) with how = SHUT_RD | SHUT_WR | SHUT_RDWR. */
static napi_value f_shutdown(napi_env env, napi_callback_info info) {
  ARGS(2);
  int fd;
  int32_t how;
  if (!get_fd(env, argv[0], OP, &fd) || !get_i32(env, argv[1], OP, "how", &how)) return NULL;
  if (how != SHUT_RD && how != SHUT_WR && how != SHUT_RDWR) return throw_arg(env, OP, "how %d unknown", how);
  if (shutdown(fd, how) != 0) return throw_errno(env, OP, errno, NULL);
  return undef(env);
}

#undef OP
#define OP "setLinger"
/* setsockopt(fd, SOL_SOCKET, SO_LINGER, {onoff, seconds}); {1, 0} makes close() send a reset. */
static napi_value f_set_linger(napi_env env, napi_callback_info info) {
  ARGS(3);
  int fd, on;
  int32_t secs;
  if (!get_fd(env, argv[0], OP, &fd) || !get_bool(env, argv[1], OP, "on", &on) || !get_i32(env, argv[2], OP, "seconds", &secs)) return NULL;
  if (secs < 0) return throw_arg(env, OP, "seconds must be >= 0");
  struct linger l = {.l_onoff = on, .l_linger = secs};
  if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l) != 0) return throw_errno(env, OP, errno, NULL);
  return undef(env);
}

#undef OP
#define OP "socketError"
/* getsockopt(fd, SOL_SOCKET, SO_ERROR): the pending error (cleared by the read), 0 for none. */
static napi_value f_socket_error(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (!get_fd(env, argv[0], OP, &fd)) return NULL;
  int e = 0;
  socklen_t l = sizeof e;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &l) != 0) return throw_errno(env, OP, errno, NULL);
  return num(env, e);
}

#undef OP
#define OP "schedSetThread"
/*
 * Scheduling of the calling thread only (sched_setscheduler(0, ...) and setpriority on its tid):
 * policy 0 = SCHED_OTHER with the given nice value, 1 = SCHED_FIFO with the given priority.
 */
static napi_value f_sched_set_thread(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t policy, value;
  if (!get_i32(env, argv[0], OP, "policy", &policy) || !get_i32(env, argv[1], OP, "value", &value)) return NULL;
  if (policy == 1) {
    if (value < 1 || value > 99) return throw_arg(env, OP, "SCHED_FIFO priority must be 1..99");
    struct sched_param sp = {.sched_priority = value};
    if (sched_setscheduler(0, SCHED_FIFO, &sp) != 0) return throw_errno(env, OP, errno, "SCHED_FIFO");
  } else if (policy == 0) {
    if (value < -20 || value > 19) return throw_arg(env, OP, "nice must be -20..19");
    struct sched_param sp = {.sched_priority = 0};
    if (sched_setscheduler(0, SCHED_OTHER, &sp) != 0) return throw_errno(env, OP, errno, "SCHED_OTHER");
    if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), value) != 0) return throw_errno(env, OP, errno, "setpriority");
  } else {
    return throw_arg(env, OP, "policy %d unknown", policy);
  }
  return undef(env);
}

#undef OP
#define OP "eventfd"
/* eventfd(initval, flags) -> fd; flags from EFD_NONBLOCK | EFD_CLOEXEC | EFD_SEMAPHORE. */
static napi_value f_eventfd(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t init, flags;
  if (!get_i32(env, argv[0], OP, "initval", &init) || !get_i32(env, argv[1], OP, "flags", &flags)) return NULL;
  if (init < 0) return throw_arg(env, OP, "initval must be >= 0");
  if (flags & ~(EFD_NONBLOCK | EFD_CLOEXEC | EFD_SEMAPHORE)) return throw_arg(env, OP, "flags %d unknown", flags);
  int fd = eventfd((unsigned)init, flags);
  if (fd < 0) return throw_errno(env, OP, errno, NULL);
  return num(env, fd);
}

/* ------------------------------------------------------------------ fd readiness on the event loop */

/* A uv_poll_t watcher: the JS callback runs on the owning thread's event loop when the fd is ready.
 * The JS side holds a box pointing at the watcher; stop() closes the handle and empties the box. */
typedef struct watcher {
  uv_poll_t handle;
  napi_env env;
  napi_ref cb;
  napi_async_context actx;
  struct watcher_box *box;
} watcher_t;
typedef struct watcher_box {
  watcher_t *w;
} watcher_box_t;

static void watcher_closed(uv_handle_t *h) { free(h->data); }

static void watcher_stop(watcher_t *w) {
  uv_poll_stop(&w->handle);
  napi_delete_reference(w->env, w->cb);
  napi_async_destroy(w->env, w->actx);
  if (w->box) w->box->w = NULL;
  napi_remove_env_cleanup_hook(w->env, (void (*)(void *))watcher_stop, w);
  uv_close((uv_handle_t *)&w->handle, watcher_closed);
}

static void watcher_fired(uv_poll_t *h, int status, int events) {
  watcher_t *w = h->data;
  napi_env env = w->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value cb = NULL, recv = NULL, argv[2] = {NULL, NULL}, result = NULL;
  napi_get_reference_value(env, w->cb, &cb);
  napi_get_global(env, &recv); /* make_callback needs an object receiver */
  napi_create_int32(env, status, &argv[0]);
  napi_create_int32(env, (events & UV_READABLE ? POLLIN : 0) | (events & UV_WRITABLE ? POLLOUT : 0) |
                             (events & UV_DISCONNECT ? POLLHUP : 0), &argv[1]);
  bool threw = false;
  /* A refused call (the environment is terminating) also says napi_pending_exception, with nothing
   * thrown: only a real exception is reported. */
  if (napi_make_callback(env, w->actx, recv, cb, 2, argv, &result) == napi_pending_exception &&
      napi_is_exception_pending(env, &threw) == napi_ok && threw) {
    napi_value e = NULL;
    napi_get_and_clear_last_exception(env, &e);
    napi_fatal_exception(env, e);
  }
  napi_close_handle_scope(env, scope);
}

static void box_finalize(napi_env env, void *data, void *hint) {
  watcher_box_t *b = data;
  if (b->w) b->w->box = NULL; /* watcher keeps running until stop() or env teardown */
  free(b);
}

#undef OP
#define OP "fdWatch"
/* fdWatch(fd, events, callback(status, revents)) -> handle; events is POLLIN and/or POLLOUT. */
static napi_value f_fd_watch(napi_env env, napi_callback_info info) {
  ARGS(3);
  int fd;
  int32_t events;
  napi_valuetype t;
  if (!get_fd(env, argv[0], OP, &fd) || !get_i32(env, argv[1], OP, "events", &events)) return NULL;
  napi_typeof(env, argv[2], &t);
  if (t != napi_function) return throw_arg(env, OP, "callback must be a function");
  if (!(events & (POLLIN | POLLOUT)) || (events & ~(POLLIN | POLLOUT))) return throw_arg(env, OP, "events must be POLLIN and/or POLLOUT");
  if (fcntl(fd, F_GETFD) < 0) return throw_errno(env, OP, errno, NULL);
  struct uv_loop_s *loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) return throw_errno(env, OP, EIO, "no event loop");
  watcher_t *w = calloc(1, sizeof *w);
  watcher_box_t *b = calloc(1, sizeof *b);
  if (!w || !b) { free(w); free(b); return throw_errno(env, OP, ENOMEM, NULL); }
  int r = uv_poll_init(loop, &w->handle, fd);
  if (r != 0) { free(w); free(b); return throw_errno(env, OP, -r, NULL); }
  w->handle.data = w;
  w->env = env;
  w->box = b;
  b->w = w;
  napi_create_reference(env, argv[2], 1, &w->cb);
  napi_value name = NULL;
  napi_create_string_utf8(env, "ferry.fdWatch", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, NULL, name, &w->actx);
  r = uv_poll_start(&w->handle, (events & POLLIN ? UV_READABLE : 0) | (events & POLLOUT ? UV_WRITABLE : 0), watcher_fired);
  if (r != 0) {
    watcher_stop(w);
    free(b);
    return throw_errno(env, OP, -r, NULL);
  }
  napi_add_env_cleanup_hook(env, (void (*)(void *))watcher_stop, w);
  /* napi_create_external refuses (leaving ext unset) once the thread's environment is terminating,
   * e.g. a worker told to stop while it is starting its watchers: release everything and return
   * no value, never an unset one (V8 would dereference it). */
  napi_value ext = NULL;
  if (napi_create_external(env, b, box_finalize, NULL, &ext) != napi_ok) {
    watcher_stop(w);
    free(b);
    return NULL;
  }
  return ext;
}

#undef OP
#define OP "fdUnwatch"
/* fdUnwatch(handle): stops and releases the watcher; a second call does nothing. */
static napi_value f_fd_unwatch(napi_env env, napi_callback_info info) {
  ARGS(1);
  napi_valuetype t;
  napi_typeof(env, argv[0], &t);
  if (t != napi_external) return throw_arg(env, OP, "handle must come from fdWatch");
  watcher_box_t *b;
  napi_get_value_external(env, argv[0], (void **)&b);
  if (b->w) watcher_stop(b->w);
  return undef(env);
}

/* ------------------------------------------------------------------ module */

static void set_num(napi_env env, napi_value o, const char *k, double v) { napi_set_named_property(env, o, k, num(env, v)); }

static napi_value constants(napi_env env) {
  napi_value c = NULL;
  napi_create_object(env, &c);
#define C(name) set_num(env, c, #name, (double)(name))
  C(UFFD_API);
  C(SO_SNDBUF); C(SO_RCVBUF); C(SO_SNDBUFFORCE); C(SO_RCVBUFFORCE);
  C(UFFD_FEATURE_PAGEFAULT_FLAG_WP); C(UFFD_FEATURE_EVENT_FORK); C(UFFD_FEATURE_EVENT_REMAP);
  C(UFFD_FEATURE_EVENT_REMOVE); C(UFFD_FEATURE_MISSING_HUGETLBFS); C(UFFD_FEATURE_MISSING_SHMEM);
  C(UFFD_FEATURE_EVENT_UNMAP); C(UFFD_FEATURE_SIGBUS); C(UFFD_FEATURE_THREAD_ID); C(UFFD_FEATURE_MINOR_HUGETLBFS);
  C(UFFD_FEATURE_MINOR_SHMEM); C(UFFD_FEATURE_EXACT_ADDRESS); C(UFFD_FEATURE_WP_HUGETLBFS_SHMEM);
  C(UFFD_FEATURE_WP_UNPOPULATED); C(UFFD_FEATURE_POISON); C(UFFD_FEATURE_WP_ASYNC); C(UFFD_FEATURE_MOVE);
  C(_UFFDIO_REGISTER); C(_UFFDIO_UNREGISTER); C(_UFFDIO_WAKE); C(_UFFDIO_COPY); C(_UFFDIO_ZEROPAGE);
  C(_UFFDIO_MOVE); C(_UFFDIO_WRITEPROTECT); C(_UFFDIO_CONTINUE); C(_UFFDIO_POISON); C(_UFFDIO_API);
  C(UFFDIO_REGISTER_MODE_MISSING); C(UFFDIO_REGISTER_MODE_WP); C(UFFDIO_REGISTER_MODE_MINOR);
  C(UFFDIO_COPY_MODE_DONTWAKE); C(UFFDIO_COPY_MODE_WP); C(UFFDIO_ZEROPAGE_MODE_DONTWAKE);
  C(UFFDIO_WRITEPROTECT_MODE_WP); C(UFFDIO_WRITEPROTECT_MODE_DONTWAKE); C(UFFDIO_CONTINUE_MODE_DONTWAKE);
  C(UFFD_EVENT_PAGEFAULT); C(UFFD_EVENT_FORK); C(UFFD_EVENT_REMAP); C(UFFD_EVENT_REMOVE); C(UFFD_EVENT_UNMAP);
  C(UFFD_PAGEFAULT_FLAG_WRITE); C(UFFD_PAGEFAULT_FLAG_WP); C(UFFD_PAGEFAULT_FLAG_MINOR);
  C(PAGE_IS_WPALLOWED); C(PAGE_IS_WRITTEN); C(PAGE_IS_FILE); C(PAGE_IS_PRESENT); C(PAGE_IS_SWAPPED);
  C(PAGE_IS_PFNZERO); C(PAGE_IS_HUGE); C(PAGE_IS_SOFT_DIRTY); C(PM_SCAN_WP_MATCHING); C(PM_SCAN_CHECK_WPASYNC);
  C(MADV_DONTNEED); C(MADV_WILLNEED); C(MADV_HUGEPAGE); C(MADV_NOHUGEPAGE); C(MADV_COLLAPSE); C(MADV_POPULATE_WRITE);
  C(EFD_NONBLOCK); C(EFD_CLOEXEC); C(EFD_SEMAPHORE); C(MFD_CLOEXEC);
  C(POLLIN); C(POLLOUT); C(POLLERR); C(POLLHUP); C(POLLNVAL); C(POLLRDHUP);
  C(MSG_PEEK); C(MSG_WAITALL); C(MSG_DONTWAIT); C(SHUT_RD); C(SHUT_WR); C(SHUT_RDWR);
  C(ECONNRESET); C(EPIPE); C(ENOTCONN);
  C(EEXIST); C(EAGAIN);
  C(IPPROTO_TCP); C(IPPROTO_IP); C(IP_FREEBIND); C(IP_TRANSPARENT); C(SOL_SOCKET); C(TCP_REPAIR); C(TCP_REPAIR_QUEUE); C(TCP_QUEUE_SEQ); C(TCP_REPAIR_OPTIONS);
  C(TCP_REPAIR_WINDOW); C(TCP_TIMESTAMP); C(TCP_MAXSEG); C(TCP_INFO); C(TCP_NODELAY); C(TCP_RECV_QUEUE); C(TCP_SEND_QUEUE);
  C(TCP_REPAIR_ON); C(TCP_REPAIR_OFF); C(TCP_REPAIR_OFF_NO_WP); C(TCPOPT_MAXSEG); C(TCPOPT_WINDOW);
  C(TCPOPT_SACK_PERMITTED); C(TCPOPT_TIMESTAMP); C(SIOCINQ); C(SIOCOUTQ); C(SIOCOUTQNSD); C(ETH_P_ARP);
  C(AF_INET); C(RTM_NEWADDR); C(RTM_DELADDR); C(NLM_F_REQUEST); C(NLM_F_ACK); C(NLM_F_CREATE); C(NLM_F_EXCL);
  C(IFA_ADDRESS); C(IFA_LOCAL); C(RT_SCOPE_UNIVERSE);
#undef C
  return c;
}

/* exitNow(code): ends the process at once with _exit(2), after flushing C stdio. A process whose
 * work is done need not wait for V8's teardown: process.exit() joins the platform's worker
 * threads, which first finish the compile jobs they are running — for a big instrumented guest
 * function (SQLite's interpreter loop) a TurboFan job of 0.3-1 s that nobody will use. */
static napi_value f_exit_now(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t code = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) == napi_ok && argc >= 1) napi_get_value_int32(env, argv[0], &code);
  fflush(NULL);
  _exit(code & 0xff);
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
#define F(js, fn) {js, NULL, fn, NULL, NULL, NULL, napi_enumerable, NULL}
      F("bufferAddress", f_buffer_address), F("madvise", f_madvise), F("mmapAnonymous", f_mmap_anonymous),
      F("mmapFd", f_mmap_fd), F("memfdCreate", f_memfd_create), F("countNonZeroPages", f_count_nonzero_pages),
      F("uffdCreate", f_uffd_create), F("uffdApi", f_uffd_api), F("uffdRegister", f_uffd_register),
      F("uffdUnregister", f_uffd_unregister), F("uffdWake", f_uffd_wake), F("uffdWriteprotect", f_uffd_writeprotect),
      F("uffdCopy", f_uffd_copy), F("uffdZeropage", f_uffd_zeropage), F("uffdContinue", f_uffd_continue),
      F("uffdReadEvents", f_uffd_read_events), F("uffdWait", f_uffd_wait), F("pagemapScan", f_pagemap_scan),
      F("pagemapRead", f_pagemap_read), F("pagemapScanBits", f_pagemap_scan_bits), F("poll", f_poll), F("read", f_read), F("pread", f_pread),
      F("write", f_write), F("close", f_close), F("dup", f_dup), F("setsockoptInt", f_setsockopt_int), F("tcpInfo", f_tcp_info), F("schedSetThread", f_sched_set_thread), F("eventfd", f_eventfd), F("fdWatch", f_fd_watch),
      F("tcpListen", f_tcp_listen), F("sockAddress", f_sock_address), F("accept", f_accept), F("recvmsg", f_recvmsg),
      F("sendmsg", f_sendmsg), F("shutdown", f_shutdown), F("setLinger", f_set_linger), F("socketError", f_socket_error),
      F("fdUnwatch", f_fd_unwatch), F("nowUs", f_now_us), F("exitNow", f_exit_now),
      F("tcpSocket", f_tcp_socket), F("sockBind", f_sock_bind), F("sockConnect", f_sock_connect),
      F("getsockoptBytes", f_getsockopt_bytes), F("setsockoptBytes", f_setsockopt_bytes), F("ioctlInt", f_ioctl_int),
      F("packetSend", f_packet_send), F("netlinkRoute", f_netlink_route),
#undef F
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  napi_set_named_property(env, exports, "constants", constants(env));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
