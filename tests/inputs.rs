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
    let input = lossless_clip(dir.path(), "odd.mkv", 193, 145, 25);
    let rec = dir.path().join("live.mp4");
    let out = matteflow(&["live", "--input", s(&input), "--output", s(&rec)]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let probe = ffprobe(&rec, "stream=width,height,nb_read_frames");
    let fields: Vec<&str> = probe.split(',').collect();
    assert_eq!(&fields[..2], ["194", "146"], "{probe}");
    // (How many of the frames a live run from a file records is issue 12 item 10, not this test.)
    assert!(fields[2].parse::<u32>().unwrap() >= 1, "{probe}");
}

/// Runs ffmpeg quietly, insisting it succeeded.
fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg").args(["-v", "error", "-y"]).args(args).output().unwrap();
    assert!(out.status.success(), "ffmpeg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A photo of a person: one frame of the shipped sample, as a JPEG.
fn photo(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    ffmpeg(&["-ss", "1", "-i", s(&sample("carphone_pristine.mp4")), "-frames:v", "1", "-q:v", "2", s(&p)]);
    p
}

/// Share of pixels whose alpha is above half.
fn opaque_share(img: &image::RgbaImage) -> f64 {
    img.pixels().filter(|p| p[3] > 128).count() as f64 / (img.width() * img.height()) as f64
}

#[test]
fn a_photo_becomes_a_png_with_alpha_a_jpeg_or_webp_of_the_same_size() {
    let dir = tempfile::tempdir().unwrap();
    let jpg = photo(dir.path(), "photo.jpg");
    let png = dir.path().join("cut.png");
    matteflow_ok(&["convert", s(&jpg), "-o", s(&png)]);
    let cut = image::open(&png).unwrap();
    assert!(cut.color().has_alpha(), "PNG with alpha");
    let cut = cut.to_rgba8();
    assert_eq!(cut.dimensions(), (176, 144), "same size as the photo");
    let share = opaque_share(&cut);
    assert!((0.05..0.9).contains(&share), "the person is kept, the background cut: {share:.2} opaque");
    // The subject's pixels are the photo's own.
    let src = image::open(&jpg).unwrap().to_rgba8();
    let kept: Vec<(u8, u8)> = cut.pixels().zip(src.pixels()).filter(|(c, _)| c[3] == 255).map(|(c, p)| (c[0], p[0])).collect();
    assert!(mean_abs_diff(kept.iter().map(|k| k.0), kept.iter().map(|k| k.1)) < 2.0);

    let composite = dir.path().join("cut.jpg");
    matteflow_ok(&["convert", s(&jpg), "-o", s(&composite), "-b", "#0000ff"]);
    let c = image::open(&composite).unwrap().to_rgb8();
    assert_eq!(c.dimensions(), (176, 144));
    let corner = c.get_pixel(2, 2);
    assert!(corner[2] > 200 && corner[0] < 60, "background replaced by blue: {corner:?}");

    let webp = dir.path().join("cut.webp");
    matteflow_ok(&["convert", s(&jpg), "-o", s(&webp)]);
    let w = image::open(&webp).unwrap();
    assert!(w.color().has_alpha(), "WebP keeps alpha");
    assert_eq!(w.to_rgba8().dimensions(), (176, 144));
    assert!((opaque_share(&w.to_rgba8()) - share).abs() < 0.05);
    assert_no_partials(dir.path());
}

#[test]
fn a_photo_into_a_video_container_is_a_one_frame_video_and_a_video_into_an_image_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let jpg = photo(dir.path(), "photo.jpg");
    for name in ["still.mp4", "still.mov"] {
        let out = dir.path().join(name);
        matteflow_ok(&["convert", s(&jpg), "-o", s(&out)]);
        assert_eq!(ffprobe(&out, "stream=width,height,nb_read_frames"), "176,144,1", "{name}");
        let frames = decode(&out);
        assert_eq!(frames.len(), 1, "{name} plays its one frame");
    }
    let clip = lossless_clip(dir.path(), "clip.mkv", 64, 48, 3);
    let png = dir.path().join("x.png");
    let out = matteflow(&["convert", s(&clip), "-o", s(&png)]);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("is a video") && err.contains("-o frames/"), "{err}");
    assert!(!png.exists());
    assert_no_partials(dir.path());
}

