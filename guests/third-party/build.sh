#!/bin/sh
# Builds the third-party WASI programs of the real-programs benchmark and test into build/:
#   sqlite3.wasm  the SQLite 3.52.0 shell (amalgamation shipped in npm sqlite3@6.0.1's deps/)
#   bzip2.wasm    bzip2 1.0.8 (Debian source package bzip2 1.0.8-5)
#   cmark.wasm    cmark 0.30.2, CommonMark to HTML (Debian source package cmark 0.30.2-6)
#   bc.wasm       GNU bc 1.07.1, an arbitrary-precision calculator language interpreter
#                 (Debian source package bc 1.07.1-3)
# Sources are fetched with the ordinary clients (`npm pack`, `apt-get source --download-only`;
# the latter needs a deb-src line for bookworm) into $FERRY_THIRD_PARTY_SRC (default
# ./.src, not committed). The built modules are committed, so nothing here runs in CI.
# Needs clang 14 with wasm32-wasi, wasm-ld and wasi-libc (as guests/build.sh) and node.
set -eu
cd "$(dirname "$0")"
here=$(pwd)
PATH=$(printf %s "$PATH" | tr ':' '\n' | grep -v 'node_modules/\.bin$' | paste -sd: -)
export PATH
CC="${CC:-clang}"
SRC="${FERRY_THIRD_PARTY_SRC:-$here/.src}"
mkdir -p "$SRC" build
COMMON="--target=wasm32-wasi -O2 -Wl,--max-memory=4294967296 -Wl,--strip-debug"

fetch() {
  cd "$SRC"
  [ -f sqlite3-6.0.1.tgz ] || npm pack sqlite3@6.0.1 >/dev/null
  [ -d sqlite-autoconf-3520000 ] || { tar xzf sqlite3-6.0.1.tgz package/deps/sqlite-autoconf-3520000.tar.gz && tar xzf package/deps/sqlite-autoconf-3520000.tar.gz; }
  for p in bzip2 cmark bc; do
    ls ${p}_*.orig.tar.gz >/dev/null 2>&1 || apt-get source --download-only "$p" >/dev/null
  done
  [ -d bzip2-1.0.8 ] || tar xzf bzip2_1.0.8.orig.tar.gz
  [ -d cmark-0.30.2 ] || tar xzf cmark_0.30.2.orig.tar.gz
  [ -d bc-1.07.1 ] || tar xzf bc_1.07.1.orig.tar.gz
  cd "$here"
}

sqlite() {
  d="$SRC/sqlite-autoconf-3520000"
  # shellcheck disable=SC2086
  "$CC" $COMMON -w "$d/shell.c" "$d/sqlite3.c" stubs.c \
    -DSQLITE_THREADSAFE=0 -DSQLITE_OMIT_LOAD_EXTENSION -DSQLITE_OMIT_POPEN -DSQLITE_NOHAVE_SYSTEM \
    -DSQLITE_OMIT_WAL -DSQLITE_MAX_MMAP_SIZE=0 -DSQLITE_OMIT_SHARED_CACHE \
    -D_WASI_EMULATED_SIGNAL -D_WASI_EMULATED_PROCESS_CLOCKS -D_WASI_EMULATED_GETPID -D_WASI_EMULATED_MMAN \
    -lwasi-emulated-signal -lwasi-emulated-process-clocks -lwasi-emulated-getpid -lwasi-emulated-mman \
    -o build/sqlite3.wasm
}

bzip2() {
  d="$SRC/bzip2-1.0.8"
  # shellcheck disable=SC2086
  "$CC" $COMMON -w -D_FILE_OFFSET_BITS=64 -D_WASI_EMULATED_SIGNAL -D_WASI_EMULATED_PROCESS_CLOCKS \
    "$d/bzip2.c" "$d/blocksort.c" "$d/huffman.c" "$d/crctable.c" "$d/randtable.c" "$d/compress.c" \
    "$d/decompress.c" "$d/bzlib.c" bzip2-stubs.c \
    -lwasi-emulated-signal -lwasi-emulated-process-clocks -o build/bzip2.wasm
}

cmark() {
  d="$SRC/cmark-0.30.2/src"
  g="$SRC/cmark-gen"
  mkdir -p "$g"
  # What CMake would generate for this target.
  sed -e 's/#cmakedefine \(HAVE_[A-Z_]*\)/#define \1/' "$d/config.h.in" > "$g/config.h"
  sed -e 's/@PROJECT_VERSION_MAJOR@/0/g' -e 's/@PROJECT_VERSION_MINOR@/30/g' -e 's/@PROJECT_VERSION_PATCH@/2/g' \
    "$d/cmark_version.h.in" > "$g/cmark_version.h"
  printf '#ifndef CMARK_EXPORT_H\n#define CMARK_EXPORT_H\n#define CMARK_EXPORT\n#define CMARK_NO_EXPORT\n#define CMARK_DEPRECATED\n#endif\n' > "$g/cmark_export.h"
  files=""
  for f in blocks buffer cmark cmark_ctype commonmark houdini_href_e houdini_html_e houdini_html_u html \
           inlines iterator latex main man node references render scanners utf8 xml; do
    files="$files $d/$f.c"
  done
  # shellcheck disable=SC2086
  "$CC" $COMMON -w -DNDEBUG -I"$g" -I"$d" $files -o build/cmark.wasm
}

bc() {
  d="$SRC/bc-1.07.1"
  [ -f "$d/config.h" ] || (cd "$d" && ./configure --host=wasm32-wasi CC="$CC --target=wasm32-wasi" CFLAGS=-O2 >/dev/null)
  srcs="$d/bc/main.c $d/bc/bc.c $d/bc/scan.c $d/bc/execute.c $d/bc/load.c $d/bc/storage.c $d/bc/util.c \
        $d/bc/warranty.c $d/lib/getopt.c $d/lib/getopt1.c $d/lib/vfprintf.c $d/lib/number.c"
  # As bc's Makefile does: a bc without its math library (fbc) compiles libmath.b into libmath.h.
  echo '{0}' > "$d/bc/libmath.h"
  # shellcheck disable=SC2086
  "$CC" $COMMON -w -D_WASI_EMULATED_SIGNAL -lwasi-emulated-signal -DHAVE_CONFIG_H -I"$d" -I"$d/h" -I"$d/bc" $srcs "$d/bc/global.c" -o "$SRC/fbc.wasm"
  (cd "$d/bc" && node "$here/run-wasi.mjs" "$SRC/fbc.wasm" -c libmath.b </dev/null > libmath.h.raw)
  # fix-libmath_h (an ed script) turns the lines into a C string array.
  node -e '
    const fs = require("fs");
    const lines = fs.readFileSync(process.argv[1], "utf8").split("\n");
    if (lines[lines.length - 1] === "") lines.pop();
    lines.pop(); // the ed script deletes the last line, a trailing "@i"
    fs.writeFileSync(process.argv[2], "{" + lines.map((l) => JSON.stringify(l)).join(",\n") + ",0}\n");
  ' "$d/bc/libmath.h.raw" "$d/bc/libmath.h"
  # shellcheck disable=SC2086
  "$CC" $COMMON -w -D_WASI_EMULATED_SIGNAL -lwasi-emulated-signal -DHAVE_CONFIG_H -I"$d" -I"$d/h" -I"$d/bc" $srcs "$d/bc/global.c" -o build/bc.wasm
}

fetch
for p in ${*:-sqlite bzip2 cmark bc}; do
  "$p"
done
ls -l build/*.wasm
