#!/bin/bash
# the working tree's cascade (pieces on the scan's faces, engine.segment.keep_face_pieces) on five sets; baseline = session 27's readown
P=/work/scratch/s28/faces
for pair in test4:heldout-generator4 REAL:real test5:heldout-generator5 val4:val-generator4 rib11:new-hard-300000; do
  d=${pair%%:*}; n=${pair##*:}
  if [ $d = REAL ]; then D=/work/shared/data/real; else D=/work/data/$d; fi
  mkdir -p $P/$n
  ( time spinert run $D/*_ct.nii.gz --out $P/$n/pred --overwrite ) > $P/$n.log 2>&1
  B=/work/main/evaluation/results/2026-12-03-s27/readown/$n
  spinert evaluate --gt $D --pred $P/$n/pred --out $P/$n/report --overwrite --baseline $B >> $P/$n.log 2>&1
  echo "== $n $(date)"
done
echo ALLDONE
