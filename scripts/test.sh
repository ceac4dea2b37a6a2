#!/usr/bin/env bash
# README command two: set up (idempotent), build, and run the whole test suite (unit + integration tests,
# real GStreamer, real ONNX Runtime, real model on real footage). Extra arguments go to `cargo test`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked
cargo test --release --locked "$@"
