#!/usr/bin/env bash
# Distributed generation benchmark (docs/BENCHMARKS.md): SmolLM2-135M on loopback.
#
#   scripts/bench-swarm.sh [ROUNDS]        (default 5; THREADS=N per process, default all cores)
#
# Every configuration is started once and measured in interleaved rounds, so that the
# drift of a shared machine falls on all of them alike; the report gives medians over
# the rounds and the median of the per-round ratios.
#   1. decode and prefill at a short and a ~450-token prompt: the whole model in one
#      process, 2- and 3-process chains (ring mode), and the same splits over llama.cpp's
#      RPC backend (scripts/build-llama-rpc.sh) with 1 thread and THREADS threads per server;
#   2. ring vs client-sampled decoding with 10 ms one-way delay on every link
#      (NAK_LINK_DELAY_MS), beside the undelayed chain and the whole model;
#   3. 1, 4 and 8 concurrent sessions through a 2-process chain, aggregate tokens/s.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
THREADS=${THREADS:-$(nproc)}
TOKENS=${TOKENS:-128}
B=target/release/nak-node
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
R=target/llama-rpc/bin
cargo build --release -q -p nak-node
if ! [ "$R/rpc_bench" -nt bench/llama-rpc/rpc_bench.cpp ] || ! [ "$R/rpc_server" -nt bench/llama-rpc/rpc_server.cpp ]; then
  scripts/build-llama-rpc.sh >/dev/null
fi
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
short="The capital of France is"
long=$(python3 -c 'print("The river runs past the old mill and the village sleeps under a quiet sky. " * 27)')
results=$work/results.jsonl

# swarm NAME SPAN...: one `run` server per span, the first the others' bootstrap.
swarm() {
  local name=$1 i=0 dir boot="" id=""
  shift
  for span in "$@"; do
    dir=$work/$name-$i
    if [ $i = 0 ]; then
      $B --data-dir "$dir" run --model $M --serve-layers "$span" --listen /ip4/127.0.0.1/tcp/0 \
        --threads "$THREADS" --announce-interval 2 >"$dir.out" 2>"$dir.log" &
      pids+=($!)
      for _ in $(seq 150); do grep -q '^serving' "$dir.out" 2>/dev/null && break; sleep 0.2; done
      boot=$(sed -n 's/^listening \(.*127.0.0.1.*\)/\1/p' "$dir.out" | head -1)
      id=$(awk '/^serving/ {print $2; exit}' "$dir.out")
    else
      $B --data-dir "$dir" run --model "$id" --serve-layers "$span" --listen /ip4/127.0.0.1/tcp/0 \
        --bootstrap "$boot" --threads "$THREADS" --announce-interval 2 >"$dir.out" 2>"$dir.log" &
      pids+=($!)
    fi
    i=$((i+1))
  done
  for out in "$work/$name"-*.out; do
    for _ in $(seq 150); do grep -q '^serving' "$out" 2>/dev/null && break; sleep 0.2; done
  done
  echo "$boot $id" >"$work/$name.at"
}

# rpc NAME N THREADS: N llama.cpp RPC servers.
rpc() {
  local eps=() port
  for _ in $(seq "$2"); do
    port=$((20000 + RANDOM % 20000))
    $R/rpc_server 127.0.0.1:$port "$3" >/dev/null 2>&1 &
    pids+=($!)
    eps+=(127.0.0.1:$port)
  done
  (IFS=,; echo "${eps[*]}") >"$work/$1.at"
}

# record CONFIG CONTEXT ROUND JSON: one result line.
record() {
  python3 -c 'import json,sys; d=json.loads(sys.argv[4]); d.update(config=sys.argv[1], ctx=sys.argv[2], round=int(sys.argv[3])); print(json.dumps(d))' "$@" >>"$results"
}

# remote NAME ARGS...: generate through swarm NAME.
remote() {
  local at
  read -r -a at <"$work/$1.at"
  shift
  $B generate --bootstrap "${at[0]}" --model "${at[1]}" --json "$@"
}

echo "== starting: chains 0:15/15:30 and 0:10/10:20/20:30 at $THREADS thread(s) per server, llama.cpp RPC servers"
swarm c2 0:15 15:30
swarm c3 0:10 10:20 20:30
rpc_threads=(1)
[ "$THREADS" != 1 ] && rpc_threads+=("$THREADS")
for t in "${rpc_threads[@]}"; do
  rpc r2t$t 2 "$t"
  rpc r3t$t 3 "$t"
done
sleep 3

echo "== 1. decode and prefill, $TOKENS tokens, $ROUNDS interleaved rounds"
for r in $(seq "$ROUNDS"); do
  for ctx in short long; do
    prompt=${!ctx}
    record whole $ctx $r "$($B generate --model $M --prompt "$prompt" --max-tokens "$TOKENS" --threads "$THREADS" --json)"
    record chain2 $ctx $r "$(remote c2 --prompt "$prompt" --max-tokens "$TOKENS")"
    record chain3 $ctx $r "$(remote c3 --prompt "$prompt" --max-tokens "$TOKENS")"
  done
  for t in "${rpc_threads[@]}"; do
    for n in 2 3; do
      i=0
      while read -r line; do
        record "rpc${n}-t$t" "$([ $i = 0 ] && echo short || echo long)" $r "$line"
        i=$((i+1))
      done < <($R/rpc_bench $M "$t" "$(cat "$work/r${n}t$t.at")" "$TOKENS" 1 "$short" "$long")
    done
  done
  echo "round $r done"
