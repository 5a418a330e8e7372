// N-API glue of the page data plane: starts a native thread (the destination's fault thread or the
// source's answer thread) on memory the caller shares, and stops it. JavaScript is called once per
// thread, when it ends (onExit(error | null)); everything else is read from SharedArrayBuffers.
// Lifetimes: the thread holds raw pointers into the caller's buffers, so each is kept alive by a
// reference until the thread is joined; a worker that ends (or is terminated) with a thread still
// running stops and joins it in an environment cleanup hook before its buffers can go away.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "dp.h"

#define MAX_REFS 10
enum { KIND_FAULT, KIND_ANSWER, KIND_PRESEND, KIND_PRERECV, KIND_FILE, KIND_LOAD, KIND_SCAN, KIND_DIGEST };

typedef struct plane {
  int kind;
  dp_fault_args f;
  dp_answer_args s;
  dp_presend_args ps;
  dp_prerecv_args pr;
  dp_file_args fl;
  dp_load_args ld;
  dp_scan_args sc;
  dp_digest_args dg;
  volatile int stop;
  int wakefd, sock;
  pthread_t th;
  int running;  /* created, not joined */
  int released; /* joined and every resource given back */
  int hooked;
  int rc;
  char err[DP_ERR];
  napi_env env;
  napi_threadsafe_function tsfn;
  napi_ref refs[MAX_REFS];
  int nrefs;
  int memory_ref; /* native precopy sender: which of refs holds the memory's view (setMemory replaces it) */
} plane;

/* ------------------------------------------------------------------ errors and arguments */

