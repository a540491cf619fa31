#!/bin/bash
# Serving benchmark, side by side in one run: the same 3-node swarm (release swarm-node, SmolLM2-135M
# Q4_1, blocks 0-9 10-19 20-29) through `swarm-client generate` (the CLI) and through
# `swarm-client serve` (the OpenAI API, streamed), and llama-server on the same GGUF file, at 1 and 8
# concurrent streams. Prompt "1, 2, 3, 4, 5," (counting: no end of sequence), N greedy tokens.
# Env: R=<release dir> REPS=3 N=64 LLAMA_THREADS=2.
set -e
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
R=${R:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
REPS=${REPS:-3}
N=${N:-64}
PROMPT="1, 2, 3, 4, 5,"
GGUF=$($R/swarm-client fetch --model smollm2-135m >/dev/null && echo "${SUNSWARM_CACHE:-$HOME/.cache/sunswarm}/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf")
LLAMA_SERVER=$(bash "$ROOT/../shared/anchors/llama-cpp.sh" server | tail -1)
D=$(mktemp -d)
. "$(dirname "$0")/nodes.sh"

$R/swarm-client serve --bootstrap "$BOOT" --listen 127.0.0.1:0 > $D/serve.out 2> $D/serve.log & echo $! >> $D/pids
until grep -qs SERVING $D/serve.out; do sleep 0.2; done
URL=$(grep SERVING $D/serve.out | cut -d' ' -f2)
LPORT=$((20000 + RANDOM % 20000))
$LLAMA_SERVER -m "$GGUF" --host 127.0.0.1 --port $LPORT -t ${LLAMA_THREADS:-2} -np 8 -c 16384 > $D/llama.log 2>&1 & echo $! >> $D/pids
until curl -sf http://127.0.0.1:$LPORT/health >/dev/null; do sleep 0.2; done
LURL=http://127.0.0.1:$LPORT

for i in $(seq $REPS); do
  $R/swarm-client generate --model smollm2-135m --prompt "$PROMPT" --max-new-tokens $N --bootstrap "$BOOT" --json | tail -1 > $D/cli-$i.json
  python3 "$ROOT/testnet/bench/serve_client.py" "$URL" smollm2-135m 1 $N "$PROMPT" > $D/api1-$i.json
  python3 "$ROOT/testnet/bench/serve_client.py" "$LURL" smollm2-135m 1 $N "$PROMPT" > $D/llama1-$i.json
  python3 "$ROOT/testnet/bench/serve_client.py" "$URL" smollm2-135m 8 $N "$PROMPT" > $D/api8-$i.json
  python3 "$ROOT/testnet/bench/serve_client.py" "$LURL" smollm2-135m 8 $N "$PROMPT" > $D/llama8-$i.json
done

python3 - $D $REPS <<'PY'
import json, sys, statistics as st
d, n = sys.argv[1], int(sys.argv[2])
load = lambda k: [json.load(open(f"{d}/{k}-{i}.json")) for i in range(1, n + 1)]
cli, a1, l1, a8, l8 = load("cli"), load("api1"), load("llama1"), load("api8"), load("llama8")
med = st.median
# The CLI's time to first token counted as the API's is: route choice and session open, then
# prefill and the first token (connecting to the swarm and loading the model are the server's
# start-up, not a request's).
cli_ttft = [c["swarm"]["open_ms"] + c["ttft_ms"] for c in cli]
cli_dec = [c["decode_tokens_per_s"] for c in cli]
api_ttft = [r["ttft_ms"][0] for r in a1]
api_dec = [r["decode_tok_s_each"][0] for r in a1]
print(f"CLI  ttft ms {[round(x,1) for x in cli_ttft]} median {med(cli_ttft):.1f}; decode tok/s {[round(x,1) for x in cli_dec]} median {med(cli_dec):.1f}")
print(f"API  ttft ms {[round(x,1) for x in api_ttft]} median {med(api_ttft):.1f}; decode tok/s {[round(x,1) for x in api_dec]} median {med(api_dec):.1f}")
print(f"API / CLI: ttft {med(api_ttft)/med(cli_ttft):.3f}x, decode {med(api_dec)/med(cli_dec):.3f}x")
print(f"texts: API identical to CLI: {all(a['text'] == c['text'] for a, c in zip(a1 + a8, cli + cli))}; "
      f"streams of a run agree: {all(r['texts_identical'] for r in a1 + a8)}")
for name, a, l in (("1 stream", a1, l1), ("8 streams", a8, l8)):
    at, lt = [med(r["ttft_ms"]) for r in a], [med(r["ttft_ms"]) for r in l]
    ad, ld = [r["decode_tok_s_sum"] for r in a], [r["decode_tok_s_sum"] for r in l]
    print(f"{name}: sunswarm serve ttft median ms {[round(x) for x in at]} sum decode tok/s {[round(x,1) for x in ad]}; "
          f"llama-server ttft {[round(x) for x in lt]} sum decode {[round(x,1) for x in ld]}; "
          f"ratio decode {med(ad)/med(ld):.2f}x, ttft {med(at)/med(lt):.2f}x")
print(f"chunks per stream: sunswarm {a1[0]['chunks']}, llama-server {l1[0]['chunks']}")
PY
