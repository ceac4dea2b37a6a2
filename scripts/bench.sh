#!/usr/bin/env bash
# CPU speed baseline: the selfie model on a 1280x720 H.264 clip (the shipped bikes.mp4 scaled up, 250 frames),
# for each output the issue asks about. Prints per-stage ms/frame and end-to-end fps.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
mkdir -p target/bench
CLIP=target/bench/bikes_720p.mp4
if [ ! -s "$CLIP" ]; then
  gst-launch-1.0 -q filesrc location=assets/media/bikes.mp4 ! qtdemux ! avdec_h264 ! videoconvert ! videoscale \
    ! video/x-raw,width=1280,height=720,pixel-aspect-ratio=1/1 ! x264enc speed-preset=medium bitrate=4000 \
    ! h264parse ! mp4mux ! filesink location="$CLIP.tmp" && mv "$CLIP.tmp" "$CLIP"
fi
M=./target/release/matteflow
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); commit $(git rev-parse --short HEAD)"
run() { echo; echo "== $*"; $M bench "$CLIP" "$@"; }
# `scripts/bench.sh batch` runs only the batched-inference comparison at the end.
if [ "${1:-}" != batch ]; then
run --model selfie -f h264 -k composite -b green
run --model selfie -f h264 -k composite -b blur
run --model selfie -f prores -k alpha -b transparent
run --model selfie-landscape -f h264 -k composite -b green
fi

# Batched inference (--batch N): the selfie model rewritten with a dynamic batch dimension (the shipped file has a
# fixed batch of 1), one frame per call against 4 consecutive frames per call.
DYN=target/bench/selfie_dynamic_batch
if [ ! -s "$DYN.onnx" ]; then
  PYTHONPATH=.deps/py python3 tests/fixtures/make_dynamic_batch.py models/selfie_segmentation.onnx "$DYN.onnx"
  sed -e 's/^name = "selfie"/name = "selfie-dynamic-batch"/' -e "s|^file = .*|file = \"$(basename "$DYN").onnx\"|" \
    -e '/^sha256/d' -e '/^notice/d' models/selfie.toml > "$DYN.toml"
fi
for b in 1 4; do run --model "$DYN.toml" -f h264 -k composite -b green --batch $b --runs 3; done
