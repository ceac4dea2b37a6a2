#!/usr/bin/env bash
# The GPU benchmark of docs/BENCHMARKS.md, side by side on one machine: BiRefNet (random weights, built from
# the official repository and exported there; never part of this repository) and IS-Net, in PyTorch eager /
# torch.compile (scripts/gpu_bench_peers.py), in ONNX Runtime's CUDA EP with host tensors and with IO binding
# on device buffers (`matteflow gpu-bench`: batch 1 and N, CUDA graphs, NHWC, per-node profile), and end to end
# through matteflow on a 1080p file (`matteflow bench`, CPU stages and --cuda-stages).
#
#   scripts/gpu-bench.sh STEP...      steps: env peers-l peers-t mf-general mf-lite mf-isnet export-t8 mf-batch
#                                     decode-check e2e-decode batch-lite determinism contention f16io bg-check
#                                     smooth-check live-gpu chroma-check
#                                     ncu-lite ncu-general ncu-isnet prep-lite prep-general prep2 prep-quality
#                                     peers-fixed-l peers-fixed-t prep3 final15 batch15 epopt graph-check e2e-ab element-net
#                                     e2e-steady wa queued queued-jobs i420 one-stream model-probe
#                                     encoder-bound timeline beside bursts contexts connections decoder idle other-streams
#                                     own-stream nvdec nvdec-beside
#
# Needs (on the GPU machine): the runtime bundle of scripts/gpu-bundle.sh at $KIT/files/bundle, ONNX Runtime
# GPU at $KIT/ort, a 1080p clip ($CLIP), the BiRefNet checkout ($BIREFNET_REPO), IS-Net ($ISNET), and for the
# fp16 export onnxconverter-common wheels in $WHEELS. The clips are made on the development machine:
#   gst-launch-1.0 -q filesrc location=assets/media/bikes.mp4 ! decodebin ! videoconvert ! videoscale \
#     ! video/x-raw,width=1920,height=1080,format=I420 ! x264enc speed-preset=veryfast bitrate=8000 ! h264parse \
#     ! mp4mux ! filesink location=.gpu/bikes_1080p.mp4
#   gst-launch-1.0 -q videotestsrc num-buffers=30 pattern=smpte ! video/x-raw,width=320,height=240,format=I420,framerate=30/1 \
#     ! matroskamux ! filesink location=.gpu/raw_320.mkv
# live-gpu takes a live 1920x1080@30 test pattern; LIVE_INPUT=file plays $LIVE_CLIP (default $CLIP, bikes_1080p:
# H.264 1080p at 25 fps, 10 s) as the live input instead, at its own pace, and runs the GPU stages twice: decoded
# to system memory and uploaded (--host-decode), and decoded by nvcodec into CUDA memory (the default); the
# report's "decode" says which ran. A 1080p30 clip for it (the clip twice, frames repeated to 30 fps, square
# pixels (live decoding into CUDA memory falls back to host decode on non-square pixels, which bikes_1080p has),
# no B-frames (with them live played the clip at 19.3 fps, 2026-12-02: a defect not yet found):
#   M=assets/media/bikes.mp4; gst-launch-1.0 -q concat name=c ! videoconvert ! videoscale ! videorate \
#     ! video/x-raw,width=1920,height=1080,pixel-aspect-ratio=1/1,format=I420,framerate=30/1 \
#     ! x264enc speed-preset=veryfast bitrate=8000 bframes=0 ! h264parse ! mp4mux ! filesink location=.gpu/bikes_1080p30nb.mp4 \
#     filesrc location=$M ! decodebin ! c. filesrc location=$M ! decodebin ! c.
# IS-Net (.deps/models/isnet-medium.onnx, 88 MB) is over the device tool's 64 MiB carry: split it
# (`split -b 45M … .gpu/isn1/isn. ; mv …ab .gpu/isn2/`), carry the halves in two calls and `cat` them into $ISNET.
# Exports go to $MODELS. Each step is bounded by
# `timeout -s KILL`; logs and JSON go to $OUT/STEP.log and $OUT/STEP.tgz.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KIT=${KIT:-/tmp/kit/root}
MODELS=${MODELS:-/tmp/models}
OUT=${OUT:-$ROOT/out/gpu-bench}
CLIP=${CLIP:-$KIT/files/bikes_1080p.mp4}
RAWCLIP=${RAWCLIP:-$KIT/files/raw_320.mkv}   # raw video in Matroska: no decoder, so the cudaupload branch
ISNET=${ISNET:-$KIT/files/isnet-medium.onnx}
# gst-launch pieces of the pipelines the beside steps run next to the model (gpu-bench --beside gst:…)
SRC="filesrc location=$CLIP ! qtdemux ! h264parse" SNK="appsink name=sink max-buffers=20 sync=false"
CUDAMEM="video/x-raw(memory:CUDAMemory)"
BIREFNET_REPO=${BIREFNET_REPO:-$ROOT/.gpu/birefnet}
WHEELS=${WHEELS:-$ROOT/.gpu/whl}
RUNS=${RUNS:-20}
mkdir -p "$OUT" "$MODELS"
# The peers steps need only Python; the matteflow steps need the bundle.
# shellcheck disable=SC1091
[ -f "$KIT/files/bundle/env.sh" ] && . "$KIT/files/bundle/env.sh"
export ORT_DYLIB_PATH=$KIT/ort/libonnxruntime.so.1.31.1 PYTHONUNBUFFERED=1
export MATTEFLOW_EXPERIMENTAL_CUDA_STAGES=1   # older binaries still ask for it

T() { # T SECONDS CMD...: run bounded, say how it ended
  local s=$1; shift
  echo "+ $*"
  local t0=$SECONDS
  timeout -s KILL "$s" "$@"
  echo "[rc $? after $((SECONDS - t0)) s]"
}

gpu_bench() { # LABEL ONNX MANIFEST GFLOP ARGS...: model-only timing
  local label=$1 onnx=$2 man=$3 gflop=$4; shift 4
  local gf=(); [ "$gflop" != 0 ] && gf=(--gflop "$gflop")
  T 240 "${MF:-matteflow}" gpu-bench --device cuda --model "$onnx" --manifest "$man" --runs "$RUNS" "${gf[@]}" \
    --timeout 230 --json "$W/gb-$label.json" "$@"
}

profile() { # LABEL ONNX MANIFEST: ONNX Runtime per-node profile of 5 device runs, summarised
  local label=$1 onnx=$2 man=$3
  T 180 matteflow gpu-bench --device cuda --model "$onnx" --manifest "$man" --runs 5 --device-only \
    --timeout 170 --ort-profile "$W/prof-$label"
  local f
  f=$(ls -t "$W"/prof-"$label"*.json 2>/dev/null | head -1)
  [ -n "$f" ] && python3 "$ROOT/scripts/ort_profile_summary.py" "$f" --json "$W/profsum-$label.json" && rm -f "$f"
}

smi_start() { # LABEL: sample the GPU's memory, load, SM clock and power every 100 ms into $W/smi-LABEL.csv
  nvidia-smi --query-gpu=memory.used,utilization.gpu,clocks.sm,power.draw,temperature.gpu --format=csv,noheader,nounits \
    -lms 100 > "$W/smi-$1.csv" &
  SMI=$!
}

smi_stop() { # LABEL: stop the sampler; print the peak memory, mean load, and the SM clock and power while busy
  kill "$SMI" 2>/dev/null; wait "$SMI" 2>/dev/null
  sort -t, -k3 -n "$W/smi-$1.csv" | awk -F', ' '
    { if ($1 > m) m = $1; u += $2; n++ }
    $2 >= 50 { c[b++] = $3; p += $4; if ($5 > t) t = $5 }
    END { if (n) printf "GPU memory peak %d MiB, mean utilisation %.0f%% (%d samples)", m, u / n, n
          if (b) printf "; while busy (%d samples): SM clock min %d, median %d, max %d MHz; power %.0f W; up to %d C", b, c[0], c[int(b / 2)], c[b - 1], p / b, t
          if (n) printf "\n" }'
}

e2e() { # LABEL ONNX MANIFEST ARGS...: 1080p file conversion, GPU memory, load, clock and power sampled alongside
  local label=$1 onnx=$2 man=$3; shift 3
  smi_start "$label"
  T 120 "${MF:-matteflow}" bench "$CLIP" --device cuda --model "$onnx" --manifest "$man" -f h264 -k composite -b green --runs 1 "$@"
  smi_stop "$label"
}

beside_each() { # NAME ONNX MANIFEST "EXTRA ARGS" SPEC...: the model alone, then its queued runs with each SPEC
  # beside them (gpu-bench --beside; the runs also timed again once it has stopped)
  local name=$1 onnx=$2 man=$3 extra=$4 w; shift 4
  echo "== alone $extra"
  # shellcheck disable=SC2086  # (the extra arguments split into arguments)
  gpu_bench "$name-alone" "$onnx" "$man" 0 --batch 1 --device-only $extra 2>&1 | grep -E "queued|rc "
  for w in "$@"; do
    echo "== beside: $w $extra"
    # shellcheck disable=SC2086
    gpu_bench "$name-beside" "$onnx" "$man" 0 --batch 1 --device-only $extra --beside "$w" 2>&1 | grep -E "beside|rc |rror"
  done
}

ops_models() { # NAME|ONNX|MANIFEST of steps queued, i420, one-stream and model-probe (IS-Net, step wa's lite-ops / general-ops) that exist and E2E_ONLY picks
  local m name onnx man
  for m in "isnet|$ISNET|isnet" "lite-ops|$MODELS/birefnet-lite-ops.onnx|birefnet-lite" "general-ops|$MODELS/birefnet-general-ops.onnx|birefnet-general"; do
    IFS='|' read -r name onnx man <<< "$m"
    [ -n "${E2E_ONLY:-}" ] && [[ " $E2E_ONLY " != *" $name "* ]] && continue
    [ -f "$onnx" ] || { echo "skip $name: no $onnx" >&2; continue; }
    echo "$name|$onnx|$ROOT/models/$man.toml"
  done
}

ab_e2e() { # NAME ONNX MANIFEST "OLD ARGS" "NEW ARGS": end to end with $OLD_MF, $MID_MF if set (with the new args) and
  # this binary alternating, AB_RUNS (2) times each
  local name=$1 onnx=$2 man=$3 old=$4 new=$5 r
  local keep="^(decode wait|preprocess|infer|postprocess|encode push)|after it|model on|steady|end to end:|alone|utilisation|CUDA graph|queued behind|had finished|NVDEC"
  for r in $(seq "${AB_RUNS:-2}"); do
    # shellcheck disable=SC2086  # (the argument strings split into arguments)
    echo "== $name old run $r"; MF=$OLD_MF e2e "$name-old-$r" "$onnx" "$man" --cuda-stages $old 2>&1 | grep -E "$keep"
    if [ -n "${MID_MF:-}" ]; then
      # shellcheck disable=SC2086
      echo "== $name mid ($MID_MF) run $r"; MF=$MID_MF e2e "$name-mid-$r" "$onnx" "$man" --cuda-stages $new 2>&1 | grep -E "$keep"
    fi
    # shellcheck disable=SC2086
    echo "== $name new run $r"; e2e "$name-new-$r" "$onnx" "$man" --cuda-stages $new 2>&1 | grep -E "$keep"
  done
}