static napi_value fail(napi_env env, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static napi_value fail(napi_env env, const char *fmt, ...) {
  char msg[384];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  napi_throw_type_error(env, "EINVAL", msg);
  return NULL;
}

static int prop(napi_env env, napi_value obj, const char *name, napi_value *out) {
  bool has = false;
  if (napi_has_named_property(env, obj, name, &has) != napi_ok || !has) {
    fail(env, "dataplane: option %s is required", name);
    return 0;
  }
  return napi_get_named_property(env, obj, name, out) == napi_ok;
}

static int get_num(napi_env env, napi_value obj, const char *name, double lo, double hi, double *out) {
  napi_value v;
  napi_valuetype t;
  if (!prop(env, obj, name, &v)) return 0;
  napi_typeof(env, v, &t);
  if (t == napi_boolean) {
    bool b;
    napi_get_value_bool(env, v, &b);
    *out = b;
  } else if (t != napi_number || napi_get_value_double(env, v, out) != napi_ok) {
    fail(env, "dataplane: %s must be a number", name);
    return 0;
  }
  if (!(*out >= lo && *out <= hi) || *out != (double)(int64_t)*out) {
    fail(env, "dataplane: %s must be an integer in [%.0f, %.0f], got %g", name, lo, hi, *out);
    return 0;
  }
  return 1;
}

/* A typed array of `type` with at least `min` elements, kept alive by a reference in p. */
static void *get_array(napi_env env, plane *p, napi_value obj, const char *name, napi_typedarray_type type, size_t elem,
                       size_t min, size_t *len_out) {
  napi_value v;
  bool is = false;
  if (!prop(env, obj, name, &v)) return NULL;
  napi_is_typedarray(env, v, &is);
  napi_typedarray_type t;
  size_t len = 0, off = 0;
  void *data = NULL;
  napi_value ab;
  if (!is || napi_get_typedarray_info(env, v, &t, &len, &data, &ab, &off) != napi_ok || t != type) {
    fail(env, "dataplane: %s must be a typed array of the documented type", name);
    return NULL;
  }
  if (len < min || !data) {
    fail(env, "dataplane: %s has %zu elements, at least %zu needed", name, len, min);
    return NULL;
  }
  if (((uintptr_t)data) % elem != 0) {
    fail(env, "dataplane: %s is not aligned", name);
    return NULL;
  }
  if (p->nrefs >= MAX_REFS || napi_create_reference(env, v, 1, &p->refs[p->nrefs]) != napi_ok) {
    fail(env, "dataplane: cannot hold %s", name);
    return NULL;
  }
  p->nrefs++;
  if (len_out) *len_out = len;
  return data;
}

/* ------------------------------------------------------------------ thread lifecycle */

static void call_js(napi_env env, napi_value cb, void *context, void *data) {
  (void)context;
  if (env && cb) {
    napi_value undef, arg;
    napi_get_undefined(env, &undef);
    if (data) napi_create_string_utf8(env, (const char *)data, NAPI_AUTO_LENGTH, &arg);
    else napi_get_null(env, &arg);
    napi_call_function(env, undef, cb, 1, &arg, NULL); /* a throw there is the callback's own affair */
  }
  free(data);
}

static void *thread_main(void *arg) {
  plane *p = arg;
  if (p->kind == KIND_FAULT) {
    p->rc = dp_fault_run(&p->f);
    memcpy(p->err, p->f.err, DP_ERR);
  } else if (p->kind == KIND_ANSWER) {
    p->rc = dp_answer_run(&p->s);
    memcpy(p->err, p->s.err, DP_ERR);
  } else if (p->kind == KIND_PRESEND) {
    p->rc = dp_presend_run(&p->ps);
    memcpy(p->err, p->ps.err, DP_ERR);
  } else if (p->kind == KIND_PRERECV) {
    p->rc = dp_prerecv_run(&p->pr);
    memcpy(p->err, p->pr.err, DP_ERR);
  } else if (p->kind == KIND_FILE) {
    p->rc = dp_file_run(&p->fl);
    memcpy(p->err, p->fl.err, DP_ERR);
  } else if (p->kind == KIND_SCAN) {
    p->rc = dp_scan_run(&p->sc);
    memcpy(p->err, p->sc.err, DP_ERR);
  } else if (p->kind == KIND_DIGEST) {
    p->rc = dp_digest_run(&p->dg);
    memcpy(p->err, p->dg.err, DP_ERR);
  } else {
    p->rc = dp_load_run(&p->ld);
    memcpy(p->err, p->ld.err, DP_ERR);
  }
  /* One call into JavaScript per thread, queued: if the environment is going away it is dropped. */
  char *msg = p->rc == 0 ? NULL : strdup(p->err[0] ? p->err : "failed");
  if (napi_call_threadsafe_function(p->tsfn, msg, napi_tsfn_nonblocking) != napi_ok) free(msg);
  return NULL;
}

/* Stops and joins the thread, then gives back the socket, the eventfd, the callback and the buffers. */
static void release(plane *p, int teardown) {
  if (p->released) return;
  p->released = 1;
  if (p->running) {
    p->stop = 1;
    uint64_t one = 1;
    (void)!write(p->wakefd, &one, sizeof one);
    pthread_join(p->th, NULL);
    p->running = 0;
  }
  if (p->wakefd >= 0) close(p->wakefd);
  if (p->sock >= 0) close(p->sock);
  for (uint32_t i = 0; i < p->fl.nfds; i++) close(p->fl.fds[i]);
  p->fl.nfds = 0;
  for (uint32_t i = 0; i < p->ld.nfds; i++) close(p->ld.fds[i]);
  p->ld.nfds = 0;
  p->wakefd = p->sock = -1;
  if (p->tsfn) napi_release_threadsafe_function(p->tsfn, teardown ? napi_tsfn_abort : napi_tsfn_release);
  p->tsfn = NULL;
  for (int i = 0; i < p->nrefs; i++) napi_delete_reference(p->env, p->refs[i]);
  p->nrefs = 0;
  OPENSSL_cleanse(p->f.secret, DP_SECRET);
  OPENSSL_cleanse(p->s.secret, DP_SECRET);
  OPENSSL_cleanse(p->ps.secret, DP_SECRET);
  OPENSSL_cleanse(p->pr.secret, DP_SECRET);
}

static void cleanup_hook(void *arg) {
  plane *p = arg;
  p->hooked = 0; /* runs once; the finalizer must not remove it again */
  release(p, 1);
}

static void finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  plane *p = data;
  release(p, 1);
  if (p->hooked) napi_remove_env_cleanup_hook(env, cleanup_hook, p);
  free(p);
}

/* A start function's refusal after its plane was made: gives everything back (the socket too). */
static napi_value discard(plane *p) {
  release(p, 0);
  free(p);
  return NULL;
}

static napi_value start(napi_env env, plane *p, napi_value on_exit) {
  napi_valuetype t;
  napi_typeof(env, on_exit, &t);
  if (t != napi_function) {
    discard(p);
    return fail(env, "dataplane: onExit must be a function");
  }
  napi_value name;
  napi_create_string_utf8(env, "ferry dataplane exit", NAPI_AUTO_LENGTH, &name);
  p->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (p->wakefd < 0 || napi_create_threadsafe_function(env, on_exit, NULL, name, 0, 1, NULL, NULL, NULL, call_js, &p->tsfn) != napi_ok) {
    discard(p); /* closes the socket too: the addon owns it from the start function's entry */
    return fail(env, "dataplane: cannot make the thread's eventfd or callback");
  }
  p->f.wakefd = p->s.wakefd = p->ps.wakefd = p->pr.wakefd = p->fl.wakefd = p->sc.wakefd = p->wakefd; /* before the thread starts */
  /* A running plane does not keep the process alive, but a load or a digest, which ends by itself
   * and whose caller waits for it, does. */
  if (p->kind != KIND_LOAD && p->kind != KIND_DIGEST) napi_unref_threadsafe_function(env, p->tsfn);
  napi_value handle;
  if (napi_create_external(env, p, finalize, NULL, &handle) != napi_ok) {
    discard(p);
    return fail(env, "dataplane: cannot make the thread's handle");
  }
  /* From here the handle owns p (its finalizer frees it). */
  if (napi_add_env_cleanup_hook(env, cleanup_hook, p) == napi_ok) p->hooked = 1;
  if (pthread_create(&p->th, NULL, thread_main, p) != 0) {
    release(p, 0);
    return fail(env, "dataplane: pthread_create: %s", strerror(errno));
  }
  p->running = 1;
  return handle;
}

