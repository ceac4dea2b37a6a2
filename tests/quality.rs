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
