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
# One session alone is run ONE_REPEATS times (default 3) one after another and reported as the
# median (every run listed): on a shared VM one 64-token run swings 75-130 tok/s, and every
# N-session ratio divides by it; N sessions already average N runs.
# Env: R=<release dir> NS="1 2 4 8 16" MODEL=smollm2-135m GGUF=<file> (GGUF defaults to the
# cached SmolLM2 file; for another model give both, and SPLITS); CLIENT_ARGS for every client
# (e.g. --client-head, to apply the LM head in the clients instead of on the last hop).
set -e
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
R=${R:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
NS=${NS:-1 2 4 8 16}
MODEL=${MODEL:-smollm2-135m}
GGUF=${GGUF:-${SUNSWARM_CACHE:-$HOME/.cache/sunswarm}/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf}
ANCHOR="$ROOT/../shared/anchors/llama-cpp.sh"
PROMPT="1, 2, 3, 4, 5,"
ONE_REPEATS=${ONE_REPEATS:-3}

echo "== llama.cpp on $(basename "$GGUF")"
# sed, not head: head exits after a line and the anchor, still writing, dies of a broken pipe.
bash "$ANCHOR" bench "$GGUF" 2 | sed -n 1p
bash "$ANCHOR" batched "$GGUF" 2 "$(echo $NS | tr ' ' ,)"

run_clients() { # $1 = label; uses BOOT
  for n in $NS; do
    local d=$(mktemp -d)
    local repeats=1
    [ "$n" = 1 ] && repeats=$ONE_REPEATS
    for r in $(seq $repeats); do
      local pids=""
      for i in $(seq $n); do
        $R/swarm-client generate --model "$MODEL" --prompt "$PROMPT" --max-new-tokens 64 --ignore-eos \
          --spot-check 0 $CLIENT_ARGS --bootstrap "$BOOT" --json 2>/dev/null | tail -1 > $d/$r.$i.json &
        pids="$pids $!"
      done
      wait $pids
    done
    python3 - "$d" "$n" "$1" "$repeats" <<'PY'
import json, statistics, sys
d, n, label, repeats = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
runs = [[json.load(open(f"{d}/{r}.{i}.json")) for i in range(1, n + 1)] for r in range(1, repeats + 1)]
totals = [sum(x["decode_tokens_per_s"] for x in rs) for rs in runs]
each = [x["decode_tokens_per_s"] for rs in runs for x in rs]
out = {"sunswarm": label, "sessions": n, "decode_tok_s_total": round(statistics.median(totals), 1),
       "decode_tok_s_each": [round(x, 1) for x in each],
       "same_tokens": len({tuple(x["tokens"]) for rs in runs for x in rs}) == 1}
if repeats > 1:
    out["runs"] = repeats
print(json.dumps(out))
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
      $CLIENT_ARGS > $D/serve.out 2> $D/serve.log & echo $! >> $D/pids
    until grep -qs SERVING $D/serve.out; do sleep 0.2; done
    URL=$(grep SERVING $D/serve.out | cut -d' ' -f2)
    for n in $NS; do
      repeats=1
      [ "$n" = 1 ] && repeats=$ONE_REPEATS
      for r in $(seq $repeats); do
        python3 "$ROOT/testnet/bench/serve_client.py" "$URL" "$MODEL" $n 64 "$PROMPT"
      done | python3 -c '
import json, statistics, sys
rs = [json.loads(line) for line in sys.stdin]
med = lambda k: round(statistics.median(r[k] for r in rs), 1)
out = {"sunswarm": sys.argv[1], "sessions": rs[0]["concurrency"],
       "decode_tok_s_total": med("decode_tok_s_sum"), "decode_tok_s_span": med("decode_tok_s_span"),
       "decode_tok_s_each": [round(x, 1) for r in rs for x in r["decode_tok_s_each"]],
       "same_tokens": all(r["texts_identical"] for r in rs),
       "chunks": sorted({c for r in rs for c in r["chunks"]})}
if len(rs) > 1:
    out["runs"] = len(rs)
print(json.dumps(out))' "serve, nodes $SPLIT"
    done
  )
done
