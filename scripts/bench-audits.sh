#!/usr/bin/env bash
# Audits and fraud proofs (docs/BENCHMARKS.md), on a 3-process chain of SmolLM2-135M on
# loopback (layers 0:10, 10:20, 20:30):
#
#   honest      SESSIONS (default 504) honest sessions audited at rate 1, 8 at a time
#               (batched on every server), servers on 1 or 2 threads and the auditor on
#               2: counts proofs (must be 0) and the audit cost per audited token;
#   modes       the middle server corrupts 1 % of its steps, in each fault mode; sessions
#               audited at rate 1 until it is convicted: whether the first session with a
#               corrupted step is the one that convicts it;
#   conviction  the same at the default audit rate, TRIALS (default 5) times: sessions
#               until conviction, beside the formula's expectation.
#
#   scripts/bench-audits.sh [honest|modes|conviction ...]   (default: all three; TOKENS per session, default 24)
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS=${SESSIONS:-504}
TRIALS=${TRIALS:-5}
TOKENS=${TOKENS:-24}
B=target/release/nak-node
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
cargo build --release -q -p nak-node
work=$(mktemp -d)
pids=()
stop_swarm() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap 'stop_swarm; rm -rf "$work"' EXIT
wait_for() { for _ in $(seq 300); do grep -q "^$1" "$2" 2>/dev/null && return 0; sleep 0.2; done; echo "no '$1' in $2" >&2; exit 1; }

# start_swarm DIR THREADS_B FAULT_RATE FAULT_MODE: the middle server (b) may be faulty.
start_swarm() {
  local d=$1
  rm -rf "$d"; mkdir -p "$d"
  $B --data-dir "$d/a" run --model $M --serve-layers 0:10 --listen /ip4/127.0.0.1/tcp/0 --threads 1 \
    --announce-interval 1 >"$d/a.out" 2>"$d/a.log" &
  pids+=($!)
  wait_for serving "$d/a.out"
  boot=$(sed -n 's/^listening \(.*127.0.0.1.*\)/\1/p' "$d/a.out" | head -1)
  id=$(awk '/^serving/ {print $2; exit}' "$d/a.out")
  NAK_FAULT_CORRUPT=$3 NAK_FAULT_MODE=$4 $B --data-dir "$d/b" run --model "$id" --serve-layers 10:20 \
    --listen /ip4/127.0.0.1/tcp/0 --bootstrap "$boot" --threads "$2" --announce-interval 1 >"$d/b.out" 2>"$d/b.log" &
  pids+=($!)
  $B --data-dir "$d/c" run --model "$id" --serve-layers 20:30 --listen /ip4/127.0.0.1/tcp/0 --bootstrap "$boot" \
    --threads 1 --announce-interval 1 >"$d/c.out" 2>"$d/c.log" &
  pids+=($!)
  wait_for serving "$d/b.out"
  wait_for serving "$d/c.out"
}

prompt() { echo "Story $RANDOM: once upon a time, in a village by the sea number $RANDOM, there lived"; }
# gen DATA_DIR ARGS...: one generation through the swarm, JSON on stdout.
gen() { local data=$1; shift; $B --data-dir "$data" generate --bootstrap "$boot" --model "$id" --prompt "$(prompt)" \
  --max-tokens "$TOKENS" --threads 2 --json "$@"; }

honest() {
  start_swarm "$work/honest" 2 0 bitflip
  local runs=$(( (SESSIONS + 7) / 8 ))
  for r in $(seq "$runs"); do
    gen "$work/honest/client" --verify --audit-rate 1 --parallel 8
  done | python3 -c '
import json, statistics, sys
sessions = audited = frauds = tokens = 0; ms = []; decode = []
for line in sys.stdin:
    d = json.loads(line)
    for v, toks, rate in zip(d["verification"], d["session_tokens"], d["decode_tokens_per_s"]):
        sessions += 1; audited += v["sessions_audited"]; frauds += len(v["frauds"])
        tokens += len(toks); decode.append(rate)
        if v["sessions_audited"]:
            ms.append(v["audit_ms"] / (v["sessions_audited"] * len(toks)))
print(f"honest: {sessions} sessions (8 at a time), {audited} hop sessions audited, {frauds} proofs; "
      f"audit cost median {statistics.median(ms):.2f} ms per audited hop-token "
      f"(decode median {statistics.median(decode):.1f} tok/s per session while 8 ran)")
assert frauds == 0, "a proof against an honest server"
'
  stop_swarm
}

# until_convicted DIR AUDIT_ARGS...: sessions until the liar is convicted; prints
# "N FIRST" where FIRST is the session whose steps the liar first corrupted.
until_convicted() {
  local d=$1; shift
  local n=0 first=0
  # Faults the liar injected into its own speed probe at start are not a session's.
  local base
  base=$(grep -c "fault injection" "$d/b.log" || true)
  while :; do
    n=$((n + 1))
    local out frauds
    out=$(gen "$d/client-$n" --verify "$@")
    if [ "$first" = 0 ] && [ "$(grep -c "fault injection" "$d/b.log" || true)" -gt "$base" ]; then first=$n; fi
    frauds=$(echo "$out" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["verification"]["frauds"]))')
    if [ "$frauds" != 0 ]; then echo "$n $first"; return; fi
    [ "$n" -lt 400 ] || { echo "$n $first (not convicted)"; return; }
  done
}

modes() {
  for mode in bitflip noise zero skip-layer; do
    start_swarm "$work/$mode" 1 0.01 "$mode"
    read -r n first < <(until_convicted "$work/$mode" --audit-rate 1)
    echo "mode $mode, 1 % of steps corrupted, audit rate 1: convicted by session $n; first corrupted session $first"
    stop_swarm
  done
}

conviction() {
  local results=()
  for t in $(seq "$TRIALS"); do
    start_swarm "$work/trial" 1 0.01 bitflip
    read -r n _ < <(until_convicted "$work/trial")
    echo "trial $t: convicted after $n sessions"
    results+=("$n")
    stop_swarm
  done
  python3 - "$TOKENS" "${results[@]}" <<'PY'
import statistics, sys
tokens, runs = int(sys.argv[1]), [int(x) for x in sys.argv[2:]]
# Each session: the liar computes one step per token (the prompt is one step); each step
# corrupted with 0.01; a fresh client audits a peer it has not audited clean 3 times at
# 4 x 0.05 = 0.2.
p_bad = 1 - 0.99 ** tokens
p = 0.2 * p_bad
print(f"conviction at 1 % corruption, default audit rate (0.05, 0.2 for a new peer): sessions until conviction "
      f"median {statistics.median(runs)}, mean {statistics.mean(runs):.1f} over {len(runs)} trials {runs}; "
      f"expected 1/(0.2 x (1 - 0.99^{tokens})) = {1 / p:.1f}")
PY
}

for part in "${@:-honest modes conviction}"; do
  for p in $part; do "$p"; done
done
