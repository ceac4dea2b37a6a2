//! Caps: 4-byte RGB(A) in system memory in (plus NV12 in CUDA memory where the GPU stages run, either
//! policy), RGBA out at the same size, or twice as wide side by side.

use gstreamer as gst;
use gstreamer_video as gst_video;

use crate::cuda::gst_cuda::CAPS_FEATURE_CUDA;

/// Input formats, RGBA first (no swizzle); the others are reordered in place.
const SINK_FORMATS: [gst_video::VideoFormat; 4] =
    [gst_video::VideoFormat::Rgba, gst_video::VideoFormat::Rgbx, gst_video::VideoFormat::Bgra, gst_video::VideoFormat::Bgrx];

/// Fields that describe the input's colour encoding, not the RGBA output's.
const INPUT_ONLY_FIELDS: [&str; 2] = ["colorimetry", "chroma-site"];

pub fn sink_template() -> gst::Caps {
    let mut caps = gst_video::VideoCapsBuilder::new().format_list(SINK_FORMATS).build();
    caps.merge(cuda_caps());
    caps
}

pub fn src_template() -> gst::Caps {
    gst_video::VideoCapsBuilder::new().format(gst_video::VideoFormat::Rgba).build()
}

fn cuda_caps() -> gst::Caps {
    gst_video::VideoCapsBuilder::new().features([CAPS_FEATURE_CUDA]).format(gst_video::VideoFormat::Nv12).build()
}

/// The caps on the other side of `caps` (on the pad `direction` says). `side_by_side` doubles the width on the
/// way out; `cuda` also offers NV12 in CUDA memory on the way in.
pub fn transform(direction: gst::PadDirection, caps: &gst::Caps, filter: Option<&gst::Caps>, side_by_side: bool, cuda: bool) -> gst::Caps {
    let mut out = gst::Caps::new_empty();
    {
        let out = out.get_mut().unwrap();
        for s in caps.iter().filter(|s| s.name() == "video/x-raw") {
            let mut s = s.to_owned();
            s.remove_fields(INPUT_ONLY_FIELDS);
            if direction == gst::PadDirection::Sink {
                if side_by_side && !scale_width(&mut s, 2) {
                    continue;
                }
                s.set("format", gst_video::VideoFormat::Rgba.to_str());
                out.append_structure_full(s, Some(gst::CapsFeatures::new_empty()));
                continue;
            }
            if !allows_rgba(&s) || (side_by_side && !halve_width(&mut s)) {
                continue;
            }
            s.set("format", gst::List::new(SINK_FORMATS.iter().map(|f| f.to_str())));
            if cuda {
                let mut c = s.clone();
                c.set("format", gst_video::VideoFormat::Nv12.to_str());
                out.append_structure_full(c, Some(gst::CapsFeatures::new([CAPS_FEATURE_CUDA])));
            }
            out.append_structure_full(s, Some(gst::CapsFeatures::new_empty()));
        }
    }
    match filter {
        Some(f) => f.intersect_with_mode(&out, gst::CapsIntersectMode::First),
        None => out,
    }
}

/// Whether the structure's format (if it names one) admits RGBA.
fn allows_rgba(s: &gst::StructureRef) -> bool {
    let Ok(v) = s.value("format") else { return true };
    let mut theirs = gst::Structure::new_empty("f");
    theirs.set_value("format", v.clone());
    gst::Structure::builder("f").field("format", gst_video::VideoFormat::Rgba.to_str()).build().can_intersect(&theirs)
}

/// Multiplies the width by `k`; false where that cannot be represented.
fn scale_width(s: &mut gst::StructureRef, k: i32) -> bool {
    if let Ok(w) = s.get::<i32>("width") {
        return w.checked_mul(k).map(|w| s.set("width", w)).is_some();
    }
    if let Ok(r) = s.get::<gst::IntRange<i32>>("width") {
        let max = r.max().saturating_mul(k);
        s.set("width", gst::IntRange::new(r.min().saturating_mul(k).min(max), max));
        return true;
    }
    s.set("width", gst::IntRange::new(k, i32::MAX));
    true
}

