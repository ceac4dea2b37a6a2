#!/usr/bin/env bash
# The control panel's previews must not slow the stream: a 640x480@30 live test pattern matted with the selfie
# model into a recording for 20 s, with the control endpoint on, and from second 4 for 15 s nobody / one
# client / two clients reading the MJPEG previews (the output, and the original before matting). Prints one
# row of docs/BENCHMARKS.md's table: fps out, glass-to-glass p50/p95/max, matte p50/p95, dropped, CPU of the
# process and of the preview thread (mf-preview; threads under 0.5 % are not listed: 0).
#   scripts/bench-preview.sh none|output|both
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-none}
bin=target/release/matteflow
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" live --input testsrc:ball --size 640x480 --fps 30 --model selfie --output "$work/bm.mkv" --background green \
    --control "127.0.0.1:$port" --duration 20 --stats-interval 0 --report "$work/report.json" 2>"$work/log" &
live=$!
watch() { sleep 4; timeout 15 curl -s "http://127.0.0.1:$port/preview.mjpg$1" -o "$work/$2.mjpg" || true; }
case "$mode" in
    none) ;;
    output) watch "" out & ;;
    both) watch "" out & watch "?view=original" orig & ;;
    *) echo "mode: none, output or both" >&2; exit 2 ;;
esac
wait "$live"
wait
for f in "$work"/*.mjpg; do
    [ -e "$f" ] || continue
    python3 - "$f" <<'PY'
import os, sys
b = open(sys.argv[1], "rb").read()
n = b.count(b"--frame")
print(f"{os.path.basename(sys.argv[1])}: {n} JPEGs, {len(b) / max(n, 1) / 1000:.1f} KB each, {n / 15:.1f} fps")
PY
done
python3 - "$work/report.json" "$mode" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["summary"]
g, m = s["glass_to_glass"], s["matte"]
preview = sum(t["percent"] for t in s.get("cpu_by_thread", []) if t["thread"] == "mf-preview")
print(f"| {sys.argv[2]} | {s['fps']:.1f} | {g['p50']:.1f} / {g['p95']:.1f} / {g['max']:.1f} | {m['p50']:.1f} / {m['p95']:.1f} | "
      f"{s['dropped']} | {s['cpu_percent']:.0f} | {preview:.1f} |")
PY