/* Ownership of the handed-over socket: every start function reads options.sock first of all, and
 * from then on the socket is the addon's, whatever happens — a refused option, a missing
 * argument, no memory — so a caller never has to guess whether to close it after a throw. The
 * only descriptor not closed is one that is not a valid descriptor number (nothing to own). */
static int own_sock(napi_env env, size_t argc, napi_value *argv) {
  napi_valuetype t = napi_undefined;
  if (argc < 1 || napi_typeof(env, argv[0], &t) != napi_ok || t != napi_object) return -1;
  bool has = false;
  napi_value v;
  double d;
  if (napi_has_named_property(env, argv[0], "sock", &has) != napi_ok || !has || napi_get_named_property(env, argv[0], "sock", &v) != napi_ok ||
      napi_typeof(env, v, &t) != napi_ok || t != napi_number || napi_get_value_double(env, v, &d) != napi_ok)
    return -1;
  if (!(d >= 0 && d <= (1 << 30)) || d != (double)(int)d) return -1;
  return (int)d;
}

/* A refusal before there is a plane to release: the owned socket is closed here. */
static napi_value refuse_owned(napi_env env, int sock, const char *msg) {
  if (sock >= 0) close(sock);
  return fail(env, "%s", msg);
}

static plane *new_plane(napi_env env, int kind, int sock) {
  plane *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->kind = kind;
  p->env = env;
  p->wakefd = -1;
  p->sock = sock; /* owned from here: release() closes it */
  p->f.stop = p->s.stop = p->ps.stop = p->pr.stop = p->fl.stop = p->ld.stop = p->sc.stop = p->dg.stop = &p->stop;
  return p;
}

static int get_secret(napi_env env, plane *p, napi_value o, uint8_t out[DP_SECRET]) {
  size_t len;
  uint8_t *s = get_array(env, p, o, "secret", napi_uint8_array, 1, DP_SECRET, &len);
  if (!s) return 0;
  if (len != DP_SECRET) {
    fail(env, "dataplane: secret must be %u bytes", DP_SECRET);
    return 0;
  }
  memcpy(out, s, DP_SECRET);
  return 1;
}

static int get_common(napi_env env, plane *p, napi_value o, int *sock, int *role, int *timeout_ms, int *raise_priority) {
  double v;
  if (!get_num(env, o, "sock", 0, 1 << 30, &v)) return 0;
  *sock = (int)v;
  if (!get_num(env, o, "role", 0, 1, &v)) return 0;
  *role = (int)v;
  if (!get_num(env, o, "timeoutMs", 1, 3600000, &v)) return 0;
  *timeout_ms = (int)v;
  if (!get_num(env, o, "raisePriority", 0, 1, &v)) return 0;
  *raise_priority = (int)v;
  return 1;
}

/* Optional options.maxBandwidth (--max-bandwidth, bytes/s; absent or 0: no cap) into a token bucket. */
static int get_rate(napi_env env, napi_value o, dp_bucket *b) {
  napi_value rv;
  bool has = false;
  double rate = 0;
  napi_valuetype rt = napi_undefined;
  if (napi_has_named_property(env, o, "maxBandwidth", &has) == napi_ok && has && napi_get_named_property(env, o, "maxBandwidth", &rv) == napi_ok)
    napi_typeof(env, rv, &rt);
  if (rt != napi_undefined && !get_num(env, o, "maxBandwidth", 0, 1e15, &rate)) return 0;
  dp_bucket_init(b, rate);
  return 1;
}

/* options.uffd and options.base (the address of guest page 0, page-aligned). */
static int get_uffd_base(napi_env env, napi_value o, int *uffd, uint64_t *base) {
  double v, b;
  if (!get_num(env, o, "uffd", 0, 1 << 30, &v) || !get_num(env, o, "base", 0, 9007199254740991.0, &b)) return 0;
  if ((uint64_t)b % DP_PAGE) {
    fail(env, "dataplane: base must be page-aligned");
    return 0;
  }
  *uffd = (int)v;
  *base = (uint64_t)b;
  return 1;
}

