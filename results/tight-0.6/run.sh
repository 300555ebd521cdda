#!/bin/bash
# Side experiment for issue 19 (RESULTS.md): after `fbnet-fast study pareto ... --out runs/study-seeds` (its
# warm-up checkpoints), the target-0.6 searches again from the study's own warm-ups,
# with the layer decisions later (--decide-by 1.0) or off (--no-decide); each result trained twice
# with the study's recipe. Two jobs at a time, one thread each.
set -e
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD"
S=runs/study-seeds/searches
search() { # variant seed_index extra...
  local v=$1 i=$2; shift 2
  local src=$S/target-0.6-auto; [ "$i" = 1 ] && src=$S/target-0.6-s1-auto
  local out=runs/tight/$v-s$i
  [ -f $out/arch.json ] && return 0
  python -m fbnet_fast search --space runs/study-seeds/space.json --data synthetic --num-train 4000 --num-val 1000 \
    --lut runs/study-seeds/lut.json --epochs 6 --warmup-epochs 2 --target-fraction 0.6 --budget-mode target \
    --threads 1 --seed $i --no-progress --no-plots --warmup-from $src --out $out --overwrite "$@" > $out.log 2>&1
}
train() { # variant seed_index train_seed
  local a=runs/tight/$1-s$2/arch.json out=runs/tight/$1-s$2-t$3
  [ -f $out/summary.json ] && return 0
  python -m fbnet_fast train $a --data synthetic --num-train 4000 --num-val 1000 --epochs 20 --batch-size 64 \
    --lr 0.05 --weight-decay 0.0005 --label-smoothing 0.1 --dropout 0.2 --seed $3 --threads 1 --no-progress \
    --out $out --overwrite > $out.log 2>&1
}
search late 0 --decide-by 1.0 & search late 1 --decide-by 1.0 & wait
search nodecide 0 --no-decide & search nodecide 1 --no-decide & wait
for v in late nodecide; do for i in 0 1; do
  train $v $i 0 & train $v $i 1 & wait
done; done
python results/tight-0.6/collect.py
