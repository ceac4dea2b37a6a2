#!/bin/bash
# Model alone with and without a concurrent decoder; masks of mid vs old.
export KIT=/tmp/kit/root; . $KIT/files/bundle/env.sh; export ORT_DYLIB_PATH=$KIT/ort/libonnxruntime.so.1.31.1
R=$(pwd); M=$KIT/files/isnet-medium.onnx; MAN=$R/models/isnet.toml; CLIP=$KIT/files/bikes_1080p.mp4
gb() { timeout 120 ${MF:-matteflow-old} gpu-bench --device cuda --model $M --manifest $MAN --runs 300 --batch 1 --device-only "$@" 2>&1 | grep -E "IO binding" | cut -c1-120; }
declode() { while true; do gst-launch-1.0 -q filesrc location=$CLIP ! qtdemux ! h264parse ! nvh264dec ! "$1" ! fakesink sync=false; done; }
echo "== alone"; gb
echo "== with a decoder into CUDA memory"; declode "video/x-raw(memory:CUDAMemory)" & p=$!; sleep 2; gb; kill $p; pkill gst-launch; wait 2>/dev/null
echo "== with a decoder into system memory"; declode "video/x-raw" & p=$!; sleep 2; gb; kill $p; pkill gst-launch; wait 2>/dev/null
echo "== decode rate alone, CUDA memory"; /usr/bin/time -f "%e s" gst-launch-1.0 -q filesrc location=$CLIP ! qtdemux ! h264parse ! nvh264dec ! "video/x-raw(memory:CUDAMemory)" ! fakesink sync=false
echo "== alone again"; gb
for b in old mid; do rm -rf /tmp/m-$b; timeout 100 matteflow-$b convert $CLIP -k mask -o /tmp/m-$b/ --model $M --manifest $MAN --device cuda --cuda-stages 2>&1 | tail -1; done
echo "MASKS mid vs old: $(python3 $R/scripts/compare-masks.py /tmp/m-old /tmp/m-mid)"
