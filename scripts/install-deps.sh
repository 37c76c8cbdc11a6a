#!/usr/bin/env bash
# Installs every Debian package that modelreg's build, tests, benchmarks and
# demo need. Idempotent: packages already present are skipped, and apt-get is
# not touched at all when nothing is missing.
set -euo pipefail

packages=(
  build-essential cmake make pkg-config ccache
  libcaf-dev libssl-dev openssl
  libspdlog-dev libfmt-dev libcli11-dev
  libgtest-dev googletest
  nlohmann-json3-dev
  capnproto libcapnp-dev
  libuv1-dev
  libdlpack-dev
  clang libclang-rt-14-dev
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libpocketsphinx-dev pocketsphinx-en-us pocketsphinx-testdata espeak-ng sox
  flite1-dev
  python3-dev pybind11-dev python3-numpy python3-pytest python3-torch
  python3-pip python3-setuptools python3-wheel python3-venv
  libmicrohttpd-dev libgnutls28-dev libsystemd-dev curl prometheus python3-grpcio python3-grpc-tools
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