done

echo "== 2. 10 ms one-way delay on every link (3-process chain, 1 thread per server, short prompt)"
# One thread per server: three one-core hosts. With two threads each, a server's second
# compute thread sleeps through the idle 10 ms gaps, and waking it on an idle virtual
# CPU of this machine takes milliseconds. The servers log each decode's time (trace),
# which gives the compute time per token.
THREADS=1 NAK_LOG=nak_node::engine=trace NAK_LINK_DELAY_MS=10 swarm d3 0:10 10:20 20:30
THREADS=1 swarm c3t1 0:10 10:20 20:30
sleep 3
for r in $(seq "$ROUNDS"); do
  for mode in ring client; do
    record "delay-$mode" short $r "$(NAK_LINK_DELAY_MS=10 remote d3 --prompt "$short" --max-tokens 64 --mode $mode)"
  done
  record nodelay-ring short $r "$(remote c3t1 --prompt "$short" --max-tokens 64)"
done
for i in 0 1 2; do
  sed 's/\x1b\[[0-9;]*m//g' "$work/d3-$i.log" | sed -n 's/.*decode rows=1 decode_us=\([0-9]*\).*/{"hop":'$i',"decode_us":\1}/p' |
    while read -r line; do record "decode-d3" short 0 "$line"; done
done

echo "== 3. concurrent sessions through a 2-process chain ($TOKENS tokens each), at $THREADS and 1 thread per server"
sets=(c2)
if [ "$THREADS" != 1 ]; then
  THREADS=1 swarm c2t1 0:15 15:30
  sets+=(c2t1)
  sleep 3
fi
for r in $(seq "$ROUNDS"); do
  for set in "${sets[@]}"; do
    for n in 1 4 8; do
      record "$set-parallel-$n" short $r "$(remote $set --prompt "$short" --max-tokens "$TOKENS" --parallel $n)"
    done
  done
done

python3 - "$results" "$THREADS" <<'PY'
import json, statistics, sys, collections
rows = [json.loads(l) for l in open(sys.argv[1])]
by = collections.defaultdict(list)
for r in rows:
    by[(r["config"], r["ctx"])].append(r)
def med(cfg, ctx, field):
    v = [r[field] for r in by[(cfg, ctx)] if field in r]
    return statistics.median(v) if v else float("nan")
def ratio(a, b, ctx, field="decode_tokens_per_s"):
    pa = {r["round"]: r[field] for r in by[(a, ctx)]}
    pb = {r["round"]: r[field] for r in by[(b, ctx)]}
    common = sorted(set(pa) & set(pb))
    return statistics.median(pa[k] / pb[k] for k in common) if common else float("nan")
print(f"\n{'configuration':<28}{'ctx':<7}{'prompt':>7}{'decode tok/s':>14}{'prefill ms':>12}")
order = ["whole", "chain2", "chain3"] + sorted(c for c, _ in by if c.startswith("rpc"))
for cfg in dict.fromkeys(order):
    for ctx in ("short", "long"):
        if by[(cfg, ctx)]:
            print(f"{cfg:<28}{ctx:<7}{med(cfg, ctx, 'prompt_tokens'):>7.0f}{med(cfg, ctx, 'decode_tokens_per_s'):>14.1f}{med(cfg, ctx, 'prefill_ms'):>12.1f}")
rpcs = sorted({c for c, _ in by if c.startswith("rpc")})
print("\nratios of decode tok/s (median of per-round ratios)")
for ctx in ("short", "long"):
    for chain, n in (("chain2", "2"), ("chain3", "3")):
        parts = [f"{chain} / whole = {ratio(chain, 'whole', ctx):.2f}"]
        for rp in rpcs:
            if rp.startswith("rpc" + n):
                parts.append(f"/ {rp} = {ratio(chain, rp, ctx):.2f}")
        print(f"  {ctx:<6}" + "  ".join(parts))
print("\n10 ms one-way delay, 3-process chain at 1 thread per server, short prompt, 64 tokens: ms per token (median)")
ms = {c: 1000 / med(c, "short", "decode_tokens_per_s") for c in ("delay-ring", "delay-client", "nodelay-ring")}
for c, v in ms.items():
    print(f"  {c:<16}{v:8.2f} ms")
hops = collections.defaultdict(list)
for r in by[("decode-d3", "short")]:
    hops[r["hop"]].append(r["decode_us"])
compute = sum(statistics.median(v) for v in hops.values()) / 1000
print(f"  compute per token (sum of the hops' median one-row decode): {compute:.2f} ms")
print(f"  ring: {ms['delay-ring']:.2f} ms against compute + 3 x 10 + 2 = {compute + 32:.2f} ms")
print("\nconcurrent sessions, 2-process chain: aggregate tok/s (median), ratio to one session (median of per-round ratios)")
for s, threads in (("c2", sys.argv[2]), ("c2t1", "1")):
    for n in (1, 4, 8):
        c = f"{s}-parallel-{n}"
        if by[(c, "short")]:
            agg = med(c, "short", "aggregate_tokens_per_s")
            print(f"  {threads} thread(s) per server, {n} session(s): {agg:7.1f} tok/s  {ratio(c, f'{s}-parallel-1', 'short', 'aggregate_tokens_per_s'):.2f}x")
PY
