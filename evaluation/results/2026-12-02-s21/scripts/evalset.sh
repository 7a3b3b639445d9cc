#!/bin/bash
# evalset.sh MODELS OUT THREADS BASELINE_ROOT SET:NAME...: sets through scripts/rundump.py (Cascade overrides from env SPINERT_OVERRIDES, JSON), evaluated against BASELINE_ROOT/<name>
C=$1; P=$2; T=${3:-2}; R=$4; shift 4
cd /work/main
mkdir -p $P
for pair in "$@"; do
  d=${pair%%:*}; n=${pair##*:}
  if [ $d = REAL ]; then D=/work/shared/data/real; else D=/work/data/$d; fi
  OMP_NUM_THREADS=$T PYTHONPATH=/work/main python evaluation/results/2026-12-02-s21/scripts/rundump.py $C $P/$n/pred $D/*_ct.nii.gz > $P/$n.log 2>&1
  python -m spinert evaluate --gt $D --pred $P/$n/pred --out $P/$n/report --overwrite --baseline $R/$n >> $P/$n.log 2>&1
  echo "== $n"; head -12 $P/$n/report/comparison.md | tail -10
done
echo ALLDONE
