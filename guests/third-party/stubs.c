/* Functions the SQLite shell links against that this wasi-libc lacks. Ferry's guests have no
 * symlinks to resolve and no permission bits to change, so these are the honest minimum. */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

char *realpath(const char *path, char *resolved) {
  if (path == NULL) { errno = EINVAL; return NULL; }
  size_t n = strlen(path);
  if (n >= PATH_MAX) { errno = ENAMETOOLONG; return NULL; }
  if (resolved == NULL) resolved = malloc(PATH_MAX);
  if (resolved == NULL) { errno = ENOMEM; return NULL; }
  memcpy(resolved, path, n + 1);
  return resolved;
}

int chmod(const char *path, mode_t mode) {
  (void)path; (void)mode;
  return 0;
}
