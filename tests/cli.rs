//! The command line around conversion: models, doctor, demo, the JSON report.

mod common;
use common::*;

#[test]
fn models_lists_every_manifest_and_what_is_present() {
    let out = matteflow_ok(&["models"]);
    for name in ["selfie", "selfie-landscape", "birefnet-general", "birefnet-lite", "birefnet-hr", "birefnet-dynamic", "birefnet-matting", "rmbg-2.0", "isnet"] {
        assert!(out.lines().any(|l| l.starts_with(&format!("{name} "))), "{name} missing from:\n{out}");
    }
    let selfie = out.lines().find(|l| l.starts_with("selfie ")).unwrap();
    assert!(selfie.contains("present"), "{selfie}");
    let general = out.lines().find(|l| l.starts_with("birefnet-general ")).unwrap();
    assert!(general.contains("missing BiRefNet-general-epoch_244.onnx"), "{general}");
    assert!(out.contains("Apache-2.0"));
}

#[test]
fn doctor_reports_runtime_provider_and_plugins() {
    let out = matteflow_ok(&["doctor"]);
    assert!(out.contains("GStreamer 1."), "{out}");
    assert!(out.lines().any(|l| l.starts_with("ok") && l.contains("ONNX Runtime") && l.contains("libonnxruntime.so")), "{out}");
    // This machine has no GPU: the session must say it runs on CPU.
    assert!(out.lines().any(|l| l.contains("provider used") && l.contains("CPU")), "{out}");
    for f in ["ProRes 4444 .mov", "FFV1 .mkv", "PNG sequence", "H.264 .mp4", "VP9 .webm"] {
        assert!(out.lines().any(|l| l.starts_with("ok") && l.contains(f)), "{f}: {out}");
    }
    // The GPU capabilities are listed, and their absence here is not a failure.
    for g in ["NVIDIA decode (nvcodec)", "decoded frames on the GPU", "NVIDIA encode (NVENC)", "CUDA driver"] {
        assert!(out.lines().any(|l| l.starts_with('-') && l.contains(g)), "{g}: {out}");
    }
    assert!(!out.lines().any(|l| l.starts_with("FAIL")), "{out}");
}

#[test]
fn missing_onnx_runtime_says_how_to_install_it() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_matteflow"))
        .args(["--ort-lib", "/nonexistent/libonnxruntime.so", "convert", "x.mp4", "-o", "y.mov"])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    // A library the user names is the only one tried.
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("/nonexistent/libonnxruntime.so: no such file"), "{err}");
    assert!(err.contains("scripts/setup.sh") && err.contains("pip install onnxruntime"), "{err}");
}

#[test]
fn demo_writes_alpha_composite_and_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let out = matteflow_ok(&["demo", "--out-dir", dir.path().to_str().unwrap()]);
    for (f, w) in [("carphone_alpha.mov", 176), ("carphone_composite.mp4", 176), ("carphone_side_by_side.mp4", 352)] {
        let p = dir.path().join(f);
        assert!(out.contains(p.to_str().unwrap()), "{out}");
        let frames = decode(&p);
        assert_eq!(frames.len(), 120, "{f}");
        assert_eq!(frames[0].width, w, "{f}");
    }
}

#[test]
fn report_and_stats_describe_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let out = matteflow(&[
        "convert",
        sample("bikes.mp4").to_str().unwrap(),
        "-o",
        dir.path().join("b.mp4").to_str().unwrap(),
        "--stats",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let err = stderr_of(&out);
    for stage in ["decode wait", "preprocess", "infer", "postprocess", "composite", "encode push", "end to end: 250 frames 640x272"] {
        assert!(err.contains(stage), "{stage}: {err}");
    }
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["frames"], 250);
    assert_eq!((r["fps_num"].as_i64(), r["fps_den"].as_i64()), (Some(25), Some(1)));
    assert_eq!(r["provider"], "CPU");
    assert_eq!(r["model"], "selfie");
}

