#!/bin/sh
# Runs the C core tests: the -O2 build, then the ASan+UBSan(+LSan) build.
set -e
cd "$(dirname "$0")"
make test asan "$@"