/* Whether the optional option `name` is given (neither absent, undefined nor null). */
static int has_option(napi_env env, napi_value o, const char *name) {
  napi_value v;
  napi_valuetype t = napi_undefined;
  bool has = false;
  if (napi_has_named_property(env, o, name, &has) == napi_ok && has && napi_get_named_property(env, o, name, &v) == napi_ok)
    napi_typeof(env, v, &t);
  return t != napi_undefined && t != napi_null;
}

/* Optional options.digest (the verify digest's per-page hashes, two words a page) into *digest. */
static int get_digest(napi_env env, plane *p, napi_value o, uint32_t **digest, uint32_t *pages) {
  if (!has_option(env, o, "digest")) return 1;
  size_t words = 0;
  if (!(*digest = get_array(env, p, o, "digest", napi_uint32_array, 4, 2, &words))) return 0;
  *pages = (uint32_t)(words / 2);
  return 1;
}

/* startFault(options, onExit) -> handle. Takes options.sock from its entry (closed on a refusal, or when the plane is released). */
static napi_value f_start_fault(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int owned = own_sock(env, argc, argv);
  if (argc < 2) return refuse_owned(env, owned, "startFault(options, onExit)");
  plane *p = new_plane(env, KIND_FAULT, owned);
  if (!p) return refuse_owned(env, owned, "out of memory");
  dp_fault_args *a = &p->f;
  napi_value o = argv[0];
  double pages, around;
  size_t table = 0, n = 0;
  if (!get_common(env, p, o, &a->sock, &a->role, &a->timeout_ms, &a->raise_priority) || !get_uffd_base(env, o, &a->uffd, &a->base) ||
      !get_num(env, o, "pageCount", 0, 1u << 31, &pages) || !get_num(env, o, "faultAround", 1, DP_MAX_REQUEST, &around))
    goto bad;
  a->page_count = (uint32_t)pages;
  a->fault_around = (uint32_t)around;
  if (!(a->states = get_array(env, p, o, "states", napi_uint8_array, 1, a->page_count ? a->page_count : 1, &table))) goto bad;
  a->table_pages = (uint32_t)table;
  if (!(a->state_counts = get_array(env, p, o, "stateCounts", napi_int32_array, 4, 3, NULL)) ||
      !(a->times = get_array(env, p, o, "times", napi_bigint64_array, 8, table, NULL)) ||
      !(a->waiting = get_array(env, p, o, "waiting", napi_int32_array, 4, 1, NULL)) ||
      !(a->stats = get_array(env, p, o, "stats", napi_float64_array, 8, DS_SLOTS, NULL)) ||
      !(a->latencies = get_array(env, p, o, "latencies", napi_float64_array, 8, 1, &n)) || !get_secret(env, p, o, a->secret))
    goto bad;
  a->latency_ring = (uint32_t)n;
  if (!get_digest(env, p, o, &a->digest, &a->digest_pages)) goto bad;
  double move = 0;
  if (has_option(env, o, "movePool") && !get_num(env, o, "movePool", 0, 1, &move)) goto bad;
  a->move_pool = move == 1;
  return start(env, p, argv[1]);
bad:
  return discard(p);
}

/* startAnswer(options, onExit) -> handle. Takes options.sock from its entry (closed on a refusal, or when the plane is released). */
static napi_value f_start_answer(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int owned = own_sock(env, argc, argv);
  if (argc < 2) return refuse_owned(env, owned, "startAnswer(options, onExit)");
  plane *p = new_plane(env, KIND_ANSWER, owned);
  if (!p) return refuse_owned(env, owned, "out of memory");
  dp_answer_args *a = &p->s;
  napi_value o = argv[0];
  double pages;
  size_t mem = 0, words = 0;
  if (!get_common(env, p, o, &a->sock, &a->role, &a->timeout_ms, &a->raise_priority) || !get_num(env, o, "pageCount", 0, 1u << 31, &pages)) goto bad;
  a->page_count = (uint32_t)pages;
  if (!(a->memory = get_array(env, p, o, "memory", napi_uint8_array, 1, (size_t)a->page_count * DP_PAGE, &mem))) goto bad;
  words = (a->page_count + 31) / 32;
  if (!(a->pending = get_array(env, p, o, "pending", napi_uint32_array, 4, words ? words : 1, NULL)) ||
      !(a->claims = get_array(env, p, o, "claims", napi_uint32_array, 4, words ? words : 1, NULL)) ||
      !(a->stats = get_array(env, p, o, "stats", napi_float64_array, 8, SS_SLOTS, NULL)) || !get_secret(env, p, o, a->secret))
    goto bad;
  {
    /* Optional: stream the bulk too (default false). */
    napi_value bv;
    bool has = false, b = false;
    if (napi_has_named_property(env, o, "bulk", &has) == napi_ok && has && napi_get_named_property(env, o, "bulk", &bv) == napi_ok &&
        napi_get_value_bool(env, bv, &b) != napi_ok) {
      napi_valuetype bt;
      napi_typeof(env, bv, &bt);
      if (bt != napi_undefined) {
        fail(env, "dataplane: bulk must be a boolean");
        goto bad;
      }
    }
    a->bulk = b;
  }
  if (!get_rate(env, o, &a->bucket)) goto bad;
  return start(env, p, argv[1]);
bad:
  return discard(p);
}