/// Halves the width (side by side: the input is half the output); false for an odd fixed width.
fn halve_width(s: &mut gst::StructureRef) -> bool {
    if let Ok(w) = s.get::<i32>("width") {
        if w % 2 != 0 {
            return false;
        }
        s.set("width", w / 2);
        return true;
    }
    if let Ok(r) = s.get::<gst::IntRange<i32>>("width") {
        let (lo, hi) = ((r.min() + 1) / 2, r.max() / 2);
        if lo > hi || hi < 1 {
            return false;
        }
        if lo == hi {
            s.set("width", lo);
        } else {
            s.set("width", gst::IntRange::new(lo.max(1), hi));
        }
        return true;
    }
    s.set("width", gst::IntRange::new(1, i32::MAX / 2));
    true
}

/// Fixes the output caps as close to the input as they allow: its size (doubled side by side), frame rate and
/// pixel aspect ratio.
pub fn fixate_output(input: &gst::Caps, mut output: gst::Caps, side_by_side: bool) -> gst::Caps {
    output.truncate();
    if let (Some(i), Some(o)) = (input.structure(0), output.make_mut().structure_mut(0)) {
        fixate_like(i, o, side_by_side);
    }
    output.fixate();
    output
}

fn fixate_like(i: &gst::StructureRef, o: &mut gst::StructureRef, side_by_side: bool) {
    if let Ok(w) = i.get::<i32>("width") {
        o.fixate_field_nearest_int("width", if side_by_side { w.saturating_mul(2) } else { w });
    }
    if let Ok(h) = i.get::<i32>("height") {
        o.fixate_field_nearest_int("height", h);
    }
    if let Ok(f) = i.get::<gst::Fraction>("framerate") {
        o.fixate_field_nearest_fraction("framerate", f);
    }
    let par = i.get::<gst::Fraction>("pixel-aspect-ratio").unwrap_or(gst::Fraction::new(1, 1));
    if o.has_field("pixel-aspect-ratio") {
        o.fixate_field_nearest_fraction("pixel-aspect-ratio", par);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(s: &str) -> gst::Caps {
        s.parse().unwrap()
    }

    #[test]
    fn side_by_side_doubles_the_width_out_and_halves_it_in() {
        gst::init().unwrap();
        let out = transform(gst::PadDirection::Sink, &caps("video/x-raw,format=BGRx,width=176,height=144"), None, true, false);
        assert_eq!(out.structure(0).unwrap().get::<i32>("width").unwrap(), 352);
        assert_eq!(out.structure(0).unwrap().get::<&str>("format").unwrap(), "RGBA");
        let back = transform(gst::PadDirection::Src, &caps("video/x-raw,format=RGBA,width=352,height=144"), None, true, false);
        assert!(back.iter().all(|s| s.get::<i32>("width").unwrap() == 176));
        let odd = transform(gst::PadDirection::Src, &caps("video/x-raw,format=RGBA,width=353,height=144"), None, true, false);
        assert!(odd.is_empty());
    }

    #[test]
    fn cuda_memory_is_offered_only_when_asked() {
        gst::init().unwrap();
        let down = caps("video/x-raw,format=RGBA,width=[1,100],height=144");
        let without = transform(gst::PadDirection::Src, &down, None, false, false);
        assert!(without.iter_with_features().all(|(_, f)| !f.contains(CAPS_FEATURE_CUDA)));
        let with = transform(gst::PadDirection::Src, &down, None, false, true);
        assert!(with.iter_with_features().any(|(s, f)| f.contains(CAPS_FEATURE_CUDA) && s.get::<&str>("format").unwrap() == "NV12"));
        let i420 = transform(gst::PadDirection::Src, &caps("video/x-raw,format=I420"), None, false, true);
        assert!(i420.is_empty(), "{i420}");
    }
}
