#!/bin/sh
# Rebuilds every guest program into guests/build/*.wasm.
# The output is reproducible (same bytes on every build with the same clang and
# wasi-libc): no debug info (wasi-libc ships its own DWARF, which would make the
# modules 5x larger and slower to instrument; the name section stays), relative
# source paths, no timestamps.
set -eu
cd "$(dirname "$0")"
# clang runs wasm-opt on its output when one is in PATH (npm puts binaryen's there): keep plain
# clang output, which is what the committed modules are.
PATH=$(printf %s "$PATH" | tr ':' '\n' | grep -v 'node_modules/\.bin$' | paste -sd: -)
export PATH
CC="${CC:-clang}"
if ! command -v "$CC" >/dev/null 2>&1; then
  echo "guests/build.sh: $CC not found (apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32)" >&2
  exit 1
fi
mkdir -p build
for src in memtouch fileio compute kvserver; do
  # --max-memory: the largest wasm32 memory (65536 pages), so the runtime may make
  # it shared (a shared memory needs a maximum) and reserve it once.
  "$CC" --target=wasm32-wasi -O2 -Wall -Wextra -Werror \
    -ffile-prefix-map="$(pwd)"=. \
    -Wl,--max-memory=4294967296 -Wl,--strip-debug \
    -o "build/$src.wasm.tmp" "$src.c"
  mv "build/$src.wasm.tmp" "build/$src.wasm"
done
echo "built: $(ls build/*.wasm | tr '\n' ' ')"