#[test]
fn batch_converts_a_folder_of_photos_mirrored_resumable_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(photos.join("day1")).unwrap();
    photo(&photos.join("day1"), "a.jpg");
    let b = photo(dir.path(), "b.jpg");
    image::open(&b).unwrap().save(photos.join("b.png")).unwrap();
    std::fs::write(photos.join("notes.txt"), "not a picture").unwrap();
    let cut = dir.path().join("cut");
    let out = matteflow_ok(&["batch", s(&photos), "-o", s(&cut)]);
    for rel in ["day1/a.png", "b.png"] {
        let img = image::open(cut.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}\n{out}"));
        assert!(img.color().has_alpha(), "{rel}");
        assert_eq!(img.to_rgba8().dimensions(), (176, 144), "{rel}");
    }
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(cut.join("matteflow-report.json")).unwrap()).unwrap();
    let rows = report.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["status"] == "done" && r["frames"] == 1), "{report}");
    // A second run skips both.
    matteflow_ok(&["batch", s(&photos), "-o", s(&cut)]);
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(cut.join("matteflow-report.json")).unwrap()).unwrap();
    assert!(report.as_array().unwrap().iter().all(|r| r["status"] == "skipped"), "{report}");
}

/// Converts an animated image and checks every frame with its timestamp arrives in each output.
fn check_animation(dir: &Path, input: &Path, frames: usize, step_ns: u64) {
    for out in ["a.mov", "a.webm", "a.mp4"] {
        let path = dir.join(format!("{}.{out}", input.file_name().unwrap().to_str().unwrap()));
        matteflow_ok(&["convert", s(input), "-o", s(&path)]);
        let got = decode(&path);
        assert_eq!(got.len(), frames, "{} → {out}: frame count", input.display());
        for (i, f) in got.iter().enumerate() {
            let want = i as u64 * step_ns;
            assert!(f.pts.unwrap().abs_diff(want) <= 1_000_000, "{} → {out}: frame {i} at {:?}, want {want}", input.display(), f.pts);
        }
    }
    let pngs = dir.join(format!("{}_frames/", input.file_name().unwrap().to_str().unwrap()));
    matteflow_ok(&["convert", s(input), "-o", s(&pngs)]);
    let frames_out = read_png_dir(&pngs);
    assert_eq!(frames_out.len(), frames);
    assert_eq!(frames_out[0].dimensions(), (160, 120));
}

#[test]
fn animated_gif_apng_and_webp_convert_every_frame_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let src = ["-f", "lavfi", "-i", "testsrc=size=160x120:rate=10", "-frames:v", "12"];
    let gif = dir.path().join("anim.gif");
    ffmpeg(&[&src[..], &[s(&gif)]].concat());
    let apng = dir.path().join("anim.png");
    ffmpeg(&[&src[..], &["-plays", "0", "-f", "apng", s(&apng)]].concat());
    let webp = dir.path().join("anim.webp");
    ffmpeg(&[&src[..], &["-c:v", "libwebp_anim", "-loop", "0", s(&webp)]].concat());
    let t = std::time::Instant::now();
    for input in [&gif, &apng, &webp] {
        check_animation(dir.path(), input, 12, 100_000_000);
    }
    assert!(t.elapsed().as_secs() < 60, "no stall: {:?}", t.elapsed());
    // One picture of an animation is refused (the frames would be lost), naming what to write instead.
    let one = dir.path().join("one.png");
    let out = matteflow(&["convert", s(&gif), "-o", s(&one)]);
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("more than one frame"), "{}", stderr_of(&out));
    assert!(!one.exists());
    assert_no_partials(dir.path());
}

/// A clip stored red over blue (64×48) whose MP4 display matrix says to turn it by `degrees` clockwise, as a
/// phone writes it (the matrix set in the track header, as ffmpeg's `-display_rotation` does).
fn rotated_clip(dir: &Path, degrees: u32) -> PathBuf {
    let plain = dir.join("plain.mp4");
    gst_make(&format!(
        "videotestsrc num-buffers=5 pattern=red ! video/x-raw,width=64,height=24,framerate=10/1 ! videobox bottom=-24 fill=blue \
         ! videoconvert ! video/x-raw,format=I420,width=64,height=48,pixel-aspect-ratio=1/1 ! x264enc ! mp4mux ! filesink location={}",
        plain.display()
    ));
    let mut data = std::fs::read(&plain).unwrap();
    let tkhd = data.windows(4).position(|w| w == b"tkhd").unwrap() - 4;
    assert_eq!(data[tkhd + 8], 0, "version 0 track header");
    let (b, c) = match degrees {
        90 => (1i32, -1i32),
        270 => (-1, 1),
        _ => unreachable!(),
    };
    let matrix = [0, b << 16, 0, c << 16, 0, 0, 0, 0, 1 << 30];
    let bytes: Vec<u8> = matrix.iter().flat_map(|v: &i32| v.to_be_bytes()).collect();
    data[tkhd + 48..tkhd + 84].copy_from_slice(&bytes);
    let path = dir.join(format!("rot{degrees}.mp4"));
    std::fs::write(&path, data).unwrap();
    path
}

