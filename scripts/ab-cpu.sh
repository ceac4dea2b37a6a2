#!/usr/bin/env bash
# CPU side by side of two matteflow binaries, alternating, on this machine (no GPU needed):
#   scripts/ab-cpu.sh OLD_BINARY NEW_BINARY [ROUNDS]
# - conversion: the selfie model on the 1280x720 H.264 clip of scripts/bench.sh over green (fps after the first
#   call), ROUNDS times each;
# - live: a 1280x720@30 test pattern with the selfie model to a recording, 20 s (output fps, glass-to-glass p95,
#   CPU), twice each;
# - outputs: the masks of bikes.mp4 (-k mask, PNG) from both binaries, compared byte for byte.
# Each run takes /tmp/mf-timing.lock, as the timing tests do.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OLD=$(realpath "$1"); NEW=$(realpath "$2"); ROUNDS=${3:-3}
cd "$ROOT"
CLIP=target/bench/bikes_720p.mp4
[ -s "$CLIP" ] || { echo "make $CLIP first: scripts/bench.sh"; exit 1; }
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); old $OLD, new $NEW"
for r in $(seq "$ROUNDS"); do
  for b in old new; do
    bin=$OLD; [ $b = new ] && bin=$NEW
    fps=$(flock /tmp/mf-timing.lock "$bin" bench "$CLIP" --model selfie -f h264 -k composite -b green --runs 1 2>&1 \
      | sed -n 's/.*after it: infer \([0-9.]*\) ms\/frame, \([0-9.]*\) fps.*/\2 fps (infer \1 ms)/p')
    echo "convert 720p selfie, round $r, $b: $fps"
  done
done
for r in 1 2; do
  for b in old new; do
    bin=$OLD; [ $b = new ] && bin=$NEW
    flock /tmp/mf-timing.lock "$bin" live --input testsrc:ball --size 1280x720 --fps 30 --model selfie --output "$W/l.mp4" \
      --overwrite --duration 20 --stats-interval 0 --report "$W/l.json" > /dev/null 2>&1
    python3 - "$W/l.json" "live 720p selfie, round $r, $b" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["summary"]; g = s["glass_to_glass"]
print(f"{sys.argv[2]}: {s['output'] / s['seconds']:.1f} fps out, p50 {g['p50']:.1f} / p95 {g['p95']:.1f} ms, CPU {s['cpu_percent']:.0f} %")
PY
  done
done
for b in old new; do
  bin=$OLD; [ $b = new ] && bin=$NEW
  "$bin" convert assets/media/bikes.mp4 -k mask -o "$W/$b/" --model selfie --device cpu > /dev/null 2>&1
done
echo "masks of bikes.mp4: $(ls "$W/old" | wc -l) / $(ls "$W/new" | wc -l) frames; \
$(cd "$W/old" && md5sum ./* | md5sum | cut -c1-12) vs $(cd "$W/new" && md5sum ./* | md5sum | cut -c1-12) \
($(diff -rq "$W/old" "$W/new" > /dev/null && echo byte-identical || echo DIFFERENT))"
