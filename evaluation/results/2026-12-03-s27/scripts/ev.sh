#!/bin/bash
# shipped models (centre offset on) through `spinert run`, then `spinert evaluate`
P=${1:-/work/scratch/s27/shipped}
for pair in REAL:real test4:heldout-generator4 test5:heldout-generator5; do
  d=${pair%%:*}; n=${pair##*:}
  if [ $d = REAL ]; then D=/work/shared/data/real; else D=/work/data/$d; fi
  mkdir -p $P/$n
  ( time spinert run $D/*_ct.nii.gz --out $P/$n/pred --overwrite ) > $P/$n.log 2>&1
  spinert evaluate --gt $D --pred $P/$n/pred --out $P/$n/report --overwrite >> $P/$n.log 2>&1
  echo "== $n"; head -30 $P/$n/report/evaluation.md
done
echo ALLDONE
