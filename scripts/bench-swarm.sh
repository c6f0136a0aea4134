#!/usr/bin/env bash
# Distributed generation benchmark (docs/BENCHMARKS.md): SmolLM2-135M on loopback, one CPU
# thread per server, medians of REPS runs (default 3). Compares
#   - the whole model in one process with 2- and 3-process chains (ring mode), at a short
#     and a ~450-token prompt, decode and prefill;
#   - the same splits over llama.cpp's RPC backend (scripts/build-llama-rpc.sh);
#   - ring vs client-sampled decoding with 10 ms one-way delay on every link (NAK_LINK_DELAY_MS);
#   - 1, 4 and 8 concurrent sessions through a 2-process chain.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-3}
B=target/release/nak-node
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
R=target/llama-rpc/bin
cargo build --release -q -p nak-node
[ -x $R/rpc_bench ] || scripts/build-llama-rpc.sh >/dev/null
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
short="The capital of France is"
long=$(python3 -c 'print("The river runs past the old mill and the village sleeps under a quiet sky. " * 28)')

stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }

# swarm SPAN... : starts one server per span; sets $boot and $id.
swarm() {
  stop_all
  local i=0 dir
  for span in "$@"; do
    dir=$work/s$RANDOM$i
    if [ $i = 0 ]; then
      $B --data-dir "$dir" run --model $M --serve-layers "$span" --listen /ip4/127.0.0.1/tcp/0 --threads 1 --announce-interval 2 >"$dir.out" 2>"$dir.log" &
      pids+=($!)
      for _ in $(seq 100); do grep -q '^serving' "$dir.out" 2>/dev/null && break; sleep 0.2; done
      boot=$(sed -n 's/^listening \(.*127.0.0.1.*\)/\1/p' "$dir.out" | head -1)
      id=$(awk '/^serving/ {print $2; exit}' "$dir.out")
    else
      $B --data-dir "$dir" run --model "$id" --serve-layers "$span" --listen /ip4/127.0.0.1/tcp/0 --bootstrap "$boot" --threads 1 --announce-interval 2 >"$dir.out" 2>"$dir.log" &
      pids+=($!)
      for _ in $(seq 150); do grep -q '^serving' "$dir.out" 2>/dev/null && break; sleep 0.2; done
    fi
    i=$((i+1))
  done
  sleep 3
}

# median FIELD JSON-LINES...
median() { python3 -c 'import json,sys,statistics; f=sys.argv[1]; print(round(statistics.median(json.loads(l)[f] for l in sys.stdin if l.strip()),1))' "$1"; }

run_reps() { for _ in $(seq "$REPS"); do "$@"; done; }

report() { # label, generator command...
  local label=$1; shift
  local out; out=$(run_reps "$@")
  printf '%-34s decode %7s tok/s  prefill %8s ms\n' "$label" "$(echo "$out" | median decode_tokens_per_s)" "$(echo "$out" | median prefill_ms)"
}

echo "== whole model vs chains (ring mode), 64 tokens, 1 thread per process"
for ctx in short long; do
  prompt=${!ctx}
  report "whole, 1 process, $ctx" $B generate --model $M --prompt "$prompt" --max-tokens 64 --threads 1 --json
done
for spans in "0:15 15:30" "0:10 10:20 20:30"; do
  swarm $spans
  n=$(echo $spans | wc -w)
  for ctx in short long; do
    prompt=${!ctx}
    report "chain, $n processes, $ctx" $B generate --bootstrap "$boot" --model "$id" --prompt "$prompt" --max-tokens 64 --json
  done
done
stop_all

echo "== llama.cpp RPC split (rpc_server per part, 1 thread each), 64 tokens"
for n in 2 3; do
  eps=()
  for k in $(seq $n); do
    port=$((52000 + RANDOM % 5000))
    $R/rpc_server 127.0.0.1:$port 1 >/dev/null 2>&1 &
    pids+=($!)
    eps+=(127.0.0.1:$port)
  done
  sleep 1
  $R/rpc_bench $M 1 "$(IFS=,; echo "${eps[*]}")" 8,450 64 "$REPS"
  stop_all
done

echo "== 10 ms one-way delay on every link, 3 processes, short prompt, 64 tokens"
export NAK_LINK_DELAY_MS=10
swarm 0:10 10:20 20:30
for mode in ring client; do
  out=$(run_reps $B generate --bootstrap "$boot" --model "$id" --prompt "$short" --max-tokens 64 --mode $mode --json)
  tps=$(echo "$out" | median decode_tokens_per_s)
  echo "$mode mode: decode $tps tok/s = $(python3 -c "print(round(1000/$tps, 1))") ms per token"
done
unset NAK_LINK_DELAY_MS
stop_all

echo "== concurrent sessions through a 2-process chain (0:15, 15:30), 64 tokens each"
swarm 0:15 15:30
for n in 1 4 8; do
  out=$(run_reps $B generate --bootstrap "$boot" --model "$id" --prompt "$short" --max-tokens 64 --parallel $n --json)
  echo "$n session(s): aggregate $(echo "$out" | median aggregate_tokens_per_s) tok/s"
done
