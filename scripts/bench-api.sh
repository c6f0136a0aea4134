#!/usr/bin/env bash
# The API's cost (docs/BENCHMARKS.md): three `run` servers of SmolLM2-135M on loopback
# (layers 0:10, 10:20, 20:30, one thread each) and `nak-node api` joined to them; then
# ROUNDS interleaved rounds of the same greedy request (PROMPT, 64 tokens):
#   - `generate --json` through the swarm (a new process each time): its own time to the
#     first token (`prefill_ms`, from the session's open route) and decode tok/s;
#   - a streamed `/v1/completions` over HTTP, timed by the caller: from sending the
#     request to the first text chunk (a new session: route, open on every hop, prefill)
#     and decode tok/s between the first and the last chunk; beside it the API's own
#     `timings` (the same figures `generate` reports, from the usage chunk).
# Prints each round and the medians.
#
#   scripts/bench-api.sh [ROUNDS]     (default 7)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-7}
B=target/release/nak-node
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
PROMPT="Once upon a time, in a small village by the sea,"
cargo build --release -q -p nak-node
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
wait_for() { for _ in $(seq 600); do grep -q "^$1" "$2" 2>/dev/null && return 0; sleep 0.2; done; echo "no '$1' in $2" >&2; exit 1; }
export NAKSHATRA_NO_MDNS=1
$B --data-dir "$work/a" run --model $M --serve-layers 0:10 --threads 1 --listen /ip4/127.0.0.1/tcp/0 \
  >"$work/a.out" 2>"$work/a.log" &
pids+=($!)
wait_for serving "$work/a.out"
boot=$(sed -n 's/^listening \(\/ip4\/127.0.0.1\/tcp.*\)/\1/p' "$work/a.out" | head -1)
id=$(awk '/^serving/ {print $2; exit}' "$work/a.out")
for part in b:10:20 c:20:30; do
  $B --data-dir "$work/${part%%:*}" run --model "$id" --serve-layers "${part#*:}" --bootstrap "$boot" --threads 1 \
    --listen /ip4/127.0.0.1/tcp/0 >"$work/${part%%:*}.out" 2>"$work/${part%%:*}.log" &
  pids+=($!)
done
wait_for serving "$work/b.out"
wait_for serving "$work/c.out"
$B --data-dir "$work/api" api --model "$id" --bootstrap "$boot" --listen 127.0.0.1:0 >"$work/api.out" 2>"$work/api.log" &
pids+=($!)
wait_for api "$work/api.out"
url=$(awk '/^api/ {print $2; exit}' "$work/api.out")
for _ in $(seq 100); do curl -sf "$url/health" >/dev/null && break; sleep 0.2; done
for r in $(seq "$ROUNDS"); do
  $B --data-dir "$work/client" generate --bootstrap "$boot" --model "$id" --prompt "$PROMPT" --max-tokens 64 --json |
    python3 -c 'import json,sys; d = json.load(sys.stdin); print("generate", d["prefill_ms"], d["decode_tokens_per_s"], len(d["tokens"]))'
  python3 - "$url" "$id" "$PROMPT" <<'PY'
import http.client, json, sys, time, urllib.parse
url, model, prompt = sys.argv[1:4]
u = urllib.parse.urlparse(url)
conn = http.client.HTTPConnection(u.hostname, u.port)
body = json.dumps({"model": model, "prompt": prompt, "max_tokens": 64, "temperature": 0, "stream": True,
                   "stream_options": {"include_usage": True}})
t0 = time.perf_counter()
conn.request("POST", "/v1/completions", body, {"content-type": "application/json"})
resp = conn.getresponse()
first = last = None
usage = timings = None
for line in resp:
    line = line.decode().strip()
    if not line.startswith("data: ") or line == "data: [DONE]":
        continue
    chunk = json.loads(line[6:])
    if chunk["choices"] and chunk["choices"][0]["text"]:
        last = time.perf_counter()
        first = first or last
    if chunk.get("usage"):
        usage, timings = chunk["usage"], chunk["timings"]
n = usage["completion_tokens"]
print("api", (first - t0) * 1e3, (n - 1) / (last - first), n, timings["prompt_ms"], timings["predicted_per_second"])
PY
done | tee "$work/rounds" >&2
python3 - "$work/rounds" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = lambda name, i: statistics.median(float(r[i]) for r in rows if r[0] == name)
g_ttft, g_tps = med("generate", 1), med("generate", 2)
a_ttft, a_tps, a_own_ttft, a_own_tps = med("api", 1), med("api", 2), med("api", 4), med("api", 5)
print(f"generate: first token {g_ttft:.1f} ms, decode {g_tps:.1f} tok/s (medians of {len(rows) // 2} rounds)")
print(f"api, as its HTTP client saw it: first token {a_ttft:.1f} ms, decode {a_tps:.1f} tok/s")
print(f"api, its own timings: prompt {a_own_ttft:.1f} ms, decode {a_own_tps:.1f} tok/s")
print(f"api / generate: decode {a_tps / g_tps:.3f}, first token {a_ttft / g_ttft:.2f}x")
PY
