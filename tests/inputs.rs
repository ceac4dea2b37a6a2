//! Real-world inputs (issue 12): odd frame sizes, still images and image folders, animated images, rotated
//! phone clips, interlaced video, variable frame rate, several video streams, and `matteflow probe`. Every clip is
//! made here, by GStreamer or ffmpeg.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A frame of a smooth, moving pattern (so codecs keep it well and neighbouring pixels are alike).
fn pattern(w: u32, h: u32, i: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity((w * h * 4) as usize);
    for y in 0..h {
        for x in 0..w {
            v.extend_from_slice(&[(x * 255 / w) as u8, (y * 255 / h) as u8, ((i * 20) % 256) as u8, 255]);
        }
    }
    v
}

fn lossless_clip(dir: &Path, name: &str, w: u32, h: u32, frames: usize) -> PathBuf {
    let path = dir.join(name);
    let frames: Vec<Vec<u8>> = (0..frames).map(|i| pattern(w, h, i)).collect();
    write_lossless_clip(&path, w, h, 25, &frames);
    path
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ffprobe(path: &Path, entries: &str) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries", entries, "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn mean_abs_diff(a: impl Iterator<Item = u8>, b: impl Iterator<Item = u8>) -> f64 {
    let (mut sum, mut n) = (0u64, 0u64);
    for (x, y) in a.zip(b) {
        sum += x.abs_diff(y) as u64;
        n += 1;
    }
    sum as f64 / n.max(1) as f64
}

/// RGB of the `w`×`h` top-left region of a decoded frame.
fn region(f: &Decoded, w: u32, h: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for y in 0..h as usize {
        for x in 0..w as usize {
            v.extend_from_slice(&f.rgba[(y * f.width as usize + x) * 4..][..3]);
        }
    }
    v
}

#[test]
fn odd_sizes_into_h264_are_padded_with_edge_pixels_and_vp9_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let input = lossless_clip(dir.path(), "odd.mkv", 193, 145, 12);
    // The clip is its own background: whatever the mask, the composite shows the input's picture.
    let mp4 = dir.path().join("o.mp4");
    let out = matteflow(&["convert", s(&input), "-o", s(&mp4), "-b", s(&input)]);
    let stderr = stderr_of(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.matches("encoded as 194×146").count(), 1, "said once: {stderr}");
    let (src, got) = (decode(&input), decode(&mp4));
    assert_eq!(got.len(), src.len(), "frame count");
    assert_eq!((got[0].width, got[0].height), (194, 146));
    for (i, (a, g)) in src.iter().zip(&got).enumerate() {
        assert_eq!(a.pts, g.pts, "frame {i}: timestamp");
        let d = mean_abs_diff(region(a, 193, 145).into_iter(), region(g, 193, 145).into_iter());
        assert!(d < 4.0, "frame {i}: the picture differs from the input's by {d:.1} on average");
        // The added column repeats the last one, the added row the last row.
        let col = |x: usize| (0..145usize).flat_map(move |y| g.rgba[(y * 194 + x) * 4..][..3].to_vec()).collect::<Vec<u8>>();
        let row = |y: usize| g.rgba[y * 194 * 4..(y + 1) * 194 * 4].to_vec();
        assert!(mean_abs_diff(col(193).into_iter(), col(192).into_iter()) < 3.0, "frame {i}: padded column");
        assert!(mean_abs_diff(row(145).into_iter(), row(144).into_iter()) < 3.0, "frame {i}: padded row");
    }
    let webm = dir.path().join("o.webm");
    matteflow_ok(&["convert", s(&input), "-o", s(&webm)]);
    assert_eq!(ffprobe(&webm, "stream=width,height,nb_read_frames"), "193,145,12", "VP9 keeps the exact size");
    assert_no_partials(dir.path());
}

#[test]
fn odd_sizes_into_a_live_h264_recording() {
    let dir = tempfile::tempdir().unwrap();
    let input = lossless_clip(dir.path(), "odd.mkv", 193, 145, 10);
    let rec = dir.path().join("live.mp4");
    let out = matteflow(&["live", "--input", s(&input), "--output", s(&rec)]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let probe = ffprobe(&rec, "stream=width,height,nb_read_frames");
    let fields: Vec<&str> = probe.split(',').collect();
    assert_eq!(&fields[..2], ["194", "146"], "{probe}");
    assert!(fields[2].parse::<u32>().unwrap() >= 5, "{probe}");
}
