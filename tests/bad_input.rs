//! Every kind of bad input: a one-paragraph error naming the problem, a non-zero exit, no panic, and nothing
//! left at the destination that looks complete.

mod common;
use std::path::Path;
use common::*;

/// Runs a conversion expected to fail; returns stderr after checking the exit code and the output folder.
fn fails(args: &[&str], out_dir: &Path, expect: &[&str]) -> String {
    let out = matteflow(args);
    let err = stderr_of(&out);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(out.status.code().is_some(), "{args:?} was killed by a signal: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    for e in expect {
        assert!(err.contains(e), "{args:?}: error should mention {e:?}, got: {err}");
    }
    // (Progress lines, printed every 5 s when stderr is not a terminal, are not part of the error: a truncated
    // file that stalls the demuxer fails after the 20 s stall limit, with a few of them before.)
    let progress = |l: &str| l.starts_with("matteflow: ") && l.contains(" frames, ") && l.ends_with(" fps");
    let message: Vec<&str> = err.trim().lines().filter(|l| !progress(l)).collect();
    assert!(message.len() <= 2, "one paragraph, got: {err}");
    assert_no_partials(out_dir);
    err
}

#[test]
fn bad_inputs_are_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("out.mov");
    let o = out.to_str().unwrap();

    fails(&["convert", d.join("missing.mp4").to_str().unwrap(), "-o", o], d, &["missing.mp4", "no such file"]);

    let empty = d.join("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    fails(&["convert", empty.to_str().unwrap(), "-o", o], d, &["empty.mp4", "empty (0 bytes)"]);

    let text = d.join("notes.mp4");
    std::fs::write(&text, "these are meeting notes, not a video\n".repeat(50)).unwrap();
    fails(&["convert", text.to_str().unwrap(), "-o", o], d, &["notes.mp4", "not a video file"]);

    // Truncated: moov at the end (cut before it), and moov at the start (cut in the middle of the data).
    let whole = std::fs::read(sample("carphone_pristine.mp4")).unwrap();
    let cut = d.join("cut.mp4");
    std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    fails(&["convert", cut.to_str().unwrap(), "-o", o], d, &["cut.mp4", "truncated"]);
    let faststart = d.join("faststart.mp4");
    gst_make(&format!(
        "videotestsrc num-buffers=100 ! video/x-raw,width=160,height=120,framerate=25/1 ! x264enc ! mp4mux faststart=true ! filesink location={}",
        faststart.display()
    ));
    let fs = std::fs::read(&faststart).unwrap();
    let cut2 = d.join("cut2.mp4");
    std::fs::write(&cut2, &fs[..fs.len() / 3]).unwrap();
    fails(&["convert", cut2.to_str().unwrap(), "-o", o], d, &["cut2.mp4", "truncated", "--allow-short"]);
    // ...and --allow-short keeps what decodes.
    let kept = d.join("kept.mkv");
    matteflow_ok(&["convert", cut2.to_str().unwrap(), "-o", kept.to_str().unwrap(), "--allow-short"]);
    let n = decode(&kept).len();
    assert!(n > 5 && n < 100, "kept {n} frames of a third of 100");
    std::fs::remove_file(&kept).unwrap();

    // A codec no plugin decodes: an AVI whose FourCC is made up.
    let avi = d.join("mjpeg.avi");
    gst_make(&format!(
        "videotestsrc num-buffers=10 ! video/x-raw,width=64,height=48 ! jpegenc ! avimux ! filesink location={}",
        avi.display()
    ));
    let bytes = std::fs::read(&avi).unwrap();
    let mut b = bytes.clone();
    let mut i = 0;
    while i + 4 <= b.len() {
        if &b[i..i + 4] == b"MJPG" {
            b[i..i + 4].copy_from_slice(b"XQZ9");
        }
        i += 1;
    }
    let odd = d.join("odd_codec.avi");
    std::fs::write(&odd, &b).unwrap();
    fails(&["convert", odd.to_str().unwrap(), "-o", o], d, &["odd_codec.avi", "no installed plugin", "gstreamer1.0-"]);

    // Audio only.
    let audio = d.join("tone.ogg");
    gst_make(&format!("audiotestsrc num-buffers=20 ! vorbisenc ! oggmux ! filesink location={}", audio.display()));
    fails(&["convert", audio.to_str().unwrap(), "-o", o], d, &["tone.ogg", "no video stream"]);
    assert!(!out.exists());
}

