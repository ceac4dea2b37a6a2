//! The NV12 → RGB conversion of the GPU stages is GStreamer's own `videoconvert`, to the level: the CPU
//! reference of the kernels' math (`cuda::nv12`, which `matteflow gpu-check` holds the kernels to) against
//! this machine's GStreamer on real NV12 frames GStreamer made — decoded clips at their size and scaled to odd
//! sizes and to 1080p, test patterns with sharp colour edges — read with BT.601 / BT.709 / BT.2020 caps,
//! limited and full range, every chroma siting, through `videoconvert` with one thread and with the CPU
//! stages' thread count (whose stripes change the picture). And the other direction, RGBA → I420 for the encoder
//! (`cuda::i420`, the `rgba_to_i420` kernel's reference), against `videoconvert ! I420` and through `convert`'s
//! H.264 encoder chain. No GPU needed.

mod common;
use common::*;

use gstreamer as gst;
use gstreamer_video as gst_video;
use matteflow::cuda::nv12::{Matrix, Nv12Conversion, YuvColor, VIDEOCONVERT_THREADS};
use matteflow::cuda::nv12_check::labels;
use matteflow::cuda::nv12_frames::{videoconvert_rgba, FrameSource};

fn sources() -> Vec<FrameSource> {
    let clip = |name: &str| format!("filesrc location=\"{}\" ! decodebin", sample(name).display());
    vec![
        FrameSource::new("carphone 176x144", &clip("carphone_pristine.mp4"), None),
        FrameSource::new("carphone scaled to 175x143", &clip("carphone_pristine.mp4"), Some((175, 143))),
        FrameSource::new("bikes 640x272", &clip("bikes.mp4"), None),
        FrameSource::new("bikes scaled to 333x271", &clip("bikes.mp4"), Some((333, 271))),
        FrameSource::new("bikes scaled to 1920x1080", &clip("bikes.mp4"), Some((1920, 1080))),
        FrameSource::new("smpte 97x55", "videotestsrc pattern=smpte", Some((97, 55))),
        FrameSource::new("smpte 320x402", "videotestsrc pattern=smpte", Some((320, 402))),
        FrameSource::new("ball 241x233", "videotestsrc pattern=ball", Some((241, 233))),
    ]
}

