#!/usr/bin/env bash
# The `churn` scenario of nak-sim with real processes on real sockets, to cross-check the
# in-process figures: SERVERS `nak-node run --serve-layers auto` servers and CLIENTS
# clients, each in a network namespace of its own on one bridge, every node delaying what
# it receives by DELAY_MS (NAK_LINK_DELAY_MS; two nodes are 2×DELAY_MS apart, a round
# trip, whatever qdiscs the kernel has). The first server imports the test model, the
# others fetch their spans from the swarm. Once every server serves, the clients generate
# greedily the same prompt back to back while, every CHURN_S seconds, a server is killed
# (-9), stopped (SIGTERM) or cut off silently (its link down) by turns and a new one
# joins. Prints the time until every server serves and their spans, sessions completed
# of started, and how many completed sessions' tokens equal the whole model's in one
# llama.cpp process. Root only (ip netns).
#
# Usage: scripts/netns-swarm.sh [SERVERS=12] [CLIENTS=2] [DELAY_MS=40] [ROUNDS=4] [CHURN_S=20]
# Each server runs llama.cpp on one thread; a few dozen need as many cores.
set -euo pipefail
cd "$(dirname "$0")/.."
servers=${1:-12} clients=${2:-2} delay=${3:-40} rounds=${4:-4} churn_s=${5:-20}
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
cargo build --release -q -p nak-node
B=$PWD/target/release/nak-node
M=$PWD/models/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$M" ] || bash scripts/setup.sh
# 40 % of the model per server: the token embedding (also the output head) is about a
# third of it, so a span at either end holds a few layers and one in the middle about 16
# of the 30 (a budget under the embedding's size would leave the ends unserved).
budget=$(( $(stat -c %s "$M") * 2 / 5 ))
prompt="The history of the printing press"
work=$(mktemp -d)
br=nakbr$$
made=()
cleanup() {
  pkill -f "$work" 2>/dev/null || true
  for ns in "${made[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  ip link del "$br" 2>/dev/null || true
  # KEEP=DIR keeps every node's output and log there.
  if [ -n "${KEEP:-}" ]; then rm -rf "$KEEP" && cp -r "$work" "$KEEP"; fi
  rm -rf "$work"
}
trap cleanup EXIT
ip link add "$br" type bridge && ip link set "$br" up

# Node i: namespace nak$$-i, address 10.77.x.y.
addr_of() { echo "10.77.$(( $1 / 200 )).$(( $1 % 200 + 2 ))"; }
make_ns() {
  local i=$1 ns="nak$$-$1" v="nv$$-$1"
  ip netns add "$ns" && made+=("$ns")
  ip link add "$v" type veth peer name eth0 netns "$ns"
  ip link set "$v" master "$br" up
  ip netns exec "$ns" ip addr add "$(addr_of "$i")/16" dev eth0
  ip netns exec "$ns" ip link set eth0 up
  ip netns exec "$ns" ip link set lo up
}
in_ns() { local i=$1; shift; ip netns exec "nak$$-$i" env NAK_LINK_DELAY_MS="$delay" "$@"; }
wait_for() { for _ in $(seq 600); do grep -q "^$1" "$2" 2>/dev/null && return 0; sleep 0.5; done; echo "no '$1' in $2" >&2; tail -5 "${2%.out}.log" >&2; return 1; }

declare -A pid
start_server() {
  local i=$1 model=$2 join=${3:-}
  make_ns "$i"
  in_ns "$i" "$B" --data-dir "$work/$i" run --model "$model" --serve-layers auto --max-memory "$budget" \
    --threads 1 --listen "/ip4/$(addr_of "$i")/tcp/4001" --no-mdns ${join:+--bootstrap "$join"} \
    --announce-interval 5 --rebalance-interval 30 >"$work/$i.out" 2>"$work/$i.log" &
  pid[$i]=$!
}

t0=$(date +%s.%N)
start_server 1 "$M"
wait_for serving "$work/1.out"
boot=$(sed -n "s#^listening \(/ip4/$(addr_of 1)/.*\)#\1#p" "$work/1.out" | head -1)
id=$(awk '/^serving/ {print $2; exit}' "$work/1.out")
for i in $(seq 2 "$servers"); do start_server "$i" "$id" "$boot"; sleep 0.2; done
for i in $(seq 2 "$servers"); do wait_for serving "$work/$i.out"; done
echo "every server serves after $(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s:"
grep -h '^serving' "$work"/*.out | awk '{print "  " $4}' | sort -t: -n -k1 | tr '\n' ' '; echo

tokens_of() { python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens"])'; }
"$B" generate --model "$M" --prompt "$prompt" --max-tokens 24 --json 2>/dev/null | tokens_of >"$work/reference"
echo "reference (the whole model, one process): $(cat "$work/reference")"
first_client=$((servers + 1000))
gen() { in_ns "$1" "$B" --data-dir "$work/c$1" generate --no-mdns --bootstrap "$boot" --model "$id" \
  --prompt "$prompt" --max-tokens 24 --json 2>>"$work/c$1.log"; }

# Clients generate back to back until the churn is over.
client_pids=()
for c in $(seq 1 "$clients"); do
  i=$((first_client + c))
  make_ns "$i"
  ( while [ ! -f "$work/stop" ]; do
      if out=$(gen "$i"); then
        echo "$out" | tokens_of >>"$work/tokens"
      else echo failed >>"$work/tokens"; fi
    done ) &
  client_pids+=($!)
done

next=$((servers + 1))
declare -A gone
for r in $(seq 1 "$rounds"); do
  sleep "$churn_s"
  alive=(); for i in "${!pid[@]}"; do [ "$i" != 1 ] && [ -z "${gone[$i]:-}" ] && alive+=("$i"); done
  victim=${alive[$((RANDOM % ${#alive[@]}))]}
  case $((r % 3)) in
    1) kill -9 "${pid[$victim]}"; how=killed ;;
    2) kill "${pid[$victim]}"; how=stopped ;;
    0) in_ns "$victim" ip link set eth0 down; how="cut off" ;;
  esac
  gone[$victim]=1
  echo "round $r: server $victim $how; server $next joins"
  start_server "$next" "$id" "$boot"
  next=$((next + 1))
done
touch "$work/stop"
wait "${client_pids[@]}"
started=$(wc -l <"$work/tokens")
completed=$(grep -cvx failed "$work/tokens" || true)
identical=$(grep -cxF "$(cat "$work/reference")" "$work/tokens" || true)
echo "sessions: $completed of $started completed; $identical with the reference's tokens"
