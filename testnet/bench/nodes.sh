# Sourced by the swarm benchmarks: starts one release swarm-node process per range of SPLIT
# (default "0-9 10-19 20-29": SmolLM2-135M in three) on 127.0.0.1, records their pids in $D/pids
# (killed on exit) and sets BOOT to the first node's address. Needs R (release binaries) and D
# (a scratch folder); NODE_ARGS go to every node.
SPLIT=${SPLIT:-0-9 10-19 20-29}
trap 'kill $(cat $D/pids) 2>/dev/null; wait 2>/dev/null' EXIT
i=0
for blocks in $SPLIT; do
  if [ $i = 0 ]; then
    $R/swarm-node --model ${MODEL:-smollm2-135m} --blocks $blocks $NODE_ARGS > $D/n0.out 2> $D/n0.log & echo $! >> $D/pids
    until grep -q READY $D/n0.out; do sleep 0.2; done
    BOOT=$(grep LISTEN= $D/n0.out | head -1 | cut -d= -f2)
  else
    $R/swarm-node --model ${MODEL:-smollm2-135m} --blocks $blocks --bootstrap $BOOT $NODE_ARGS > $D/n$i.out 2> $D/n$i.log & echo $! >> $D/pids
  fi
  i=$((i + 1))
done
for j in $(seq 0 $((i - 1))); do
  until grep -qs READY $D/n$j.out; do sleep 0.2; done
done
