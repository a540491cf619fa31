#!/bin/bash
# Wide-area benchmark: SmolLM2-135M through 3 release nodes (0-9, 10-19, 20-29) whose every
# connection crosses an emulated link (`swarm-testnet up --link-latency-ms L`) at L = 0, 10, 30,
# 100 ms; decode tokens/s and time to first token per latency, beside the floor the latencies
# allow (compute as measured at 0 ms plus hops + 1 = 4 one-way crossings per token: the last hop
# answers the client) and beside what returning outputs along the route would cost (Petals' way:
# 2 x hops = 6 crossings). Spot checks off (they add their own crossings; measured elsewhere).
# Env: R=<release dir> REPS=3 TOKENS=64 LATENCIES="0 10 30 100".
set -e
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
R=${R:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
REPS=${REPS:-3}
TOKENS=${TOKENS:-64}
LATENCIES=${LATENCIES:-0 10 30 100}
D=$(mktemp -d)
trap '[ -n "$UP" ] && kill $UP 2>/dev/null; wait 2>/dev/null' EXIT
PROMPT="Write a short story about a robot who learns to paint."
for L in $LATENCIES; do
  $R/swarm-testnet up --split 0-9,10-19,20-29 --link-latency-ms $L --log-dir $D/logs-$L > $D/up-$L.out 2> $D/up-$L.err &
  UP=$!
  until grep -q "^node 2" $D/up-$L.out; do sleep 0.5; kill -0 $UP || { cat $D/up-$L.err; exit 1; }; done
  BOOT=$(grep SWARM_BOOTSTRAP= $D/up-$L.out | cut -d= -f2)
  for i in $(seq $REPS); do
    $R/swarm-client generate --model smollm2-135m --prompt "$PROMPT" --max-new-tokens $TOKENS --ignore-eos \
      --spot-check 0 --bootstrap $BOOT --json | tail -1 > $D/swarm-$L-$i.json
  done
  kill $UP; wait $UP 2>/dev/null || true; UP=
done
$R/swarm-client generate --model smollm2-135m --prompt "$PROMPT" --max-new-tokens $TOKENS --ignore-eos --local --json | tail -1 > $D/local.json
python3 - $D $REPS "$LATENCIES" <<'PY'
import json,sys,statistics as st
d,n,lats=sys.argv[1],int(sys.argv[2]),[int(x) for x in sys.argv[3].split()]
local=json.load(open(f"{d}/local.json"))
runs={L:[json.load(open(f"{d}/swarm-{L}-{i}.json")) for i in range(1,n+1)] for L in lats}
same=all(r["tokens"]==local["tokens"] for rs in runs.values() for r in rs)
print(f"every run's tokens = --local: {same}")
base=runs[lats[0]]
t0=st.median([1000/r["decode_tokens_per_s"] for r in base])   # ms per token at the first latency
ttft0=st.median([r["ttft_ms"] for r in base])
hops=len(base[0]["route"])
print(f"hops {hops}; per-token compute+loopback at {lats[0]} ms: {t0:.2f} ms; ttft {ttft0:.0f} ms")
print("| link latency | decode tok/s (runs) | floor tok/s (hops+1 crossings) | ratio to floor | along-the-route tok/s (2 x hops) | TTFT ms (runs) | TTFT - TTFT(0) in one-way crossings | connect + open ms |")
print("|---|---|---|---|---|---|---|---|")
for L in lats:
    rs=runs[L]
    tps=[r["decode_tokens_per_s"] for r in rs]
    m=st.median(tps)
    extra=L-lats[0]
    floor=1000/(t0+(hops+1)*extra)
    petals=1000/(t0+2*hops*extra)
    ttft=[r["ttft_ms"] for r in rs]
    cross=(st.median(ttft)-ttft0)/extra if extra else float('nan')
    setup=st.median([r["swarm"]["connect_ms"]+r["swarm"]["open_ms"] for r in rs])
    print(f"| {L} ms | {m:.1f} ({', '.join(f'{x:.1f}' for x in tps)}) | {floor:.1f} | {m/floor:.2f}x | {petals:.1f} | {st.median(ttft):.0f} ({', '.join(f'{x:.0f}' for x in ttft)}) | {cross:.1f} | {setup:.0f} |")
PY
