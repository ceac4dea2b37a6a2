//! Matte quality, measured by `matteflow eval` on synthetic scenes with known alpha: motion-aware smoothing
//! halves flicker without lagging moving edges; foreground estimation lowers composite error.

mod common;
use common::*;

fn eval() -> (Vec<serde_json::Value>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = matteflow_ok(&["eval", "--out-dir", dir.path().to_str().unwrap(), "--frames", "30"]);
    let json: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("eval.json")).unwrap()).unwrap();
    let svg = std::fs::read_to_string(dir.path().join("eval.svg")).unwrap();
    assert!(out.contains("| naive (per frame) |"), "{out}");
    assert!(std::fs::read_to_string(dir.path().join("eval.md")).unwrap().contains("flicker static"));
    (json, svg)
}

fn get<'a>(r: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    r.iter().find(|m| m["setting"].as_str().unwrap().starts_with(name)).unwrap_or_else(|| panic!("{name} missing"))
}

#[test]
fn smoothing_halves_flicker_without_lag_and_fg_estimation_lowers_composite_error() {
    let (r, svg) = eval();
    let naive = get(&r, "naive");
    let smooth = get(&r, "smooth 0.7");
    let ungated = get(&r, "EMA 0.7, no motion gate");
    let fg = get(&r, "fg estimate");
    let f = |m: &serde_json::Value, k: &str| m[k].as_f64().unwrap();

    assert!(f(naive, "flicker_static") > 0.0, "the static scene must flicker per frame, or the test proves nothing");
    assert!(
        f(smooth, "flicker_static") <= 0.5 * f(naive, "flicker_static"),
        "smoothing: flicker {} vs per-frame {}",
        f(smooth, "flicker_static"),
        f(naive, "flicker_static")
    );
    assert!(f(smooth, "lag_frames").abs() <= 1.0, "motion-aware smoothing lags {} frames", f(smooth, "lag_frames"));
    // The lag measure does see lag: plain EMA trails the moving subject.
    assert!(f(ungated, "lag_frames") > 1.0, "plain EMA lag {}", f(ungated, "lag_frames"));
    assert!(
        f(fg, "composite_error") < f(naive, "composite_error"),
        "fg estimation {} vs naive {}",
        f(fg, "composite_error"),
        f(naive, "composite_error")
    );
    // The plot has one line per setting.
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), r.len());
}

#[test]
fn recurrent_state_is_carried_from_frame_to_frame() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    recurrent_model(d);
    // Red channel alternates 255, 0, 255, 0… ; mask_t = 0.5·R_t + 0.5·mask_{t-1}.
    let frames: Vec<Vec<u8>> = (0..6).map(|t| [if t % 2 == 0 { 255 } else { 0 }, 0, 0, 255].repeat(32 * 32)).collect();
    let clip = d.join("alt.mkv");
    write_lossless_clip(&clip, 32, 32, 10, &frames);
    let masks = d.join("m/");
    matteflow_ok(&["convert", clip.to_str().unwrap(), "-o", masks.to_str().unwrap(), "-k", "mask", "--model", d.join("rec.toml").to_str().unwrap()]);
    let got: Vec<u8> = read_png_dir(&masks).iter().map(|m| m.get_pixel(16, 16)[0]).collect();
    let mut s = 0f32;
    let want: Vec<u8> = (0..6)
        .map(|t| {
            s = 0.5 * if t % 2 == 0 { 1.0 } else { 0.0 } + 0.5 * s;
            (s * 255.0 + 0.5) as u8
        })
        .collect();
    assert_eq!(got, want, "state not carried (per-frame would give 128, 0, 128, …)");

    // A manifest naming a state the model lacks is refused with both names.
    std::fs::write(
        d.join("bad.toml"),
        "name='rec'\nfile='rec.onnx'\n[input]\nname='pixels'\nlayout='NCHW'\nsize=[16,16]\n[output]\nname='mask'\n\
         [[recurrent]]\ninput='r9i'\noutput='r9o'\n[[constants]]\nname='ratio'\nvalue=[0.5]\n",
    )
    .unwrap();
    let o = matteflow(&["convert", clip.to_str().unwrap(), "-o", d.join("x/").to_str().unwrap(), "--model", d.join("bad.toml").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr_of(&o).contains("'r9o' → 'r9i'"), "{}", stderr_of(&o));
}