/* startPrecopySend(options, onExit) -> handle. Takes options.sock from its entry (closed on a refusal, or when the plane is released). */
static napi_value f_start_presend(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int owned = own_sock(env, argc, argv);
  if (argc < 2) return refuse_owned(env, owned, "startPrecopySend(options, onExit)");
  plane *p = new_plane(env, KIND_PRESEND, owned);
  if (!p) return refuse_owned(env, owned, "out of memory");
  dp_presend_args *a = &p->ps;
  napi_value o = argv[0];
  int raise_priority = 0;
  double pages;
  size_t words = 0;
  if (!get_common(env, p, o, &a->sock, &a->role, &a->timeout_ms, &raise_priority) || !get_num(env, o, "maxPages", 0, 1u << 31, &pages)) goto bad;
  a->max_pages = (uint32_t)pages;
  size_t mem = 0;
  if (!get_rate(env, o, &a->bucket)) goto bad;
  p->memory_ref = p->nrefs;
  if (!(a->memory = get_array(env, p, o, "memory", napi_uint8_array, 1, 1, &mem))) goto bad;
  a->memory_pages = mem / DP_PAGE > UINT32_MAX ? UINT32_MAX : (uint32_t)(mem / DP_PAGE);
  words = (a->max_pages + 31) / 32;
  if (!(a->pages = get_array(env, p, o, "pages", napi_uint32_array, 4, words ? words : 1, NULL)) ||
      !(a->job = get_array(env, p, o, "job", napi_int32_array, 4, PJ_SLOTS, NULL)) ||
      !(a->stats = get_array(env, p, o, "stats", napi_float64_array, 8, PS_SLOTS, NULL)) || !get_secret(env, p, o, a->secret))
    goto bad;
  return start(env, p, argv[1]);
bad:
  return discard(p);
}

/* startPrecopyReceive(options, onExit) -> handle. Takes options.sock from its entry (closed on a refusal, or when the plane is released). */
static napi_value f_start_prerecv(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int owned = own_sock(env, argc, argv);
  if (argc < 2) return refuse_owned(env, owned, "startPrecopyReceive(options, onExit)");
  plane *p = new_plane(env, KIND_PRERECV, owned);
  if (!p) return refuse_owned(env, owned, "out of memory");
  dp_prerecv_args *a = &p->pr;
  napi_value o = argv[0];
  int raise_priority = 0;
  size_t table = 0;
  if (!get_common(env, p, o, &a->sock, &a->role, &a->timeout_ms, &raise_priority) || !get_uffd_base(env, o, &a->uffd, &a->base)) goto bad;
  if (!(a->states = get_array(env, p, o, "states", napi_uint8_array, 1, 1, &table))) goto bad;
  a->table_pages = (uint32_t)table;
  if (!(a->state_counts = get_array(env, p, o, "stateCounts", napi_int32_array, 4, 3, NULL)) ||
      !(a->limit = get_array(env, p, o, "limit", napi_int32_array, 4, 1, NULL)) ||
      !(a->stats = get_array(env, p, o, "stats", napi_float64_array, 8, PR_SLOTS, NULL)) || !get_secret(env, p, o, a->secret))
    goto bad;
  if (!get_digest(env, p, o, &a->digest, &a->digest_pages)) goto bad;
  double move = 0;
  if (has_option(env, o, "movePool") && !get_num(env, o, "movePool", 0, 1, &move)) goto bad;
  a->move_pool = move == 1;
  return start(env, p, argv[1]);
bad:
  return discard(p);
}

/* options.layerFds, the layer files' descriptors, duplicated into fds (closed by release(): the
 * caller keeps and closes its own); 0 after a refusal. */
