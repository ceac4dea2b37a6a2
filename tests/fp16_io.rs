//! Models exported with float16 inputs and outputs (fp16 exports that keep half-precision I/O): the host path
//! converts the f32 tensor to f16 and the f16 mask back, so such a model runs wherever its f32 twin does and
//! gives the same masks up to half-precision rounding. (The GPU path binds f16 tensors directly; its kernels
//! are checked by `matteflow gpu-check` on a GPU.) Model: the shipped selfie model with f16 I/O, made by
//! tests/fixtures/make_f16_io.py.

mod common;
use std::path::{Path, PathBuf};

use common::*;
use matteflow::infer::{LowResMask, Segmenter};

/// The selfie model with f16 I/O (and a dynamic batch dimension when `dynamic`, via make_dynamic_batch.py);
/// returns its manifest.
fn selfie_f16_io(dir: &Path, dynamic: bool) -> PathBuf {
    let onnx = dir.join("selfie_f16_io.onnx");
    let mut src = root().join("models/selfie_segmentation.onnx");
    if dynamic {
        let dyn_model = dir.join("selfie_dyn.onnx");
        fixture_py("make_dynamic_batch.py", &[&src, &dyn_model]);
        src = dyn_model;
    }
    fixture_py("make_f16_io.py", &[&src, &onnx]);
    selfie_manifest_for(&onnx, "selfie-f16-io")
}

#[test]
fn an_f16_io_model_gives_the_masks_of_its_f32_twin() {
    let dir = tempfile::tempdir().unwrap();
    let opts = matteflow::runtime::ProviderOptions { device: matteflow::runtime::DeviceChoice::Cpu, ..Default::default() };
    let open = |m: &str| matteflow::open_segmenter(matteflow::model::resolve(m, None, &Default::default()).unwrap(), &opts).unwrap();
    let mut f32_model = open("selfie");
    let mut f16_model = open(selfie_f16_io(dir.path(), true).to_str().unwrap());
    let frame = noise_input(&mut 99u64);
    let (mut a, mut b) = (LowResMask::default(), LowResMask::default());
    f32_model.run(&frame, &mut a).unwrap();
    f16_model.run(&frame, &mut b).unwrap();
    assert_eq!((a.width, a.height, a.data.len()), (b.width, b.height, b.data.len()));
    let max = a.data.iter().zip(&b.data).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    // Input rounded to f16 (relative 2⁻¹¹), output rounded to f16 (≤ 2.5e-4 in [0, 1]); seen: 9e-8 (this model's
    // masks of noise are close to 0, where f16 is fine-grained).
    assert!(max < 1e-3, "f16-I/O mask differs from the f32 model's by up to {max}");
    assert!(a.data.iter().zip(&b.data).any(|(x, y)| x != y), "the f16 path should round somewhere; was the f16 model used?");
    // Batched calls go through the same conversion.
    assert_eq!(f16_model.configure_batch(2, true), 2);
    let mut masks = vec![LowResMask::default(); 2];
    f16_model.run_batch(&[&frame, &frame], &mut masks).unwrap();
    assert!(masks[0].data == b.data, "batched f16 call differs from the single call");
}

#[test]
fn an_f16_io_model_converts_a_clip() {
    let dir = tempfile::tempdir().unwrap();
    let model = selfie_f16_io(dir.path(), false);
    let out = dir.path().join("out.mkv");
    let clip = sample("carphone_pristine.mp4");
    let r = matteflow(&["-v", "convert", clip.to_str().unwrap(), "-o", out.to_str().unwrap(), "--model", model.to_str().unwrap()]);
    let err = stderr_of(&r);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("float16"), "the log should say the model takes float16 tensors: {err}");
    assert_eq!(decode(&out).len(), 120);
}
