#!/usr/bin/env bash
# Builds a self-contained runtime bundle of matteflow for a GPU machine that has an NVIDIA driver and CUDA
# but no GStreamer: the stripped binary, the GStreamer plugins matteflow uses (nvcodec included) with the
# ldd closure of everything (glibc and libstdc++ excepted), and an env.sh that points GStreamer at them.
# (gst-libav is left out: it drags in all of FFmpeg; on NVIDIA, nvcodec decodes and x264/vpx encode;
# openh264dec is there to compare with software H.264 decoding.)
# ONNX Runtime GPU (onnxruntime-gpu, CUDA 13) is not in the bundle (284 MB): `pip install onnxruntime-gpu==1.31.1`
# on the target (or copy its capi/ folder over) and point ORT_DYLIB_PATH at its libonnxruntime.so.1.31.1.
#
#   scripts/gpu-bundle.sh OUT_DIR            → OUT_DIR/{bin,lib,plugins,libexec,env.sh}
#   on the target:  . OUT_DIR/env.sh && matteflow doctor
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "${1:-}" = --check ]; then
  # Runs each command's pipeline from the bundle alone (no system GStreamer plugins): a plugin the bundle lacks
  # fails here, not on the GPU machine.
  B="${2:?usage: gpu-bundle.sh --check OUT_DIR}"
  # shellcheck disable=SC1091
  . "$B/env.sh"
  T=$(mktemp -d)
  trap 'rm -rf "$T"' EXIT
  clip="$ROOT/assets/media/carphone_pristine.mp4"
  run() { echo "+ $*"; "$@" >"$T/log" 2>&1 || { cat "$T/log"; echo "bundle check FAILED: $*"; exit 1; }; }
  # doctor is informational here (it asks for what the GPU machine has: nvh264dec, or libav's decoders).
  matteflow doctor || true
  run matteflow convert "$clip" -o "$T/a.mp4" -b blur
  run matteflow convert "$clip" -o "$T/a.webm" -b green
  run matteflow convert "$clip" -o "$T/a-frames/"
  run matteflow batch "$clip" -o "$T/batch" -f h264
  run matteflow live --input testsrc --output "$T/live.mp4" --max-frames 30
  run matteflow live --input "$ROOT/assets/media/bikes.mp4" --output "$T/live2.mp4" --max-frames 30
  run matteflow bench "$clip" --runs 1
  run matteflow convert "$ROOT/assets/media/bikes.mp4" -o "$T/b.mp4" -b blur --stages cpu
  if [ -f "$B/plugins/libgstmatteflow.so" ]; then
    run gst-inspect-1.0 matteflow
    run gst-launch-1.0 -q filesrc location="$clip" ! decodebin ! videoconvert ! matteflow background=blur ! videoconvert \
      ! x264enc ! mp4mux ! filesink location="$T/element.mp4"
  fi
  echo "bundle check passed: every command ran from $B"
  exit 0
fi
OUT="${1:?usage: gpu-bundle.sh OUT_DIR | --check OUT_DIR}"
GST=/usr/lib/x86_64-linux-gnu/gstreamer-1.0
# Every element a matteflow command builds (convert, batch, live, bench, run): sources (files, URIs, the test
# pattern, cameras), video conversion and rate, the encoders and muxers of each format, live outputs (RTMP
# through flvmux + rtmp2sink, the virtual camera, the screen), audio. `--check` runs each command from the bundle.
# (deinterlace and videofilter's videoflip: interlaced and rotated inputs on the host path; jpeg: the panel's
# preview; webp: WebP output.) The element as a plugin too, with gst-launch-1.0 / gst-inspect-1.0 to use it.
PLUGINS=(coreelements playback typefindfunctions isomp4 matroska videoparsersbad videoconvertscale app
  x264 nvcodec png multifile audioconvert audioresample pbtypes vpx opus flac openh264
  videotestsrc videorate flv rtmp2 video4linux2 autodetect audiotestsrc deinterlace videofilter jpeg webp)
rm -rf "$OUT" && mkdir -p "$OUT"/{bin,lib,plugins,libexec}
strip -o "$OUT/bin/matteflow" "$ROOT/target/release/matteflow"
cp /usr/bin/gst-launch-1.0 /usr/bin/gst-inspect-1.0 "$OUT/bin/"
cp /usr/lib/x86_64-linux-gnu/gstreamer1.0/gstreamer-1.0/gst-plugin-scanner "$OUT/libexec/"
for p in "${PLUGINS[@]}"; do cp "$GST/libgst$p.so" "$OUT/plugins/"; done
if [ -f "$ROOT/target/release/libgstmatteflow.so" ]; then
  strip -o "$OUT/plugins/libgstmatteflow.so" "$ROOT/target/release/libgstmatteflow.so"
else
  echo "gpu-bundle: no target/release/libgstmatteflow.so (cargo build --release --workspace): the element is left out" >&2
fi
skip='libc\.so|libm\.so|libgcc_s|libstdc\+\+|ld-linux|libpthread|libdl\.so|librt\.so|libcuda|libnvidia'
for f in "$OUT"/bin/* "$OUT/libexec/gst-plugin-scanner" "$OUT"/plugins/*.so; do
  ldd "$f" | awk '/=>/ {print $3}' | grep -vE "$skip" || true
done | sort -u | while read -r lib; do [ -f "$lib" ] && cp -Ln "$lib" "$OUT/lib/"; done
# nginx with the RTMP module, for live benchmarks against a real RTMP server on the GPU machine (nginx/nginx
# -p PREFIX -c CONF, with LD_LIBRARY_PATH=nginx/; load_module that folder's ngx_rtmp_module.so).
if [ -x /usr/sbin/nginx ] && [ -f /usr/lib/nginx/modules/ngx_rtmp_module.so ]; then
  mkdir -p "$OUT/nginx"
  cp /usr/sbin/nginx /usr/lib/nginx/modules/ngx_rtmp_module.so "$OUT/nginx/"
  for f in "$OUT/nginx/nginx" "$OUT/nginx/ngx_rtmp_module.so"; do ldd "$f" | awk '/=>/ {print $3}' | grep -vE "$skip" || true; done \
    | sort -u | while read -r lib; do [ -f "$lib" ] && cp -Ln "$lib" "$OUT/nginx/"; done
fi
cat > "$OUT/env.sh" <<'ENV'
B="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PATH="$B/bin:$PATH" LD_LIBRARY_PATH="$B/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export GST_PLUGIN_SYSTEM_PATH="$B/plugins" GST_PLUGIN_PATH="" GST_PLUGIN_SCANNER="$B/libexec/gst-plugin-scanner"
export GST_REGISTRY="${TMPDIR:-/tmp}/matteflow-gst-registry.bin" XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
ENV
echo "bundle in $OUT ($(du -sh "$OUT" | cut -f1)); on the target: . $OUT/env.sh"
