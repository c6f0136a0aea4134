#!/usr/bin/env bash
# Builds the llama.cpp RPC baseline for `docs/BENCHMARKS.md`: llama.cpp and ggml with
# GGML_RPC=ON (CPU) from the same pinned source the engine links, plus the two small
# programs in bench/llama-rpc (an RPC server, and a decode benchmark that splits the
# model's layers over RPC servers). The crate ships llama.cpp without its tools, which
# is why those two programs are ours. Output: ${1:-target/llama-rpc}/bin.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(realpath -m "${1:-target/llama-rpc}")"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' llama-patches/Cargo.toml | head -1)
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/llama-cpp-sys-2-"$version"/llama.cpp | head -1)
[ -d "$src" ] || { echo "llama.cpp source of llama-cpp-sys-2 $version not found; run cargo build first" >&2; exit 1; }
cmake -S "$src" -B "$out/build" -DCMAKE_BUILD_TYPE=Release -DGGML_RPC=ON -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_MTMD=OFF >/dev/null
cmake --build "$out/build" --target llama ggml-rpc -j "$(nproc)"
mkdir -p "$out/bin"
libs=$(find "$out/build" -name '*.a' | sort -r | tr '\n' ' ')
for prog in rpc_server rpc_bench; do
  g++ -O2 -std=c++17 -I"$src/include" -I"$src/ggml/include" bench/llama-rpc/$prog.cpp \
    -Wl,--start-group $libs -Wl,--end-group -fopenmp -lpthread -o "$out/bin/$prog"
done
echo "built: $out/bin/rpc_server $out/bin/rpc_bench"