same_h264() { # NAME ONNX MANIFEST "OLD ARGS" "NEW ARGS": the 1080p H.264 composites of $OLD_MF and this binary, decoded
  # and compared frame by frame
  local name=$1 onnx=$2 man=$3 old=$4 new=$5 v
  rm -rf /tmp/i4 && mkdir -p /tmp/i4
  # shellcheck disable=SC2086
  T 120 "$OLD_MF" convert "$CLIP" -o /tmp/i4/old.mp4 -k composite -b green --model "$onnx" --manifest "$man" --device cuda --cuda-stages $old 2>&1 | tail -1
  # shellcheck disable=SC2086
  T 120 matteflow convert "$CLIP" -o /tmp/i4/new.mp4 -k composite -b green --model "$onnx" --manifest "$man" --device cuda --cuda-stages $new 2>&1 | tail -1
  for v in old new; do
    gst-launch-1.0 -q filesrc location=/tmp/i4/$v.mp4 ! qtdemux ! h264parse ! openh264dec ! video/x-raw,format=I420 ! filesink location=/tmp/i4/$v.yuv
    # the frames' presentation times as the file gives them
    gst-launch-1.0 -v filesrc location=/tmp/i4/$v.mp4 ! qtdemux ! fakesink silent=false 2>&1 | grep -o "pts: [0-9:.]*" | sort > /tmp/i4/$v.pts
  done
  echo "PTS $name new vs old: $(wc -l < /tmp/i4/new.pts) vs $(wc -l < /tmp/i4/old.pts) frames; $(cmp -s /tmp/i4/old.pts /tmp/i4/new.pts && echo identical || echo DIFFER)"
  echo "H264 $name new vs old ($OLD_MF): $(python3 - /tmp/i4/old.yuv /tmp/i4/new.yuv <<'PY'
import sys, numpy as np
a, b = (np.fromfile(f, np.uint8) for f in sys.argv[1:3])
n = 1920 * 1080 * 3 // 2
if a.size != b.size:
    print(f"sizes differ: {a.size // n} vs {b.size // n} frames")
else:
    d = np.abs(a.astype(int) - b.astype(int)).reshape(-1, n)
    print(f"{a.size // n} frames; identical frames {int((d.max(1) == 0).sum())}; max {d.max()} levels, mean {d.mean():.5f}")
PY
)"
  rm -rf /tmp/i4
}

same_masks() { # NAME ONNX MANIFEST MF_A "ARGS_A" MF_B "ARGS_B": bikes_1080p's masks (GPU stages) from two binaries or
  # argument sets, compared
  local name=$1 onnx=$2 man=$3 a=/tmp/sm-$1-a b=/tmp/sm-$1-b
  rm -rf "$a" "$b"
  # shellcheck disable=SC2086  # (the argument strings split into arguments)
  T 120 "$4" convert "$CLIP" -k mask -o "$a/" --model "$onnx" --manifest "$man" --device cuda --cuda-stages $5 2>&1 | tail -1
  # shellcheck disable=SC2086
  T 120 "$6" convert "$CLIP" -k mask -o "$b/" --model "$onnx" --manifest "$man" --device cuda --cuda-stages $7 2>&1 | tail -1
  echo "MASKS $name bikes_1080p $6 $7 vs $4 $5: $(python3 "$ROOT/scripts/compare-masks.py" "$a" "$b")"
  rm -rf "$a" "$b"
}

nginx_start() { # DIR PORT: nginx-rtmp from the bundle on 127.0.0.1:PORT (application "live"); fails loudly
  local nx=$1 port=$2
  rm -rf "$nx" && mkdir -p "$nx/logs"
  printf 'load_module %s;\ndaemon on;\npid %s/nginx.pid;\nerror_log %s/logs/error.log;\nevents { worker_connections 64; }\nrtmp { server { listen 127.0.0.1:%s; application live { live on; } } }\n' \
    "$KIT/files/bundle/nginx/ngx_rtmp_module.so" "$nx" "$nx" "$port" > "$nx/nginx.conf"
  # (Debian's nginx opens its compiled-in access log at start, even with no http block: the folder must exist.)
  mkdir -p /var/log/nginx 2>/dev/null
  LD_LIBRARY_PATH="$KIT/files/bundle/nginx" "$KIT/files/bundle/nginx/nginx" -p "$nx" -c "$nx/nginx.conf" \
    || { echo "NGINX DID NOT START: no RTMP in this step"; return 1; }
}

nginx_stop() { # DIR
  [ -f "$1/nginx.pid" ] && kill "$(cat "$1/nginx.pid")"
}

ncu_model() { # LABEL ONNX MANIFEST: Nsight Compute over one steady-state run (gpu-bench --profile-run), summarised
  local label=$1 onnx=$2 man=$3
  T 400 ncu --clock-control none --cache-control none --profile-from-start off --metrics gpu__time_duration.sum \
    --csv --page raw --print-units base --log-file "$W/ncu-$label.csv" \
    matteflow gpu-bench --device cuda --model "$onnx" --manifest "$man" --runs 3 --device-only --profile-run --timeout 390 | tail -3
  python3 "$ROOT/scripts/ncu_summary.py" "$W/ncu-$label.csv" --label "$label" --json "$W/ncusum-$label.json" --top ${NCU_TOP:-25}
}

