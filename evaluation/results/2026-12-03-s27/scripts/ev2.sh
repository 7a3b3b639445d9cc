#!/bin/bash
# the working tree's cascade (own parts read by the labeller) on five sets; baseline = session 27's shipped run where kept
P=/work/scratch/s27/readown
for pair in test4:heldout-generator4 REAL:real test5:heldout-generator5 val4:val-generator4 rib11:new-hard-300000; do
  d=${pair%%:*}; n=${pair##*:}
  if [ $d = REAL ]; then D=/work/shared/data/real; else D=/work/data/$d; fi
  mkdir -p $P/$n
  ( time spinert run $D/*_ct.nii.gz --out $P/$n/pred --overwrite ) > $P/$n.log 2>&1
  B=/work/main/evaluation/results/2026-12-03-s27/shipped/$n; [ -d $B ] || B=/work/main/evaluation/results/2026-12-03-s26/cascade-pair/$n; base="--baseline $B"
  spinert evaluate --gt $D --pred $P/$n/pred --out $P/$n/report --overwrite $base >> $P/$n.log 2>&1
  echo "== $n"
done
echo ALLDONE
