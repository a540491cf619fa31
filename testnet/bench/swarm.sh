#!/bin/bash
# Swarm benchmark: release swarm-node processes (one per range of SPLIT, default 0-9 10-19 20-29)
# on 127.0.0.1 vs --local, SmolLM2-135M, reference prompt 0, 128 greedy tokens, alternating runs.
# Env: R=<release dir> REPS=3 SPLIT="0-9 10-19 20-29".
set -e
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
R=${R:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
REF=${REF:-$ROOT/../shared/reference/smollm2-greedy.json}
REPS=${REPS:-3}
PROMPT=$(python3 -c "import json;print(json.load(open('$REF'))['prompts'][0]['rendered_text'],end='')")
D=$(mktemp -d)
. "$(dirname "$0")/nodes.sh"
for i in $(seq $REPS); do
  $R/swarm-client generate --model smollm2-135m --prompt "$PROMPT" --max-new-tokens 128 --ignore-eos --local --json | tail -1 > $D/local-$i.json
  $R/swarm-client generate --model smollm2-135m --prompt "$PROMPT" --max-new-tokens 128 --ignore-eos --bootstrap $BOOT --json | tail -1 > $D/swarm-$i.json
done
python3 - $D $REPS <<'PY'
import json,sys,statistics as st
d,n=sys.argv[1],int(sys.argv[2])
L=[json.load(open(f"{d}/local-{i}.json")) for i in range(1,n+1)]
S=[json.load(open(f"{d}/swarm-{i}.json")) for i in range(1,n+1)]
same=all(s["tokens"]==l["tokens"] for s,l in zip(S,L))
med=lambda xs: st.median(xs)
print(f"same tokens: {same}")
print(f"local decode tok/s {[round(x['decode_tokens_per_s'],1) for x in L]} median {med([x['decode_tokens_per_s'] for x in L]):.1f}")
print(f"swarm decode tok/s {[round(x['decode_tokens_per_s'],1) for x in S]} median {med([x['decode_tokens_per_s'] for x in S]):.1f}")
print(f"local ttft ms {[round(x['ttft_ms'],1) for x in L]} median {med([x['ttft_ms'] for x in L]):.1f}")
print(f"swarm ttft ms {[round(x['ttft_ms'],1) for x in S]} median {med([x['ttft_ms'] for x in S]):.1f}")
print(f"swarm overhead/hop us {[x['swarm']['overhead_per_hop_us_median'] for x in S]}")
print(f"swarm decode rtt us {[x['swarm']['decode_rtt_us_median'] for x in S]} hop compute us {[x['swarm']['hop_compute_us_median'] for x in S]}")
if "transit_us_median" in S[0]["swarm"]:
    print(f"swarm transit us (all links, one way each) {[round(x['swarm']['transit_us_median']) for x in S]} hop handling us {[[round(v) for v in x['swarm']['hop_handling_us_median']] for x in S]}")
else:  # binaries from before protocol 2: answers came back up the route
    print(f"swarm links us (client, hop0-1, hop1-2, last) {[[round(v) for v in x['swarm']['link_us_median']] for x in S]}")
if "decode_forward_us_median" in S[0]:
    lf=[x['decode_forward_us_median'] for x in L]; sf=[x['decode_forward_us_median'] for x in S]
    print(f"decode step through the blocks, median us: local {lf} swarm {sf} (swarm - local, run by run: {[round(s-l) for s,l in zip(sf,lf)]})")
print(f"route {[ (h['blocks']) for h in S[0]['route']]}")
PY
