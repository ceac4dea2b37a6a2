#!/usr/bin/env bash
# A/V sync over a long live run (issue 16: "at the start and after 60 s"): the flash/beep clip through
# `matteflow live` to nginx-rtmp and an MP4 recording for SECONDS (default 75), played from the file and pushed
# in real time to nginx-rtmp as an RTMP source, then the offset of every flash/beep pair in the pulled stream
# and the recording is printed (and asserted ≤ one frame). The CI tests (tests/live_audio.rs) run the same
# checks for 16 s (file) and 12 s (RTMP source). Takes the shared timing lock.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_RUN="${1:-75}"
MF_AV_SECONDS="$SECONDS_RUN" flock /tmp/mf-timing.lock \
  cargo test --release --locked --test live_audio source_sound_reaches_rtmp_and_recording_in_sync -- --nocapture 2>&1 |
  grep -E "A/V offset|keyframes|kbit/s|test result|panicked"
