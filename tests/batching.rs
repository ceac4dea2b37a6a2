//! Batched inference: several frames per ONNX Runtime call (`convert --batch N`: consecutive frames of a file;
//! `batch --jobs J --batch N`: frames of concurrent files through one batching thread). The output must not
//! change: same frame count, timestamps and pixels as one frame per call, and the same file whether it was
//! converted alone or beside others. Models: the shipped selfie model rewritten with a dynamic (or fixed 4)
//! batch dimension by tests/fixtures/make_dynamic_batch.py; the shipped file itself has a fixed batch of 1.

mod common;
use std::path::{Path, PathBuf};

use common::*;
use matteflow::infer::{LowResMask, Segmenter};
use matteflow::preprocess::ModelInput;

/// The selfie model with batch dimension `batch` ("N" = dynamic) and its manifest; returns the manifest.
fn selfie_with_batch(dir: &Path, batch: Option<usize>) -> PathBuf {
    let tag = batch.map_or("dyn".to_string(), |b| b.to_string());
    let onnx = dir.join(format!("selfie_batch_{tag}.onnx"));
    let b = batch.map(|b| b.to_string()).unwrap_or_default();
    let src = root().join("models/selfie_segmentation.onnx");
    let mut args: Vec<&Path> = vec![&src, &onnx];
    if batch.is_some() {
        args.push(Path::new(&b));
    }
    fixture_py("make_dynamic_batch.py", &args);
    selfie_manifest_for(&onnx, &format!("selfie-batch-{tag}"))
}

fn assert_same_frames(a: &Path, b: &Path) {
    let (x, y) = (decode(a), decode(b));
    assert!(!x.is_empty());
    assert_eq!(x.len(), y.len(), "frame count of {} vs {}", a.display(), b.display());
    for (i, (p, q)) in x.iter().zip(&y).enumerate() {
        assert_eq!(p.pts, q.pts, "frame {i}: timestamp of {} vs {}", a.display(), b.display());
        assert!(p.rgba == q.rgba, "frame {i}: pixels of {} differ from {}", a.display(), b.display());
    }
}

fn report_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn convert_batch_n_gives_the_same_frames_timestamps_and_pixels_as_batch_1() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = selfie_with_batch(d, None);
    let clip = sample("carphone_pristine.mp4"); // 120 frames
    let run = |batch: &str| {
        let out = d.join(format!("b{batch}.mkv"));
        let rep = d.join(format!("b{batch}.json"));
        let args = ["convert", clip.to_str().unwrap(), "-o", out.to_str().unwrap(), "--model", model.to_str().unwrap(), "--smooth", "0.5", "--batch", batch, "--report", rep.to_str().unwrap()];
        matteflow_ok(&args);
        (out, report_json(&rep))
    };
    let (one, r1) = run("1");
    assert_eq!(r1["stages"]["infer_calls"], 120);
    // The first call (the model's warm-up) is reported apart: one frame, ended after the run started.
    assert_eq!(r1["stages"]["first_infer_frames"], 1);
    assert!(r1["stages"]["first_infer_done"]["nanos"].as_u64().unwrap() + r1["stages"]["first_infer_done"]["secs"].as_u64().unwrap() > 0);
    // 7 does not divide 120: the last call holds the one frame left at the end of the stream.
    for (batch, calls) in [("4", 30), ("7", 18)] {
        let (many, r) = run(batch);
        assert_eq!(r["frames"], 120);
        assert_eq!(r["stages"]["infer_calls"], calls, "--batch {batch} should make {calls} inference calls");
        assert_eq!(r["stages"]["first_infer_frames"].as_u64().unwrap(), batch.parse::<u64>().unwrap(), "the first call holds a whole batch");
        assert_same_frames(&one, &many);
    }
}

