#!/bin/sh
# Runs the test files (dist/test/**/*.test.js) with Node's test runner, one file at a time.
# clang post-processes wasm with wasm-opt whenever it finds one in PATH, and npm puts binaryen's
# wasm-opt (node_modules/.bin) first: tests that compile C must get plain clang output, so that
# directory is taken out of PATH here.
# Every run starts from a cold module cache of its own (FERRY_TEST_RUN_DIR, removed afterwards),
# never the user's ~/.cache/ferry nor a cache an earlier run left warm: a fresh machine sees the same.
set -eu
cd "$(dirname "$0")/.."
PATH=$(printf %s "$PATH" | tr ':' '\n' | grep -v 'node_modules/\.bin$' | paste -sd: -)
export PATH
dir="${1:-dist/test}"
FERRY_TEST_RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ferry-test-run-XXXXXX")
export FERRY_TEST_RUN_DIR
export FERRY_CACHE_DIR="$FERRY_TEST_RUN_DIR/cache-default"
trap 'rm -rf "$FERRY_TEST_RUN_DIR"' EXIT INT TERM
# Every process of the suite (the test runner's, and every ferry it spawns) ends on a promise
# rejected without a handler, even where a library installed an 'unhandledRejection' listener.
NODE_OPTIONS="${NODE_OPTIONS:-} --unhandled-rejections=strict"
export NODE_OPTIONS
# A test that hangs fails after 10 minutes (the longest passes in about one) instead of holding the
# whole run until CI's limit: the log then names it. A file whose failed test left a socket open
# still ends when its tests have (--test-force-exit).
node --test --test-concurrency=1 --test-timeout=600000 --test-force-exit $(find "$dir" -name '*.test.js' | sort)
