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
OUT="${1:?usage: gpu-bundle.sh OUT_DIR}"
GST=/usr/lib/x86_64-linux-gnu/gstreamer-1.0
PLUGINS=(coreelements playback typefindfunctions isomp4 matroska videoparsersbad videoconvertscale app
  x264 nvcodec png multifile audioconvert audioresample pbtypes vpx opus flac openh264 videotestsrc)
rm -rf "$OUT" && mkdir -p "$OUT"/{bin,lib,plugins,libexec}
strip -o "$OUT/bin/matteflow" "$ROOT/target/release/matteflow"
cp /usr/lib/x86_64-linux-gnu/gstreamer1.0/gstreamer-1.0/gst-plugin-scanner "$OUT/libexec/"
for p in "${PLUGINS[@]}"; do cp "$GST/libgst$p.so" "$OUT/plugins/"; done
skip='libc\.so|libm\.so|libgcc_s|libstdc\+\+|ld-linux|libpthread|libdl\.so|librt\.so|libcuda|libnvidia'
for f in "$OUT/bin/matteflow" "$OUT/libexec/gst-plugin-scanner" "$OUT"/plugins/*.so; do
  ldd "$f" | awk '/=>/ {print $3}' | grep -vE "$skip" || true
done | sort -u | while read -r lib; do [ -f "$lib" ] && cp -Ln "$lib" "$OUT/lib/"; done
cat > "$OUT/env.sh" <<'ENV'
B="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PATH="$B/bin:$PATH" LD_LIBRARY_PATH="$B/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export GST_PLUGIN_SYSTEM_PATH="$B/plugins" GST_PLUGIN_PATH="" GST_PLUGIN_SCANNER="$B/libexec/gst-plugin-scanner"
export GST_REGISTRY="${TMPDIR:-/tmp}/matteflow-gst-registry.bin" XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
ENV
echo "bundle in $OUT ($(du -sh "$OUT" | cut -f1)); on the target: . $OUT/env.sh"