#[test]
fn rotated_phone_clips_are_matted_and_written_upright() {
    let dir = tempfile::tempdir().unwrap();
    // Turned clockwise, the top (red) goes right: 90° → blue left, red right; 270° → red left, blue right.
    for (degrees, left_is_red) in [(90, false), (270, true)] {
        let clip = rotated_clip(dir.path(), degrees);
        let frames = dir.path().join(format!("out{degrees}/"));
        matteflow_ok(&["convert", s(&clip), "-o", s(&frames), "-k", "alpha"]);
        let pngs = read_png_dir(&frames);
        assert_eq!(pngs.len(), 5, "{degrees}°: frame count");
        for f in &pngs {
            assert_eq!(f.dimensions(), (48, 64), "{degrees}°: upright size");
            let (left, right) = (f.get_pixel(8, 32), f.get_pixel(40, 32));
            let red = |p: &image::Rgba<u8>| p[0] > 200 && p[2] < 60;
            let blue = |p: &image::Rgba<u8>| p[2] > 200 && p[0] < 60;
            assert!(if left_is_red { red(left) && blue(right) } else { blue(left) && red(right) }, "{degrees}°: {left:?} | {right:?}");
        }
        let mp4 = dir.path().join(format!("out{degrees}.mp4"));
        matteflow_ok(&["convert", s(&clip), "-o", s(&mp4)]);
        // Written upright: the stored size is the upright one and there is no rotation left to apply.
        assert_eq!(ffprobe(&mp4, "stream=width,height,nb_read_frames"), "48,64,5", "{degrees}°");
        assert!(matches!(ffprobe(&mp4, "stream=sample_aspect_ratio").as_str(), "1:1" | "N/A" | "0:1"), "{degrees}°: square pixels");
        assert_eq!(ffprobe(&mp4, "stream_side_data=rotation"), "", "{degrees}°: no display matrix left");
    }
}

/// How combed a frame is: mean difference of each row from the average of its neighbours (grey levels).
fn combing(img: &image::RgbaImage) -> f64 {
    let grey = |x: u32, y: u32| {
        let p = img.get_pixel(x, y);
        (p[0] as f64 + p[1] as f64 + p[2] as f64) / 3.0
    };
    let (w, h) = img.dimensions();
    let mut sum = 0.0;
    for y in 1..h - 1 {
        for x in 0..w {
            sum += (grey(x, y) - (grey(x, y - 1) + grey(x, y + 1)) / 2.0).abs();
        }
    }
    sum / (w * (h - 2)) as f64
}

#[test]
fn interlaced_input_is_deinterlaced_unless_asked_not_to() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("interlaced.mp4");
    // Fields from a picture scrolling sideways at 50 fields/s, woven into 25 interlaced frames/s (top first).
    ffmpeg(&[
        "-f", "lavfi", "-i", "testsrc=size=320x240:rate=50,scroll=h=0.02", "-vf", "tinterlace=mode=interleave_top,setfield=tff",
        "-frames:v", "10", "-c:v", "libx264", "-qp", "10", "-flags", "+ildct+ilme", "-x264opts", "tff=1", s(&clip),
    ]);
    assert_eq!(ffprobe(&clip, "stream=field_order"), "tt");
    // probe says what convert will do, and names the convert flag that keeps the fields (probe takes none).
    let said = matteflow_ok(&["probe", s(&clip)]);
    assert!(said.contains("interlaced: deinterlaced (`matteflow convert --no-deinterlace` keeps the fields)"), "{said}");
    assert_flags_work_in("probe", &said);
    let on = dir.path().join("on/");
    let off = dir.path().join("off/");
    matteflow_ok(&["convert", s(&clip), "-o", s(&on), "-k", "alpha"]);
    matteflow_ok(&["convert", s(&clip), "-o", s(&off), "-k", "alpha", "--no-deinterlace"]);
    let (on, off) = (read_png_dir(&on), read_png_dir(&off));
    assert_eq!((on.len(), off.len()), (10, 10), "one frame out per frame in");
    for (i, (a, b)) in on.iter().zip(&off).enumerate().skip(1) {
        let (ca, cb) = (combing(a), combing(b));
        assert!(cb > 10.0 && ca < cb / 5.0, "frame {i}: combing {ca:.1} deinterlaced, {cb:.1} kept");
    }
    let mp4 = dir.path().join("o.mp4");
    matteflow_ok(&["convert", s(&clip), "-o", s(&mp4)]);
    assert_eq!(ffprobe(&mp4, "stream=field_order,nb_read_frames"), "progressive,10");
}