#[test]
fn reference_is_videoconvert_on_real_nv12_frames() {
    let (mut worst, mut sum, mut n) = (0u32, 0u64, 0u64);
    for source in sources() {
        let what = &source.label;
        let frames = source.frames(2).unwrap_or_else(|e| panic!("{what}: {e}"));
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
                    assert!(m <= 1, "{what}, {colorimetry:?} {site:?}, {threads} thread(s): differs from videoconvert by {m} levels");
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
    // Those defaults replace a chroma-site given without colorimetry (as avdec_h264's caps are).
    let c = color(&format!("{base},width=640,height=272,chroma-site=mpeg2"));
    assert_eq!((c.matrix, c.full_range, c.h_cosited), (Matrix::Bt601, false, false));
    // A colorimetry without range is read as full range (gst_video_color_range_offsets' default).
    assert!(color(&format!("{base},width=64,height=64,colorimetry=0:4:0:0")).full_range);
}

/// Host stand-ins for what the NV12 part of kernels.cu uses from CUDA, and a driver that runs the
/// `nv12_to_rgba` kernel over a whole grid: `harness in.nv12 w h pitch uv_offset coef×5 h_cosited v_cosited
/// stripe out.rgba`.
const HOST_HARNESS: &str = r#"
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>
#define __device__
#define __forceinline__ inline
#define __global__
using std::max;
using std::min;
struct Dim { int x; } blockIdx, threadIdx, blockDim;
#include "nv12_part.cu"
int main(int argc, char** argv) {
    if (argc != 15) return 2;
    FILE* f = fopen(argv[1], "rb");
    std::vector<unsigned char> src;
    for (int c; (c = fgetc(f)) != EOF;) src.push_back((unsigned char)c);
    fclose(f);
    int w = atoi(argv[2]), h = atoi(argv[3]), pitch = atoi(argv[4]), uv = atoi(argv[5]);
    Nv12 nv;
    for (int i = 0; i < 5; ++i) nv.coef[i] = atoi(argv[6 + i]);
    nv.h_cosited = atoi(argv[11]);
    nv.v_cosited = atoi(argv[12]);
    nv.stripe = atoi(argv[13]);
    std::vector<unsigned char> out((size_t)w * h * 4);
    blockDim.x = 256;
    for (blockIdx.x = 0; blockIdx.x < (w * h + 255) / 256; ++blockIdx.x)
        for (threadIdx.x = 0; threadIdx.x < 256; ++threadIdx.x) nv12_to_rgba(src.data(), w, h, pitch, uv, nv, out.data());
    f = fopen(argv[14], "wb");
    fwrite(out.data(), 1, out.size(), f);
    fclose(f);
    return 0;
}
"#;

/// The kernels' own NV12 code (kernels.cu between the NV12 markers: `nv12_pixel` and the `nv12_to_rgba`
/// kernel), compiled for the host with the system C++ compiler, gives `videoconvert`'s RGBA to the level on
/// real frames: the device source is checked without a GPU (integer arithmetic, the same on both).
#[test]
fn kernel_source_compiled_for_the_host_is_videoconvert() {
    let src = matteflow::cuda::KERNELS;
    let begin = src.find("// ---- NV12 begin").expect("NV12 begin marker in kernels.cu");
    let end = src.find("// ---- NV12 end ----").expect("NV12 end marker in kernels.cu");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("nv12_part.cu"), &src[begin..end]).unwrap();
    std::fs::write(dir.path().join("harness.cpp"), HOST_HARNESS).unwrap();
    let exe = dir.path().join("harness");
    let cc = std::process::Command::new("c++").args(["-O1", "-std=c++17", "-o"]).arg(&exe).arg(dir.path().join("harness.cpp")).output();
    let cc = cc.expect("a C++ compiler (c++, from build-essential) to compile the kernels' NV12 code for the host");
    assert!(cc.status.success(), "c++: {}", String::from_utf8_lossy(&cc.stderr));
    let (mut checked, mut worst) = (0usize, 0u32);
    for source in sources().into_iter().filter(|s| s.label.starts_with("bikes") || s.label.starts_with("smpte 97")) {
        let (what, frames) = (&source.label, source.frames(1).unwrap());
        for (colorimetry, site) in labels() {
            let f = frames[0].relabel(colorimetry, site).unwrap();
            let theirs = &videoconvert_rgba(std::slice::from_ref(&f), VIDEOCONVERT_THREADS).unwrap()[0];
            let (planes, color) = (f.planes(), f.color());
            let conv = Nv12Conversion::new(color, planes.height as u32);
            let (input, output) = (dir.path().join("in.nv12"), dir.path().join("out.rgba"));
            std::fs::write(&input, &f.data).unwrap();
            let mut args: Vec<String> = [planes.width, planes.height, planes.pitch, planes.uv_offset].iter().map(|v| v.to_string()).collect();
            args.extend(conv.coef.iter().chain(&[conv.h_cosited, conv.v_cosited, conv.stripe]).map(|v| v.to_string()));
            let run = std::process::Command::new(&exe).arg(&input).args(&args).arg(&output).status().unwrap();
            assert!(run.success(), "{what}: host harness failed");
            let ours = std::fs::read(&output).unwrap();
            let m = ours.iter().zip(theirs).map(|(a, b)| a.abs_diff(*b) as u32).max().unwrap();
            assert!(m <= 1 && ours.len() == theirs.len(), "{what}, {colorimetry:?} {site:?}: the kernel's code differs from videoconvert by {m}");
            (checked, worst) = (checked + 1, worst.max(m));
        }
    }
    println!("kernel source on the host: {checked} frames, max {worst} levels from videoconvert");
}

/// The other direction, for the encoder: the CPU reference of the GPU's RGBA → I420 (`cuda::i420`, which
/// `matteflow gpu-check` holds the `rgba_to_i420` kernel to) is `videoconvert ! I420` with the encoder chain's two
/// threads, bit for bit, on random frames (the worst case for chroma) and a decoded one: HD (BT.709, chroma on
/// the even columns), SD (BT.601, chroma between them), rows padded to 4 bytes, 4K. Heights of 4k + 2 rows are
/// compared with one thread: with two, `videoconvert` pairs the second stripe's rows wrongly (see cuda::i420).
#[test]
fn i420_reference_is_videoconvert() {
    use matteflow::cuda::i420::I420Out;
    use matteflow::cuda::nv12_frames::videoconvert_i420;
    gst::init().unwrap();
    let mut seed = 0x2545F4914F6CDD1Du64;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 24) as u8
            })
            .collect()
    };
    let clip = FrameSource::new("bikes 640x272", &format!("filesrc location=\"{}\" ! decodebin", sample("bikes.mp4").display()), None);
    let decoded = videoconvert_rgba(&clip.frames(1).unwrap(), 1).unwrap().remove(0);
    let cases: Vec<(String, u32, u32, u32, Vec<u8>)> = vec![
        ("random 1920x1080".into(), 1920, 1080, 2, random(1920 * 1080 * 4)),
        ("random 1280x720".into(), 1280, 720, 2, random(1280 * 720 * 4)),
        ("random 640x480".into(), 640, 480, 2, random(640 * 480 * 4)),
        ("random 642x480 (padded rows)".into(), 642, 480, 2, random(642 * 480 * 4)),
        ("random 96x54".into(), 96, 54, 2, random(96 * 54 * 4)),
        ("random 1920x1078".into(), 1920, 1078, 1, random(1920 * 1078 * 4)),
        ("random 3840x2160".into(), 3840, 2160, 2, random(3840 * 2160 * 4)),
        ("bikes frame 640x272".into(), 640, 272, 2, decoded),
    ];
    for (what, w, h, threads, rgba) in cases {
        let layout = I420Out::for_size(w, h).unwrap_or_else(|| panic!("{what}: no I420 layout"));
        let theirs = videoconvert_i420(&rgba, w, h, threads).unwrap();
        assert_eq!(theirs.len(), layout.size(), "{what}: videoconvert's frame is laid out as ours");
        let ours = layout.convert(&rgba);
        let (a, b) = (layout.visible(&ours), layout.visible(&theirs));
        let worst = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
        let off = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        println!("{what}: {threads} thread(s), max {worst} levels, {off} of {} values differ", a.len());
        assert_eq!(worst, 0, "{what}: the reference differs from videoconvert");
    }
}

