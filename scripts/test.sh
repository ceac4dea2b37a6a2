#!/usr/bin/env bash
# README command two: set up (idempotent), build, and run the whole test suite (unit + integration tests,
# real GStreamer, real ONNX Runtime, real model on real footage). Extra arguments go to `cargo test`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# --workspace: also the plugin, target/release/libgstmatteflow.so (tests/element.rs runs gst-inspect-1.0 and
# gst-launch-1.0 against it).
cargo build --release --locked --workspace
cargo test --release --locked "$@"
