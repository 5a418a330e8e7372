#!/bin/sh
# The test suite compiles small C programs to wasm32-wasi and builds network namespaces; it needs
# clang, lld, wasi-libc, the wasm32 compiler runtime, iproute2 and redis-tools (its redis-benchmark
# drives the kvserver guest) from Debian. Installs the ones missing (as root, with apt-get); does
# nothing when all are present.
set -eu
need=""
for p in clang lld wasi-libc libclang-rt-14-dev-wasm32 iproute2 redis-tools; do
  dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
done
[ -z "$need" ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "tests need these Debian packages:$need (run as root, or: sudo apt-get install$need)" >&2
  exit 1
fi
echo "installing test toolchain:$need" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq $need >/dev/null
