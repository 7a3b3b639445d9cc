cd /work/scratch/s29
for t in t4 t6 base; do
  M=""; [ $t != base ] && M="--models models_$t"
  spinert run thr/*_ct.nii.gz $M --out thr_$t/pred --overwrite --quiet
  spinert evaluate --gt thr --pred thr_$t/pred --out thr_$t/report --overwrite > thr_$t.log 2>&1
  spinert run /work/shared/data/real/*_ct.nii.gz $M --out thrR_$t/pred --overwrite --quiet
  spinert evaluate --gt /work/shared/data/real --pred thrR_$t/pred --out thrR_$t/report --overwrite > thrR_$t.log 2>&1
  echo "== $t $(date)"
done
