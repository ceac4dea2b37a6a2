#!/bin/bash
export KIT=/tmp/kit/root; . $KIT/files/bundle/env.sh; export ORT_DYLIB_PATH=$KIT/ort/libonnxruntime.so.1.31.1
R=$(pwd); M=$KIT/files/isnet-medium.onnx; MAN=$R/models/isnet.toml; CLIP=$KIT/files/bikes_1080p.mp4
for s in exhaustive heuristic; do
  echo "== cudnn search $s: alone"; timeout 100 matteflow-one gpu-bench --device cuda --model $M --manifest $MAN --runs 50 --batch 1 --device-only --cudnn-search $s 2>&1 | grep -E "queued|rror" | cut -c1-110
  echo "== cudnn search $s: end to end"; timeout 100 matteflow-one bench $CLIP --device cuda --model $M --manifest $MAN -f h264 -k composite -b green --runs 1 --cuda-stages --cudnn-search $s 2>&1 | grep -E "model on|steady|rror"
done
echo "== end to end again (exhaustive)"; timeout 100 matteflow-one bench $CLIP --device cuda --model $M --manifest $MAN -f h264 -k composite -b green --runs 1 --cuda-stages 2>&1 | grep -E "model on|steady|rror"