/// What the GPU stages hand an H.264 encoder — I420 made as `videoconvert` makes it (the CPU reference of the
/// kernel here), tagged by a `VideoMeta`, with `I420Out::caps` — goes through `convert`'s own H.264 encoder chain
/// (`sink::encoder_chain`: evenpad, videoconvert, x264) and gives the same pictures, decoded, as the RGBA frames
/// the CPU stages hand it: the chain passes I420 through and x264 gets the same frames. Real frames (bikes.mp4
/// scaled to 1280x720: BT.709, chroma on the even columns).
#[test]
fn i420_frames_encode_to_what_rgba_frames_do() {
    use gstreamer::prelude::*;
    use gstreamer_app as gst_app;
    use matteflow::cuda::i420::I420Out;
    gst::init().unwrap();
    let (w, h) = (1280u32, 720u32);
    let clip = FrameSource::new("bikes 1280x720", &format!("filesrc location=\"{}\" ! decodebin", sample("bikes.mp4").display()), Some((w, h)));
    let rgba = videoconvert_rgba(&clip.frames(6).unwrap(), 1).unwrap();
    let layout = I420Out::for_size(w, h).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let encode = |name: &str, caps: gst::Caps, buffers: Vec<gst::Buffer>| {
        let out = dir.path().join(name);
        let pipeline = gst::Pipeline::new();
        let src = gst_app::AppSrc::builder().caps(&caps).format(gst::Format::Time).build();
        pipeline.add(&src).unwrap();
        let (head, _audio) = matteflow::sink::encoder_chain(&pipeline, matteflow::config::Format::H264, &out, false).unwrap();
        src.link(&head).unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        for (i, mut b) in buffers.into_iter().enumerate() {
            let m = b.make_mut();
            m.set_pts(gst::ClockTime::from_mseconds(40 * i as u64));
            m.set_duration(gst::ClockTime::from_mseconds(40));
            src.push_buffer(b).unwrap();
        }
        src.end_of_stream().unwrap();
        let msg = pipeline.bus().unwrap().timed_pop_filtered(gst::ClockTime::from_seconds(60), &[gst::MessageType::Eos, gst::MessageType::Error]);
        assert!(matches!(msg.as_ref().map(|m| m.view()), Some(gst::MessageView::Eos(_))), "{name}: {msg:?}");
        pipeline.set_state(gst::State::Null).unwrap();
        decode(&out)
    };
    let rgba_caps = gst::Caps::builder("video/x-raw")
        .field("format", "RGBA")
        .field("width", w as i32)
        .field("height", h as i32)
        .field("framerate", gst::Fraction::new(25, 1))
        .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
        .build();
    let from_rgba = encode("rgba.mp4", rgba_caps, rgba.iter().map(|f| gst::Buffer::from_slice(f.clone())).collect());
    let i420_buffers = rgba
        .iter()
        .map(|f| {
            let mut b = gst::Buffer::from_mut_slice(layout.convert(f));
            layout.tag(b.get_mut().unwrap()).unwrap();
            b
        })
        .collect();
    let caps = layout.caps(gst::Fraction::new(25, 1), gst::Fraction::new(1, 1)).unwrap();
    assert_eq!(caps.structure(0).unwrap().get::<String>("colorimetry").unwrap(), "bt709");
    let from_i420 = encode("i420.mp4", caps, i420_buffers);
    assert_eq!((from_rgba.len(), from_i420.len()), (6, 6), "frames out");
    for (i, (a, b)) in from_rgba.iter().zip(&from_i420).enumerate() {
        assert_eq!((a.width, a.height, a.pts), (b.width, b.height, b.pts), "frame {i}");
        let differ = a.rgba.iter().zip(&b.rgba).filter(|(x, y)| x != y).count();
        assert_eq!(differ, 0, "frame {i}: {differ} values differ between the file made from RGBA and the one made from I420");
    }
}