#[test]
fn batch_jobs_3_batch_4_output_is_identical_to_each_file_converted_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = selfie_with_batch(d, None);
    let input = d.join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::copy(sample("carphone_pristine.mp4"), input.join("car.mp4")).unwrap();
    std::fs::copy(sample("bikes.mp4"), input.join("bikes.mp4")).unwrap();
    gst_make(&format!(
        "videotestsrc num-buffers=45 pattern=ball ! video/x-raw,width=160,height=120,framerate=15/1 ! x264enc ! matroskamux ! filesink location={}",
        input.join("ball.mkv").display()
    ));
    let out = d.join("out");
    let r = matteflow(&["-v", "batch", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "-f", "ffv1", "--jobs", "3", "--batch", "4", "--model", model.to_str().unwrap()]);
    let err = stderr_of(&r);
    assert!(r.status.success(), "{err}");
    // The batching thread really put frames of different files into one call.
    let line = err.lines().find(|l| l.contains("batched inference:")).unwrap_or_else(|| panic!("no batching summary in: {err}"));
    let nums: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let (frames, calls) = (nums[0], nums[1]);
    assert_eq!(frames, 120 + 250 + 45, "{line}");
    assert!(calls < frames * 3 / 4, "hardly any frames shared a call: {line}");
    for name in ["car", "bikes", "ball"] {
        let src = std::fs::read_dir(&input).unwrap().map(|e| e.unwrap().path()).find(|p| p.file_stem().unwrap() == name).unwrap();
        let alone = d.join(format!("alone_{name}.mkv"));
        matteflow_ok(&["convert", src.to_str().unwrap(), "-o", alone.to_str().unwrap(), "--model", model.to_str().unwrap()]);
        assert_same_frames(&alone, &out.join(format!("{name}.mkv")));
    }
}

#[test]
fn a_frame_gets_the_same_mask_at_any_batch_size_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let opts = matteflow::runtime::ProviderOptions { device: matteflow::runtime::DeviceChoice::Cpu, ..Default::default() };
    let open = |m: &Path| {
        let resolved = matteflow::model::resolve(m.to_str().unwrap(), None, &Default::default()).unwrap();
        matteflow::open_segmenter(resolved, &opts).unwrap()
    };
    // Pseudo-random frames, already model tensors.
    let mut state = 12345u64;
    let frames: Vec<ModelInput> = (0..6).map(|_| noise_input(&mut state)).collect();
    let mut dynamic = open(&selfie_with_batch(dir.path(), None));
    assert_eq!(dynamic.configure_batch(6, true), 6);
    let alone: Vec<LowResMask> = frames
        .iter()
        .map(|f| {
            let mut m = LowResMask::default();
            dynamic.run(f, &mut m).unwrap();
            m
        })
        .collect();
    for n in 2..=6 {
        for start in 0..=frames.len() - n {
            let refs: Vec<&ModelInput> = frames[start..start + n].iter().collect();
            let mut masks = vec![LowResMask::default(); n];
            dynamic.run_batch(&refs, &mut masks).unwrap();
            for (k, m) in masks.iter().enumerate() {
                assert!(m.data == alone[start + k].data, "frame {} differs in a batch of {n} at position {k}", start + k);
            }
        }
    }
    // A model with a fixed batch of 4 gets short batches filled up with zero frames; a frame's mask is the same
    // at any position and with any padding. (Compared with this model's own full batches: its static shapes
    // let ONNX Runtime optimise the graph differently from the dynamic model, which moves some values by 1 ulp.)
    let mut fixed = open(&selfie_with_batch(dir.path(), Some(4)));
    assert_eq!(fixed.configure_batch(1, false), 4);
    let mut full = vec![LowResMask::default(); 4];
    fixed.run_batch(&frames[..4].iter().collect::<Vec<_>>(), &mut full).unwrap();
    for n in 1..=3 {
        for start in 0..=4 - n {
            let refs: Vec<&ModelInput> = frames[start..start + n].iter().collect();
            let mut masks = vec![LowResMask::default(); n];
            fixed.run_batch(&refs, &mut masks).unwrap();
            for (k, m) in masks.iter().enumerate() {
                assert!(m.data == full[start + k].data, "fixed batch 4: frame {} differs with {n} real frames at position {k}", start + k);
            }
        }
    }
}

