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