step() {
  case "$1" in
    env)
      nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
      T 60 matteflow doctor --device cuda
      ;;
    peers-l | peers-t)
      local v=swin_v1_l extra=()
      [ "$1" = peers-t ] && v=swin_v1_t && extra=(--compile --batch 8)
      python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl && export PYTHONPATH=/tmp/site
      T 560 python3 "$ROOT/scripts/gpu_bench_peers.py" --repo "$BIREFNET_REPO" --variant "$v" --models "$MODELS" \
        --out "$W" --runs "$RUNS" --export --fp16 "${extra[@]}"
      ls -la "$MODELS"
      ;;
    mf-general | mf-lite)
      local name=birefnet-general g=2362 batches=1,2,4,8
      [ "$1" = mf-lite ] && name=birefnet-lite g=469 batches=1,2,4,8,16
      local man="$ROOT/models/$name.toml"
      gpu_bench "$name-fp32" "$MODELS/$name.onnx" "$man" $g --batch 1
      gpu_bench "$name-fp16" "$MODELS/$name-fp16.onnx" "$man" $g --batch $batches
      gpu_bench "$name-fp16-graph" "$MODELS/$name-fp16.onnx" "$man" $g --batch 1 --device-only --cuda-graph
      gpu_bench "$name-fp16-nhwc" "$MODELS/$name-fp16.onnx" "$man" $g --batch 1,4 --device-only --cuda-nhwc
      profile "$name-fp16" "$MODELS/$name-fp16.onnx" "$man"
      e2e "$name-fp16-cpu-stages" "$MODELS/$name-fp16.onnx" "$man"
      e2e "$name-fp16-cuda-stages" "$MODELS/$name-fp16.onnx" "$man" --cuda-stages
      ;;
    export-[lt]*)
      # export-l1 / export-t8 …: one export (Swin-L or Swin-T, fixed batch N, 1 = the plain file name) + fp16
      local v=swin_v1_l b=${1#export-?}
      [ "${1:7:1}" = t ] && v=swin_v1_t
      local eb=(); [ "$b" != 1 ] && eb=(--export-batch "$b")
      python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$WHEELS"/*.whl && export PYTHONPATH=/tmp/site
      T 240 python3 "$ROOT/scripts/gpu_bench_peers.py" --repo "$BIREFNET_REPO" --variant $v --models "$MODELS" \
        --out "$W" --skip-eager --export --fp16 ${FP16IO:+--fp16-io} "${eb[@]}" 2>&1 | grep -v "will be truncated\|warnings.warn\|_guards.py\|_modules\['"
      ;;
    batch-export)
      # Fixed-batch exports (the dynamic-batch export falls back to batch 1: the Swin window code guards batch ≤ 2)
      python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$WHEELS"/*.whl && export PYTHONPATH=/tmp/site
      T 200 python3 "$ROOT/scripts/gpu_bench_peers.py" --repo "$BIREFNET_REPO" --variant swin_v1_l --models "$MODELS" \
        --out "$W" --skip-eager --export --fp16 --export-batch 4
      T 150 python3 "$ROOT/scripts/gpu_bench_peers.py" --repo "$BIREFNET_REPO" --variant swin_v1_t --models "$MODELS" \
        --out "$W" --skip-eager --export --fp16 --export-batch 8
      ;;
    mf-batch)
      gpu_bench birefnet-general-fp16-b4 "$MODELS/birefnet-general-b4-fp16.onnx" "$ROOT/models/birefnet-general.toml" 2362 --batch 4 --device-only
      gpu_bench birefnet-lite-fp16-b8 "$MODELS/birefnet-lite-b8-fp16.onnx" "$ROOT/models/birefnet-lite.toml" 469 --batch 8 --device-only
      ;;
    mf-graph)
      # CUDA graphs (fixed input/output addresses through IO binding): model alone and end to end
      for n in birefnet-lite birefnet-general; do
        gpu_bench "$n-fp16-graph" "$MODELS/$n-fp16.onnx" "$ROOT/models/$n.toml" "$([ $n = birefnet-lite ] && echo 469 || echo 2362)" \
          --batch 1 --device-only --cuda-graph
        e2e "$n-fp16-cuda-stages-graph" "$MODELS/$n-fp16.onnx" "$ROOT/models/$n.toml" --cuda-stages --cuda-graph
      done
      gpu_bench isnet-graph "$ISNET" "$ROOT/models/isnet.toml" 0 --batch 1 --device-only --cuda-graph
      e2e isnet-cuda-stages-graph "$ISNET" "$ROOT/models/isnet.toml" --cuda-stages --cuda-graph
      ;;
    mf-isnet)
      local man="$ROOT/models/isnet.toml"
      gpu_bench isnet "$ISNET" "$man" 0 --batch 1
      gpu_bench isnet-graph "$ISNET" "$man" 0 --batch 1 --device-only --cuda-graph
      profile isnet "$ISNET" "$man"
      e2e isnet-cpu-stages "$ISNET" "$man"
      e2e isnet-cuda-stages "$ISNET" "$man" --cuda-stages
      ;;
    decode-check)
      # Decoded frames in CUDA memory: nvh264dec straight into our context, and raw video through cudaupload;
      # the kernels on the decoder's own buffers against the CPU.
      T 90 matteflow -v gpu-check --runs 5 --decode "$CLIP" --frames 150
      [ -f "$RAWCLIP" ] && T 60 matteflow -v gpu-check --runs 3 --decode "$RAWCLIP" --frames 30
      ;;
    chroma-check)
      # NV12 read as videoconvert reads it (interpolated chroma, its fixed-point matrix and thread stripes): the
      # conversion kernels against the CPU reference on random and GStreamer-made frames (uploaded), that
      # reference against videoconvert itself, and on nvh264dec's own CUDA buffers (the shipped bikes.mp4, found
      # under the working directory).
      (cd "$ROOT" && T 300 matteflow -v gpu-check --runs 3 --frames 60)
      ;;
    e2e-decode)
      # The same conversion with decoded frames left in CUDA memory (default) and decoded to system memory +
      # uploaded (--host-decode); lite also in batches of 8 when the fixed-batch-8 export is there.
      e2e isnet-cuda-decode "$ISNET" "$ROOT/models/isnet.toml" --cuda-stages
      e2e isnet-host-decode "$ISNET" "$ROOT/models/isnet.toml" --cuda-stages --host-decode
      # Software H.264 decoding (no NVDEC, no second CUDA context time-slicing with inference): tells whether
      # the in-pipeline inference slowdown came from nvh264dec's own context (--host-decode keeps that).
      GST_PLUGIN_FEATURE_RANK=nvh264dec:NONE,openh264dec:PRIMARY \
        e2e isnet-sw-decode "$ISNET" "$ROOT/models/isnet.toml" --cuda-stages --host-decode
      e2e lite-cuda-decode "$MODELS/birefnet-lite-fp16.onnx" "$ROOT/models/birefnet-lite.toml" --cuda-stages
      e2e lite-host-decode "$MODELS/birefnet-lite-fp16.onnx" "$ROOT/models/birefnet-lite.toml" --cuda-stages --host-decode
      [ -f "$MODELS/birefnet-lite-b8-fp16.onnx" ] &&
        e2e lite-b8-cuda-decode "$MODELS/birefnet-lite-b8-fp16.onnx" "$ROOT/models/birefnet-lite.toml" --cuda-stages --batch 8
      ;;
    batch-lite)
      # Issue 5's GPU number: `matteflow batch` over a folder of the shipped clips (COPIES copies of each) with
      # BiRefNet lite fp16, files/hour and frames/s from its report.
      local dir=/tmp/batch-in out
      rm -rf "$dir" && mkdir -p "$dir"
      for i in $(seq 1 "${COPIES:-4}"); do for c in "$ROOT"/assets/media/*.mp4; do cp "$c" "$dir/$(basename "$c" .mp4)-$i.mp4"; done; done
      # CONFIGS: ';'-separated matteflow arguments; a trailing B8 means the fixed-batch-8 export
      local configs; IFS=';' read -ra configs <<< "${CONFIGS:---jobs 1;--jobs 2;--jobs 2 --batch 8 B8}"
      for args in "${configs[@]}"; do
        local model="$MODELS/birefnet-lite-fp16.onnx" a=($args) label=${args// /}
        if [ "${a[-1]}" = B8 ]; then unset 'a[-1]'; model="$MODELS/birefnet-lite-b8-fp16.onnx"; [ -f "$model" ] || continue; fi
        out=/tmp/batch-out-$label && rm -rf "$out"
        local t0=$SECONDS
        T 300 matteflow batch "$dir" -o "$out" -f h264 -k composite -b green --device cuda --cuda-stages \
          --model "$model" --manifest "$ROOT/models/birefnet-lite.toml" "${a[@]}" --report-json "$W/batch-$label.json"
        python3 - "$W/batch-$label.json" $((SECONDS - t0)) <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); wall = float(sys.argv[2])
done = [x for x in r if x["status"] == "done"]; frames = sum(x["frames"] for x in done)
print(f"{len(done)}/{len(r)} files, {frames} frames in {wall:.0f} s: {len(done) * 3600 / wall:.0f} files/hour, {frames / wall:.1f} frames/s")
PY
      done
      ;;
    contention)
      # Why inference is slower inside the pipeline than alone (IS-Net 6.6 → 15–18 ms): the model alone idle,
      # with idle gaps between runs (as the pipeline's inference thread waits for frames), and with every core
      # busy; then the pipeline, and the pipeline with a light encoder (PNG) in place of x264. (Answer, 2026-11-29:
      # none of these; it was the first call's warm-up, now reported apart by `matteflow bench`.)
      local man="$ROOT/models/isnet.toml"
      gpu_bench isnet-idle "$ISNET" "$man" 0 --batch 1 --device-only
      gpu_bench isnet-pause20 "$ISNET" "$man" 0 --batch 1 --device-only --pause-ms 20
      local burn=() i
      for i in $(nproc --all | xargs seq 1); do (while :; do :; done) & burn+=($!); done
      gpu_bench isnet-cpu-busy "$ISNET" "$man" 0 --batch 1 --device-only
      kill "${burn[@]}"; wait "${burn[@]}" 2>/dev/null
      e2e isnet-cuda-decode "$ISNET" "$man" --cuda-stages
      T 120 matteflow bench "$CLIP" --device cuda --model "$ISNET" --manifest "$man" -f png -k mask --runs 1 --cuda-stages
      ;;
    f16io)
      # Float16 model I/O on the GPU path (needs `FP16IO=1 scripts/gpu-bench.sh export-t1` first): the new
      # kernel cases (BGRx, f16 tensor, f16 logits) against the CPU, the model alone with f32 vs f16 I/O, and
      # the 1080p conversion with each.
      T 60 matteflow gpu-check --runs 5
      local man="$ROOT/models/birefnet-lite.toml"
      gpu_bench lite-fp16 "$MODELS/birefnet-lite-fp16.onnx" "$man" 469 --batch 1
      gpu_bench lite-fp16io "$MODELS/birefnet-lite-fp16io.onnx" "$man" 469 --batch 1
      e2e lite-fp16-cuda "$MODELS/birefnet-lite-fp16.onnx" "$man" --cuda-stages
      e2e lite-fp16io-cuda "$MODELS/birefnet-lite-fp16io.onnx" "$man" --cuda-stages
      e2e lite-fp16io-cuda-heuristic "$MODELS/birefnet-lite-fp16io.onnx" "$man" --cuda-stages --cudnn-search heuristic
      ;;
    bg-check)
      # Image, video and blurred backgrounds on the GPU stages against the CPU stages: same model, same clip, PNG
      # frames out, per-pixel difference.
      python3 -c "import numpy as np, cv2; y, x = np.mgrid[0:720, 0:1280]; cv2.imwrite('/tmp/bg.png', np.dstack([x % 256, y % 256, (x + y) % 256]).astype(np.uint8))"
      local b p
      for b in /tmp/bg.png "$ROOT/assets/media/carphone_pristine.mp4" blur=20; do
        for p in cpu gpu; do
          local extra=(--stages cpu); [ $p = gpu ] && extra=(--cuda-stages)
          rm -rf /tmp/bg-$p
          T 120 matteflow convert "$ROOT/assets/media/bikes.mp4" -o /tmp/bg-$p/ -k composite -b "$b" --device cuda \
            --model "$ISNET" --manifest "$ROOT/models/isnet.toml" "${extra[@]}" 2>&1 | tail -1
        done
        python3 - <<'PY'
import glob, numpy as np, cv2
a, b = sorted(glob.glob('/tmp/bg-cpu/*.png')), sorted(glob.glob('/tmp/bg-gpu/*.png'))
d = np.concatenate([np.abs(cv2.imread(x, cv2.IMREAD_UNCHANGED).astype(int) - cv2.imread(y, cv2.IMREAD_UNCHANGED).astype(int)).ravel() for x, y in zip(a, b)])
print(f"{len(a)} CPU-stage vs {len(b)} GPU-stage frames: max |GPU - CPU| {d.max()}, mean {d.mean():.4f}, 99.9th percentile {np.percentile(d, 99.9)}")
PY
      done
      ;;
    smooth-check)
      # --smooth / --threshold on the GPU stages against the CPU stages (IS-Net, alpha, PNG frames): same RGBA
      # frames in (--host-decode), with vs without the options, batch 1 vs 4, and decoding into CUDA memory.
      local I=(--device cuda --model "$ISNET" --manifest "$ROOT/models/isnet.toml" -k alpha) S=(--smooth 0.6 --threshold 0.1:0.9)
      conv() { local d=$1; shift; rm -rf "/tmp/$d"; T 120 matteflow convert "$ROOT/assets/media/bikes.mp4" -o "/tmp/$d/" "${I[@]}" "$@" 2>&1 | tail -1; }
      conv sm-cpu "${S[@]}" --stages cpu
      conv sm-gpu "${S[@]}" --cuda-stages --host-decode
      conv sm-gpu0 --cuda-stages --host-decode
      conv sm-gpu4 "${S[@]}" --cuda-stages --host-decode --batch 4
      conv sm-nv "${S[@]}" --cuda-stages
      local pair
      for pair in "sm-cpu sm-gpu" "sm-gpu sm-gpu0" "sm-gpu sm-gpu4" "sm-cpu sm-nv"; do
        python3 - $pair <<'PY'
import glob, sys, numpy as np, cv2
a, b = (sorted(glob.glob(f'/tmp/{d}/*.png')) for d in sys.argv[1:3])
d = np.concatenate([np.abs(cv2.imread(x, cv2.IMREAD_UNCHANGED).astype(int) - cv2.imread(y, cv2.IMREAD_UNCHANGED).astype(int)).ravel() for x, y in zip(a, b)])
print(f"{sys.argv[1]} vs {sys.argv[2]}: {len(a)} vs {len(b)} frames: max {d.max()}, mean {d.mean():.5f}, share equal {np.mean(d == 0):.6f}")
PY
      done
      ;;
    determinism)
      # Issue 5 on the GPU: a file's frames are the same whether it was converted alone or batched with other
      # files' frames (lite, fixed batch 8, --cuda-stages, lossless PNG out), compared file by file.
      local m="$MODELS/birefnet-lite-b8-fp16.onnx" man="$ROOT/models/birefnet-lite.toml" dir=/tmp/det-in
      rm -rf "$dir" /tmp/det-out /tmp/det-alone && mkdir -p "$dir" /tmp/det-alone
      cp "$ROOT"/assets/media/*.mp4 "$dir/" && cp "$CLIP" "$dir/"
      T 240 matteflow -v batch "$dir" -o /tmp/det-out -f png -k alpha --device cuda --cuda-stages --model "$m" \
        --manifest "$man" --jobs 3 --batch 8 2>&1 | grep -v " INFO .*frame\b" | tail -15
      for f in "$dir"/*.mp4; do
        local n; n=$(basename "$f" .mp4)
        T 120 matteflow convert "$f" -o "/tmp/det-alone/$n/" -k alpha --device cuda --cuda-stages --model "$m" \
          --manifest "$man" --batch 8 2>&1 | tail -2
        local a b
        a=$(cd "/tmp/det-alone/$n" && ls | wc -l) b=$(cd "/tmp/det-out/$n" 2>/dev/null && ls | wc -l)
        if diff -rq "/tmp/det-alone/$n" "/tmp/det-out/$n" >/dev/null; then echo "IDENTICAL $n: $a frames alone, $b batched"
        else echo "DIFFERENT $n: $a frames alone, $b batched; $(diff -rq "/tmp/det-alone/$n" "/tmp/det-out/$n" | wc -l) files differ"; fi
      done
      ;;
    ncu-*)
      # Kernels of one steady-state run by GPU time (Nsight Compute), for a model file: ncu-lite, ncu-general,
      # ncu-isnet take the fp16 exports / IS-Net; NCU_MODEL=path NCU_MANIFEST=name override (issue 15, item 0).
      local which=${1#ncu-} onnx man
      case $which in
        lite) onnx=$MODELS/birefnet-lite-fp16.onnx man=birefnet-lite ;;
        general) onnx=$MODELS/birefnet-general-fp16.onnx man=birefnet-general ;;
        isnet) onnx=$ISNET man=isnet ;;
        *) onnx=$MODELS/$which.onnx man=${NCU_MANIFEST:-birefnet-general} ;;
      esac
      ncu_model "$which" "${NCU_MODEL:-$onnx}" "$ROOT/models/$man.toml"
      ;;
    prep-lite | prep-general)
      # `matteflow prepare` against the plain fp16 export: model alone (IO binding, batch 1) and Nsight Compute
      # kernel tables of both, outputs compared on random input (issue 15).
      local name=birefnet-${1#prep-} g=2362
      [ "$name" = birefnet-lite ] && g=469
      local man="$ROOT/models/$name.toml"
      python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$WHEELS"/*.whl && export PYTHONPATH=/tmp/site
      local ex=export-l1; [ "$name" = birefnet-lite ] && ex=export-t1
      [ -f "$MODELS/$name-fp16.onnx" ] || step $ex
      T 300 python3 "$ROOT/src/model/prepare.py" "$MODELS/$name.onnx" "$MODELS/$name-prep-fp16.onnx" --fp16 \
        ${PREP_PASSES:+--passes $PREP_PASSES} --report "$W/prep-$name.json"
      gpu_bench "$name-fp16" "$MODELS/$name-fp16.onnx" "$man" $g --batch 1 --device-only
      gpu_bench "$name-prep-fp16" "$MODELS/$name-prep-fp16.onnx" "$man" $g --batch 1 --device-only
      [ -n "${NO_NCU:-}" ] || { ncu_model "$name-fp16" "$MODELS/$name-fp16.onnx" "$man"; ncu_model "$name-prep-fp16" "$MODELS/$name-prep-fp16.onnx" "$man"; }
      ;;
    prep2)
      # Both BiRefNet sizes: export, `prepare` (all default passes, fp16), then model alone (IO binding, batch 1):
      # the plain fp16 export, the prepared one, the prepared one with CUDA graphs; Nsight Compute of the prepared.
      python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$WHEELS"/*.whl && export PYTHONPATH=/tmp/site
      local name g ex
      for name in birefnet-lite birefnet-general; do
        g=2362 ex=export-l1; [ $name = birefnet-lite ] && g=469 ex=export-t1
        [ -f "$MODELS/$name-fp16.onnx" ] || step $ex
        T 300 python3 "$ROOT/src/model/prepare.py" "$MODELS/$name.onnx" "$MODELS/$name-prep-fp16.onnx" --fp16 \
          ${PREP_PASSES:+--passes $PREP_PASSES} --report "$W/prep-$name.json" 2>&1 | grep -v "warn"
        gpu_bench "$name-fp16" "$MODELS/$name-fp16.onnx" "$ROOT/models/$name.toml" $g --batch 1 --device-only
        gpu_bench "$name-prep-fp16" "$MODELS/$name-prep-fp16.onnx" "$ROOT/models/$name.toml" $g --batch 1 --device-only
        gpu_bench "$name-prep-fp16-graph" "$MODELS/$name-prep-fp16.onnx" "$ROOT/models/$name.toml" $g --batch 1 --device-only --cuda-graph
        [ -n "${NO_NCU:-}" ] || [ $name = birefnet-lite -a -z "${NCU_LITE:-}" ] || ncu_model "$name-prep-fp16" "$MODELS/$name-prep-fp16.onnx" "$ROOT/models/$name.toml"
      done
      ;;
    prep3)
      # Pass variants side by side (issue 15): the plain fp16 export; the passes of 57c89dd (window-pad,
      # bias-gelu, skip-layernorm); today's default passes; the default plus head-gather. Model alone, IO
      # binding, batch 1, same lease; Nsight Compute of the default (NO_NCU=1 skips). MODELS_ONLY=lite|general.
      python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$WHEELS"/*.whl && export PYTHONPATH=/tmp/site
      local name g ex v passes
      for name in birefnet-lite birefnet-general; do
        [ -n "${MODELS_ONLY:-}" ] && [ "$name" != "birefnet-$MODELS_ONLY" ] && continue
        g=2362 ex=export-l1; [ $name = birefnet-lite ] && g=469 ex=export-t1
        [ -f "$MODELS/$name-fp16.onnx" ] || step $ex
        for v in old default heads; do
          passes=
          [ $v = old ] && passes=window-pad,bias-gelu,skip-layernorm
          [ $v = heads ] && passes=window-gather,head-gather,gather-linear,qkv-bias,window-pad,bias-gelu,skip-layernorm,conv-bn
          [ -f "$MODELS/$name-prep-$v.onnx" ] || T 300 python3 "$ROOT/src/model/prepare.py" "$MODELS/$name.onnx" "$MODELS/$name-prep-$v.onnx" --fp16 \
            ${passes:+--passes $passes} --report "$W/prep-$name-$v.json" 2>&1 | grep -v "warn"
        done
        gpu_bench "$name-fp16" "$MODELS/$name-fp16.onnx" "$ROOT/models/$name.toml" $g --batch 1 --device-only
        for v in old default heads; do
          gpu_bench "$name-prep-$v" "$MODELS/$name-prep-$v.onnx" "$ROOT/models/$name.toml" $g --batch 1 --device-only
        done
        [ -n "${NO_NCU:-}" ] || ncu_model "$name-prep-default" "$MODELS/$name-prep-default.onnx" "$ROOT/models/$name.toml"
      done
      ;;
    final15)
      # Issue 15 in one call per model size: export, `prepare` with the default passes (fp16), model alone (IO
      # binding, batch 1) for the plain fp16 export and the prepared file (also with --cuda-nhwc and
      # --cuda-graph), masks of the prepared file against the fp32 export on bikes.mp4 (GPU stages), and end to
      # end (1080p H.264 → composite, GPU stages). MODELS_ONLY=lite|general.
      python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$WHEELS"/*.whl && export PYTHONPATH=/tmp/site
      local name g ex man
      for name in birefnet-lite birefnet-general; do
        [ -n "${MODELS_ONLY:-}" ] && [ "$name" != "birefnet-$MODELS_ONLY" ] && continue
        g=2362 ex=export-l1; [ $name = birefnet-lite ] && g=469 ex=export-t1
        man="$ROOT/models/$name.toml"
        [ -f "$MODELS/$name-fp16.onnx" ] || step $ex
        T 300 python3 "$ROOT/src/model/prepare.py" "$MODELS/$name.onnx" "$MODELS/$name-prep.onnx" --fp16 \
          --report "$W/prep-$name.json" 2>&1 | grep -v "warn"
        gpu_bench "$name-fp16" "$MODELS/$name-fp16.onnx" "$man" $g --batch 1 --device-only
        gpu_bench "$name-prep" "$MODELS/$name-prep.onnx" "$man" $g --batch 1 --device-only
        gpu_bench "$name-prep-nhwc" "$MODELS/$name-prep.onnx" "$man" $g --batch 1 --device-only --cuda-nhwc
        gpu_bench "$name-prep-graph" "$MODELS/$name-prep.onnx" "$man" $g --batch 1 --device-only --cuda-graph
        mkdir -p /tmp/q
        for v in "" -prep; do
          T 120 matteflow convert "$ROOT/assets/media/bikes.mp4" -k mask -o "/tmp/q/$name$v-bikes/" --model "$MODELS/$name$v.onnx" \
            --manifest "$man" --device cuda --cuda-stages --overwrite 2>&1 | tail -3
        done
        echo "QUALITY $name bikes prepared fp16 vs fp32: $(python3 "$ROOT/scripts/compare-masks.py" "/tmp/q/$name-bikes" "/tmp/q/$name-prep-bikes")"
        e2e "$name-prep-cuda-stages" "$MODELS/$name-prep.onnx" "$man" --cuda-stages
      done
      ;;
    batch15)
      # Issue 15's batched targets: fixed-batch exports (general b4, lite b8; the dynamic-batch export runs batch 1),
      # prepared with the default passes (fp16), model alone per frame against the plain fp16 export of the same batch.
      # MODELS_ONLY=lite|general.
      python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$WHEELS"/*.whl && export PYTHONPATH=/tmp/site
      local name g ex b man
      for name in birefnet-lite birefnet-general; do
        [ -n "${MODELS_ONLY:-}" ] && [ "$name" != "birefnet-$MODELS_ONLY" ] && continue
        g=2362 b=4 ex=export-l4; [ $name = birefnet-lite ] && g=469 b=8 ex=export-t8
        man="$ROOT/models/$name.toml"
        [ -f "$MODELS/$name-b$b-fp16.onnx" ] || step $ex
        T 400 python3 "$ROOT/src/model/prepare.py" "$MODELS/$name-b$b.onnx" "$MODELS/$name-b$b-prep.onnx" --fp16 \
          --report "$W/prep-$name-b$b.json" 2>&1 | grep -v "warn"
        gpu_bench "$name-b$b-fp16" "$MODELS/$name-b$b-fp16.onnx" "$man" $g --batch $b --device-only
        gpu_bench "$name-b$b-prep" "$MODELS/$name-b$b-prep.onnx" "$man" $g --batch $b --device-only
        gpu_bench "$name-b$b-prep-graph" "$MODELS/$name-b$b-prep.onnx" "$man" $g --batch $b --device-only --cuda-graph
      done
      ;;
    epopt)
      # CUDA EP options on the prepared batch-1 files (binary with --cuda-option): EPOPTS is a ';'-separated list of
      # space-separated option sets; each runs model alone. MODELS_ONLY=lite|general.
      local name g o sets k=0
      IFS=';' read -ra sets <<< "${EPOPTS:-fuse_conv_bias=1;cudnn_conv_use_max_workspace=0;fuse_conv_bias=1 prefer_nhwc=1}"
      for name in birefnet-lite birefnet-general; do
        [ -n "${MODELS_ONLY:-}" ] && [ "$name" != "birefnet-$MODELS_ONLY" ] && continue
        g=2362; [ $name = birefnet-lite ] && g=469
        gpu_bench "$name-prep-base" "$MODELS/$name-prep.onnx" "$ROOT/models/$name.toml" $g --batch 1 --device-only
        for o in "${sets[@]}"; do
          local args=() kv
          for kv in $o; do args+=(--cuda-option "$kv"); done
          k=$((k + 1))
          echo "== $name options: $o"
          gpu_bench "$name-prep-opt$k" "$MODELS/$name-prep.onnx" "$ROOT/models/$name.toml" $g --batch 1 --device-only "${args[@]}"
        done
      done
      ;;
    graph-check)
      # Issue 15 item 3: masks with ONNX Runtime's CUDA graph against the same run without, frame by frame (IS-Net
      # and the prepared lite), GPU stages, bikes.mp4; ORT's verbose log shows when capture engages.
      local name onnx man v
      for m in "isnet|$ISNET|$ROOT/models/isnet.toml" "lite-prep|$MODELS/birefnet-lite-prep.onnx|$ROOT/models/birefnet-lite.toml"; do
        IFS='|' read -r name onnx man <<< "$m"
        [ -f "$onnx" ] || { echo "skip $name: no $onnx"; continue; }
        for v in plain graph; do
          local g=(); [ $v = graph ] && g=(--cuda-graph)
          T 120 matteflow convert "$ROOT/assets/media/bikes.mp4" -k mask -o "/tmp/gc/$name-$v/" --model "$onnx" \
            --manifest "$man" --device cuda --cuda-stages --overwrite "${g[@]}" 2>&1 | grep -i "graph\|error\|frames" | tail -4
        done
        python3 - "/tmp/gc/$name-plain" "/tmp/gc/$name-graph" <<'PY'
import glob, sys, numpy as np, cv2
a, b = (sorted(glob.glob(d + "/*.png")) for d in sys.argv[1:3])
d = [np.abs(cv2.imread(x, 0).astype(int) - cv2.imread(y, 0).astype(int)) for x, y in zip(a, b)]
print(f"GRAPHCHECK {sys.argv[2]}: frames {len(a)}/{len(b)}; per-frame max (first 6) {[int(x.max()) for x in d[:6]]}; "
      f"frames with max > 2: {[i for i, x in enumerate(d) if x.max() > 2][:20]}; overall mean {np.mean([x.mean() for x in d]):.4f}")
PY
      done
      ;;
    e2e-ab)
      # End to end (1080p H.264 → composite, GPU stages, after warm-up) with the previous binary ($OLD_MF) and this
      # one, alternating, twice each: IS-Net and the prepared lite (step final15 makes it). Same inputs, same lease.
      local m name onnx man r
      for m in "isnet|$ISNET|$ROOT/models/isnet.toml" "lite-prep|$MODELS/birefnet-lite-prep.onnx|$ROOT/models/birefnet-lite.toml"; do
        IFS='|' read -r name onnx man <<< "$m"
        [ -f "$onnx" ] || { echo "skip $name: no $onnx"; continue; }
        for r in 1 2; do
          echo "== $name old ($OLD_MF) run $r"; MF=$OLD_MF e2e "$name-old-$r" "$onnx" "$man" --cuda-stages 2>&1 | grep -E "after it|steady|end to end:|utilisation"
          echo "== $name new run $r"; e2e "$name-new-$r" "$onnx" "$man" --cuda-stages 2>&1 | grep -E "after it|steady|end to end:|utilisation"
        done
      done
      ;;
    e2e-steady)
      # Issue 13's "GPU convert end to end ≥ 95 % of the model alone" for BiRefNet: the model alone (batch 1, IO
      # binding), then three end-to-end runs (1080p H.264 → composite, GPU stages; the steady state after the first
      # call), for the plain fp16 exports and, where step final15 or live-gpu made them, the prepared ones.
      # Also IS-Net and step wa's files (lite-ops, general-ops, where that step made them). E2E_ARGS adds
      # arguments to the end-to-end runs (e.g. "--cuda-graph"), ALONE_ARGS to the model-alone run (e.g.
      # "--cuda-graph" again: compare like with like); E2E_ONLY="lite-ops isnet" picks rows by name.
      local m name onnx man r
      for m in "isnet|$ISNET|isnet" "lite-fp16|$MODELS/birefnet-lite-fp16.onnx|birefnet-lite" "general-fp16|$MODELS/birefnet-general-fp16.onnx|birefnet-general" \
               "lite-prep|$MODELS/birefnet-lite-prep.onnx|birefnet-lite" "general-prep|$MODELS/birefnet-general-prep.onnx|birefnet-general" \
               "lite-ops|$MODELS/birefnet-lite-ops.onnx|birefnet-lite" "general-ops|$MODELS/birefnet-general-ops.onnx|birefnet-general"; do
        IFS='|' read -r name onnx man <<< "$m"
        [ -n "${E2E_ONLY:-}" ] && [[ " $E2E_ONLY " != *" $name "* ]] && continue
        [ -f "$onnx" ] || { echo "skip $name: no $onnx"; continue; }
        gpu_bench "$name-alone" "$onnx" "$ROOT/models/$man.toml" 0 --batch 1 --device-only ${ALONE_ARGS:-}
        for r in 1 2 3; do
          echo "== $name run $r"; e2e "$name-$r" "$onnx" "$ROOT/models/$man.toml" --cuda-stages ${E2E_ARGS:-} 2>&1 | grep -E "after it|model on|steady|end to end:|encode alone"
        done
      done
      ;;
    queued)
      # Issue 15's end to end with the model queued on the GPU (ONNX Runtime on a stream of ours, ordered by events
      # between the preprocessing and the mask steps, no host wait per frame) against the previous binary
      # ($OLD_MF: a host wait after preprocessing and at each run's end), same inputs, same lease: per model (IS-Net,
      # and step wa's lite-ops / general-ops where they exist) the model alone with each binary, then end to end
      # (1080p H.264 → composite, GPU stages, steady state) alternating, twice each (E2E_ARGS adds arguments);
      # then the masks of bikes_1080p (PNG, GPU stages) from both binaries compared. Step queued-jobs: IS-Net's
      # masks with three files converted at once (--jobs 3: three jobs around the one shared session) against
      # each file alone (PNG); GRAPH=1 runs both with --cuda-graph (each binding captures a graph of its own; since
      # the ninth session graphs are the default, and NO_GRAPH=1 runs both with --no-cuda-graph).
      local m name onnx man
      for m in $(ops_models); do
        IFS='|' read -r name onnx man <<< "$m"
        MF=$OLD_MF gpu_bench "$name-alone-old" "$onnx" "$man" 0 --batch 1 --device-only 2>&1 | grep -E "IO binding|rc "
        gpu_bench "$name-alone-new" "$onnx" "$man" 0 --batch 1 --device-only 2>&1 | grep -E "IO binding|rc "
        ab_e2e "$name" "$onnx" "$man" "${E2E_ARGS:-}" "${E2E_ARGS:-}"
        rm -rf "/tmp/qm-$name-old" "/tmp/qm-$name-new"
        T 120 "$OLD_MF" convert "$CLIP" -k mask -o "/tmp/qm-$name-old/" --model "$onnx" --manifest "$man" --device cuda --cuda-stages 2>&1 | tail -1
        T 120 matteflow convert "$CLIP" -k mask -o "/tmp/qm-$name-new/" --model "$onnx" --manifest "$man" --device cuda --cuda-stages 2>&1 | tail -1
        echo "MASKS $name bikes_1080p new vs old: $(python3 "$ROOT/scripts/compare-masks.py" "/tmp/qm-$name-old" "/tmp/qm-$name-new")"
      done
      ;;
    queued-jobs)
      local dir=/tmp/jobs-in f n g=()
      [ -n "${GRAPH:-}" ] && g=(--cuda-graph)
      [ -n "${NO_GRAPH:-}" ] && g=(--no-cuda-graph)
      rm -rf "$dir" /tmp/jobs-out /tmp/jobs-alone && mkdir -p "$dir" /tmp/jobs-alone
      cp "$ROOT"/assets/media/*.mp4 "$dir/" && cp "$CLIP" "$dir/"
      T 240 matteflow batch "$dir" -o /tmp/jobs-out -f png -k mask --device cuda --cuda-stages "${g[@]}" --model "$ISNET" \
        --manifest "$ROOT/models/isnet.toml" --jobs 3 2>&1 | tail -4
      for f in "$dir"/*.mp4; do
        n=$(basename "$f" .mp4)
        T 120 matteflow convert "$f" -o "/tmp/jobs-alone/$n/" -k mask --device cuda --cuda-stages "${g[@]}" --model "$ISNET" \
          --manifest "$ROOT/models/isnet.toml" 2>&1 | tail -1
        echo "JOBS $n: $(ls "/tmp/jobs-alone/$n" | wc -l) frames alone, $(ls "/tmp/jobs-out/$n" 2>/dev/null | wc -l) with --jobs 3; $(python3 "$ROOT/scripts/compare-masks.py" "/tmp/jobs-alone/$n" "/tmp/jobs-out/$n")"
      done
      ;;
    nvdec)
      # Issue 15, thirteenth session: H.264 decoded by NVDEC directly and mapped on the model's stream (cuda::nvdec,
      # the default now) against GStreamer's nvh264dec (the same binary with MATTEFLOW_NVDEC=0). Per model
      # (ops_models; E2E_ONLY picks): the composites' H.264 of both decoded and compared frame by frame, with their
      # timestamps, on the clip and on a copy with B-frames (reordered by the decoder); end to end alternating
      # (AB_RUNS); then step other-streams ((c) is NVDEC now).
      local m name onnx man gstdec=/tmp/mf-gstdec bclip=/tmp/bikes_1080p_bframes.mp4
      printf '#!/bin/sh\nMATTEFLOW_NVDEC=0 exec matteflow "$@"\n' > $gstdec && chmod +x $gstdec
      gst-launch-1.0 -q filesrc location="$CLIP" ! qtdemux ! h264parse ! avdec_h264 ! x264enc speed-preset=veryfast bitrate=8000 bframes=3 b-adapt=false \
        ! h264parse ! mp4mux ! filesink location=$bclip || gst-launch-1.0 -q filesrc location="$CLIP" ! qtdemux ! h264parse ! openh264dec \
        ! x264enc speed-preset=veryfast bitrate=8000 bframes=3 b-adapt=false ! h264parse ! mp4mux ! filesink location=$bclip
      for m in $(ops_models); do
        IFS='|' read -r name onnx man <<< "$m"
        OLD_MF=$gstdec same_h264 "$name" "$onnx" "$man" "" ""
        CLIP=$bclip OLD_MF=$gstdec same_h264 "$name-bframes" "$onnx" "$man" "" ""
        OLD_MF=$gstdec ab_e2e "$name" "$onnx" "$man" "" ""
      done
      step other-streams
      ;;
    nvdec-beside)
      # Issue 15, thirteenth session: with NVDEC driven directly and its pictures mapped on the model's stream, the
      # model in the pipeline still took 5.48 ms (5.20 with CPU decoding). What slows it: NVDEC decoding at all,
      # or the map (a kernel on the model's stream, launched from another thread)? Per model (ops_models;
      # E2E_ONLY picks): the model alone; beside it our NVDEC decoding only (no map), mapping on the model's
      # stream, mapping on a stream of its own; nvh264dec for reference.
      local m name onnx man
      for m in $(ops_models); do
        IFS='|' read -r name onnx man <<< "$m"
        beside_each "$name" "$onnx" "$man" "" "nvdec-nomap:$CLIP" "nvdec:$CLIP" "nvdec-own:$CLIP" "decode:$CLIP"
      done
      ;;
    own-stream)
      # Issue 15, thirteenth session: the GPU stages convert finished frames to I420 on the model's stream (in
      # `submit`) instead of the download stream, whose kernel slowed every later replay of the model's CUDA graph.
      # Per model (ops_models; E2E_ONLY picks): end to end alternating with $OLD_MF (which converts on the download
      # stream); the two binaries' H.264 files decoded and compared frame by frame (the same conversion: identical);
      # then this binary in step other-streams' three pipelines ((b) should now match (a)).
      local m name onnx man
      for m in $(ops_models); do
        IFS='|' read -r name onnx man <<< "$m"
        ab_e2e "$name" "$onnx" "$man" "" ""
        same_h264 "$name" "$onnx" "$man" "" ""
      done
      step other-streams
      ;;
    i420)
      # Issue 15, ninth session: the GPU stages' finished frames go down as I420 for x264 (converted on the GPU as
      # videoconvert converts them) and CUDA graphs are on by default. Per model (IS-Net, and step wa's lite-ops /
      # general-ops where they exist; E2E_ONLY picks): the model alone with graphs (the default) and without; end to
      # end (1080p H.264 → composite, GPU stages, steady state, with bench's decode + encode ceiling) alternating
      # with the previous binary ($OLD_MF, which downloads RGBA for the CPU's videoconvert) run with --cuda-graph,
      # twice each; the two binaries' H.264 files decoded and compared frame by frame (the encoder got the same
      # frames: identical); the masks with graphs against --no-cuda-graph.
      local m name onnx man
      for m in $(ops_models); do
        IFS='|' read -r name onnx man <<< "$m"
        gpu_bench "$name-alone-graph" "$onnx" "$man" 0 --batch 1 --device-only 2>&1 | grep -E "IO binding|rc "
        gpu_bench "$name-alone-nograph" "$onnx" "$man" 0 --batch 1 --device-only --no-cuda-graph 2>&1 | grep -E "IO binding|rc "
        ab_e2e "$name" "$onnx" "$man" --cuda-graph ""
        same_h264 "$name" "$onnx" "$man" --cuda-graph ""
        same_masks "$name" "$onnx" "$man" matteflow --no-cuda-graph matteflow ""
      done
      ;;
    one-stream)
      # Issue 15, tenth session: the GPU stages' kernels run on the model's own stream (no waits between streams
      # around each run). Per model (ops_models; E2E_ONLY picks): the model alone (graphs, batch 1); end to end
      # alternating the previous binary ($OLD_MF), $MID_MF if set and this one, AB_RUNS (3) times each; the H.264
      # files of old and new decoded and compared (identical frames expected: only the streams changed); their
      # masks compared.
      local m name onnx man
      for m in $(ops_models); do
        IFS='|' read -r name onnx man <<< "$m"
        gpu_bench "$name-alone" "$onnx" "$man" 0 --batch 1 --device-only 2>&1 | grep -E "IO binding|rc "
        AB_RUNS=${AB_RUNS:-3} ab_e2e "$name" "$onnx" "$man" "" ""
        same_h264 "$name" "$onnx" "$man" "" ""
        same_masks "$name" "$onnx" "$man" "$OLD_MF" "" matteflow ""
      done
      ;;
    encoder-bound)
      # Issue 15: is the end to end rate bound by the H.264 encoder on the CPU (the H200 has no NVENC: x264)? Per
      # model (ops_models; E2E_ONLY picks): bench as measured (composite); with the mask as the output (other
      # pictures for x264, no composite on the GPU); on 8 of the cores (the encoder has less); composite again. The
      # report's "the GPU had finished all it was given before N runs" says how often the GPU waited for the host.
      local m name onnx man keep="encode alone|model on|queued behind|had finished|steady"
      for m in $(ops_models); do
        IFS='|' read -r name onnx man <<< "$m"
        local b=(matteflow bench "$CLIP" --device cuda --model "$onnx" --manifest "$man" -f h264 -b green --runs 1 --cuda-stages)
        echo "== $name composite"; T 120 "${b[@]}" -k composite 2>&1 | grep -E "$keep"
        echo "== $name mask"; T 120 "${b[@]}" -k mask 2>&1 | grep -E "$keep"
        echo "== $name composite, 8 cores"; T 120 taskset -c 0-7 "${b[@]}" -k composite 2>&1 | grep -E "$keep"
        echo "== $name composite again"; T 120 "${b[@]}" -k composite 2>&1 | grep -E "$keep"
      done
      ;;
    timeline)
      # Issue 15: where the frame's GPU time goes in the pipeline (IS-Net: 5.69 ms a frame at 175.6 fps against
      # 5.13 ms for the model alone). Per model (ops_models; E2E_ONLY picks), the GPU's clock and power sampled
      # alongside each: the model alone (RUNS runs, then 400 queued: first and last tenth); the same with the clip
      # decoded beside it; end to end alternating the previous binary ($OLD_MF) and this one, AB_RUNS (2) times
      # each. The report's "stages' stream" line splits the frame's time on the stream: preprocess, model,
      # postprocess + composite, and the gaps between calls.
      local m name onnx man r keep="model on|queued behind|had finished|stages' stream|steady|utilisation"
      for m in $(ops_models); do
        IFS='|' read -r name onnx man <<< "$m"
        smi_start "$name-alone"
        gpu_bench "$name-alone" "$onnx" "$man" 0 --batch 1 --device-only 2>&1 | grep -E "queued|rc "
        RUNS=400 gpu_bench "$name-alone-long" "$onnx" "$man" 0 --batch 1 --device-only 2>&1 | grep -E "queued|rc "
        smi_stop "$name-alone"
        smi_start "$name-beside"
        gpu_bench "$name-decode-beside" "$onnx" "$man" 0 --batch 1 --device-only --beside "decode:$CLIP" 2>&1 | grep -E "queued|rc "
        smi_stop "$name-beside"
        for r in $(seq "${AB_RUNS:-2}"); do
          echo "== $name old ($OLD_MF) run $r"; MF=$OLD_MF e2e "$name-old-$r" "$onnx" "$man" --cuda-stages 2>&1 | grep -E "$keep"
          echo "== $name new run $r"; e2e "$name-new-$r" "$onnx" "$man" --cuda-stages 2>&1 | grep -E "$keep"
        done
      done
      ;;
    beside)
      # Issue 15: what beside the model's runs slows them (IS-Net: 5.48 ms with the clip decoded beside it, 5.13
      # alone). Per model (ops_models; E2E_ONLY picks): the model alone, then its queued runs with each of these
      # beside them in the same CUDA context, paced at the model's rate (gpu-bench --beside): the pipeline's
      # decoding; nvh264dec into CUDA memory, into system memory; openh264 on the CPU, and that uploaded into
      # CUDA memory; one 1080p NV12 frame's memset, device-to-device copy, upload, cuMemAlloc + cuMemFree.
      local m name onnx man
      for m in $(ops_models); do
        IFS='|' read -r name onnx man <<< "$m"
        beside_each "$name" "$onnx" "$man" "" "decode:$CLIP" "gst:$SRC ! nvh264dec ! $CUDAMEM ! $SNK" \
          "gst:$SRC ! nvh264dec ! video/x-raw ! $SNK" "gst:$SRC ! openh264dec ! video/x-raw ! $SNK" \
          "gst:$SRC ! openh264dec ! cudaupload ! $CUDAMEM ! $SNK" memset copy upload alloc
      done
      ;;
    bursts)
      # Issue 15: is the cost of work beside the model's runs per item, or per run it lands in? (IS-Net: one 1080p
      # memset beside each run makes the run 5.47 ms against 5.13.) Per model (ops_models; E2E_ONLY picks): the
      # model alone; with memsets beside one at a time, 4 and 16 back to back (gpu-bench --beside NxSPEC); the
      # pipeline's decoding one frame at a time and 8 at a time; the same without CUDA graphs.
      local m name onnx man g
      for m in $(ops_models); do
        IFS='|' read -r name onnx man <<< "$m"
        for g in "" --no-cuda-graph; do
          beside_each "$name" "$onnx" "$man" "$g" memset 4xmemset 16xmemset "decode:$CLIP" "8xdecode:$CLIP"
        done
      done
      ;;
    contexts)
      # Issue 15: which work beside the model's runs slows them, and does it last? (IS-Net: a 1080p memset on
      # another stream of the context, even 16 back to back every 16 runs, makes every run 5.46 ms against 5.13;
      # an upload or an allocation does not.) Per model (ops_models; E2E_ONLY picks): the model alone; beside
      # it: a memset; our I420 kernel; a memset on the legacy default stream; a memset in a context of its own;
      # nvh264dec in the pipeline's context, and in a context of its own (into CUDA memory, into system memory).
      # Each also times the runs again after the work beside has stopped.
      local m name onnx man
      for m in $(ops_models); do
        IFS='|' read -r name onnx man <<< "$m"
        beside_each "$name" "$onnx" "$man" "" memset kernel memset-null memset-ctx "decode:$CLIP" \
          "gst-own:$SRC ! nvh264dec ! $CUDAMEM ! $SNK" "gst-own:$SRC ! nvh264dec ! video/x-raw ! $SNK"
      done
      ;;
    connections)
      # Issue 15: once a kernel has run on a second stream of the model's CUDA context (the decoder's, the
      # downloads'), every later graph run of IS-Net takes 5.43 ms against 5.11, for good; a second context
      # does not do it. Is it the context's second hardware queue? Per model (ops_models; E2E_ONLY picks): with
      # CUDA_DEVICE_MAX_CONNECTIONS=1 (one queue for all its streams) the model alone, with a memset and with the
      # pipeline's decoding beside it; then end to end, AB_RUNS (2) times: the previous binary ($OLD_MF) with the
      # default queues (8) and with one, this one with one.
      local m name onnx man r keep="model on|queued behind|had finished|stages' stream|steady|utilisation"
      for m in $(ops_models); do
        IFS='|' read -r name onnx man <<< "$m"
        echo "== one queue"
        CUDA_DEVICE_MAX_CONNECTIONS=1 beside_each "$name" "$onnx" "$man" "" memset "decode:$CLIP"
        for r in $(seq "${AB_RUNS:-2}"); do
          echo "== $name old ($OLD_MF) run $r"; MF=$OLD_MF e2e "$name-old-$r" "$onnx" "$man" --cuda-stages 2>&1 | grep -E "$keep"
          echo "== $name old ($OLD_MF), one queue, run $r"
          CUDA_DEVICE_MAX_CONNECTIONS=1 MF=$OLD_MF e2e "$name-old1-$r" "$onnx" "$man" --cuda-stages 2>&1 | grep -E "$keep"
          echo "== $name new, one queue, run $r"
          CUDA_DEVICE_MAX_CONNECTIONS=1 e2e "$name-new1-$r" "$onnx" "$man" --cuda-stages 2>&1 | grep -E "$keep"
        done
      done
      ;;
    decoder)
      # Issue 15: nvh264dec in a context of its own slows the model's runs only while it decodes (IS-Net 5.48 ms
      # against 5.10): its GPU work, or the switches between the contexts? Nsight Compute over the decoder alone
      # (its kernels by GPU time); then per model (ops_models; E2E_ONLY picks) the decoder in its own context
      # beside the runs one frame at a time and 8 at a time, into system memory and into CUDA memory.
      local m name onnx man
      T 200 ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv --page raw --print-units base \
        --launch-count 600 --log-file "$W/ncu-decoder.csv" gst-launch-1.0 -q $SRC ! nvh264dec ! "$CUDAMEM" ! fakesink | tail -3
      python3 "$ROOT/scripts/ncu_summary.py" "$W/ncu-decoder.csv" --label decoder --top 12
      for m in $(ops_models); do
        IFS='|' read -r name onnx man <<< "$m"
        beside_each "$name" "$onnx" "$man" "" "gst-own:$SRC ! nvh264dec ! video/x-raw ! $SNK" \
          "8xgst-own:$SRC ! nvh264dec ! video/x-raw ! $SNK" "gst-own:$SRC ! nvh264dec ! $CUDAMEM ! $SNK" \
          "8xgst-own:$SRC ! nvh264dec ! $CUDAMEM ! $SNK"
      done
      ;;
    idle)
      # Issue 15: the runs slowed by work on another stream of the context (IS-Net 5.43 ms against 5.11, for
      # good once it has happened): do they still slow when each is launched only once the GPU has finished the
      # one before (gpu-bench --wait-idle)? Per model (ops_models; E2E_ONLY picks): alone, and with a memset and
      # with the pipeline's decoding beside, each queued back to back and launched on an idle stream.
      local m name onnx man g
      for m in $(ops_models); do
        IFS='|' read -r name onnx man <<< "$m"
        for g in "" --wait-idle; do
          beside_each "$name" "$onnx" "$man" "$g" memset "decode:$CLIP"
        done
      done
      ;;
    other-streams)
      # Issue 15: the penalty inside the pipeline itself. Per model (ops_models; E2E_ONLY picks), end to end with
      # (a) openh264 on the CPU and PNG out: no kernel on any stream but the model's (the download's conversion to
      # I420 runs only for H.264 and VP9); (b) openh264 and H.264 out: that conversion, on the download stream;
      # (c) nvh264dec and PNG out: the decoder's conversion on its stream. The report's stages' stream line gives
      # the model's time in each (PNG and openh264 are slow: the runs mostly find the GPU idle).
      local m name onnx man keep="model on|stages' stream|steady|NVDEC"
      for m in $(ops_models); do
        IFS='|' read -r name onnx man <<< "$m"
        local b=(matteflow bench "$CLIP" --device cuda --model "$onnx" --manifest "$man" -k composite -b green --runs 1 --cuda-stages)
        echo "== $name (a) CPU decode, PNG out"
        GST_PLUGIN_FEATURE_RANK=nvh264dec:NONE,nvh264sldec:NONE T 200 "${b[@]}" -f png --host-decode 2>&1 | grep -E "$keep"
        echo "== $name (b) CPU decode, H.264 out"
        GST_PLUGIN_FEATURE_RANK=nvh264dec:NONE,nvh264sldec:NONE T 200 "${b[@]}" -f h264 --host-decode 2>&1 | grep -E "$keep"
        echo "== $name (c) nvh264dec, PNG out"
        T 200 "${b[@]}" -f png 2>&1 | grep -E "$keep"
      done
      ;;
    model-probe)
      # Issue 15: why the model's runs take longer inside the pipeline (IS-Net on the H200: 5.45 ms against 5.12
      # alone). Per model (ops_models; E2E_ONLY picks): the model alone on random input and on bikes_1080p's first
      # frame (--input-image), each with and without the L2 cache flushed before each run; with the clip decoded
      # beside it (--decode-beside); then end to end once with the GPU's decoder and once with openh264 on the CPU.
      local m name onnx man frame=/tmp/probe-frame.png
      gst-launch-1.0 -q filesrc location="$CLIP" ! qtdemux ! h264parse ! openh264dec ! videoconvert ! pngenc snapshot=true \
        ! filesink location="$frame"
      for m in $(ops_models); do
        IFS='|' read -r name onnx man <<< "$m"
        gpu_bench "$name-random" "$onnx" "$man" 0 --batch 1 --device-only --flush-l2 2>&1 | grep -E "queued|rc "
        gpu_bench "$name-frame" "$onnx" "$man" 0 --batch 1 --device-only --flush-l2 --input-image "$frame" 2>&1 | grep -E "queued|rc "
        # The model alone with the clip decoded beside it in the same process and CUDA context (nvh264dec, paced at
        # the model's rate): the decoder's share of the model's extra time inside the pipeline.
        gpu_bench "$name-decode-beside" "$onnx" "$man" 0 --batch 1 --device-only --beside "decode:$CLIP" 2>&1 | grep -E "queued|rc "
        e2e "$name-probe" "$onnx" "$man" --cuda-stages 2>&1 | grep -E "model on|queued behind|had finished|steady|after its first"
        # The same with no decoder on the GPU (openh264 on the CPU, frames uploaded): is it NVDEC's work in our context?
        echo "== $name, decoded on the CPU"
        GST_PLUGIN_FEATURE_RANK=nvh264dec:NONE e2e "$name-probe-cpudec" "$onnx" "$man" --cuda-stages --host-decode 2>&1 \
          | grep -E "model on|queued behind|had finished|steady"
      done
      ;;
    element-net)
      # Issue 13 on the GPU: the element over nvcodec's CUDA memory (ordered and budgeted: the caps it negotiates,
      # frames out), and live from an RTMP network stream decoded into CUDA memory (the clip pushed to a local
      # nginx-rtmp at its own pace; the report's "decode"). Needs the bundle's gst-launch-1.0 and the plugin.
      local c=${LIVE_CLIP:-$CLIP} b nx=/tmp/nginx-net
      gst-inspect-1.0 matteflow | grep -E "^  (budget-ms|device|stages) " | head -3
      for b in 0 40; do
        echo "== element budget-ms=$b"
        GST_DEBUG=matteflow:5 T 120 gst-launch-1.0 -e filesrc location="$c" ! qtdemux ! h264parse ! nvh264dec \
          ! matteflow device=cuda budget-ms=$b background=blur ! videoconvert ! x264enc speed-preset=ultrafast ! mp4mux \
          ! filesink location=/tmp/el$b.mp4 > "$W/element-$b.log" 2>&1
        tail -1 "$W/element-$b.log"
        echo "caps with CUDA memory seen: $(grep -c 'memory:CUDAMemory' "$W/element-$b.log") lines; errors: $(grep -ci 'error' "$W/element-$b.log")"
        matteflow probe /tmp/el$b.mp4 | grep -E "duration|frame rate"
      done
      nginx_start $nx 19351
      timeout 60 gst-launch-1.0 -q filesrc location="$c" ! qtdemux ! h264parse ! flvmux streamable=true \
        ! rtmp2sink location=rtmp://127.0.0.1:19351/live/src > "$W/push.log" 2>&1 &
      local push=$!
      sleep 2
      T 60 matteflow live --input rtmp://127.0.0.1:19351/live/src --device cuda --output /tmp/net.mp4 \
        --output rtmp://127.0.0.1:19351/live/out --duration 12 --stats-interval 0 --report "$W/live-net.json" 2>&1 | tail -4
      kill $push 2>/dev/null
      python3 - "$W/live-net.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); s = r["summary"]; g = s["glass_to_glass"]
print(f"LIVE rtmp input: decode {r.get('decode')}; {s['output'] / s['seconds']:.1f} fps out, {s['output'] - s['reused'] - s['passthrough']} of "
      f"{s['output']} frames with their own mask; glass-to-glass p50 {g['p50']:.1f} / p95 {g['p95']:.1f} ms; CPU {s['cpu_percent']:.0f} %")
PY
      nginx_stop $nx
      ;;
    prep-quality)
      # Masks of the prepared fp16 model against the fp32 export on the shipped clips' frames (random weights),
      # and end to end (1080p H.264 → composite, GPU stages) with the prepared models.
      local name clip
      for name in birefnet-lite birefnet-general; do
        for clip in carphone_pristine bikes; do
          for v in "" -fp16 -prep-fp16; do
            T 120 matteflow convert "$ROOT/assets/media/$clip.mp4" -k mask -o "/tmp/q/$name$v-$clip/" --model "$MODELS/$name$v.onnx" \
              --manifest "$ROOT/models/$name.toml" --device cuda --cuda-stages --overwrite 2>&1 | tail -1
          done
          echo "QUALITY $name $clip fp16 export vs fp32: $(python3 "$ROOT/scripts/compare-masks.py" "/tmp/q/$name-$clip" "/tmp/q/$name-fp16-$clip")"
          echo "QUALITY $name $clip prepared fp16 vs fp32: $(python3 "$ROOT/scripts/compare-masks.py" "/tmp/q/$name-$clip" "/tmp/q/$name-prep-fp16-$clip")"
        done
        e2e "$name-prep-fp16-cuda-stages" "$MODELS/$name-prep-fp16.onnx" "$ROOT/models/$name.toml" --cuda-stages
      done
      ;;
    peers-fixed-l | peers-fixed-t)
      # PyTorch peers of issue 15 on the same run: eager as published, with the contiguous-mask fix, that as a
      # CUDA graph, torch.compile of it (COMPILE_MODE, default "default"); batch 1 and 4 (Swin-L) / 8 (Swin-T).
      local v=swin_v1_l b=4
      [ "$1" = peers-fixed-t ] && v=swin_v1_t b=8
      T 580 python3 "$ROOT/scripts/gpu_bench_peers.py" --repo "$BIREFNET_REPO" --variant "$v" --models "$MODELS" \
        --out "$W" --runs "$RUNS" --batch $b --fixed --compile-mode "${COMPILE_MODE:-default}"
      ;;
    live-gpu)
      # Live on the GPU stages against the CPU stages (issue 13): a 1920x1080@30 live test pattern → RTMP to a
      # local nginx-rtmp (from the bundle) + an H.264 recording, LIVE_S seconds each, for IS-Net, BiRefNet lite fp16
      # and general fp16; output fps, own-mask share, glass-to-glass p50/p95, CPU; GPU load sampled alongside.
      # LIVE_INPUT=file: $LIVE_CLIP played at its own pace instead (no --size/--fps: those would keep decoding in
      # system memory), the GPU stages once per decode path in LIVE_DECODE (default "host cuda": --host-decode,
      # then nvcodec into CUDA memory); the CPU stages decode to system memory either way.
      local port=19350 url nx=/tmp/nginx-live
      nginx_start $nx $port && url=rtmp://127.0.0.1:$port/live
      local m label onnx man st dec run
      local input=(--input testsrc --size 1920x1080 --fps 30)
      if [ "${LIVE_INPUT:-testsrc}" = file ]; then
        local clip=${LIVE_CLIP:-$CLIP}
        [ -f "$clip" ] || { echo "LIVE_INPUT=file: no clip at $clip (set LIVE_CLIP or CLIP)"; return 1; }
        input=(--input "$clip")
      fi
      local set=("isnet|$ISNET|isnet" "lite-fp16|$MODELS/birefnet-lite-fp16.onnx|birefnet-lite" "general-fp16|$MODELS/birefnet-general-fp16.onnx|birefnet-general")
      # LIVE_PREPARED=1: the prepared BiRefNet files of step final15 instead (issue 15's models for issue 13's targets)
      [ -n "${LIVE_PREPARED:-}" ] && set=("lite-prep|$MODELS/birefnet-lite-prep.onnx|birefnet-lite" "general-prep|$MODELS/birefnet-general-prep.onnx|birefnet-general")
      for m in "${set[@]}"; do
        IFS='|' read -r label onnx man <<< "$m"
        [ -f "$onnx" ] || { echo "skip $label: no $onnx"; continue; }
        for st in ${STAGES:-cpu gpu}; do
          local decodes=(default)
          [ "${LIVE_INPUT:-testsrc}" = file ] && [ "$st" = gpu ] && read -r -a decodes <<< "${LIVE_DECODE:-host cuda}"
          for dec in "${decodes[@]}"; do
            local hd=() run=$label-$st
            [ "$dec" = host ] && hd=(--host-decode)
            [ "$dec" != default ] && run=$label-$st-$dec
            local outs=(--output "/tmp/live-$run.mp4"); [ -n "${url:-}" ] && outs+=(--output "$url/$run")
            nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 250 > "$W/smi-$run.csv" &
            local smi=$!
            T $((${LIVE_S:-20} + 60)) matteflow live "${input[@]}" --device cuda --model "$onnx" \
              --manifest "$ROOT/models/$man.toml" --stages $st "${hd[@]}" "${outs[@]}" --overwrite --duration "${LIVE_S:-20}" \
              --stats-interval 0 --report "$W/live-$run.json" 2>&1 | grep -v "^\s*$" | tail -5
            kill $smi 2>/dev/null; wait $smi 2>/dev/null
            python3 - "$W/live-$run.json" "$W/smi-$run.csv" "$run" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); s = r["summary"]; g = s["glass_to_glass"]
u = [float(x) for x in open(sys.argv[2]).read().split() if x.strip()]
own = (s["output"] - s["reused"] - s["passthrough"]) / max(s["output"], 1)
print(f"LIVE {sys.argv[3]}: {s['output'] / s['seconds']:.1f} fps out, {s['inferred']} inferred, {100 * own:.1f} % of frames with their own mask, "
      f"reused {s['reused']}, skipped stale {s['skipped_stale']}, dropped {s['dropped']}; glass-to-glass p50 {g['p50']:.1f} / p95 {g['p95']:.1f} / "
      f"max {g['max']:.1f} ms; matte p50 {s['matte']['p50']:.1f} ms; CPU {s['cpu_percent']:.0f} %; GPU busy {sum(u) / max(len(u), 1):.0f} %; "
      f"decode {r.get('decode', '?')}")
PY
          done
        done
      done
      nginx_stop $nx
      ;;
    wa)
      # Issue 15's own operators (com.matteflow.WindowAttention and DeformIm2Col): `gpu-check` (the kernels against
      # the host references on random inputs, among the other kernels); then per model and batch (lite 1 and 8,
      # general 1 and 4; BATCHES="1" for batch 1 only) the fp16 file prepared three ways — "prep": the ONNX-only
      # passes (the fp32 defaults); "wa": those + window-attention; "ops": the --fp16 defaults (window-attention
      # and deform-im2col) — model alone (IO binding), alternating, twice each (VARIANTS="prep ops" for fewer);
      # at batch 1 the masks on bikes.mp4 (GPU stages) of the last variant against the first and against the fp32
      # export (NO_MASKS=1 skips them). GRAPH=1 adds the last variant with --cuda-graph, NCU=1 Nsight Compute of
      # the last variant at batch 1, NO_CHECK=1 skips gpu-check, E2E=1 adds end to end (1080p H.264 → composite,
      # GPU stages) of the last variant at batch 1. MODELS_ONLY=lite|general.
      python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$WHEELS"/*.whl && export PYTHONPATH=/tmp/site
      local onnx_passes=fold,window-gather,gather-linear,qkv-bias,window-pad,bias-gelu,skip-layernorm,conv-bn
      local wa_passes=fold,window-gather,gather-linear,window-attention,qkv-bias,window-pad,bias-gelu,skip-layernorm,conv-bn,fold
      local variants=(${VARIANTS:-prep wa ops})
      local first=${variants[0]} last=${variants[-1]}
      [ -n "${NO_CHECK:-}" ] || T 300 matteflow gpu-check --runs 20 2>&1 | grep -E "^\||window|deformable|fail|error"
      local name g bs b t tag man v r passes
      for name in birefnet-lite birefnet-general; do
        [ -n "${MODELS_ONLY:-}" ] && [ "$name" != "birefnet-$MODELS_ONLY" ] && continue
        g=2362 bs=${BATCHES:-1 4} t=l; [ $name = birefnet-lite ] && g=469 bs=${BATCHES:-1 8} t=t
        man="$ROOT/models/$name.toml"
        for b in $bs; do
          tag=$name; [ "$b" != 1 ] && tag=$name-b$b
          [ -f "$MODELS/$tag.onnx" ] || step export-$t$b
          for v in "${variants[@]}"; do
            passes=()
            [ $v = prep ] && passes=(--passes "$onnx_passes")
            [ $v = wa ] && passes=(--passes "$wa_passes")
            [ -f "$MODELS/$tag-$v.onnx" ] || T 400 python3 "$ROOT/src/model/prepare.py" "$MODELS/$tag.onnx" "$MODELS/$tag-$v.onnx" \
              --fp16 "${passes[@]}" --report "$W/prep-$tag-$v.json" 2>&1 | grep -v "warn"
          done
          for r in 1 2; do
            for v in "${variants[@]}"; do
              gpu_bench "$tag-$v-$r" "$MODELS/$tag-$v.onnx" "$man" $g --batch "$b" --device-only 2>&1 | tail -6
            done
          done
          [ -n "${GRAPH:-}" ] && gpu_bench "$tag-$last-graph" "$MODELS/$tag-$last.onnx" "$man" $g --batch "$b" --device-only --cuda-graph 2>&1 | tail -3
          [ -n "${NCU:-}" ] && [ "$b" = 1 ] && ncu_model "$name-$last" "$MODELS/$name-$last.onnx" "$man"
          [ -n "${E2E:-}" ] && [ "$b" = 1 ] && e2e "$name-$last-cuda-stages" "$MODELS/$name-$last.onnx" "$man" --cuda-stages
          [ "$b" = 1 ] && [ -z "${NO_MASKS:-}" ] || continue
          mkdir -p /tmp/q
          for v in "" "-$first" "-$last"; do
            T 120 matteflow convert "$ROOT/assets/media/bikes.mp4" -k mask -o "/tmp/q/$name$v-bikes/" --model "$MODELS/$name$v.onnx" \
              --manifest "$man" --device cuda --cuda-stages --overwrite 2>&1 | tail -1
          done
          echo "QUALITY $name bikes $last vs $first (both fp16): $(python3 "$ROOT/scripts/compare-masks.py" "/tmp/q/$name-$first-bikes" "/tmp/q/$name-$last-bikes")"
          echo "QUALITY $name bikes $first fp16 vs fp32: $(python3 "$ROOT/scripts/compare-masks.py" "/tmp/q/$name-bikes" "/tmp/q/$name-$first-bikes")"
          echo "QUALITY $name bikes $last fp16 vs fp32: $(python3 "$ROOT/scripts/compare-masks.py" "/tmp/q/$name-bikes" "/tmp/q/$name-$last-bikes")"
        done
      done
      ;;
    *) echo "unknown step $1"; return 2 ;;
  esac
}

for s in "$@"; do
  W=$(mktemp -d /tmp/gb-"$s"-XXXX)
  echo "=== step $s ($(date -u +%H:%M:%S)) ==="
  # (a step run twice into one $OUT keeps both: wa.log, wa-2.log, …)
  name=$s; k=1; while [ -e "$OUT/$name.log" ]; do k=$((k + 1)); name=$s-$k; done
  step "$s" 2>&1 | tee "$OUT/$name.log"
  rm -f "$W"/*.onnx
  tar -C "$W" -czf "$OUT/$name.tgz" .
done
