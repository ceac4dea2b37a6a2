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
    assert_flags_work_in("run", &err);
    let out = matteflow(&["run", &job, "--overwrite"]);
    assert!(out.status.success(), "the hint works: {}", stderr_of(&out));
    assert_eq!(decode(&rec).len(), 5);

    // "To wait for it, pass --rtmp-start-timeout SECONDS": run takes it and waits that long.
    let url = format!("rtmp://127.0.0.1:{}/live/x", free_port());
    let job = write(dir.path(), "rtmp.toml", &pattern_job(&url));
    let out = matteflow(&["run", &job]);
    let err = stderr_of(&out);
    assert!(err.contains("cannot be reached") && err.contains("--rtmp-start-timeout"), "{err}");
    assert_flags_work_in("run", &err);
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
    assert_flags_work_in("run", &err);
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
        assert_flags_work_in("run", &err);
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

/// `matteflow run JOB EXTRA…`, expected to fail with exit code 1 and a hint `run` can follow; returns stderr.
fn run_fails(job: &str, extra: &[&str]) -> String {
    let out = matteflow(&[&["run", job][..], extra].concat());
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{job} {extra:?}: {err}");
    assert!(!err.contains("panicked") && !err.contains("CRITICAL"), "{err}");
    assert_flags_work_in("run", &err);
    err
}

/// `matteflow run JOB EXTRA…`, expected to succeed; returns stderr.
fn run_ok(job: &str, extra: &[&str]) -> String {
    let out = matteflow(&[&["run", job][..], extra].concat());
    let err = stderr_of(&out);
    assert!(out.status.success(), "{job} {extra:?}: {err}");
    err
}

#[test]
fn toml_mistakes_suggest_the_key_and_list_no_internal_fields() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("r.mp4");
    let job = pattern_job(rec.to_str().unwrap());
    // A misspelt key: the nearest key of its section is suggested; the struct's field list is not printed.
    let bad = write(dir.path(), "bad.toml", &format!("{job}\n[matte]\nsmoth = 0.7\n"));
    let err = run_fails(&bad, &[]);
    assert!(err.contains("line 13, column 1") && err.contains("unknown key `smoth` under [matte]: did you mean `smooth`?"), "{err}");
    assert!(!err.contains("expected one of") && !err.contains("budget_ms") && !err.contains("fg_estimate"), "{err}");
    // Following it works.
    let good = write(dir.path(), "good.toml", &format!("{job}\n[matte]\nsmooth = 0.7\n"));
    run_ok(&good, &[]);
    assert_eq!(decode(&rec).len(), 5);
    // A misspelt section, and a key that is a prefix of the real one.
    let err = run_fails(&write(dir.path(), "s.toml", &job.replace("[run]", "[rnu]")), &[]);
    assert!(err.contains("unknown section [rnu]: did you mean [run]?") && !err.contains("expected one of"), "{err}");
    let err = run_fails(&write(dir.path(), "b.toml", &format!("{job}\n[encode]\nbitrate = 900\n")), &[]);
    assert!(err.contains("unknown key `bitrate` under [encode]: did you mean `bitrate_kbps`?"), "{err}");
    // Nothing near: the file's documentation, not the struct.
    let err = run_fails(&write(dir.path(), "k.toml", &job.replace("width = 320", "kind = \"alpha\"")), &[]);
    assert!(err.contains("unknown key `kind` under [input] (pipelines/README.md lists the sections and their keys)"), "{err}");
    assert!(!err.contains("expected one of") && !err.contains("`fps`"), "{err}");
    assert!(root().join("pipelines/README.md").is_file());
    // The same for a --set change, which has no line to point at.
    let err = run_fails(&good, &["--set", "matte.smoht=0.2"]);
    assert!(err.contains("unknown key `smoht` under [matte]: did you mean `smooth`?") && !err.contains("expected one of"), "{err}");
    std::fs::remove_file(&rec).unwrap();
    run_ok(&good, &["--set", "matte.smooth=0.2"]);
    assert_eq!(decode(&rec).len(), 5);
}

