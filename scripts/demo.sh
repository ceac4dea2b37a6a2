#!/usr/bin/env bash
# README command one: set up (idempotent), build, and convert the shipped sample clip with the embedded
# default model into an alpha video, a composite and a side-by-side, printing where they are.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked
OUT="${1:-$ROOT/out}"
./target/release/matteflow demo --out-dir "$OUT"
echo "outputs are in $OUT"
