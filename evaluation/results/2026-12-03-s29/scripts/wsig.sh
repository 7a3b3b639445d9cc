cd /work/scratch/s29
for w in w30 w20; do
  spinert run thr/*_ct.nii.gz --models models_$w --out thr_$w/pred --overwrite --quiet 2>/dev/null
  spinert evaluate --gt thr --pred thr_$w/pred --out thr_$w/report --overwrite > /dev/null 2>&1
  spinert run /work/shared/data/real/*_ct.nii.gz --models models_$w --out thrR_$w/pred --overwrite --quiet 2>/dev/null
  spinert evaluate --gt /work/shared/data/real --pred thrR_$w/pred --out thrR_$w/report --overwrite > /dev/null 2>&1
  echo "$w phantoms $(grep -m1 '^| Dice' thr_$w/report/evaluation.md) $(grep -m1 '^| identification' thr_$w/report/evaluation.md) real $(grep -m1 '^| Dice' thrR_$w/report/evaluation.md) $(grep -m1 '^| identification' thrR_$w/report/evaluation.md)"
done
