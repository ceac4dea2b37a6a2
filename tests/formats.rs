//! Every output format: frame count, timestamps and size equal the input's; alpha survives where the format
//! keeps it (decoded back and compared with the mask); audio is carried over.

mod common;
use common::*;

fn pts_list(frames: &[Decoded]) -> Vec<u64> {
    frames.iter().map(|f| f.pts.expect("timestamp")).collect()
}

#[test]
fn every_format_keeps_frames_timestamps_and_size() {
    let dir = tempfile::tempdir().unwrap();
    for clip in ["carphone_pristine.mp4", "bikes.mp4"] {
        let input = sample(clip);
        let src = decode(&input);
        assert!(src.len() >= 120);
        for out in ["o.mov", "o.mkv", "o.mp4", "o.webm"] {
            let path = dir.path().join(format!("{clip}.{out}"));
            matteflow_ok(&["convert", input.to_str().unwrap(), "-o", path.to_str().unwrap(), "-b", "blur=8"]);
            let got = decode(&path);
            assert_eq!(got.len(), src.len(), "{clip} → {out}: frame count");
            assert_eq!((got[0].width, got[0].height), (src[0].width, src[0].height), "{clip} → {out}: size");
            // Matroska/WebM store milliseconds: allow 1 ms.
            for (i, (a, b)) in pts_list(&src).iter().zip(pts_list(&got)).enumerate() {
                assert!(a.abs_diff(b) <= 1_000_000, "{clip} → {out}: frame {i} at {b} ns, input at {a} ns");
            }
        }
        let png = dir.path().join(format!("{clip}_png/"));
        matteflow_ok(&["convert", input.to_str().unwrap(), "-o", png.to_str().unwrap()]);
        assert_eq!(read_png_dir(&png).len(), src.len(), "{clip} → PNG: frame count");
        assert_no_partials(dir.path());
    }
}

#[test]
fn frame_rate_is_kept_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.mp4");
    matteflow_ok(&["convert", sample("carphone_pristine.mp4").to_str().unwrap(), "-o", path.to_str().unwrap()]);
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v", "-show_entries", "stream=r_frame_rate,nb_frames", "-of", "csv=p=0"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "30000/1001,120");
}

#[test]
fn alpha_survives_prores_ffv1_and_png() {
    let dir = tempfile::tempdir().unwrap();
    let input = sample("carphone_pristine.mp4");
    let mask_dir = dir.path().join("mask/");
    matteflow_ok(&["convert", input.to_str().unwrap(), "-o", mask_dir.to_str().unwrap(), "-k", "mask"]);
    let masks = read_png_dir(&mask_dir);
    let src = decode(&input);

    let png = dir.path().join("alpha/");
    matteflow_ok(&["convert", input.to_str().unwrap(), "-o", png.to_str().unwrap()]);
    let pngs = read_png_dir(&png);
    for mov in ["a.mov", "a.mkv"] {
        let path = dir.path().join(mov);
        matteflow_ok(&["convert", input.to_str().unwrap(), "-o", path.to_str().unwrap()]);
        let frames = decode(&path);
        assert_eq!(frames.len(), 120);
        for (i, (f, m)) in frames.iter().zip(&masks).enumerate().step_by(17) {
            let mut worst = 0i32;
            let (mut opaque, mut clear) = (0, 0);
            for (px, mp) in f.rgba.chunks_exact(4).zip(m.pixels()) {
                worst = worst.max((px[3] as i32 - mp[0] as i32).abs());
                if px[3] > 250 {
                    opaque += 1;
                }
                if px[3] < 5 {
                    clear += 1;
                }
            }
            assert!(worst <= 1, "{mov} frame {i}: alpha differs from the mask by {worst}");
            assert!(opaque > 1000 && clear > 1000, "{mov} frame {i}: alpha is not a matte ({opaque} opaque, {clear} clear)");
        }
        // Colour is the source's where the subject is (FFV1 is lossless RGB; ProRes is 4:4:4 12-bit).
        let tol = if mov.ends_with(".mkv") { 0 } else { 3 };
        let (f, s) = (&frames[60], &src[60]);
        let mut worst = 0;
        for (a, b) in f.rgba.chunks_exact(4).zip(s.rgba.chunks_exact(4)) {
            if a[3] > 250 {
                for c in 0..3 {
                    worst = worst.max((a[c] as i32 - b[c] as i32).abs());
                }
            }
        }
        assert!(worst <= tol, "{mov}: foreground colour changed by {worst}");
    }
    for (p, m) in pngs.iter().zip(&masks) {
        for (px, mp) in p.pixels().zip(m.pixels()) {
            assert_eq!(px[3], mp[0], "PNG alpha must equal the mask exactly");
        }
    }
}

#[test]
fn audio_is_carried_into_every_container_that_takes_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("with_audio.mp4");
    gst_make(&format!(
        "videotestsrc num-buffers=50 pattern=ball ! video/x-raw,width=160,height=120,framerate=25/1 ! x264enc ! h264parse ! mp4mux name=m ! filesink location={} \
         audiotestsrc num-buffers=100 samplesperbuffer=441 ! audio/x-raw,rate=44100,channels=1 ! avenc_aac ! m.",
        input.display()
    ));
    for (out, codec) in [("o.mov", "pcm_s16le"), ("o.mkv", "flac"), ("o.mp4", "aac"), ("o.webm", "opus")] {
        let path = dir.path().join(out);
        matteflow_ok(&["convert", input.to_str().unwrap(), "-o", path.to_str().unwrap(), "-b", "green"]);
        let probe = std::process::Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "a", "-show_entries", "stream=codec_name", "-of", "csv=p=0"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), codec, "{out}: audio stream");
        assert_eq!(decode(&path).len(), 50, "{out}: video frames");
    }
}

#[test]
fn side_by_side_is_twice_as_wide_and_composite_uses_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let input = sample("carphone_pristine.mp4");
    let sbs = dir.path().join("s.mkv");
    matteflow_ok(&["convert", input.to_str().unwrap(), "-o", sbs.to_str().unwrap(), "-k", "side-by-side", "-b", "#ff00ff"]);
    let f = decode(&sbs);
    assert_eq!((f[0].width, f[0].height, f.len()), (352, 144, 120));
    // Top-left corner of the right half is background (magenta); the left half is the original.
    let px = |fr: &Decoded, x: u32, y: u32| fr.rgba[((y * fr.width + x) * 4) as usize..][..4].to_vec();
    assert_eq!(px(&f[10], 176 + 2, 2), vec![255, 0, 255, 255]);
    let src = decode(&input);
    assert_eq!(px(&f[10], 2, 2), px(&src[10], 2, 2));
}
