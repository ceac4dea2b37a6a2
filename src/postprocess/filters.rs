//! Small image filters the matte refinements are built from: a box mean (running sums, O(1) per pixel
//! whatever the radius, normalised by the number of pixels inside the image at the borders), the fast guided
//! filter, and blur-fusion foreground estimation.

/// Mean over a (2r+1)² box of a single-channel image, in place of `out`.
pub fn box_mean(src: &[f32], w: usize, h: usize, r: usize, out: &mut Vec<f32>) {
    let mut tmp = vec![0f32; w * h];
    // Horizontal running sums.
    for y in 0..h {
        let row = &src[y * w..(y + 1) * w];
        let mut acc = 0f64;
        let mut lo = 0usize;
        let mut hi = 0usize; // window [lo, hi)
        for x in 0..w {
            let want_hi = (x + r + 1).min(w);
            while hi < want_hi {
                acc += row[hi] as f64;
                hi += 1;
            }
            let want_lo = x.saturating_sub(r);
            while lo < want_lo {
                acc -= row[lo] as f64;
                lo += 1;
            }
            tmp[y * w + x] = (acc / (hi - lo) as f64) as f32;
        }
    }
    out.clear();
    out.resize(w * h, 0.0);
    // Vertical running sums, all columns at once for cache-friendly access.
    let mut acc = vec![0f64; w];
    let (mut lo, mut hi) = (0usize, 0usize);
    for y in 0..h {
        let want_hi = (y + r + 1).min(h);
        while hi < want_hi {
            for (a, v) in acc.iter_mut().zip(&tmp[hi * w..(hi + 1) * w]) {
                *a += *v as f64;
            }
            hi += 1;
        }
        let want_lo = y.saturating_sub(r);
        while lo < want_lo {
            for (a, v) in acc.iter_mut().zip(&tmp[lo * w..(lo + 1) * w]) {
                *a -= *v as f64;
            }
            lo += 1;
        }
        let n = (hi - lo) as f64;
        for (o, a) in out[y * w..(y + 1) * w].iter_mut().zip(&acc) {
            *o = (*a / n) as f32;
        }
    }
}

/// Guided filter (He et al.): the coefficients of q = a·I + b fitted in each box, averaged.
/// Returns (mean_a, mean_b) so a caller can upsample them and apply them to a finer guide.
pub fn guided_coefficients(guide: &[f32], p: &[f32], w: usize, h: usize, r: usize, eps: f32) -> (Vec<f32>, Vec<f32>) {
    let n = w * h;
    let (mut mi, mut mp, mut mii, mut mip) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    box_mean(guide, w, h, r, &mut mi);
    box_mean(p, w, h, r, &mut mp);
    let ii: Vec<f32> = guide.iter().map(|v| v * v).collect();
    let ip: Vec<f32> = guide.iter().zip(p).map(|(a, b)| a * b).collect();
    box_mean(&ii, w, h, r, &mut mii);
    box_mean(&ip, w, h, r, &mut mip);
    let mut a = vec![0f32; n];
    let mut b = vec![0f32; n];
    for k in 0..n {
        let var = mii[k] - mi[k] * mi[k];
        let cov = mip[k] - mi[k] * mp[k];
        a[k] = cov / (var + eps);
        b[k] = mp[k] - a[k] * mi[k];
    }
    let (mut ma, mut mb) = (Vec::new(), Vec::new());
    box_mean(&a, w, h, r, &mut ma);
    box_mean(&b, w, h, r, &mut mb);
    (ma, mb)
}

/// Blur-fusion foreground estimation (Forte & Pitié's "approximate fast foreground colour estimation",
/// the two-pass form BiRefNet's `refine_foreground` uses): returns the foreground colour F (RGB, 0..1)
/// that makes `F·α + B·(1-α)` reproduce the image, without the old background bleeding into edges.
pub fn estimate_foreground(image: &[f32], alpha: &[f32], w: usize, h: usize, r_large: usize, r_small: usize) -> Vec<f32> {
    let (f, b) = blur_fusion(image, image, image, alpha, w, h, r_large);
    blur_fusion(image, &f, &b, alpha, w, h, r_small).0
}

fn blur_fusion(image: &[f32], f: &[f32], b: &[f32], alpha: &[f32], w: usize, h: usize, r: usize) -> (Vec<f32>, Vec<f32>) {
    let n = w * h;
    let mut blurred_a = Vec::new();
    box_mean(alpha, w, h, r, &mut blurred_a);
    let mut out_f = vec![0f32; n * 3];
    let mut out_b = vec![0f32; n * 3];
    let mut plane = vec![0f32; n];
    let (mut bfa, mut bb1a) = (Vec::new(), Vec::new());
    for c in 0..3 {
        for k in 0..n {
            plane[k] = f[k * 3 + c] * alpha[k];
        }
        box_mean(&plane, w, h, r, &mut bfa);
        for k in 0..n {
            plane[k] = b[k * 3 + c] * (1.0 - alpha[k]);
        }
        box_mean(&plane, w, h, r, &mut bb1a);
        for k in 0..n {
            let bf = bfa[k] / (blurred_a[k] + 1e-5);
            let bb = bb1a[k] / ((1.0 - blurred_a[k]) + 1e-5);
            let a = alpha[k];
            let i = image[k * 3 + c];
            out_f[k * 3 + c] = (bf + a * (i - a * bf - (1.0 - a) * bb)).clamp(0.0, 1.0);
            out_b[k * 3 + c] = bb;
        }
    }
    (out_f, out_b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_mean_matches_brute_force_including_borders() {
        let (w, h, r) = (13usize, 7usize, 3usize);
        let src: Vec<f32> = (0..w * h).map(|i| ((i * 37) % 11) as f32).collect();
        let mut out = Vec::new();
        box_mean(&src, w, h, r, &mut out);
        for y in 0..h {
            for x in 0..w {
                let (mut s, mut n) = (0f32, 0f32);
                for yy in y.saturating_sub(r)..(y + r + 1).min(h) {
                    for xx in x.saturating_sub(r)..(x + r + 1).min(w) {
                        s += src[yy * w + xx];
                        n += 1.0;
                    }
                }
                assert!((out[y * w + x] - s / n).abs() < 1e-4, "({x},{y})");
            }
        }
    }

    #[test]
    fn foreground_estimation_recovers_a_known_foreground() {
        // Red subject (1,0,0) over a blue background (0,0,1) with a soft edge: the observed edge colour is
        // purple; the estimate must be close to red wherever alpha > 0.
        let (w, h) = (128usize, 16usize);
        let alpha: Vec<f32> = (0..w * h).map(|k| (((k % w) as f32 - 60.0) / 8.0).clamp(0.0, 1.0)).collect();
        let image: Vec<f32> = alpha.iter().flat_map(|a| [*a, 0.0, 1.0 - a]).collect();
        let f = estimate_foreground(&image, &alpha, w, h, 20, 3);
        for k in 0..w * h {
            let a = alpha[k];
            let err = (1.0 - f[k * 3]).abs() + f[k * 3 + 2].abs();
            let naive = (1.0 - image[k * 3]).abs() + image[k * 3 + 2].abs();
            if a > 0.5 {
                assert!(err < 0.1, "pixel {k}: alpha {a} → F {:?}", &f[k * 3..k * 3 + 3]);
            }
            if a > 0.1 && a < 1.0 {
                assert!(err < 0.5 * naive, "pixel {k}: alpha {a}: error {err} vs naive {naive}");
            }
        }
    }
}
