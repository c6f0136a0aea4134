#!/usr/bin/env bash
# A swarm on this machine: three `nak-node run` servers on loopback holding layers 0:10,
# 10:20 and 20:30 of SmolLM2-135M (the second and third fetch their layers from the
# first), then a client that knows only the first server's address generates through
# them. Usage: scripts/local-swarm.sh [PROMPT] [generate options...]
set -euo pipefail
cd "$(dirname "$0")/.."
prompt=${1:-"The capital of France is"}
shift || true
cargo build --release -q -p nak-node
B=target/release/nak-node
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
wait_for() { for _ in $(seq 300); do grep -q "^$1" "$2" 2>/dev/null && return 0; sleep 0.2; done; echo "no '$1' in $2:" >&2; tail "${2%.out}.log" >&2; exit 1; }
$B --data-dir "$work/a" run --model $M --serve-layers 0:10 --listen /ip4/127.0.0.1/tcp/0 --announce-interval 2 >"$work/a.out" 2>"$work/a.log" &
pids+=($!)
wait_for serving "$work/a.out"
boot=$(sed -n 's/^listening \(.*127.0.0.1.*\)/\1/p' "$work/a.out" | head -1)
id=$(awk '/^serving/ {print $2; exit}' "$work/a.out")
for part in b:10:20 c:20:30; do
  name=${part%%:*}
  $B --data-dir "$work/$name" run --model "$id" --serve-layers "${part#*:}" --listen /ip4/127.0.0.1/tcp/0 --bootstrap "$boot" --announce-interval 2 >"$work/$name.out" 2>"$work/$name.log" &
  pids+=($!)
done
wait_for serving "$work/b.out"
wait_for serving "$work/c.out"
cat "$work"/*.out | grep '^serving'
$B generate --bootstrap "$boot" --model "$id" --prompt "$prompt" --max-tokens 48 "$@"