#[test]
fn live_job_hints_name_what_run_takes() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("r.mp4");
    let job = write(dir.path(), "j.toml", &pattern_job(rec.to_str().unwrap()));

    // No output at all: --output is run's own flag.
    let bare = write(dir.path(), "bare.toml", "[input]\nsource = \"testsrc\"\nwidth = 320\nheight = 240\n[run]\nmax_frames = 5\n");
    let err = run_fails(&bare, &[]);
    assert!(err.contains("no output: give at least one --output"), "{err}");
    run_ok(&bare, &["--output", rec.to_str().unwrap()]);
    assert_eq!(decode(&rec).len(), 5);
    std::fs::remove_file(&rec).unwrap();

    // The GPU stages asked for with what they do not do: the hint is the pipeline file's stages key (and
    // --set), not --cuda-stages or --stages, which run does not take.
    let err = run_fails(&job, &["--set", "matte.stages=gpu", "--set", "matte.refine=true"]);
    assert!(err.contains("the GPU stages do not apply `refine` under [matte] yet"), "{err}");
    assert!(err.contains("`stages = \"cpu\"` under [matte] or --set matte.stages=cpu"), "{err}");
    run_ok(&job, &["--set", "matte.stages=gpu", "--set", "matte.refine=true", "--set", "matte.stages=cpu"]);
    assert_eq!(decode(&rec).len(), 5);
    std::fs::remove_file(&rec).unwrap();
    // Without a GPU (this machine), asking for the GPU stages says how to use the CPU stages instead.
    let gpu = matteflow(&["run", &job, "--set", "matte.stages=gpu"]);
    if !gpu.status.success() {
        let err = stderr_of(&gpu);
        assert!(err.contains("need an NVIDIA GPU: use the CPU stages (`stages = \"cpu\"` under [matte] or --set matte.stages=cpu)"), "{err}");
        assert_flags_work_in("run", &err);
        assert!(!rec.exists());
    }
    let _ = std::fs::remove_file(&rec);

    // A virtual camera format v4l2sink does not take: the [encode] key, not --vcam-format. Following it gets
    // past the format to the device (which cannot exist on these machines: no V4L2 in the kernel).
    let cam = write(dir.path(), "cam.toml", &pattern_job("v4l2:/dev/video99").replace("[run]", "[encode]\nvcam_format = \"NOPE\"\n\n[run]"));
    let err = run_fails(&cam, &[]);
    assert!(err.contains("'NOPE'") && err.contains("`vcam_format = \"YUY2\"` under [encode] or --set encode.vcam_format=YUY2"), "{err}");
    let err = run_fails(&cam, &["--set", "encode.vcam_format=YUY2"]);
    assert!(err.contains("virtual camera") && !err.contains("NOPE"), "{err}");

    // The control endpoint's address taken: said at once, before anything is recorded, naming [control] listen.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let ctl = write(dir.path(), "ctl.toml", &format!("{}\n[control]\nlisten = \"127.0.0.1:{port}\"\n", pattern_job(rec.to_str().unwrap())));
    let err = run_fails(&ctl, &[]);
    assert!(err.contains(&format!("cannot listen on 127.0.0.1:{port}")), "{err}");
    assert!(err.contains("`listen = \"127.0.0.1:PORT\"` under [control] or --set control.listen=127.0.0.1:PORT"), "{err}");
    assert!(!rec.exists());
    let free = format!("control.listen=127.0.0.1:{}", free_port());
    let err = run_ok(&ctl, &["--set", &free]);
    assert!(err.contains("control on http://127.0.0.1:"), "{err}");
    assert_eq!(decode(&rec).len(), 5);
    std::fs::remove_file(&rec).unwrap();
    // An empty token: [control] token, said before going live.
    let err = run_fails(&ctl, &["--set", &free, "--set", "control.token=\"\""]);
    assert!(err.contains("the control token (`token` under [control]) is empty"), "{err}");
    assert!(!rec.exists());
    run_ok(&ctl, &["--set", &free, "--set", "control.token=s3cret"]);
    assert_eq!(decode(&rec).len(), 5);
    drop(taken);
}