#[test]
fn bad_models_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = sample("carphone_pristine.mp4");
    let i = input.to_str().unwrap();
    let o = d.join("out.mov");
    let o = o.to_str().unwrap();
    fails(&["convert", i, "-o", o, "--model", d.join("nope.onnx").to_str().unwrap()], d, &["nope.onnx", "cannot open the model file"]);
    fails(&["convert", i, "-o", o, "--model", "birefnet-general"], d, &["BiRefNet-general-epoch_244.onnx", "not found", "--manifest"]);
    fails(&["convert", i, "-o", o, "--model", "no-such-model"], d, &["no such model", "selfie"]);
    let junk = d.join("junk.onnx");
    std::fs::write(&junk, b"PK\x03\x04 this is a zip, not a model").unwrap();
    fails(&["convert", i, "-o", o, "--model", junk.to_str().unwrap()], d, &["junk.onnx", "not an ONNX model"]);
    let selfie = root().join("models/selfie_segmentation.onnx");
    let manifest = root().join("models/birefnet-general.toml");
    fails(
        &["convert", i, "-o", o, "--model", selfie.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()],
        d,
        &["does not match its manifest", "'input_image'", "'input_1'"],
    );
    // Right name, wrong layout/size.
    let m2 = d.join("wrong_size.toml");
    std::fs::write(
        &m2,
        format!(
            "name='x'\nfile='{}'\n[input]\nname='input_1'\nlayout='NCHW'\nsize=[256,256]\n[output]\nname='activation_10'\n",
            selfie.display()
        ),
    )
    .unwrap();
    fails(&["convert", i, "-o", o, "--model", m2.to_str().unwrap()], d, &["[1,256,256,3]", "NCHW [1,3,256,256]"]);
    let m3 = d.join("broken.toml");
    std::fs::write(&m3, "name = 'x'\nfile = \n").unwrap();
    fails(&["convert", i, "-o", o, "--model", m3.to_str().unwrap()], d, &["broken.toml", "line 2"]);
}

#[test]
fn bad_outputs_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = sample("carphone_pristine.mp4");
    let i = input.to_str().unwrap();
    fails(&["convert", i, "-o", "/proc/matteflow-test.mov"], d, &["/proc", "cannot write"]);
    fails(&["convert", i, "-o", d.join("no/such/dir/x.mov").to_str().unwrap()], d, &["does not exist"]);
    fails(&["convert", i, "-o", d.join("x.avi").to_str().unwrap()], d, &["cannot tell the format"]);
    fails(&["convert", i, "-o", d.join("x.mp4").to_str().unwrap(), "-k", "alpha"], d, &["cannot carry alpha"]);

    let existing = d.join("existing.mov");
    std::fs::write(&existing, b"precious").unwrap();
    fails(&["convert", i, "-o", existing.to_str().unwrap()], d, &["already exists", "--overwrite"]);
    assert_eq!(std::fs::read(&existing).unwrap(), b"precious", "an existing file is never touched without --overwrite");
    matteflow_ok(&["convert", i, "-o", existing.to_str().unwrap(), "--overwrite"]);
    assert_eq!(decode(&existing).len(), 120);

    // A failure mid-way (the background video turns out not to be a video) leaves the old output intact.
    let bg = d.join("background.mp4");
    std::fs::write(&bg, "not a video at all\n".repeat(100)).unwrap();
    fails(&["convert", i, "-o", existing.to_str().unwrap(), "--overwrite", "-b", bg.to_str().unwrap()], d, &["background", "not a video file"]);
    assert_eq!(decode(&existing).len(), 120);
}

#[test]
fn interrupt_stops_cleanly_and_removes_the_partial_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let long = d.join("long.mp4");
    gst_make(&format!(
        "videotestsrc num-buffers=3000 pattern=ball ! video/x-raw,width=640,height=480,framerate=30/1 ! x264enc speed-preset=ultrafast ! mp4mux ! filesink location={}",
        long.display()
    ));
    let out = d.join("result.mov");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_matteflow"))
        .args(["convert", long.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the temporary output exists and has data, then press Ctrl-C.
    let t = std::time::Instant::now();
    loop {
        let partial = std::fs::read_dir(d).unwrap().filter_map(|e| e.ok()).find(|e| e.file_name().to_string_lossy().contains(".partial"));
        if partial.is_some_and(|p| p.metadata().map(|m| m.len() > 10_000).unwrap_or(false)) {
            break;
        }
        assert!(t.elapsed().as_secs() < 60, "conversion never started writing");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    unsafe_kill(child.id(), 2);
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed().as_secs() < 20, "no exit within 20 s of SIGINT (hang)");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted") && err.contains("partial output was removed"), "{err}");
    assert!(!out.exists());
    assert_no_partials(d);
}

fn unsafe_kill(pid: u32, sig: i32) {
    let ok = std::process::Command::new("kill").args([format!("-{sig}"), pid.to_string()]).status().unwrap();
    assert!(ok.success());
}

#[test]
fn disk_full_during_convert_names_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&dir.path().join("small"), 100) else { return };
    let out = disk.dir.join("out.mov");
    let o = matteflow(&["convert", sample("carphone_pristine.mp4").to_str().unwrap(), "-o", out.to_str().unwrap()]);
    let err = stderr_of(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("disk full") && err.contains(&format!("mounted at {}", disk.dir.display())), "{err}");
    assert!(!err.contains("filesink") && !err.contains("panicked"), "{err}");
    assert!(!out.exists());
    assert_no_partials(&disk.dir);
}
