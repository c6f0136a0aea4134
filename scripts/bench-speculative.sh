#!/usr/bin/env bash
# Speculative decoding benchmark (docs/BENCHMARKS.md): SmolLM2-135M on a 3-process chain
# (0:10, 10:20, 20:30, one thread per server: three one-core hosts) with 10 ms one-way delay on every link
# (NAK_LINK_DELAY_MS=10 in every process, the client's included).
#
#   scripts/bench-speculative.sh [ROUNDS]     (default 5; TOKENS=N per generation, default 128;
#                                              MODEL=M.gguf SPANS="0:8 8:16 16:24" for another model;
#                                              LOADS="copy free" for some of the workloads;
#                                              SOURCES="lookup draft" DRAFT=D.gguf for a draft model too)
#
# Workloads, as chat turns: copying a paragraph, renaming a variable in a code snippet,
# adding a docstring to it (answers that repeat the prompt, more or less faithfully),
# and free text. For each, ring and client-sampled decoding without drafts and with each draft
# source of SOURCES: prompt lookup (--speculative lookup), a draft model (--speculative draft:
# DRAFT, served by every server for ring mode and run by the client in client mode), greedy,
# in interleaved rounds. The report gives median
# decode tok/s, the median of the per-round ratios to the same mode without drafts, and
# the median tokens per trip and acceptance; it checks that drafted tokens equal plain ones.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
TOKENS=${TOKENS:-128}
B=target/release/nak-node
M=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
SPANS=${SPANS:-0:10 10:20 20:30}
SOURCES=${SOURCES:-lookup}
DRAFT=${DRAFT:-}
serve_draft=()
[ -n "$DRAFT" ] && serve_draft=(--draft-model "$DRAFT")
cargo build --release -q -p nak-node
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
export NAK_LINK_DELAY_MS=10
# chat PROMPT: a user turn in the model's chat format (ChatML: SmolLM2 and Qwen2.5).
chat() { printf '<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n' "$1"; }
snippet='def summarize(values):
    total = 0
    count = 0
    for value in values:
        if value is None:
            continue
        total += value
        count += 1
    if count == 0:
        return 0
    return total / count'
copy=$(chat "Copy this text exactly, word for word: The old lighthouse stood on the edge of the cliff, its white paint peeling in the salt wind. Every night the keeper climbed the hundred and twelve steps to light the lamp, and every morning he climbed down again to make his tea.")
rename=$(chat "Rename the variable total to acc in this code and print the whole new code:

$snippet")
docstring=$(chat "Add a docstring to this function and print the whole function:

$snippet")
free=$(chat "Write a short story about a lighthouse keeper who finds a message in a bottle.")
LOADS=${LOADS:-copy rename docstring free}
results=$work/results.jsonl

i=0
for span in $SPANS; do
  dir=$work/s$i
  if [ $i = 0 ]; then
    $B --data-dir "$dir" run --model $M --serve-layers $span --listen /ip4/127.0.0.1/tcp/0 --threads 1 \
      --announce-interval 2 "${serve_draft[@]}" >"$dir.out" 2>"$dir.log" &
    pids+=($!)
    for _ in $(seq 150); do grep -q '^serving' "$dir.out" 2>/dev/null && break; sleep 0.2; done
    boot=$(sed -n 's/^listening \(.*127.0.0.1.*\)/\1/p' "$dir.out" | head -1)
    id=$(awk '/^serving/ {print $2; exit}' "$dir.out")
  else
    $B --data-dir "$dir" run --model "$id" --serve-layers $span --listen /ip4/127.0.0.1/tcp/0 --bootstrap "$boot" \
      --threads 1 --announce-interval 2 "${serve_draft[@]}" >"$dir.out" 2>"$dir.log" &
    pids+=($!)
  fi
  i=$((i+1))
done
for out in "$work"/s*.out; do
  for _ in $(seq 300); do grep -q '^serving' "$out" 2>/dev/null && break; sleep 0.2; done
done
sleep 3

echo "== $ROUNDS interleaved rounds, $TOKENS tokens, 10 ms links, 3 hops"
for r in $(seq "$ROUNDS"); do
  for load in $LOADS; do
    prompt=${!load}
    for mode in ring client; do
      for spec in plain $SOURCES; do
        extra=()
        [ $spec != plain ] && extra=(--speculative $spec)
        [ $spec = draft ] && [ $mode = client ] && extra+=(--draft-model "$DRAFT")
        out=$($B generate --bootstrap "$boot" --model "$id" --prompt "$prompt" --max-tokens "$TOKENS" --mode $mode \
          --json "${extra[@]}")
        python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(load=sys.argv[2], mode=sys.argv[3], spec=sys.argv[4], round=int(sys.argv[5])); print(json.dumps(d))' \
          "$out" $load $mode $spec "$r" >>"$results"
      done
    done
  done
  echo "round $r done"
done

python3 - "$results" "$SOURCES" <<'PY'
import json, statistics, sys, collections
rows = [json.loads(l) for l in open(sys.argv[1])]
sources = ["plain"] + sys.argv[2].split()
by = collections.defaultdict(dict)
for r in rows:
    by[(r["load"], r["mode"], r["spec"])][r["round"]] = r
med = statistics.median
print(f"\n{'workload':<9}{'mode':<8}{'drafts':<8}{'tok/s':>8}{'ratio':>8}{'tok/trip':>10}{'accept':>8}  same tokens")
for load in dict.fromkeys(r["load"] for r in rows):
    for mode in ("ring", "client"):
        plain = by[(load, mode, "plain")]
        for spec in sources:
            runs = by[(load, mode, spec)]
            tps = med(r["decode_tokens_per_s"] for r in runs.values())
            ratio = med(runs[k]["decode_tokens_per_s"] / max(plain[k]["decode_tokens_per_s"], 1e-9) for k in runs if k in plain)
            s = [r.get("speculation") for r in runs.values()]
            trip = med(x["tokens_per_trip"] for x in s) if all(s) else 1.0
            acc = f"{med(x['acceptance'] for x in s):.2f}" if all(s) else "-"
            same = all(runs[k]["tokens"] == plain[k]["tokens"] for k in runs if k in plain)
            print(f"{load:<9}{mode:<8}{spec:<8}{tps:>8.1f}{ratio:>8.2f}{trip:>10.2f}{acc:>8}  {same}")
PY