#[test]
fn model_hints_name_the_model_section() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("r.mp4");
    let job = write(dir.path(), "j.toml", &pattern_job(rec.to_str().unwrap()));
    // No such model: a manifest is given under [model], not with --manifest.
    let err = run_fails(&job, &["--set", "model.name=nosuch"]);
    assert!(err.contains("no such model") && err.contains("`manifest = \"FILE.toml\"` under [model] or --set model.manifest=FILE.toml"), "{err}");
    let onnx = root().join("models/selfie_segmentation.onnx");
    let manifest = root().join("models/selfie.toml");
    let (name, man) = (format!("model.name={}", onnx.display()), format!("model.manifest={}", manifest.display()));
    run_ok(&job, &["--set", &name, "--set", &man]);
    assert_eq!(decode(&rec).len(), 5);
    std::fs::remove_file(&rec).unwrap();

    // A model of dynamic size without a manifest: run cannot take --input-size; a manifest with its size works.
    let dynamic = known_answer_model(dir.path(), 0, 0, 0, "NCHW", "none", "stretch");
    let onnx = dynamic.with_extension("onnx");
    let err = run_fails(&job, &["--set", &format!("model.name={}", onnx.display())]);
    assert!(err.contains("has dynamic size") && err.contains("`manifest = \"FILE.toml\"` under [model]"), "{err}");
    let sized = dir.path().join("sized.toml");
    std::fs::write(&sized, std::fs::read_to_string(&dynamic).unwrap().replace("size = [0, 0]", "size = [64, 64]")).unwrap();
    run_ok(&job, &["--set", &format!("model.name={}", onnx.display()), "--set", &format!("model.manifest={}", sized.display())]);
    assert_eq!(decode(&rec).len(), 5);
}

#[test]
fn conversion_hints_name_what_run_takes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let conv = |name: &str, input: &Path, output: &Path| {
        write(d, name, &format!("[input]\nsource = \"{}\"\n[[output]]\ntarget = \"{}\"\n", input.display(), output.display()))
    };

    // A truncated file: `allow_short` under [input] keeps what decodes.
    let whole = d.join("whole.mp4");
    gst_make(&format!(
        "videotestsrc num-buffers=100 ! video/x-raw,width=160,height=120,framerate=25/1 ! x264enc ! mp4mux faststart=true ! filesink location={}",
        whole.display()
    ));
    let bytes = std::fs::read(&whole).unwrap();
    let cut = d.join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let kept = d.join("kept.mkv");
    let job = conv("cut.toml", &cut, &kept);
    let err = run_fails(&job, &[]);
    assert!(err.contains("truncated") && err.contains("`allow_short = true` under [input] or --set input.allow_short=true"), "{err}");
    assert!(!kept.exists());
    run_ok(&job, &["--set", "input.allow_short=true"]);
    let n = decode(&kept).len();
    assert!(n > 5 && n < 100, "kept {n} frames of a third of 100");
    // Played live, the keys that only conversions take are refused, not ignored.
    let err = run_fails(&job, &["--set", "input.allow_short=true", "--set", "mode=live"]);
    assert!(err.contains("video_stream and allow_short under [input] apply to conversions"), "{err}");

    // The file exists: --overwrite, which run takes, replaces it.
    let err = run_fails(&job, &["--set", "input.allow_short=true"]);
    assert!(err.contains("already exists; pass --overwrite"), "{err}");
    run_ok(&job, &["--set", "input.allow_short=true", "--overwrite"]);

    // Two video streams: `video_stream` under [input] picks another, as `convert --video-stream` does.
    let two = d.join("two.mkv");
    gst_make(&format!(
        "matroskamux name=m ! filesink location={} \
         videotestsrc num-buffers=4 pattern=red ! video/x-raw,width=64,height=48,framerate=10/1 ! x264enc ! m. \
         videotestsrc num-buffers=4 pattern=blue ! video/x-raw,width=96,height=64,framerate=10/1 ! x264enc ! m.",
        two.display()
    ));
    let first = d.join("first/");
    let err = run_ok(&conv("two.toml", &two, &first), &[]);
    assert!(err.contains("has 2 video streams") && err.contains("(`video_stream = N` under [input] or --set input.video_stream=N picks another)"), "{err}");
    assert!(!err.contains("--video-stream"), "{err}");
    assert_eq!(read_png_dir(&first)[0].dimensions(), (64, 48));
    let second = d.join("second/");
    run_ok(&conv("two2.toml", &two, &second), &["--set", "input.video_stream=1"]);
    let frames = read_png_dir(&second);
    assert_eq!((frames.len(), frames[0].dimensions()), (4, (96, 64)));
    assert!(frames[0].get_pixel(10, 10)[2] > 200, "the blue stream");
    let err = run_fails(&conv("two3.toml", &two, &d.join("third/")), &["--set", "input.video_stream=2"]);
    assert!(err.contains("so `video_stream = 2` under [input] or --set input.video_stream=2 does not exist: pick 0 to 1"), "{err}");

    // Alpha into H.264: the output kind is `kind` under [matte]; the background is run's --background.
    let mp4 = d.join("c.mp4");
    let job = write(d, "alpha.toml", &format!("[input]\nsource = \"{}\"\n[matte]\nkind = \"alpha\"\n[[output]]\ntarget = \"{}\"\n", whole.display(), mp4.display()));
    let err = run_fails(&job, &[]);
    assert!(err.contains("cannot carry alpha"), "{err}");
    assert!(err.contains("`kind = \"composite\"` under [matte] or --set matte.kind=composite with a --background"), "{err}");
    run_ok(&job, &["--set", "matte.kind=composite", "--background", "green"]);
    assert_eq!(decode(&mp4).len(), 100);
    assert_no_partials(d);
}

