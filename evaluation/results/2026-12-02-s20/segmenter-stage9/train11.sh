#!/bin/bash
# segmenter: finish session 18's interrupted 22-epoch schedule (stopped after epoch 12 of 22) at a larger
# training patch (96^3 instead of 64^3: closer to the 128^3 ROI the engine runs), 100 steps per epoch
cd /work/main
OMP_NUM_THREADS=2 SPINERT_TRAIN_THREADS=2 python -m spinert train segmenter --data /work/data/seg45 --val-data /work/data/segval5 \
  --out /work/ckpt/seg11/models --work /work/ckpt/seg11 --init /work/ckpt/seg9/ckpt/best.pt --resume \
  --epochs 22 --steps 100 --patch 96 --lr 2e-4 --seed 18 > /work/ckpt/seg11/train.log 2>&1
echo TRAINDONE >> /work/ckpt/seg11/train.log