static int get_layers(napi_env env, plane *p, napi_value o, int *fds, uint32_t *nfds) {
  size_t n = 0;
  const int32_t *given = get_array(env, p, o, "layerFds", napi_int32_array, 4, 1, &n);
  if (!given) return 0;
  if (n > DP_MAX_LAYERS) {
    fail(env, "dataplane: at most %u layers, got %zu", DP_MAX_LAYERS, n);
    return 0;
  }
  for (size_t i = 0; i < n; i++) {
    int fd = given[i] < 0 ? -1 : fcntl(given[i], F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
      fail(env, "dataplane: layerFds[%zu] (%d) is not an open descriptor", i, given[i]);
      return 0;
    }
    fds[(*nfds)++] = fd;
  }
  return 1;
}

/* The opening of a start function without a socket: its (options, onExit) and a new plane of
 * `kind`; NULL after a thrown error. */
static plane *socketless_plane(napi_env env, napi_callback_info info, int kind, const char *usage, napi_value argv[2]) {
  size_t argc = 2;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2) {
    fail(env, "%s", usage);
    return NULL;
  }
  plane *p = new_plane(env, kind, -1);
  if (!p) fail(env, "out of memory");
  return p;
}

/* startFileFaults(options, onExit) -> handle: the snapshot fault thread (dp_file.c). The layer files'
 * descriptors are duplicated: the caller keeps (and closes) its own. */
static napi_value f_start_file(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  plane *p = socketless_plane(env, info, KIND_FILE, "startFileFaults(options, onExit)", argv);
  if (!p) return NULL;
  dp_file_args *a = &p->fl;
  napi_value o = argv[0];
  double v, around;
  size_t table = 0, n = 0, loc = 0;
  if (!get_uffd_base(env, o, &a->uffd, &a->base) || !get_num(env, o, "raisePriority", 0, 1, &v) || !get_num(env, o, "faultAround", 1, DP_MAX_REQUEST, &around)) goto bad;
  a->raise_priority = (int)v;
  a->fault_around = (uint32_t)around;
  if (!(a->states = get_array(env, p, o, "states", napi_uint8_array, 1, 1, &table))) goto bad;
  a->table_pages = (uint32_t)table;
  if (!(a->state_counts = get_array(env, p, o, "stateCounts", napi_int32_array, 4, 3, NULL)) ||
      !(a->stats = get_array(env, p, o, "stats", napi_float64_array, 8, FS_SLOTS, NULL)) ||
      !(a->latencies = get_array(env, p, o, "latencies", napi_float64_array, 8, 1, &n)) ||
      !(a->location = get_array(env, p, o, "location", napi_int16_array, 2, 1, &loc)) || !get_layers(env, p, o, a->fds, &a->nfds))
    goto bad;
  a->latency_ring = (uint32_t)n;
  a->location_pages = (uint32_t)(loc < table ? loc : table);
  return start(env, p, argv[1]);
bad:
  return discard(p);
}

/* startScan(options, onExit) -> handle: the pages of [base, end) written since their last
 * write-protection (dp_scan.c), into options.runs (Uint32Array, [start, end) page index pairs)
 * with options.status (Int32Array of 2: DP_SCAN_* last, then the run count), which the caller
 * reads without waiting for the event loop. With options.armed 1 the thread starts and sets up,
 * then walks only at wake(handle) (stop(handle) ends it without a walk). */
static napi_value f_start_scan(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  plane *p = socketless_plane(env, info, KIND_SCAN, "startScan(options, onExit)", argv);
  if (!p) return NULL;
  dp_scan_args *a = &p->sc;
  double base, end;
  size_t runs = 0, status = 0;
  if (!get_num(env, argv[0], "base", 0, 9007199254740991.0, &base) || !get_num(env, argv[0], "end", 0, 9007199254740991.0, &end) ||
      !(a->runs = get_array(env, p, argv[0], "runs", napi_uint32_array, 4, 2, &runs)) ||
      !(a->status = get_array(env, p, argv[0], "status", napi_int32_array, 4, 2, &status)))
    return discard(p);
  if (end < base || (uint64_t)base % DP_PAGE || (uint64_t)end % DP_PAGE) {
    discard(p);
    return fail(env, "dataplane: startScan's base and end must be page aligned, end not below base");
  }
  double raise = 0;
  if (has_option(env, argv[0], "raisePriority") && !get_num(env, argv[0], "raisePriority", 0, 1, &raise)) return discard(p);
  a->raise_priority = raise == 1;
  double armed = 0;
  if (has_option(env, argv[0], "armed") && !get_num(env, argv[0], "armed", 0, 1, &armed)) return discard(p);
  a->armed = armed == 1;
  a->base = (uint64_t)base;
  a->end = (uint64_t)end;
  a->max_runs = (uint32_t)(runs / 2);
  __atomic_store_n(&a->status[0], DP_SCAN_RUNNING, __ATOMIC_RELEASE);
  return start(env, p, argv[1]);
}

