#!/bin/bash
# README "Which schedule?": six schedules at the default's budget of judged responses (3 x 48 prompts x 4 samples),
# two seeds, evaluated after the last round only, one run at a time (about 65 minutes on 2 cores); each run's wall
# time into runs/schedule/times.tsv. A run already finished is not run again. Then:
#   .venv/bin/python benchmarks/which_schedule.py runs/schedule
cd "$(dirname "$0")/../.."
mkdir -p runs/schedule
out=runs/schedule
declare -A RUN=(
  [iterative]="configs/default.yaml run.eval_every=3"
  [online]="configs/online.yaml run.eval_every=18 run.checkpoint_every=18"
  [online_async]="configs/online.yaml run.eval_every=18 run.checkpoint_every=18 run.async_generation=true generator.torch_threads=1 learner.torch_threads=1"
  [offline]="configs/default.yaml run.eval_every=3 run.sampler=pi0"
  [fixed]="configs/default.yaml run.eval_every=3 round.reference=fixed"
  [ema]="configs/default.yaml run.eval_every=3 round.reference=ema"
)
for seed in 0 1; do
  for name in iterative online online_async offline fixed ema; do
    dir=$out/$name-s$seed
    [ -f $dir/metrics.jsonl ] && [ "$(wc -l < $dir/metrics.jsonl)" -gt 3 ] && grep -q '"round/evaluated": true' <(tail -1 $dir/metrics.jsonl) && continue
    rm -rf $dir
    start=$(date +%s); load=$(cut -d' ' -f1 /proc/loadavg)
    .venv/bin/iterdpo run ${RUN[$name]} run.seed=$seed --run-dir $dir > $out/$name-s$seed.log 2>&1
    rc=$?
    echo -e "$name\t$seed\t$rc\t$(( $(date +%s) - start ))\t$load\t$(cut -d' ' -f1 /proc/loadavg)" >> $out/times.tsv
  done
done
echo done >> $out/times.tsv
