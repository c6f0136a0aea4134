#!/usr/bin/env bash
# Receipts overhead (docs/BENCHMARKS.md): decode through a 3-process chain of SmolLM2-135M
# on loopback (layers 0:10, 10:20, 20:30), with and without `--verify` (receipts only:
# `--audit-rate 0`), in interleaved rounds whose order alternates (off first in odd
# rounds, on first in even ones); prints each round's rates and the medians and ratios.
#
#   scripts/bench-receipts.sh [ROUNDS]     (default 7; THREADS per server, default 1; TOKENS, default 128)
#   SAME=1 scripts/bench-receipts.sh ...   both sides without receipts: the method's noise floor
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-7}
THREADS=${THREADS:-1}
TOKENS=${TOKENS:-128}
B=target/release/nak-node
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
cargo build --release -q -p nak-node
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
wait_for() { for _ in $(seq 300); do grep -q "^$1" "$2" 2>/dev/null && return 0; sleep 0.2; done; echo "no '$1' in $2" >&2; exit 1; }
$B --data-dir "$work/a" run --model $M --serve-layers 0:10 --listen /ip4/127.0.0.1/tcp/0 --threads "$THREADS" \
  --announce-interval 2 >"$work/a.out" 2>"$work/a.log" &
pids+=($!)
wait_for serving "$work/a.out"
boot=$(sed -n 's/^listening \(.*127.0.0.1.*\)/\1/p' "$work/a.out" | head -1)
id=$(awk '/^serving/ {print $2; exit}' "$work/a.out")
for part in b:10:20 c:20:30; do
  $B --data-dir "$work/${part%%:*}" run --model "$id" --serve-layers "${part#*:}" --listen /ip4/127.0.0.1/tcp/0 \
    --bootstrap "$boot" --threads "$THREADS" --announce-interval 2 >"$work/${part%%:*}.out" 2>"$work/${part%%:*}.log" &
  pids+=($!)
done
wait_for serving "$work/b.out"
wait_for serving "$work/c.out"
prompt="Once upon a time, in a small village by the sea, there lived an old fisherman who"
rate() { $B generate --bootstrap "$boot" --model "$id" --prompt "$prompt" --max-tokens "$TOKENS" --json "$@" |
  python3 -c 'import json,sys; d=json.load(sys.stdin); v=d.get("verification") or {}; print(d["decode_tokens_per_s"], len(d["tokens"]), len(v.get("problems", [])))'; }
rate >/dev/null # warm-up
verify=(--verify --audit-rate 0)
[ -z "${SAME:-}" ] || verify=()
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then
    off=$(rate); on=$(rate "${verify[@]}")
  else
    on=$(rate "${verify[@]}"); off=$(rate)
  fi
  echo "round $r off $off on $on"
done | tee "$work/rounds"
python3 - "$work/rounds" <<'PY'
import statistics, sys
off, on = [], []
for line in open(sys.argv[1]):
    w = line.split()
    off.append(float(w[3])); on.append(float(w[7]))
    assert w[9] == "0", "a receipt check failed: " + line
print(f"decode tok/s, median of {len(off)}: receipts off {statistics.median(off):.1f}, on {statistics.median(on):.1f}, "
      f"ratio {statistics.median(on) / statistics.median(off):.3f} (median of per-round ratios "
      f"{statistics.median(b / a for a, b in zip(off, on)):.3f}, mean {statistics.mean(b / a for a, b in zip(off, on)):.3f})")
PY
