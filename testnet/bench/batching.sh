#!/bin/bash
# Many users at once, side by side in one run: llama.cpp (`llama-cpp.sh bench` and `batched`) on
# the same GGUF file, and Sunswarm with N concurrent `swarm-client generate` processes (64 greedy
# tokens each after the prompt "1, 2, 3, 4, 5,") through one node holding every block, then
# through three nodes (0-9 10-19 20-29); then the same N sessions as N concurrent streams through
# one `swarm-client serve` process (the OpenAI API), where the sessions share one LM head. Reports
# the sum of the sessions' decode speeds. Spot
# checks are off (`--spot-check 0`): with every peer on one machine a check's re-run competes
# for the same cores as the sessions, which measures the checks, not the node's batching (they
# are measured on their own by verified.sh).
# The serve rows also give the tokens of all streams over the span in which any decoded (a sum
# of rates overstates streams that ran in turns: a node takes 8 sessions from one client unless
# NODE_ARGS="--max-sessions-per-peer 16").
# Env: R=<release dir> NS="1 2 4 8 16" MODEL=smollm2-135m GGUF=<file> (GGUF defaults to the
# cached SmolLM2 file; for another model give both, and SPLITS).
set -e
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
R=${R:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
NS=${NS:-1 2 4 8 16}
MODEL=${MODEL:-smollm2-135m}
GGUF=${GGUF:-${SUNSWARM_CACHE:-$HOME/.cache/sunswarm}/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf}
ANCHOR="$ROOT/../shared/anchors/llama-cpp.sh"
PROMPT="1, 2, 3, 4, 5,"

echo "== llama.cpp on $(basename "$GGUF")"
bash "$ANCHOR" bench "$GGUF" 2 | head -1
bash "$ANCHOR" batched "$GGUF" 2 "$(echo $NS | tr ' ' ,)"

run_clients() { # $1 = label; uses BOOT
  for n in $NS; do
    local d=$(mktemp -d)
    local pids=""
    for i in $(seq $n); do
      $R/swarm-client generate --model "$MODEL" --prompt "$PROMPT" --max-new-tokens 64 --ignore-eos \
        --spot-check 0 --bootstrap "$BOOT" --json 2>/dev/null | tail -1 > $d/$i.json &
      pids="$pids $!"
    done
    wait $pids
    python3 - "$d" "$n" "$1" <<'PY'
import json, sys
d, n, label = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rs = [json.load(open(f"{d}/{i}.json")) for i in range(1, n + 1)]
each = [r["decode_tokens_per_s"] for r in rs]
print(json.dumps({"sunswarm": label, "sessions": n, "decode_tok_s_total": round(sum(each), 1),
                  "decode_tok_s_each": [round(x, 1) for x in each],
                  "same_tokens": len({tuple(r["tokens"]) for r in rs}) == 1}))
PY
  done
}

# One node holding every block, then three nodes (override with SPLITS, ranges per node,
# swarms separated by '|').
SPLITS=${SPLITS:-0-29|0-9 10-19 20-29}
IFS='|' read -ra SWARMS <<< "$SPLITS"
for SPLIT in "${SWARMS[@]}"; do
  D=$(mktemp -d)
  (
    . "$(dirname "$0")/nodes.sh"
    run_clients "nodes $SPLIT"
    $R/swarm-client serve --model "$MODEL" --bootstrap "$BOOT" --listen 127.0.0.1:0 --spot-check 0 \
      > $D/serve.out 2> $D/serve.log & echo $! >> $D/pids
    until grep -qs SERVING $D/serve.out; do sleep 0.2; done
    URL=$(grep SERVING $D/serve.out | cut -d' ' -f2)
    for n in $NS; do
      python3 "$ROOT/testnet/bench/serve_client.py" "$URL" "$MODEL" $n 64 "$PROMPT" | python3 -c '
import json, sys
r = json.load(sys.stdin)
print(json.dumps({"sunswarm": sys.argv[1], "sessions": r["concurrency"],
                  "decode_tok_s_total": round(r["decode_tok_s_sum"], 1),
                  "decode_tok_s_span": round(r["decode_tok_s_span"], 1),
                  "decode_tok_s_each": [round(x, 1) for x in r["decode_tok_s_each"]],
                  "same_tokens": r["texts_identical"], "chunks": sorted(set(r["chunks"]))}))' "serve, nodes $SPLIT"
    done
  )
done
