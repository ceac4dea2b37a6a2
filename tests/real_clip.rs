//! The shipped selfie model on real footage (carphone: a man talking in a car, 176x144, 120 frames).

mod common;
use common::*;

#[test]
fn selfie_mask_covers_the_person_and_not_the_corners() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mask/");
    matteflow_ok(&["convert", sample("carphone_pristine.mp4").to_str().unwrap(), "-o", out.to_str().unwrap(), "-k", "mask"]);
    let masks = read_png_dir(&out);
    assert_eq!(masks.len(), 120);
    let mean = |m: &image::RgbaImage, xs: std::ops::Range<u32>, ys: std::ops::Range<u32>| {
        let mut s = 0u64;
        let mut n = 0u64;
        for y in ys.clone() {
            for x in xs.clone() {
                s += m.get_pixel(x, y)[0] as u64;
                n += 1;
            }
        }
        s as f64 / n as f64 / 255.0
    };
    let mut person_frames = 0;
    let mut clean_corner_frames = 0;
    for m in &masks {
        // Face and chest: centre-left of the frame.
        if mean(m, 60..100, 40..130) > 0.8 {
            person_frames += 1;
        }
        // Top corners show the car's roof and window.
        if mean(m, 0..20, 0..20) < 0.1 && mean(m, 156..176, 0..20) < 0.1 {
            clean_corner_frames += 1;
        }
    }
    assert!(person_frames >= 114, "person covered in only {person_frames}/120 frames");
    assert!(clean_corner_frames >= 114, "corners clean in only {clean_corner_frames}/120 frames");
}

#[test]
fn landscape_model_and_plain_flags_give_a_similar_mask() {
    // The same model file described by flags only (no manifest) must behave like the shipped manifest.
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a/");
    let b = dir.path().join("b/");
    let input = sample("carphone_pristine.mp4");
    matteflow_ok(&["convert", input.to_str().unwrap(), "-o", a.to_str().unwrap(), "-k", "mask", "--model", "selfie-landscape"]);
    let onnx = root().join("models/selfie_segmentation_landscape.onnx");
    matteflow_ok(&["convert", input.to_str().unwrap(), "-o", b.to_str().unwrap(), "-k", "mask", "--model", onnx.to_str().unwrap(), "--output-name", "segment_back"]);
    let (ma, mb) = (read_png_dir(&a), read_png_dir(&b));
    assert_eq!(ma.len(), 120);
    assert_eq!(ma.len(), mb.len());
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(x.as_raw(), y.as_raw(), "flags-only model must equal the manifest's result");
    }
}
