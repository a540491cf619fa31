#!/usr/bin/env bash
# Verified outputs, side by side in one run on a 4-node SmolLM2 testnet (0-9, 10-19, 10-19,
# 20-29): decode speed and time to first token with spot checks at 0, 2 and 10 % (interleaved,
# 8 rounds), then with and without 1,000 idle connections per node (3 rounds). Prints medians
# and ratios. Env: R=<release dir>, OUT=<folder for the JSON lines> (default /tmp/verified-bench).
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
R=${R:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
OUT=${OUT:-/tmp/verified-bench}; mkdir -p $OUT; rm -f $OUT/*.json
$R/swarm-testnet up --model smollm2-135m --split 0-9,10-19,10-19,20-29 > $OUT/up.log 2>&1 &
UP=$!
for i in $(seq 60); do grep -q SWARM_BOOTSTRAP $OUT/up.log && break; sleep 1; done
B=$(grep SWARM_BOOTSTRAP $OUT/up.log | cut -d= -f2)
sleep 5
gen() { # tag, extra args
  $R/swarm-client generate --model smollm2-135m --chat --prompt "Write a short story about a lighthouse keeper." \
    --max-new-tokens 64 --ignore-eos --bootstrap $B --json "${@:2}" 2>/dev/null | tail -1 >> $OUT/$1.json
}
gen warmup --spot-check 0
for round in 1 2 3 4 5 6 7 8; do
  for f in 0 0.02 0.1; do gen spot-$f --spot-check $f; done
done
# Idle connections: a hostile process announcing block 0 only (no route can use it) holds
# 1,000 connections with silent streams to every node; it runs at nice 19 on the same 2 cores.
for round in 1 2 3; do
  for k in 1 2; do gen idle-off --spot-check 0; done
  nice -n 19 $R/swarm-testnet byzantine-node --mode idle-connections:count=1000 --model smollm2-135m \
    --blocks 0-0 --bootstrap $B > $OUT/idle-$round.log 2>&1 &
  H=$!
  for i in $(seq 120); do grep -q "^IDLE" $OUT/idle-$round.log && break; sleep 1; done
  grep "^IDLE" $OUT/idle-$round.log
  for k in 1 2; do gen idle-on --spot-check 0; done
  kill $H; wait $H 2>/dev/null
done
kill $UP; wait $UP 2>/dev/null
OUT=$OUT python3 - <<'PY'
import json, glob, statistics as st
rows = {}
import os
for f in sorted(glob.glob(os.environ['OUT'] + '/*.json')):
    tag = f.split('/')[-1][:-5]
    runs = [json.loads(l) for l in open(f) if l.strip()]
    tps = [r['decode_tokens_per_s'] for r in runs]
    ttft = [r['ttft_ms'] for r in runs]
    checked = [r.get('spot_checks', {}).get('checked', 0) for r in runs]
    rows[tag] = (st.median(tps), st.median(ttft), st.mean(checked), len(runs), tps)
    print(f"{tag:12s} n={len(runs)} decode tok/s median {st.median(tps):6.1f}  ttft ms median {st.median(ttft):6.1f}  checks/run {st.mean(checked):.1f}  all {['%.1f'%x for x in tps]}")
b = rows['spot-0'][0]
for f in ['0.02', '0.1']:
    print(f"spot {f}: {rows['spot-'+f][0]/b:.3f}x of no checks")
print(f"idle on/off: {rows['idle-on'][0]/rows['idle-off'][0]:.3f}x")
PY
