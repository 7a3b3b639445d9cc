#!/bin/bash
# evalset.sh MODELS_DIR OUT THREADS: the four sets through `spinert run --models`, evaluated against the s17 reports
C=$1; P=$2; T=${3:-2}
cd /work/main
R=${4:-/work/main/evaluation/results/2026-12-01-s18/logic}
mkdir -p $P
for pair in "test4:heldout-generator4" "REAL:real" "val4:val-generator4" "rib11:new-hard-300000"; do
  d=${pair%%:*}; n=${pair##*:}
  if [ $d = REAL ]; then D=/work/shared/data/real; else D=/work/data/$d; fi
  OMP_NUM_THREADS=$T PYTHONPATH=/work/main python /work/scratch/s18/rundump.py $C $P/$n/pred $D/*_ct.nii.gz > $P/$n.log 2>&1
  python -m spinert evaluate --gt $D --pred $P/$n/pred --out $P/$n/report --overwrite --baseline $R/$n >> $P/$n.log 2>&1
  echo "== $n"; head -12 $P/$n/report/comparison.md | tail -10
done
echo ALLDONE
