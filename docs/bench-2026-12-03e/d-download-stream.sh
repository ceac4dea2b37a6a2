#!/bin/bash
export KIT=/tmp/kit/root; . $KIT/files/bundle/env.sh; export ORT_DYLIB_PATH=$KIT/ort/libonnxruntime.so.1.31.1
R=$(pwd); M=$KIT/files/isnet-medium.onnx; MAN=$R/models/isnet.toml; CLIP=$KIT/files/bikes_1080p.mp4
b() { timeout 100 "$@" bench $CLIP --device cuda --model $M --manifest $MAN -f h264 -k composite -b green --runs 1 --cuda-stages 2>&1 | grep -E "model on|steady|^infer|decode wait|rc "; }
nvidia-smi --query-gpu=clocks.sm --format=csv,noheader -lms 100 > /tmp/smi.csv & SMI=$!
for r in 1 2; do
 echo "== one $r"; b matteflow-one
 echo "== exp, download on the model stream $r"; MF_EXP_DL_SAME=1 b matteflow-exp
done
kill $SMI; echo "SM clock / power during the benches:"; sort /tmp/smi.csv | uniq -c | sort -rn | head -8
echo "== batch 2 alone"; timeout 100 matteflow-one gpu-bench --device cuda --model $M --manifest $MAN --runs 50 --batch 2 --device-only 2>&1 | grep -E "IO binding|rror" | cut -c1-150
echo "== batch 2 e2e"; timeout 100 matteflow-one bench $CLIP --device cuda --model $M --manifest $MAN -f h264 -k composite -b green --runs 1 --cuda-stages --batch 2 2>&1 | grep -E "model on|steady|rror"
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv
