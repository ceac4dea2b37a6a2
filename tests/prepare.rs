//! `matteflow prepare` on the CPU provider (what CI can run): the passes fire on a small Swin-like block
//! (tests/fixtures/make_swin_block.py) and the prepared graph gives the same masks through matteflow's own
//! model path; the shipped selfie model passes through unchanged; the cache; the errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use matteflow::infer::{LowResMask, Segmenter};

fn prepare(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_matteflow"))
        .arg("prepare")
        .args(args)
        .env("PYTHONPATH", root().join(".deps/py"))
        .env("MATTEFLOW_CACHE_DIR", cache)
        .output()
        .expect("run matteflow prepare")
}

fn prepare_ok(args: &[&str], cache: &Path) -> (String, String) {
    let out = prepare(args, cache);
    let (so, se) = (String::from_utf8_lossy(&out.stdout).into_owned(), stderr_of(&out));
    assert!(out.status.success(), "matteflow prepare {args:?} failed: {se}");
    (so, se)
}

/// Masks of `manifest` on three noise inputs, through matteflow's CPU model path.
fn masks(manifest: &Path) -> Vec<Vec<f32>> {
    let opts = matteflow::runtime::ProviderOptions {
        device: matteflow::runtime::DeviceChoice::Cpu,
        threads: Some(1),
        ..Default::default()
    };
    let model = matteflow::model::resolve(manifest.to_str().unwrap(), None, &Default::default()).unwrap();
    let mut seg = matteflow::open_segmenter(model, &opts).unwrap();
    let mut state = 11u64;
    (0..3)
        .map(|_| {
            let mut m = LowResMask::default();
            seg.run(&noise_input(&mut state), &mut m).unwrap();
            m.data
        })
        .collect()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).flat_map(|(x, y)| {
        assert_eq!(x.len(), y.len());
        x.iter().zip(y).map(|(p, q)| (p - q).abs())
    })
    .fold(0.0, f32::max)
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn fired(r: &serde_json::Value, pass: &str) -> i64 {
    r["passes"].as_array().unwrap().iter().find(|p| p["pass"] == pass).unwrap()["fired"].as_i64().unwrap()
}

#[test]
fn passes_fire_on_a_swin_block_and_the_masks_stay_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("swin.onnx");
    fixture_py("make_swin_block.py", &[&onnx]);
    let prepared = dir.path().join("swin-prepared.onnx");
    let rep = dir.path().join("report.json");
    let (stdout, _) = prepare_ok(
        &[onnx.to_str().unwrap(), "-o", prepared.to_str().unwrap(), "--report", rep.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(stdout.trim(), prepared.to_str().unwrap(), "prints the prepared file");
    let r = report(&rep);
    for pass in ["window-pad", "bias-gelu", "skip-layernorm"] {
        assert_eq!(fired(&r, pass), 1, "{pass} fires once: {r}");
    }
    let ops = &r["ops_after"];
    assert!(ops.get("Pad").is_none() && ops.get("Gelu").is_none(), "Pad and Gelu are gone: {ops}");
    assert_eq!(ops["BiasGelu"], 1);
    assert_eq!(ops["SkipLayerNormalization"], 1);
    assert_eq!(ops["LayerNormalization"], 1, "the first norm (after a Reshape) stays");
    assert_eq!(r["nodes_before"], 16);
    assert_eq!(r["nodes_after"], 14);

    let before = masks(&selfie_manifest_for(&onnx, "swin"));
    let after = masks(&selfie_manifest_for(&prepared, "swin_prepared"));
    let d = max_diff(&before, &after);
    assert!(d <= 1e-5, "prepared masks differ by {d} (tolerance 1e-5)");
    // The block is not trivial: its masks vary with the input.
    assert!(max_diff(&before[..1], &before[1..2]) > 0.01);
}

/// `--fp16`'s passes (window-attention among them), given by name so that the graph stays float32 for the 1e-5
/// comparison.
const FP16_PASSES: &str = "fold,window-gather,gather-linear,window-attention,qkv-bias,window-pad,bias-gelu,skip-layernorm,conv-bn,deform-im2col,fold";

/// The attention fixture prepared with the default passes (or `passes`): each pass fires as `fired` says, the op
/// counts come out as expected and the masks stay within 1e-5.
fn attention_block(fixture_args: &[&str], passes: Option<&str>, fired_want: &[(&str, i64)], nodes: (i64, i64)) {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("attn.onnx");
    let mut args: Vec<&Path> = vec![&onnx];
    args.extend(fixture_args.iter().map(Path::new));
    fixture_py("make_swin_attention.py", &args);
    let prepared = dir.path().join("attn-prepared.onnx");
    let rep = dir.path().join("report.json");
    let mut args = vec![onnx.to_str().unwrap(), "-o", prepared.to_str().unwrap(), "--report", rep.to_str().unwrap()];
    args.extend(passes.iter().flat_map(|p| ["--passes", p]));
    prepare_ok(&args, dir.path());
    let r = report(&rep);
    for &(pass, n) in fired_want {
        assert_eq!(fired(&r, pass), n, "{pass} fires {n}×: {r}");
    }
    let ops = &r["ops_after"];
    for gone in ["Pad", "BatchNormalization", "Shape", "Constant"] {
        assert!(ops.get(gone).is_none(), "no {gone} left: {ops}");
    }
    assert_eq!(ops["Gather"], 2, "{ops}");
    assert_eq!(ops["Concat"], 1, "only the zero row the padding reads: {ops}");
    assert_eq!(ops["SkipLayerNormalization"], 1);
    let fused = fired_want.contains(&("window-attention", 1));
    assert_eq!(ops.get("WindowAttention").is_some(), fused, "{ops}");
    assert_eq!(ops.get("Softmax").is_none(), fused, "the softmax is inside the fused op: {ops}");
    let im2col = fired_want.contains(&("deform-im2col", 1));
    assert_eq!(ops.get("DeformIm2Col").is_some(), im2col, "{ops}");
    assert_eq!(ops.get("DeformConv").is_none(), im2col, "{ops}");
    assert_eq!((r["nodes_before"].as_i64().unwrap(), r["nodes_after"].as_i64().unwrap()), nodes);

    let before = masks(&selfie_manifest_for(&onnx, "attn"));
    let after = masks(&selfie_manifest_for(&prepared, "attn_prepared"));
    let d = max_diff(&before, &after);
    assert!(d <= 1e-5, "prepared masks differ by {d} (tolerance 1e-5)");
    assert!(max_diff(&before[..1], &before[1..2]) > 0.01, "the block's masks vary with the input");
}

#[test]
fn shifted_window_attention_becomes_row_gathers_and_its_biases_fold() {
    // The partition (pad, shift, 6-D transpose) and the reverse (transpose, shift back, crop) are one Gather
    // each; the projection moves after the reverse; its bias, with the value bias, goes into the norm; the
    // weights' Transposes fold into the initializers.
    let fired = [("fold", 2), ("window-gather", 2), ("gather-linear", 1), ("qkv-bias", 1), ("skip-layernorm", 1), ("conv-bn", 1), ("window-pad", 0)];
    attention_block(&[], None, &fired, (64, 42));
}

#[test]
fn the_torchscript_form_of_the_official_exports_is_folded_first() {
    // Shapes computed at run time (the pad through a Cast, which shape inference cannot see through), a
    // Constant scale, qkv unbound by Split + Squeeze: `fold` makes them constants, then the same passes fire.
    let fired = [("fold", 7), ("window-gather", 2), ("gather-linear", 1), ("qkv-bias", 1), ("skip-layernorm", 1), ("conv-bn", 1)];
    attention_block(&["--torchscript"], None, &fired, (81, 40));
}

#[test]
fn window_attention_and_deform_conv_become_matteflow_operators_and_the_masks_stay_the_same() {
    // qkv's bias, the scale, the relative-position bias + shift mask (replayed as one constant and folded), the
    // softmax and ·v: one com.matteflow.WindowAttention node, which matteflow's host operator runs on the CPU
    // provider (the CUDA provider's kernel is checked by `gpu-check` on a GPU). qkv-bias finds nothing left to do.
    // The modulated DeformConv (its BatchNormalization folded first): com.matteflow.DeformIm2Col (with the ones
    // row its bias multiplies) + MatMul + Reshape.
    for (args, fold) in [(&[][..], 2), (&["--torchscript"][..], 7)] {
        let fired = [("fold", fold), ("window-gather", 2), ("gather-linear", 1), ("window-attention", 1), ("qkv-bias", 0), ("skip-layernorm", 1), ("conv-bn", 1), ("deform-im2col", 1)];
        attention_block(args, Some(FP16_PASSES), &fired, (if fold == 2 { 64 } else { 81 }, 27));
    }
}

#[test]
fn the_fp16_form_runs_on_the_cpu_through_the_host_operators() {
    // What the GPU runs (`prepare --fp16`: the default fp16 passes, float16 weights and activations,
    // WindowAttention and DeformIm2Col) on the CPU provider: matteflow's host operators in f16, masks close to the
    // float32 original's (float16 rounding: 0.00084 here, 1/255 at most on carphone's frames).
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("attn.onnx");
    fixture_py("make_swin_attention.py", &[&onnx]);
    let prepared = dir.path().join("attn16.onnx");
    let rep = dir.path().join("report.json");
    prepare_ok(&[onnx.to_str().unwrap(), "-o", prepared.to_str().unwrap(), "--fp16", "--report", rep.to_str().unwrap()], dir.path());
    let r = report(&rep);
    assert_eq!(r["fp16"], true, "{r}");
    for pass in ["window-attention", "deform-im2col"] {
        assert_eq!(fired(&r, pass), 1, "{pass} is among the --fp16 defaults: {r}");
    }
    let ops = &r["ops_after"];
    assert!(ops.get("WindowAttention").is_some() && ops.get("DeformIm2Col").is_some() && ops.get("DeformConv").is_none(), "{ops}");
    let before = masks(&selfie_manifest_for(&onnx, "attn"));
    let after = masks(&selfie_manifest_for(&prepared, "attn16"));
    let d = max_diff(&before, &after);
    assert!(d <= 0.005, "the fp16 form's masks differ by {d} (tolerance 0.005)");
    assert!(max_diff(&before[..1], &before[1..2]) > 0.01, "the block's masks vary with the input");
}

#[test]
fn a_constant_over_the_fold_limit_stays_computed_from_its_largest_piece_within_it() {
    // Swin's shift mask broadcast over a batch outgrows the limit; the mask itself must still fold, or its whole
    // construction (ScatterND, Where, index arithmetic) runs every frame (BiRefNet lite at batch 8: 1351 nodes
    // instead of 1103).
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("chain.onnx");
    fixture_py("make_mask_chain.py", &[&onnx]);
    let before = masks(&selfie_manifest_for(&onnx, "chain"));
    for (limit, left) in [(Some("100000"), &["Expand", "Add"][..]), (None, &["Add"][..])] {
        let prepared = dir.path().join(format!("chain-{}.onnx", limit.unwrap_or("default")));
        let rep = dir.path().join("report.json");
        let mut args = vec![onnx.to_str().unwrap(), "-o", prepared.to_str().unwrap(), "--report", rep.to_str().unwrap()];
        if let Some(l) = limit {
            args.extend(["--fold-limit", l]);
        }
        prepare_ok(&args, dir.path());
        let r = report(&rep);
        let ops = r["ops_after"].as_object().unwrap();
        for op in ["ScatterND", "Mul"] {
            assert!(!ops.contains_key(op), "limit {limit:?}: {op} folded: {ops:?}");
        }
        for op in left {
            assert_eq!(ops.get(*op).and_then(|v| v.as_i64()), Some(1), "limit {limit:?}: one {op} left: {ops:?}");
        }
        assert_eq!(ops.contains_key("Expand"), limit.is_some(), "limit {limit:?}: {ops:?}");
        let after = masks(&selfie_manifest_for(&prepared, &format!("chain_{}", limit.unwrap_or("default"))));
        let d = max_diff(&before, &after);
        assert!(d <= 1e-6, "limit {limit:?}: masks differ by {d}");
    }
    assert!(max_diff(&before[..1], &before[1..2]) > 0.001, "the masks vary with the input");
}

#[test]
fn the_shipped_selfie_model_passes_through_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("selfie.onnx");
    std::fs::copy(root().join("models/selfie_segmentation.onnx"), &onnx).unwrap();
    let prepared = dir.path().join("selfie-prepared.onnx");
    let rep = dir.path().join("report.json");
    prepare_ok(&[onnx.to_str().unwrap(), "-o", prepared.to_str().unwrap(), "--report", rep.to_str().unwrap()], dir.path());
    let r = report(&rep);
    for pass in ["fold", "window-gather", "gather-linear", "qkv-bias", "window-pad", "bias-gelu", "skip-layernorm", "conv-bn"] {
        assert_eq!(fired(&r, pass), 0, "{pass} finds nothing in the selfie model");
    }
    assert_eq!(r["nodes_before"], r["nodes_after"]);
    let d = max_diff(&masks(&selfie_manifest_for(&onnx, "a")), &masks(&selfie_manifest_for(&prepared, "b")));
    assert_eq!(d, 0.0);
}

#[test]
fn results_are_cached_by_the_models_hash() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("swin.onnx");
    fixture_py("make_swin_block.py", &[&onnx]);
    let cache = dir.path().join("cache");
    let (first, err1) = prepare_ok(&[onnx.to_str().unwrap()], &cache);
    let path = PathBuf::from(first.trim());
    assert!(path.starts_with(cache.join("prepared")) && path.is_file(), "{path:?}");
    assert!(err1.contains("window-pad: 1 rewrites"), "{err1}");
    let (second, err2) = prepare_ok(&[onnx.to_str().unwrap()], &cache);
    assert_eq!(first, second);
    assert!(err2.contains("already prepared"), "{err2}");
    // Options are part of the key; a changed model is a new entry.
    let (none, _) = prepare_ok(&[onnx.to_str().unwrap(), "--passes", "none"], &cache);
    assert_ne!(none, first);
    let mut bytes = std::fs::read(&onnx).unwrap();
    bytes.extend_from_slice(b"\x32\x01x"); // ModelProto.doc_string = "x": the same graph, another file
    std::fs::write(&onnx, bytes).unwrap();
    let (third, _) = prepare_ok(&[onnx.to_str().unwrap()], &cache);
    assert_ne!(third, first);
    let names = |d: PathBuf| -> Vec<String> {
        std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    };
    let files = names(cache.join("prepared"));
    assert_eq!(files.iter().filter(|n| n.ends_with(".onnx")).count(), 3, "{files:?}");
    let hashes = names(cache.join("prepared/.hashes"));
    assert!(files.iter().chain(&hashes).all(|n| !n.contains("partial")), "no partial files left: {files:?} {hashes:?}");
    assert_eq!(hashes.len(), 2, "one remembered hash per model file version: {hashes:?}");
}

#[test]
fn errors_name_the_problem_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("swin.onnx");
    fixture_py("make_swin_block.py", &[&onnx]);
    let out_path = dir.path().join("out.onnx");

    let out = prepare(&[onnx.to_str().unwrap(), "-o", out_path.to_str().unwrap(), "--python", "/nonexistent/python3"], dir.path());
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("needs Python 3 with onnx") && err.contains("--python"), "{err}");

    let out = prepare(&[dir.path().join("missing.onnx").to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("missing.onnx: no such file"), "{}", stderr_of(&out));

    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"not a model").unwrap();
    let out = prepare(&[junk.to_str().unwrap(), "-o", out_path.to_str().unwrap()], dir.path());
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("junk.onnx: preparation failed"), "{err}");

    let out = prepare(&[onnx.to_str().unwrap(), "-o", out_path.to_str().unwrap(), "--passes", "window-pad,fold-everything"], dir.path());
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("unknown pass fold-everything"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!out_path.exists() && left.iter().all(|n| !n.to_string_lossy().contains("partial")), "{left:?}");
}

#[test]
fn a_prepared_graph_in_the_cache_is_used_with_device_cuda() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let onnx = dir.path().join("swin.onnx");
    fixture_py("make_swin_block.py", &[&onnx]);
    let manifest = selfie_manifest_for(&onnx, "swin");
    let run = |extra: &[&str], out: &str| {
        let out = dir.path().join(out);
        let clip = sample("carphone_pristine.mp4");
        let mut args: Vec<String> = ["-v", "convert"].map(String::from).to_vec();
        for p in [&clip, &PathBuf::from("-o"), &out, &PathBuf::from("-k"), &PathBuf::from("mask")] {
            args.push(p.to_str().unwrap().to_string());
        }
        for a in ["--model", onnx.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()] {
            args.push(a.to_string());
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        // (no NVRTC on the library path, on any machine: see the --fp16 part below)
        let o = Command::new(env!("CARGO_BIN_EXE_matteflow"))
            .args(&args)
            .env("MATTEFLOW_CACHE_DIR", &cache)
            .env("LD_LIBRARY_PATH", "/nonexistent")
            .output()
            .unwrap();
        let err = stderr_of(&o);
        assert!(o.status.success(), "{args:?}: {err}");
        err
    };
    // Nothing prepared yet: the file as given.
    assert!(!run(&["--device", "cuda"], "a.mkv").contains("prepared graph"));
    let (path, _) = prepare_ok(&[onnx.to_str().unwrap()], &cache);
    let path = path.trim();
    let used = format!("using its prepared graph {path}");
    // On CUDA (here: asked for, falling back to the CPU provider) the cached graph is taken and said so …
    let err = run(&["--device", "cuda"], "b.mkv");
    assert!(err.contains(&used), "{err}");
    // … not with --no-prepared, and not on the CPU.
    assert!(!run(&["--device", "cuda", "--no-prepared"], "c.mkv").contains("prepared graph"));
    assert!(!run(&["--device", "cpu"], "d.mkv").contains("prepared graph"));
    // The --fp16 form is preferred, but it carries matteflow's own operators, whose CUDA kernels need NVRTC:
    // without it the float32 preparation is taken, and the log says why.
    let (path16, _) = prepare_ok(&[onnx.to_str().unwrap(), "--fp16"], &cache);
    assert_ne!(path16.trim(), path);
    let err = run(&["--device", "cuda"], "d2.mkv");
    assert!(err.contains("not using its fp16 prepared graph") && err.contains("NVRTC") && err.contains(&used), "{err}");
    // A changed model file is not matched with the old preparation.
    let mut bytes = std::fs::read(&onnx).unwrap();
    bytes.extend_from_slice(b"\x32\x01y");
    std::fs::write(&onnx, bytes).unwrap();
    assert!(!run(&["--device", "cuda"], "e.mkv").contains("prepared graph"));
}
