# Sourced by the swarm benchmarks: starts 3 release swarm-node processes serving SmolLM2-135M
# (0-9, 10-19, 20-29) on 127.0.0.1, records their pids in $D/pids (killed on exit) and sets
# BOOT to the first node's address. Needs R (release binaries) and D (a scratch folder).
trap 'kill $(cat $D/pids) 2>/dev/null; wait 2>/dev/null' EXIT
$R/swarm-node --model smollm2-135m --blocks 0-9 > $D/n0.out 2> $D/n0.log & echo $! >> $D/pids
until grep -q READY $D/n0.out; do sleep 0.2; done
BOOT=$(grep LISTEN= $D/n0.out | head -1 | cut -d= -f2)
$R/swarm-node --model smollm2-135m --blocks 10-19 --bootstrap $BOOT > $D/n1.out 2> $D/n1.log & echo $! >> $D/pids
$R/swarm-node --model smollm2-135m --blocks 20-29 --bootstrap $BOOT > $D/n2.out 2> $D/n2.log & echo $! >> $D/pids
until grep -q READY $D/n1.out && grep -q READY $D/n2.out; do sleep 0.2; done
