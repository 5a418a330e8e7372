/*
 * fileio: a guest whose open files must survive a migration.
 *
 * Line mode (default): keeps <dir>/out.log (append) and <dir>/in.txt (read)
 * open for its whole life. Each iteration n = 1..--lines writes "LINE <n>" to
 * out.log, reads the next line of in.txt (if the file and a line exist) and
 * prints "IN <line>", then prints "SEQ <n>", then sleeps --interval-ms.
 * in.txt is read one byte per call so the descriptor's offset is exactly the
 * end of the last line consumed: after a migration the next line read must be
 * the next line of the file, which tests that descriptor offsets moved too.
 * Ends with "DONE <lines>".
 *
 * Read mode (--read-into MIB): mallocs MIB MiB, fills it once, then for each of
 * --rounds rounds reads <dir>/blob.bin (MIB MiB, byte i = (i*31+7) & 255,
 * created by the guest if missing) into the buffer with one read() per chunk
 * of up to 1 MiB straight into the buffer -- on a postcopy destination the
 * kernel itself then writes into userfaultfd holes. Round r starts reading at
 * file offset r % 256 (wrapping to the start for the tail), so each round
 * expects different bytes and a read that claims success without landing
 * data is caught. Prints "READ OK <r>" per round, or "READ FAIL <r> <bad>"
 * and exits 1.
 *
 * Exit 0 ok, 1 check failed, 2 bad arguments, 3 I/O error.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024u * 1024u)
#define CHUNK MIB
#define MAX_LINE 4096

static const char *usage_text =
    "usage: fileio [--dir GUESTPATH] [--lines N] [--interval-ms MS]\n"
    "       fileio [--dir GUESTPATH] --read-into MIB [--rounds K] [--interval-ms MS]\n";

static void bad_args(const char *why, const char *arg) {
  fprintf(stderr, "fileio: %s%s%s\n%s", why, arg ? ": " : "", arg ? arg : "", usage_text);
  exit(2);
}

static void io_fail(const char *what, const char *path) {
  fprintf(stderr, "fileio: %s %s: %s\n", what, path, strerror(errno));
  exit(3);
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

static void sleep_ms(uint64_t ms) {
  if (ms == 0) return;
  struct timespec ts = { (time_t)(ms / 1000u), (long)(ms % 1000u) * 1000000L };
  nanosleep(&ts, NULL);
}

static void join(char *out, size_t cap, const char *dir, const char *name) {
  if ((size_t)snprintf(out, cap, "%s/%s", dir, name) >= cap) bad_args("--dir too long", dir);
}

static void write_all(int fd, const void *buf, size_t len, const char *path) {
  const uint8_t *p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0) { if (errno == EINTR) continue; io_fail("cannot write", path); }
    p += n; len -= (size_t)n;
  }
}

/* Reads one line (without its newline) one byte at a time. Returns its length,
 * or -1 at end of file with nothing read. */
static long read_line(int fd, char *line, size_t cap, const char *path) {
  size_t len = 0;
  for (;;) {
    char c;
    ssize_t n = read(fd, &c, 1);
    if (n < 0) { if (errno == EINTR) continue; io_fail("cannot read", path); }
    if (n == 0) return len == 0 ? -1 : (long)len;
    if (c == '\n') return (long)len;
    if (len + 1 < cap) line[len++] = c;
  }
}

static int line_mode(const char *dir, uint64_t lines, uint64_t interval_ms) {
  char out_path[1024], in_path[1024], line[MAX_LINE];
  join(out_path, sizeof out_path, dir, "out.log");
  join(in_path, sizeof in_path, dir, "in.txt");
  int out = open(out_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (out < 0) io_fail("cannot open", out_path);
  int in = open(in_path, O_RDONLY);
  if (in < 0 && errno != ENOENT) io_fail("cannot open", in_path);
  for (uint64_t n = 1; n <= lines; n++) {
    char rec[32];
    int len = snprintf(rec, sizeof rec, "LINE %llu\n", (unsigned long long)n);
    write_all(out, rec, (size_t)len, out_path);
    if (in >= 0) {
      long got = read_line(in, line, sizeof line, in_path);
      if (got >= 0) printf("IN %.*s\n", (int)got, line);
    }
    printf("SEQ %llu\n", (unsigned long long)n);
    if (n < lines) sleep_ms(interval_ms);
  }
  printf("DONE %llu\n", (unsigned long long)lines);
  close(out);
  if (in >= 0) close(in);
  return 0;
}

static uint8_t blob_byte(uint64_t i) { return (uint8_t)((i * 31u + 7u) & 255u); }

/* Creates blob.bin with the known pattern unless it already has the right size. */
static void ensure_blob(const char *path, uint64_t size) {
  struct stat st;
  if (stat(path, &st) == 0 && (uint64_t)st.st_size == size) {
    printf("BLOB exists %llu\n", (unsigned long long)size);
    return;
  }
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) io_fail("cannot create", path);
  uint8_t *chunk = malloc(CHUNK);
  if (chunk == NULL) { fprintf(stderr, "fileio: out of memory\n"); exit(3); }
  /* CHUNK is a multiple of 256, so one chunk of the pattern fits every chunk. */
  for (uint32_t i = 0; i < CHUNK; i++) chunk[i] = blob_byte(i);
  for (uint64_t off = 0; off < size; off += CHUNK) write_all(fd, chunk, CHUNK, path);
  free(chunk);
  close(fd);
  printf("BLOB created %llu\n", (unsigned long long)size);
}

