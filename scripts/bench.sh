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
run --model selfie -f h264 -k composite -b green
run --model selfie -f h264 -k composite -b blur
run --model selfie -f prores -k alpha -b transparent
run --model selfie-landscape -f h264 -k composite -b green