/* startLoad(options, onExit) -> handle: an eager restore's load (dp_load.c), done when onExit is
 * called (null: every chunk checked and its pages in memory). The layer files' descriptors are
 * duplicated: the caller keeps (and closes) its own. */
static napi_value f_start_load(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  plane *p = socketless_plane(env, info, KIND_LOAD, "startLoad(options, onExit)", argv);
  if (!p) return NULL;
  dp_load_args *a = &p->ld;
  napi_value o = argv[0];
  double v;
  size_t mem = 0, loc = 0, n = 0, n2 = 0, n3 = 0, sha = 0;
  if (!(a->memory = get_array(env, p, o, "memory", napi_uint8_array, 1, DP_PAGE, &mem)) ||
      !(a->location = get_array(env, p, o, "location", napi_int16_array, 2, 1, &loc)) ||
      !get_layers(env, p, o, a->fds, &a->nfds) ||
      !(a->chunk_layer = get_array(env, p, o, "chunkLayer", napi_uint32_array, 4, 1, &n)) ||
      !(a->chunk_page = get_array(env, p, o, "chunkPage", napi_uint32_array, 4, n, &n2)) ||
      !(a->chunk_count = get_array(env, p, o, "chunkCount", napi_uint32_array, 4, n, &n3)) ||
      !(a->chunk_sha = get_array(env, p, o, "chunkSha256", napi_uint8_array, 1, n * 32, &sha)) ||
      !get_num(env, o, "threads", 1, DP_LOAD_MAX_THREADS, &v))
    goto bad;
  double populate = 0;
  if (has_option(env, o, "populate") && !get_num(env, o, "populate", 0, 1, &populate)) goto bad;
  a->populate = populate == 1;
  size_t crc = n * DP_CHECK;
  if (has_option(env, o, "chunkCrc") && !(a->chunk_crc = get_array(env, p, o, "chunkCrc", napi_uint8_array, 1, n * DP_CHECK, &crc))) goto bad;
  if (n2 != n || n3 != n || sha != n * 32 || crc != n * DP_CHECK) {
    fail(env, "dataplane: the chunk arrays differ in length");
    goto bad;
  }
  a->memory_bytes = mem;
  a->location_pages = (uint32_t)loc;
  a->nchunks = (uint32_t)n;
  a->threads = (uint32_t)v;
  return start(env, p, argv[1]);
bad:
  return discard(p);
}

/* startDigest(options, onExit) -> handle: the hash of every page of options.memory's first
 * options.pageCount pages into options.hashes (Uint32Array, 2 per page), the pages whose bit in
 * options.present (Uint32Array bitmap words) is clear hashed as zero unread (dp_digest.c); done
 * when onExit(null) is called. */
static napi_value f_start_digest(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  plane *p = socketless_plane(env, info, KIND_DIGEST, "startDigest(options, onExit)", argv);
  if (!p) return NULL;
  dp_digest_args *a = &p->dg;
  double pages;
  size_t mem = 0, words = 0, hashes = 0;
  if (!get_num(env, argv[0], "pageCount", 0, UINT32_MAX, &pages) ||
      !(a->memory = get_array(env, p, argv[0], "memory", napi_uint8_array, 1, 1, &mem)) ||
      !(a->present = get_array(env, p, argv[0], "present", napi_uint32_array, 4, 0, &words)) ||
      !(a->hashes = get_array(env, p, argv[0], "hashes", napi_uint32_array, 4, 0, &hashes)))
    return discard(p);
  a->page_count = (uint32_t)pages;
  if ((uint64_t)a->page_count * DP_PAGE > mem || hashes < 2 * (size_t)a->page_count || words < ((size_t)a->page_count + 31) / 32) {
    discard(p);
    return fail(env, "dataplane: startDigest's memory, present or hashes is shorter than pageCount pages need");
  }
  return start(env, p, argv[1]);
}

/* chunkCheck(bytes) -> a Buffer of DP_CHECK bytes: a snapshot chunk's fast check (dp_check.c). */
static napi_value f_chunk_check(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  bool is = false;
  napi_typedarray_type t;
  size_t len = 0, off = 0;
  void *data = NULL, *dst = NULL;
  napi_value ab;
  if (argc < 1 || napi_is_typedarray(env, argv[0], &is) != napi_ok || !is ||
      napi_get_typedarray_info(env, argv[0], &t, &len, &data, &ab, &off) != napi_ok || t != napi_uint8_array)
    return fail(env, "chunkCheck(Uint8Array)");
  if (napi_create_buffer(env, DP_CHECK, &dst, &out) != napi_ok) return fail(env, "out of memory");
  dp_chunk_check(len ? data : (const uint8_t *)"", len, dst);
  return out;
}

