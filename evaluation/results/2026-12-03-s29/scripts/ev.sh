#!/bin/bash
# cascade with models folder $1 on the five sets; baseline = session 28's faces readown
M=$1; P=/work/scratch/s29/edge
for pair in REAL:real test4:heldout-generator4 val4:val-generator4 test5:heldout-generator5 rib11:new-hard-300000; do
  d=${pair%%:*}; n=${pair##*:}
  if [ $d = REAL ]; then D=/work/shared/data/real; else D=/work/data/$d; fi
  mkdir -p $P/$n
  ( time spinert run $D/*_ct.nii.gz --models $M --out $P/$n/pred --overwrite --quiet ) > $P/$n.log 2>&1
  B=/work/main/evaluation/results/2026-12-03-s28/faces/$n
  spinert evaluate --gt $D --pred $P/$n/pred --out $P/$n/report --overwrite --baseline $B >> $P/$n.log 2>&1
  echo "== $n $(date)"
done
echo ALLDONE
