#!/usr/bin/env bash
# Live benchmark: a 1280x720@30 live test pattern, matted with the selfie model, pushed to a real nginx-rtmp
# server on this machine, for DURATION seconds (default 30). Prints matteflow's final statistics (output fps,
# inferred / reused / skipped frames, glass-to-glass p50/p95/max, CPU %) and pulls the stream back to check
# the server really received 1280x720 video.
#   scripts/bench-live.sh [DURATION] [extra matteflow live flags…]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-30}
shift || true
bin=target/release/matteflow
[ -x "$bin" ] || cargo build --release --locked
work=$(mktemp -d)
trap 'kill $(cat "$work/nginx.pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/logs"
cat > "$work/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;
daemon on;
pid $work/nginx.pid;
error_log $work/logs/error.log;
events { worker_connections 64; }
rtmp { server { listen 127.0.0.1:$port; application live { live on; } } }
CONF
nginx -p "$work" -c "$work/nginx.conf"
url="rtmp://127.0.0.1:$port/live/bench"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); commit $(git rev-parse --short HEAD)"
echo "command: matteflow live --input testsrc --size 1280x720 --fps 30 --output $url --duration $duration --stats-interval 10 $*"
( sleep 5; timeout 8 gst-launch-1.0 -q rtmp2src location="$url" ! flvdemux ! h264parse ! fakesink num-buffers=60 >/dev/null 2>&1 \
    && echo "pull-back: the server delivered the stream" || echo "pull-back: FAILED" ) &
"$bin" live --input testsrc --size 1280x720 --fps 30 --output "$url" --duration "$duration" \
    --stats-interval 10 --report "$work/report.json" "$@"
wait
python3 - "$work/report.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["summary"]
g = s["glass_to_glass"]
print(f"RESULT output {s['output']} frames in {s['seconds']:.1f} s = {s['output']/s['seconds']:.1f} fps; "
      f"inferred {s['inferred']}, reused mask {s['reused']}, skipped stale {s['skipped_stale']}, dropped {s['dropped']}, "
      f"output drops {s['output_dropped']}; glass-to-glass p50 {g['p50']:.1f} ms, p95 {g['p95']:.1f} ms, max {g['max']:.1f} ms; "
      f"matte p50 {s['matte']['p50']:.1f} ms; CPU {s['cpu_percent']:.0f} % of one core; RSS {s['rss_mib']:.0f} MiB")
print("RESULT CPU by thread (% of one core): " + ", ".join(f"{t['thread']} {t['percent']:.0f}" for t in s.get("cpu_by_thread", [])))
PY