/// `matteflow ARGS…`, expected to fail with exit code 1 and hints that `matteflow COMMAND` takes; returns stderr.
fn fails_with_hint(args: &[&str]) -> String {
    let out = matteflow(args);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(!err.contains("panicked") && !err.contains("CRITICAL"), "{err}");
    assert_flags_work_in(args[0], &err);
    err
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Hints of `live` and `convert` name flags those commands take, and following them works.
#[test]
fn hints_name_flags_of_the_command_that_printed_them() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("r.mp4");
    let live = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["live", "--input", "testsrc", "--size", "320x240", "--max-frames", "5", "--output", rec.to_str().unwrap()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };

    // live has --stages, not --cuda-stages: the GPU stages' refusal names --stages cpu, and that works.
    let err = fails_with_hint(&refs(&live(&["--stages", "gpu", "--refine"])));
    assert!(err.contains("the GPU stages do not apply --refine yet: use the CPU stages (--stages cpu)"), "{err}");
    assert!(!err.contains("--cuda-stages"), "{err}");
    matteflow_ok(&refs(&live(&["--stages", "cpu", "--refine"])));
    assert_eq!(decode(&rec).len(), 5);
    std::fs::remove_file(&rec).unwrap();

    // The control endpoint's address taken: said before going live, naming --control.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let err = fails_with_hint(&refs(&live(&["--control", &busy])));
    assert!(err.contains(&format!("cannot listen on {busy}")) && err.contains("choose another address: --control 127.0.0.1:PORT"), "{err}");
    assert!(!rec.exists(), "nothing went live");
    let port = free_port().to_string();
    matteflow_ok(&refs(&live(&["--control", &port])));
    assert_eq!(decode(&rec).len(), 5);
    std::fs::remove_file(&rec).unwrap();
    let err = fails_with_hint(&refs(&live(&["--control", &port, "--control-token", " "])));
    assert!(err.contains("the control token (--control-token) is empty"), "{err}");
    assert!(!rec.exists(), "nothing went live");
    drop(taken);

    // convert: an H.264 file cannot carry alpha; --output-kind composite with a --background can.
    let clip = sample("carphone_pristine.mp4");
    let mp4 = dir.path().join("c.mp4");
    let err = fails_with_hint(&["convert", clip.to_str().unwrap(), "-o", mp4.to_str().unwrap(), "-k", "alpha"]);
    assert!(err.contains("for --output-kind alpha, or choose --output-kind composite with a --background"), "{err}");
    matteflow_ok(&["convert", clip.to_str().unwrap(), "-o", mp4.to_str().unwrap(), "--output-kind", "composite", "--background", "green"]);
    assert_eq!(decode(&mp4).len(), 120);

    // A model of dynamic size: --input-size (or a manifest) says what size to run it at.
    let dynamic = known_answer_model(dir.path(), 0, 0, 0, "NCHW", "none", "stretch").with_extension("onnx");
    let out = dir.path().join("d.mkv");
    let err = fails_with_hint(&["convert", clip.to_str().unwrap(), "-o", out.to_str().unwrap(), "--model", dynamic.to_str().unwrap()]);
    assert!(err.contains("has dynamic size") && err.contains("pass --input-size HxW"), "{err}");
    matteflow_ok(&["convert", clip.to_str().unwrap(), "-o", out.to_str().unwrap(), "--model", dynamic.to_str().unwrap(), "--input-size", "64x64"]);
    assert_eq!(decode(&out).len(), 120);
    assert_no_partials(dir.path());
}

#[test]
fn bench_reports_the_pipelines_two_ends_beside_the_matting() {
    let clip = sample("carphone_pristine.mp4");
    let out = matteflow_ok(&["bench", clip.to_str().unwrap(), "--runs", "1", "-f", "h264"]);
    assert!(out.contains("end to end: 120 frames 176x144"), "{out}");
    // Decode alone, then decode and the same H.264 chain with no matting: a rate each (their order is not
    // asserted: timings under a loaded test run say nothing).
    let rate = |prefix: &str| -> f64 {
        let line = out.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no '{prefix}' line in:\n{out}"));
        line.rsplit_once('(').and_then(|(_, r)| r.strip_suffix(" fps)")).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{line}"))
    };
    let decode = rate("decode alone (GStreamer → RGBA): ");
    let ends = rate("decode + encode alone (H.264 .mp4, no matting, from RGBA): ");
    assert!(decode > 0.0 && ends > 0.0, "decode {decode} fps, decode + encode {ends} fps:\n{out}");
}
