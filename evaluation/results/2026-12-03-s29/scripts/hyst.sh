cd /work/scratch/s29
for cfg in "0.25 300" "0.1 300" "0.25 200" "0.1 450"; do set -- $cfg; n=h_$1_$2
  LO=$1 T=$2 python hyst.py $n/pred thr/*_ct.nii.gz 2>/dev/null; LO=$1 T=$2 python hyst.py $n/predR /work/shared/data/real/*_ct.nii.gz 2>/dev/null
  spinert evaluate --gt thr --pred $n/pred --out $n/rep --overwrite > /dev/null 2>&1
  spinert evaluate --gt /work/shared/data/real --pred $n/predR --out $n/repR --overwrite > /dev/null 2>&1
  echo "$n $(grep -m1 '^| Dice' $n/rep/evaluation.md) real $(grep -m1 '^| Dice' $n/repR/evaluation.md)"
done
