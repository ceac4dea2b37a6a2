//! The whole pipeline with a model whose answer is known: mask = one colour channel of the frame. The clip is
//! lossless, so every mask pixel can be predicted; this checks resize to the model and back (stretch and
//! letterbox, NCHW and NHWC, sigmoid), and that the mask lands on exactly the right pixels.

mod common;
use common::*;

const W: u32 = 160;
const H: u32 = 96;

/// Frame i: R = horizontal ramp, G = vertical ramp, B = a rectangle that moves by 2 px a frame.
fn frame(i: u32) -> Vec<u8> {
    let mut f = vec![0u8; (W * H * 4) as usize];
    for y in 0..H {
        for x in 0..W {
            let o = ((y * W + x) * 4) as usize;
            f[o] = ((x as f32 + 0.5) / W as f32 * 255.0).round() as u8;
            f[o + 1] = ((y as f32 + 0.5) / H as f32 * 255.0).round() as u8;
            let inside = (40 + 2 * i..100 + 2 * i).contains(&x) && (24..72).contains(&y);
            f[o + 2] = if inside { 255 } else { 0 };
            f[o + 3] = 255;
        }
    }
    f
}

fn clip(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("ramps.mkv");
    let frames: Vec<Vec<u8>> = (0..10).map(frame).collect();
    write_lossless_clip(&p, W, H, 25, &frames);
    p
}

fn masks(dir: &std::path::Path, input: &std::path::Path, manifest: &std::path::Path, tag: &str) -> Vec<image::RgbaImage> {
    let out = dir.join(format!("mask_{tag}/"));
    matteflow_ok(&["convert", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--model", manifest.to_str().unwrap(), "-k", "mask"]);
    let m = read_png_dir(&out);
    assert_eq!(m.len(), 10, "one mask per frame");
    m
}

#[test]
fn ramps_come_back_where_they_were_stretch_and_letterbox() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path());
    for (layout, resize, activation) in [("NCHW", "stretch", "none"), ("NHWC", "letterbox", "sigmoid"), ("NCHW", "letterbox", "none")] {
        for ch in [0usize, 1] {
            // A model grid of another aspect ratio (64x48 vs 160x96) so stretch and letterbox differ.
            let manifest = known_answer_model(dir.path(), ch, 48, 64, layout, activation, resize);
            let tag = format!("{ch}_{layout}_{resize}_{activation}");
            let ms = masks(dir.path(), &input, &manifest, &tag);
            let m = &ms[3];
            let mut worst = 0f32;
            // One model pixel of border excluded: bilinear has no data beyond the edge to blend with.
            let (bx, by) = (W / 32 + 2, H / 24 + 2);
            for y in by..H - by {
                for x in bx..W - bx {
                    let want = if ch == 0 { (x as f32 + 0.5) / W as f32 } else { (y as f32 + 0.5) / H as f32 } * 255.0;
                    let got = m.get_pixel(x, y)[0] as f32;
                    worst = worst.max((got - want).abs());
                }
            }
            // Ramp quantised to 8 bits twice (frame, mask) plus the logit round trip: 3 levels of slack.
            assert!(worst <= 3.0, "{tag}: mask differs from the known ramp by {worst} levels");
        }
    }
}

#[test]
fn moving_rectangle_mask_lands_on_exactly_its_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip(dir.path());
    // Mask = blue channel at 80x48: every rectangle edge falls on a model pixel boundary (scale 1/2).
    let manifest = known_answer_model(dir.path(), 2, 48, 80, "NCHW", "none", "stretch");
    let ms = masks(dir.path(), &input, &manifest, "rect");
    for (i, m) in ms.iter().enumerate() {
        let i = i as u32;
        let (x0, x1, y0, y1) = (40 + 2 * i, 100 + 2 * i, 24u32, 72u32);
        let mut wrong = Vec::new();
        for y in 0..H {
            for x in 0..W {
                let inside = (x0..x1).contains(&x) && (y0..y1).contains(&y);
                let on = m.get_pixel(x, y)[0] >= 128;
                // The 4 corner pixels are genuinely ambiguous after any down/up resampling (both edges
                // blur into them); every other pixel must be on the right side of the edge.
                let corner = (x == x0 || x == x1 - 1) && (y == y0 || y == y1 - 1);
                if inside != on && !corner {
                    wrong.push((x, y));
                }
            }
        }
        assert!(wrong.is_empty(), "frame {i}: pixels on the wrong side of the mask edge: {wrong:?}");
        // And the edges are sharp where they should be: half-way values sit on the boundary.
        let row = (y0 + y1) / 2;
        assert!(m.get_pixel(x0, row)[0] >= 128 && m.get_pixel(x0 - 1, row)[0] < 128, "frame {i}: left edge moved");
        assert!(m.get_pixel(x1 - 1, row)[0] >= 128 && m.get_pixel(x1, row)[0] < 128, "frame {i}: right edge moved");
    }
}