#[test]
fn several_video_streams_are_named_and_one_is_picked() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("two.mkv");
    ffmpeg(&[
        "-f", "lavfi", "-i", "color=red:size=64x48:rate=10:d=0.4", "-f", "lavfi", "-i", "color=blue:size=96x64:rate=10:d=0.4",
        "-map", "0", "-map", "1", "-c:v", "ffv1", s(&clip),
    ]);
    let first = dir.path().join("first/");
    let out = matteflow(&["convert", s(&clip), "-o", s(&first), "-k", "alpha"]);
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("has 2 video streams (0: 64×48") && err.contains("converting stream 0"), "{err}");
    assert_eq!(read_png_dir(&first)[0].dimensions(), (64, 48));
    let said = matteflow_ok(&["probe", s(&clip)]);
    assert!(said.contains("video 0 (converted; `matteflow convert --video-stream N` picks another)"), "{said}");
    assert_flags_work_in("probe", &said);
    assert_flags_work_in("convert", &err);
    let second = dir.path().join("second/");
    matteflow_ok(&["convert", s(&clip), "-o", s(&second), "-k", "alpha", "--video-stream", "1"]);
    let frames = read_png_dir(&second);
    assert_eq!(frames.len(), 4);
    assert_eq!(frames[0].dimensions(), (96, 64));
    assert!(frames[0].get_pixel(10, 10)[2] > 200, "the blue stream");
    let out = matteflow(&["convert", s(&clip), "-o", s(&dir.path().join("x/")), "--video-stream", "2"]);
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("has 2 video streams, so --video-stream 2 does not exist: pick 0 to 1"), "{}", stderr_of(&out));
    assert_no_partials(dir.path());
}

#[test]
fn variable_frame_rate_every_frame_decodes_from_every_output() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("vfr.mp4");
    // One second at 25 fps, then two at 10 fps, in one MP4 with each frame's own timestamp.
    ffmpeg(&[
        "-f", "lavfi", "-i", "testsrc=size=160x120:rate=25:d=1", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:d=2",
        "-filter_complex", "[0][1]concat=n=2:v=1", "-fps_mode", "passthrough", "-c:v", "libx264", s(&clip),
    ]);
    let frames: usize = ffprobe(&clip, "stream=nb_read_frames").parse().unwrap();
    assert!(frames >= 40, "{frames}");
    let src = decode(&clip);
    let last_pts = src.last().unwrap().pts.unwrap() as f64 / 1e9;
    for out in ["o.mp4", "o.mov", "o.mkv", "o.webm"] {
        let path = dir.path().join(out);
        matteflow_ok(&["convert", s(&clip), "-o", s(&path)]);
        assert_eq!(ffprobe(&path, "stream=nb_read_frames"), frames.to_string(), "{out}: every frame decodes (ffmpeg)");
        let got = decode(&path);
        assert_eq!(got.len(), frames, "{out}: every frame decodes (GStreamer)");
        for (i, (a, b)) in src.iter().zip(&got).enumerate() {
            assert!(a.pts.unwrap().abs_diff(b.pts.unwrap()) <= 1_000_000, "{out}: frame {i} at {:?}, input at {:?}", b.pts, a.pts);
        }
        if out != "o.webm" && out != "o.mkv" {
            // The last frame is shown for its 100 ms, not for an instant.
            let d: f64 = ffprobe(&path, "stream=duration").parse().unwrap();
            assert!(d >= last_pts + 0.09, "{out}: lasts {d} s, last frame at {last_pts} s");
        }
    }
    let pngs = dir.path().join("frames/");
    matteflow_ok(&["convert", s(&clip), "-o", s(&pngs)]);
    assert_eq!(read_png_dir(&pngs).len(), frames);
}

#[test]
fn probe_says_what_will_be_done_to_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let rotated = rotated_clip(dir.path(), 90);
    let out = matteflow_ok(&["probe", s(&rotated)]);
    assert!(out.contains("stored      64×48, pixel aspect 1/1") && out.contains("rotate-90: turned upright"), "{out}");
    assert!(out.contains("output      48×64") && out.contains("scan        progressive"), "{out}");
    assert!(out.contains("1 video, 0 audio"), "{out}");
    let odd = lossless_clip(dir.path(), "odd.mkv", 193, 145, 3);
    let out = matteflow_ok(&["probe", s(&odd)]);
    assert!(out.contains("output      193×145") && out.contains("194×146 in H.264"), "{out}");
    assert!(out.contains("25/1 (25.000 fps), constant"), "{out}");
    let gif = dir.path().join("anim.gif");
    ffmpeg(&["-f", "lavfi", "-i", "testsrc=size=160x120:rate=10", "-frames:v", "12", s(&gif)]);
    let out = matteflow_ok(&["probe", s(&gif)]);
    assert!(out.contains("animated GIF") && out.contains("frames        12") && out.contains("160×120"), "{out}");
}
