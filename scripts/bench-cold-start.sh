#!/usr/bin/env bash
# Cold start (docs/BENCHMARKS.md): three `run` servers of SmolLM2-135M started with
# default options (layers 0:10, 10:20, 20:30; the default 10 s announcement interval),
# then RUNS times each, from process start to exit, every client a new user (fresh data
# dir): `generate --max-tokens 4` and `status --json`. Prints each wall time, the
# medians, the median of `generate`'s own `discovery_ms`, and the servers `status` saw.
#
#   scripts/bench-cold-start.sh [RUNS]     (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
B=target/release/nak-node
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
cargo build --release -q -p nak-node
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
wait_for() { for _ in $(seq 600); do grep -q "^$1" "$2" 2>/dev/null && return 0; sleep 0.2; done; echo "no '$1' in $2" >&2; exit 1; }
$B --data-dir "$work/a" run --model $M --serve-layers 0:10 >"$work/a.out" 2>"$work/a.log" &
pids+=($!)
wait_for serving "$work/a.out"
boot=$(sed -n 's/^listening \(\/ip4\/127.0.0.1\/tcp.*\)/\1/p' "$work/a.out" | head -1)
id=$(awk '/^serving/ {print $2; exit}' "$work/a.out")
for part in b:10:20 c:20:30; do
  $B --data-dir "$work/${part%%:*}" run --model "$id" --serve-layers "${part#*:}" --bootstrap "$boot" \
    >"$work/${part%%:*}.out" 2>"$work/${part%%:*}.log" &
  pids+=($!)
done
wait_for serving "$work/b.out"
wait_for serving "$work/c.out"
sleep 2
# timed NAME ARGS...: runs nak-node ARGS as a new user; prints "NAME SECONDS DISCOVERY_MS SERVERS".
timed() {
  local name=$1; shift
  local d; d=$(mktemp -d -p "$work")
  local t0 t1 out
  t0=$(date +%s.%N)
  out=$($B --data-dir "$d" "$@")
  t1=$(date +%s.%N)
  local disc
  disc=$(echo "$out" | python3 -c 'import json,sys
d = json.load(sys.stdin)
print(d.get("discovery_ms"), d["models"][0]["servers"] if d.get("models") else len(d["route"]))')
  echo "$name $(python3 -c "print(f'{$t1 - $t0:.3f}')") $disc"
}
for r in $(seq "$RUNS"); do
  timed generate generate --bootstrap "$boot" --model "$id" --prompt "The capital of France is" --max-tokens 4 --json
  timed status status --bootstrap "$boot" --json
done | tee "$work/times" >&2
python3 - "$work/times" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for name in ("generate", "status"):
    wall = [float(r[1]) for r in rows if r[0] == name]
    disc = [float(r[2]) for r in rows if r[0] == name and r[2] != "None"]
    seen = sorted({int(r[3]) for r in rows if r[0] == name})
    extra = f", discovery_ms median {statistics.median(disc):.0f}" if disc else ""
    extra += f", servers seen {seen}"
    print(f"{name}: wall median {statistics.median(wall):.2f} s over {len(wall)} runs "
          f"(min {min(wall):.2f}, max {max(wall):.2f}){extra}")
PY
