#!/bin/bash
# Soak: 3 release swarm-node processes (SmolLM2-135M, 0-9, 10-19, 20-29) on 127.0.0.1 and
# CLIENTS concurrent client loops for DURATION seconds. Every generation's greedy tokens are
# compared with --local's for the same prompt; each node's RSS is sampled every 10 s.
# Usage: testnet/bench/soak.sh  (env: CLIENTS=8 DURATION=600 TOKENS=32 R=<release dir>)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
R=${R:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
CLIENTS=${CLIENTS:-8}
DURATION=${DURATION:-600}
TOKENS=${TOKENS:-32}
PROMPTS=("What is the capital of France?" "Name three colours of the rainbow." \
  "Write one sentence about the sea." "What is 2 + 2?")
D=$(mktemp -d)
. "$(dirname "$0")/nodes.sh"
NODE_PIDS=$(head -3 $D/pids)
for i in "${!PROMPTS[@]}"; do
  $R/swarm-client generate --model smollm2-135m --chat --prompt "${PROMPTS[$i]}" \
    --max-new-tokens $TOKENS --ignore-eos --local --json | tail -1 > $D/want-$i.json
done
(
  t0=$(date +%s)
  while [ $(( $(date +%s) - t0 )) -lt $((DURATION + 30)) ]; do
    line="$(( $(date +%s) - t0 ))"
    for p in $NODE_PIDS; do
      line="$line $(awk '/VmRSS/{print $2}' /proc/$p/status 2>/dev/null || echo 0)"
    done
    echo "$line" >> $D/rss
    sleep 10
  done
) & echo $! >> $D/pids
END=$(( $(date +%s) + DURATION ))
for c in $(seq 1 $CLIENTS); do
  (
    n=0
    while [ $(date +%s) -lt $END ]; do
      i=$(( (c + n) % ${#PROMPTS[@]} ))
      if $R/swarm-client generate --model smollm2-135m --chat --prompt "${PROMPTS[$i]}" \
          --max-new-tokens $TOKENS --ignore-eos --bootstrap $BOOT --json 2>> $D/client-$c.log \
          | tail -1 > $D/got-$c-$n.json; then
        echo "$i $D/got-$c-$n.json" >> $D/runs-$c
      else
        echo "$i FAIL" >> $D/runs-$c
      fi
      n=$((n + 1))
    done
  ) &
done
wait $(jobs -p | tail -n $CLIENTS)
python3 - $D $DURATION <<'PY'
import glob, json, sys, statistics as st
d, dur = sys.argv[1], float(sys.argv[2])
want = {int(f.split("-")[-1][:-5]): json.load(open(f))["tokens"] for f in glob.glob(f"{d}/want-*.json")}
ok = wrong = failed = 0; tps = []; tokens = 0
for f in glob.glob(f"{d}/runs-*"):
    for line in open(f):
        i, path = line.split()
        if path == "FAIL":
            failed += 1; continue
        try:
            g = json.load(open(path))
        except Exception:
            failed += 1; continue
        if g["tokens"] == want[int(i)]:
            ok += 1
        else:
            wrong += 1
        tokens += len(g["tokens"]); tps.append(g["decode_tokens_per_s"])
rss = [list(map(int, l.split())) for l in open(f"{d}/rss")]
# Warm: the first sample after 60 s (caches, allocator pools and connections in place).
warm = next((r for r in rss if r[0] >= 60), rss[0])
last = rss[-1]
print(f"generations: {ok + wrong + failed} ({ok} exact, {wrong} wrong, {failed} failed)")
print(f"tokens generated: {tokens} in {dur:.0f} s = {tokens / dur:.1f} tok/s aggregate; per-client decode tok/s median {st.median(tps):.1f}")
for k in range(1, len(warm)):
    g = (last[k] - warm[k]) / warm[k] * 100
    print(f"node {k-1} RSS: {warm[k]/1024:.0f} MiB at {warm[0]} s -> {last[k]/1024:.0f} MiB at {last[0]} s ({g:+.1f} %), max {max(r[k] for r in rss)/1024:.0f} MiB")
PY