/* The plane behind the handle in argv[0] (the first `want` arguments read into argv), or NULL. */
static plane *plane_arg(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  plane *p = NULL;
  napi_valuetype t = napi_undefined;
  if (argc < want) return NULL;
  napi_typeof(env, argv[0], &t);
  if (t != napi_external || napi_get_value_external(env, argv[0], (void **)&p) != napi_ok) return NULL;
  return p;
}

/* stop(handle) -> error text of the thread's end, or null when it stopped cleanly. Joins the thread. */
static napi_value f_stop(napi_env env, napi_callback_info info) {
  napi_value argv[1], out = NULL;
  plane *p = plane_arg(env, info, 1, argv);
  if (!p) return fail(env, "stop(handle)");
  release(p, 0);
  if (p->hooked) {
    napi_remove_env_cleanup_hook(env, cleanup_hook, p);
    p->hooked = 0;
  }
  if (p->rc == 0) napi_get_null(env, &out);
  else napi_create_string_utf8(env, p->err[0] ? p->err : "failed", NAPI_AUTO_LENGTH, &out);
  return out;
}

/* wake(handle): the thread looks at its job slots again (native precopy: a new pass, or CLOSE). */
static napi_value f_wake(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  plane *p = plane_arg(env, info, 1, argv);
  if (!p) return fail(env, "wake(handle)");
  if (p->running && p->wakefd >= 0) {
    uint64_t one = 1;
    (void)!write(p->wakefd, &one, sizeof one);
  }
  return NULL;
}

/* setMemory(handle, memory): the native precopy sender reads later passes from this view (the
 * guest's memory grew). Only between passes — the thread reads the view only inside one — so a
 * call while a pass is in flight is refused; the previous view is released. */
static napi_value f_set_memory(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  plane *p = plane_arg(env, info, 2, argv);
  if (!p || p->kind != KIND_PRESEND) return fail(env, "setMemory(handle of a precopy sender, memory)");
  if (p->released) return fail(env, "dataplane: setMemory on a stopped plane");
  dp_presend_args *a = &p->ps;
  int32_t want = __atomic_load_n(&a->job[PJ_PASS_SEQ], __ATOMIC_ACQUIRE);
  double done;
  __atomic_load(&a->stats[PS_PASS_DONE], &done, __ATOMIC_ACQUIRE);
  if ((double)want != done)
    return fail(env, "dataplane: setMemory while a pass is in flight");
  bool is = false;
  napi_typedarray_type ty;
  size_t len = 0, off = 0;
  void *data = NULL;
  napi_value ab;
  napi_ref ref;
  napi_is_typedarray(env, argv[1], &is);
  if (!is || napi_get_typedarray_info(env, argv[1], &ty, &len, &data, &ab, &off) != napi_ok || ty != napi_uint8_array || !data || len == 0)
    return fail(env, "dataplane: memory must be a non-empty Uint8Array");
  if (napi_create_reference(env, argv[1], 1, &ref) != napi_ok) return fail(env, "dataplane: cannot hold memory");
  napi_delete_reference(env, p->refs[p->memory_ref]);
  p->refs[p->memory_ref] = ref;
  a->memory = data;
  __atomic_store_n(&a->memory_pages, len / DP_PAGE > UINT32_MAX ? UINT32_MAX : (uint32_t)(len / DP_PAGE), __ATOMIC_RELEASE);
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor d[] = {
      {"startFault", NULL, f_start_fault, NULL, NULL, NULL, napi_default, NULL},
      {"startAnswer", NULL, f_start_answer, NULL, NULL, NULL, napi_default, NULL},
      {"startPrecopySend", NULL, f_start_presend, NULL, NULL, NULL, napi_default, NULL},
      {"startPrecopyReceive", NULL, f_start_prerecv, NULL, NULL, NULL, napi_default, NULL},
      {"startFileFaults", NULL, f_start_file, NULL, NULL, NULL, napi_default, NULL},
      {"startLoad", NULL, f_start_load, NULL, NULL, NULL, napi_default, NULL},
      {"startScan", NULL, f_start_scan, NULL, NULL, NULL, napi_default, NULL},
      {"startDigest", NULL, f_start_digest, NULL, NULL, NULL, napi_default, NULL},
      {"chunkCheck", NULL, f_chunk_check, NULL, NULL, NULL, napi_default, NULL},
      {"wake", NULL, f_wake, NULL, NULL, NULL, napi_default, NULL},
      {"setMemory", NULL, f_set_memory, NULL, NULL, NULL, napi_default, NULL},
      {"stop", NULL, f_stop, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof d / sizeof d[0], d);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
