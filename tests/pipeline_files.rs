//! `matteflow run` with pipeline files: every hint an error gives names something `run` accepts (each one is
//! followed here), a missing camera is said first and at once, limits that cannot apply are refused, mistakes
//! point at their line and column, and values out of range are refused with the range (as on the CLI).

mod common;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A live job from the test pattern into `target`, 5 frames.
fn pattern_job(target: &str) -> String {
    format!("[input]\nsource = \"testsrc\"\nwidth = 320\nheight = 240\n\n[run]\nmax_frames = 5\n\n[[output]]\ntarget = \"{target}\"\n")
}

#[test]
fn every_hint_names_an_option_that_run_accepts() {
    let dir = tempfile::tempdir().unwrap();
    // "already exists; pass --overwrite": run takes --overwrite.
    let rec = dir.path().join("rec.mp4");
    std::fs::write(&rec, b"old").unwrap();
    let job = write(dir.path(), "rec.toml", &pattern_job(rec.to_str().unwrap()));
    let out = matteflow(&["run", &job]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--overwrite"), "{err}");
    let out = matteflow(&["run", &job, "--overwrite"]);
    assert!(out.status.success(), "the hint works: {}", stderr_of(&out));
    assert_eq!(decode(&rec).len(), 5);

    // "To wait for it, pass --rtmp-start-timeout SECONDS": run takes it and waits that long.
    let url = format!("rtmp://127.0.0.1:{}/live/x", free_port());
    let job = write(dir.path(), "rtmp.toml", &pattern_job(&url));
    let out = matteflow(&["run", &job]);
    let err = stderr_of(&out);
    assert!(err.contains("cannot be reached") && err.contains("--rtmp-start-timeout"), "{err}");
    let t = Instant::now();
    let out = matteflow(&["run", &job, "--rtmp-start-timeout", "2"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "accepted, then the server is still not there: {err}");
    assert!(err.contains("cannot be reached") && t.elapsed() >= Duration::from_secs(2), "{err} after {:?}", t.elapsed());

    // A missing camera is the first thing said, at once, even with an RTMP server to wait 10 s for.
    let cam = "[input]\nsource = \"/dev/video77\"\n[encode]\nrtmp_start_timeout_s = 10\n[[output]]\ntarget = \"URL\"\n";
    let job = write(dir.path(), "cam.toml", &cam.replace("URL", &url));
    let t = Instant::now();
    let out = matteflow(&["run", &job]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("/dev/video77") && err.contains("no such video device") && !err.contains("RTMP"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(8), "took {:?}", t.elapsed());
}

#[test]
fn limits_that_cannot_apply_are_refused_and_the_hint_works() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    gst_make(&format!(
        "videotestsrc num-buffers=30 ! video/x-raw,width=160,height=120,framerate=30/1 ! x264enc ! mp4mux ! filesink location={}",
        clip.display()
    ));
    let out_file = dir.path().join("out.mkv");
    let text = format!("[input]\nsource = \"{}\"\n[[output]]\ntarget = \"{}\"\n", clip.display(), out_file.display());
    let job = write(dir.path(), "conv.toml", &text);
    // A file-to-file job converts every frame: --max-frames / --duration are refused, not ignored.
    for flag in [["--max-frames", "5"], ["--duration", "1"]] {
        let out = matteflow(&["run", &job, flag[0], flag[1]]);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(flag[0]) && err.contains("--set mode=live"), "{err}");
        assert!(!out_file.exists());
    }
    // The hint: played live, the limit applies.
    let out = matteflow(&["run", &job, "--max-frames", "5", "--set", "mode=live"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(decode(&out_file).len(), 5);
    // Without a limit it converts, every frame.
    std::fs::remove_file(&out_file).unwrap();
    let out = matteflow(&["run", &job]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(decode(&out_file).len(), 30);
}

#[test]
fn mistakes_point_at_their_column_and_values_out_of_range_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let job = write(dir.path(), "bad.toml", "[input]\nsource = \"testsrc\"\n\n[matte]\n  smoth = 0.5\n");
    let out = matteflow(&["run", &job]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("pipeline file") && err.contains("bad.toml") && !err.contains("manifest"), "{err}");
    // The caret sits under the mistake: the same column in the quoted line and the caret line.
    let lines: Vec<&str> = err.lines().collect();
    let quoted = lines.iter().position(|l| l.ends_with("smoth = 0.5")).unwrap_or_else(|| panic!("{err}"));
    let caret = lines[quoted + 1];
    assert_eq!(caret.find('^'), lines[quoted].find("smoth"), "{err}");

    // smooth = 3.0: refused with the range, in a pipeline file (live and conversion) and on the command line.
    let live = write(dir.path(), "smooth.toml", &format!("{}[matte]\nsmooth = 3.0\n", pattern_job(dir.path().join("s.mp4").to_str().unwrap())));
    let clip = sample("carphone_pristine.mp4");
    let conv = write(dir.path(), "conv.toml", &format!("[input]\nsource = \"{}\"\n[matte]\nsmooth = 3.0\n[[output]]\ntarget = \"{}\"\n", clip.display(), dir.path().join("c.mov").display()));
    let runs: [Vec<&str>; 4] = [
        vec!["run", &live],
        vec!["run", &conv],
        vec!["live", "--input", "testsrc", "--output", "x.mp4", "--smooth", "3"],
        vec!["convert", clip.to_str().unwrap(), "-o", "x.mov", "--smooth", "3"],
    ];
    for args in runs {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_matteflow")).args(&args).current_dir(dir.path()).output().unwrap();
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("smooth 3") && err.contains("from 0 to 0.95"), "{args:?}: {err}");
    }
    assert_no_partials(dir.path());
    assert!(!dir.path().join("x.mp4").exists() && !dir.path().join("c.mov").exists());
}