/* Reads len bytes from fd's current offset straight into buf, one read() per
 * chunk of up to CHUNK bytes (short reads continue where they stopped). */
static void read_exact(int fd, uint8_t *buf, uint64_t len, const char *path) {
  uint64_t done = 0;
  while (done < len) {
    uint64_t want = len - done < CHUNK ? len - done : CHUNK;
    ssize_t n = read(fd, buf + done, (size_t)want);
    if (n < 0) { if (errno == EINTR) continue; io_fail("cannot read", path); }
    if (n == 0) { errno = EIO; io_fail("unexpected end of file in", path); }
    done += (uint64_t)n;
  }
}

static int read_mode(const char *dir, uint64_t mib, uint64_t rounds, uint64_t interval_ms) {
  char path[1024];
  join(path, sizeof path, dir, "blob.bin");
  uint64_t size = mib * MIB;
  uint8_t *buf = malloc((size_t)size);
  if (buf == NULL) { fprintf(stderr, "fileio: cannot allocate %llu MiB\n", (unsigned long long)mib); return 3; }
  /* Fill once so every page of the buffer is resident (and, on a migration
   * source, has content to send) before the first read overwrites it. */
  memset(buf, 0x5a, (size_t)size);
  ensure_blob(path, size);
  int fd = open(path, O_RDONLY);
  if (fd < 0) io_fail("cannot open", path);
  for (uint64_t r = 1; r <= rounds; r++) {
    uint64_t shift = r % 256u;
    if (lseek(fd, (off_t)shift, SEEK_SET) < 0) io_fail("cannot seek", path);
    read_exact(fd, buf, size - shift, path);
    if (shift > 0) {
      if (lseek(fd, 0, SEEK_SET) < 0) io_fail("cannot seek", path);
      read_exact(fd, buf + (size - shift), shift, path);
    }
    uint64_t bad = 0;
    for (uint64_t i = 0; i < size; i++)
      if (buf[i] != blob_byte(i + shift)) bad++;
    if (bad != 0) {
      printf("READ FAIL %llu %llu\n", (unsigned long long)r, (unsigned long long)bad);
      return 1;
    }
    printf("READ OK %llu\n", (unsigned long long)r);
    if (r < rounds) sleep_ms(interval_ms);
  }
  close(fd);
  return 0;
}

int main(int argc, char **argv) {
  const char *dir = "/data";
  uint64_t lines = 10, interval_ms = 100, read_into = 0, rounds = 3;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--dir") == 0) {
      if (v == NULL || *v == '\0') bad_args("missing value for", a);
      dir = v; i++;
    }
    else if (strcmp(a, "--lines") == 0) { lines = parse_u64(a, v, 1000000000ull); i++; }
    else if (strcmp(a, "--interval-ms") == 0) { interval_ms = parse_u64(a, v, 3600000ull); i++; }
    else if (strcmp(a, "--read-into") == 0) { read_into = parse_u64(a, v, 3072); i++; if (read_into == 0) bad_args("--read-into must be at least 1", NULL); }
    else if (strcmp(a, "--rounds") == 0) { rounds = parse_u64(a, v, 1000000000ull); i++; }
    else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) { fputs(usage_text, stdout); return 0; }
    else bad_args("unknown argument", a);
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  return read_into > 0 ? read_mode(dir, read_into, rounds, interval_ms)
                       : line_mode(dir, lines, interval_ms);
}
