#!/usr/bin/env bash
# Installs a built modelreg into a scratch prefix, then configures, builds and
# runs an out-of-tree consumer that uses find_package(modelreg).
#   check-install.sh BUILD_DIR CONSUMER_SOURCE_DIR
set -euo pipefail
build=$(realpath "$1")
consumer=$(realpath "$2")
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cmake --install "$build" --prefix "$scratch/prefix" > "$scratch/install.log"
launcher=()
if command -v ccache > /dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
cmake -S "$consumer" -B "$scratch/build" -DCMAKE_PREFIX_PATH="$scratch/prefix" \
      "${launcher[@]}" > "$scratch/configure.log"
cmake --build "$scratch/build" -j 2 > "$scratch/build.log"
LD_LIBRARY_PATH="$scratch/prefix/lib:${LD_LIBRARY_PATH:-}" "$scratch/build/consumer"
