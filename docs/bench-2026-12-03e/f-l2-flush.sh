#!/bin/bash
export KIT=/tmp/kit/root; . $KIT/files/bundle/env.sh; export ORT_DYLIB_PATH=$KIT/ort/libonnxruntime.so.1.31.1
R=$(pwd); M=$KIT/files/isnet-medium.onnx; MAN=$R/models/isnet.toml; CLIP=$KIT/files/bikes_1080p.mp4
for r in 1 2; do
  echo "== alone, warm and L2 flushed ($r)"; timeout 100 matteflow-one gpu-bench --device cuda --model $M --manifest $MAN --runs 50 --batch 1 --device-only --flush-l2 2>&1 | grep -E "queued|rror" | cut -c1-150
done
echo "== end to end"; timeout 100 matteflow-one bench $CLIP --device cuda --model $M --manifest $MAN -f h264 -k composite -b green --runs 1 --cuda-stages 2>&1 | grep -E "model on|steady|after its first|rror"
