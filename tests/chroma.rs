//! The NV12 → RGB conversion of the GPU stages is GStreamer's own `videoconvert`, to the level: the CPU
//! reference of the kernels' math (`cuda::nv12`, which `matteflow gpu-check` holds the kernels to) against
//! this machine's GStreamer on real NV12 frames GStreamer made — decoded clips at their size and scaled to odd
//! sizes and to 1080p, test patterns with sharp colour edges — read with BT.601 / BT.709 / BT.2020 caps,
//! limited and full range, every chroma siting, through `videoconvert` with one thread and with the CPU
//! stages' thread count (whose stripes change the picture). No GPU needed.

mod common;
use common::*;

use gstreamer as gst;
use gstreamer_video as gst_video;
use matteflow::cuda::nv12::{Matrix, Nv12Conversion, YuvColor, VIDEOCONVERT_THREADS};
use matteflow::cuda::nv12_check::labels;
use matteflow::cuda::nv12_frames::{gst_nv12_frames, videoconvert_rgba};

/// (what, gst-launch description of raw video, size to scale to)
fn sources() -> Vec<(String, String, Option<(u32, u32)>)> {
    let clip = |name: &str| format!("filesrc location=\"{}\" ! decodebin", sample(name).display());
    vec![
        ("carphone 176x144".into(), clip("carphone_pristine.mp4"), None),
        ("carphone scaled to 175x143".into(), clip("carphone_pristine.mp4"), Some((175, 143))),
        ("bikes 640x272".into(), clip("bikes.mp4"), None),
        ("bikes scaled to 333x271".into(), clip("bikes.mp4"), Some((333, 271))),
        ("bikes scaled to 1920x1080".into(), clip("bikes.mp4"), Some((1920, 1080))),
        ("smpte 97x55".into(), "videotestsrc pattern=smpte".into(), Some((97, 55))),
        ("smpte 320x402".into(), "videotestsrc pattern=smpte".into(), Some((320, 402))),
        ("ball 241x233".into(), "videotestsrc pattern=ball".into(), Some((241, 233))),
    ]
}

#[test]
fn reference_is_videoconvert_on_real_nv12_frames() {
    let (mut worst, mut sum, mut n) = (0u32, 0u64, 0u64);
    for (what, launch, size) in sources() {
        let frames = gst_nv12_frames(&launch, size, 2).unwrap_or_else(|e| panic!("{what}: {e}"));
        let (mut src_worst, mut src_sum, mut src_n) = (0u32, 0u64, 0u64);
        for (colorimetry, site) in labels() {
            let relabelled: Vec<_> = frames.iter().map(|f| f.relabel(colorimetry, site).unwrap()).collect();
            for threads in [1, VIDEOCONVERT_THREADS] {
                let theirs = videoconvert_rgba(&relabelled, threads).unwrap_or_else(|e| panic!("{what}: {e}"));
                for (f, rgba) in relabelled.iter().zip(&theirs) {
                    let planes = f.planes();
                    let ours = planes.to_rgba(&Nv12Conversion::with_threads(f.color(), planes.height as u32, threads));
                    assert_eq!(ours.len(), rgba.len());
                    let d = ours.iter().zip(rgba).map(|(a, b)| a.abs_diff(*b) as u32);
                    let (m, s) = d.fold((0, 0u64), |(m, s), x| (m.max(x), s + x as u64));
                    assert!(m <= 1, "{what}, {colorimetry} {site:?}, {threads} thread(s): differs from videoconvert by {m} levels");
                    (src_worst, src_sum, src_n) = (src_worst.max(m), src_sum + s, src_n + ours.len() as u64);
                }
            }
        }
        println!("{what}: {} frames × {} labels × 2 thread counts: max {src_worst}, mean {:.6} levels", frames.len(), labels().len(), src_sum as f64 / src_n as f64);
        (worst, sum, n) = (worst.max(src_worst), sum + src_sum, n + src_n);
    }
    println!("all: max {worst}, mean {:.6} levels over {n} values", sum as f64 / n as f64);
}

/// What the kernels are told comes from the caps as `videoconvert` reads them.
#[test]
fn caps_say_how_to_read_the_frame() {
    gst::init().unwrap();
    let color = |caps: &str| YuvColor::from_info(&gst_video::VideoInfo::from_caps(&caps.parse::<gst::Caps>().unwrap()).unwrap());
    let base = "video/x-raw,format=NV12,framerate=25/1";
    let c = color(&format!("{base},width=640,height=272,colorimetry=bt709,chroma-site=mpeg2"));
    assert_eq!(c, YuvColor { matrix: Matrix::Bt709, full_range: false, h_cosited: true, v_cosited: false });
    let c = color(&format!("{base},width=640,height=480,colorimetry=1:4:5:4,chroma-site=jpeg"));
    assert_eq!(c, YuvColor { matrix: Matrix::Bt601, full_range: true, h_cosited: false, v_cosited: false });
    let c = color(&format!("{base},width=64,height=64,colorimetry=bt2020,chroma-site=cosited"));
    assert_eq!(c, YuvColor { matrix: Matrix::Bt2020, full_range: false, h_cosited: true, v_cosited: true });
    // No colorimetry: GStreamer's defaults by size (BT.601 and chroma between the samples up to 576 rows,
    // BT.709 and MPEG-2 siting above), limited range.
    let sd = color(&format!("{base},width=720,height=576"));
    assert_eq!((sd.matrix, sd.full_range, sd.h_cosited), (Matrix::Bt601, false, false));
    let hd = color(&format!("{base},width=1920,height=1080"));
    assert_eq!((hd.matrix, hd.full_range, hd.h_cosited), (Matrix::Bt709, false, true));
}