#[test]
fn a_batch_1_model_falls_back_to_one_frame_per_call_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let clip = sample("carphone_pristine.mp4");
    let out = d.join("fixed.mkv");
    let rep = d.join("fixed.json");
    let r = matteflow(&["convert", clip.to_str().unwrap(), "-o", out.to_str().unwrap(), "--batch", "4", "--report", rep.to_str().unwrap()]);
    let err = stderr_of(&r);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("fixed batch of 1") && err.contains("dynamic batch dimension"), "{err}");
    assert_eq!(report_json(&rep)["stages"]["infer_calls"], 120);
    assert_eq!(decode(&out).len(), 120);

    // batch with several jobs: said once, and every file still converted.
    let input = d.join("in");
    std::fs::create_dir_all(&input).unwrap();
    for k in 0..3 {
        std::fs::copy(&clip, input.join(format!("c{k}.mp4"))).unwrap();
    }
    let r = matteflow(&["batch", input.to_str().unwrap(), "-o", d.join("out").to_str().unwrap(), "-f", "ffv1", "--jobs", "3", "--batch", "4"]);
    let err = stderr_of(&r);
    assert!(r.status.success(), "{err}");
    assert_eq!(err.matches("fixed batch of 1").count(), 1, "{err}");
    assert_same_frames(&out, &d.join("out/c1.mkv"));
}

#[test]
fn a_recurrent_model_is_not_batched_and_keeps_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    recurrent_model(d);
    let frames: Vec<Vec<u8>> = (0..6).map(|t| [if t % 2 == 0 { 255 } else { 0 }, 0, 0, 255].repeat(32 * 32)).collect();
    let clip = d.join("alt.mkv");
    write_lossless_clip(&clip, 32, 32, 10, &frames);
    let masks = d.join("m/");
    let r = matteflow(&["convert", clip.to_str().unwrap(), "-o", masks.to_str().unwrap(), "-k", "mask", "--batch", "4", "--model", d.join("rec.toml").to_str().unwrap()]);
    let err = stderr_of(&r);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("recurrent state") && err.contains("--batch 4 ignored"), "{err}");
    // mask_t = 0.5·R_t + 0.5·mask_{t-1}: the state went from frame to frame, in order.
    let got: Vec<u8> = read_png_dir(&masks).iter().map(|m| m.get_pixel(16, 16)[0]).collect();
    let mut s = 0f32;
    let want: Vec<u8> = (0..6)
        .map(|t| {
            s = 0.5 * if t % 2 == 0 { 1.0 } else { 0.0 } + 0.5 * s;
            (s * 255.0 + 0.5) as u8
        })
        .collect();
    assert_eq!(got, want, "state not carried from frame to frame");
}

#[test]
fn bad_batch_values_are_refused_with_the_reason() {
    for (cmd, value, want) in [
        ("convert", "0", "0 frames per inference call runs nothing"),
        ("batch", "0", "0 frames per inference call runs nothing"),
        ("convert", "four", "not a whole number"),
        ("convert", "65", "at most 64"),
    ] {
        let r = matteflow(&[cmd, "in.mp4", "-o", "out.mkv", "--batch", value]);
        assert_eq!(r.status.code(), Some(2), "{cmd} --batch {value}");
        let err = stderr_of(&r);
        assert!(err.contains("--batch") && err.contains(want), "{cmd} --batch {value}: {err}");
    }
}

#[test]
fn warming_up_leaves_a_recurrent_model_s_state_and_masks_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = recurrent_model(dir.path());
    let opts = matteflow::runtime::ProviderOptions { device: matteflow::runtime::DeviceChoice::Cpu, ..Default::default() };
    let open = || matteflow::open_segmenter(matteflow::model::resolve(manifest.to_str().unwrap(), None, &Default::default()).unwrap(), &opts).unwrap();
    let (mut cold, mut warm) = (open(), open());
    // The warm-up frame is mid-grey: through this model (mask = 0.5·R + 0.5·state) it would leave state 0.25.
    assert!(warm.warm_up().unwrap() > std::time::Duration::ZERO);
    let frame = ModelInput { data: vec![1.0; 3 * 16 * 16], shape: [1, 3, 16, 16], geometry: None };
    for t in 0..3 {
        let (mut a, mut b) = (LowResMask::default(), LowResMask::default());
        cold.run(&frame, &mut a).unwrap();
        warm.run(&frame, &mut b).unwrap();
        assert_eq!(a.data, b.data, "frame {t}: the warm-up changed the recurrent state");
    }
    // A fixed-batch export takes its warm-up frame padded to its batch (a lone frame would be refused).
    let fixed = selfie_with_batch(dir.path(), Some(4));
    let mut fixed = matteflow::open_segmenter(matteflow::model::resolve(fixed.to_str().unwrap(), None, &Default::default()).unwrap(), &opts).unwrap();
    fixed.warm_up().expect("warm-up of a fixed-batch-4 model");
}