/// The control endpoint's refusals, read over HTTP from a job `run` started, name the pipeline file's keys.
#[test]
fn control_endpoint_answers_name_pipeline_file_keys() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = format!(
        "[input]\nsource = \"testsrc\"\nwidth = 320\nheight = 240\n[audio]\nsource = \"none\"\n[control]\nlisten = \"127.0.0.1:{port}\"\n\
         [run]\nduration_s = 60\n[[output]]\ntarget = \"{}\"\n",
        dir.path().join("r.mp4").display()
    );
    let job = write(dir.path(), "ctl.toml", &text);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_matteflow"))
        .args(["run", &job])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let post = |path: &str, body: &str| -> (u16, String) {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(s, "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let code = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
        (code, resp.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default())
    };
    let t = Instant::now();
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(t.elapsed() < Duration::from_secs(30) && child.try_wait().unwrap().is_none(), "the control endpoint did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, body) = post("/background", "image:beach.png");
    let (mute_code, mute_body) = post("/mute", "");
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(child.wait().unwrap().success());
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("`background_dir = \"DIR\"` under [control] or --set control.background_dir=DIR") && !body.contains("--background-dir"), "{body}");
    assert_eq!(mute_code, 409, "{mute_body}");
    assert!(mute_body.contains("`source = \"none\"` under [audio]") && !mute_body.contains("--audio"), "{mute_body}");
}

/// The sound hints in `run`'s words: `source = "none"` under [audio], and following it works.
#[test]
fn the_audio_hint_names_the_audio_section() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("a.mp4");
    let text = format!("{}\n[audio]\nsource = \"source\"\n", pattern_job(rec.to_str().unwrap()));
    let job = write(dir.path(), "audio.toml", &text);
    let out = matteflow(&["run", &job]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("has no audio track") && err.contains("`source = \"none\"` under [audio]"), "{err}");
    assert_flags_work_in("run", &err);
    assert!(!rec.exists(), "nothing written");
    let out = matteflow(&["run", &job, "--set", "audio.source=none"]);
    assert!(out.status.success(), "the hint works: {}", stderr_of(&out));
    assert_eq!(decode(&rec).len(), 5);
}
