//! NV12 → RGB as GStreamer 1.22's `videoconvert` does it, so that a frame read on the GPU (the decoder's NV12
//! in CUDA memory) is the picture the CPU stages get from `videoconvert ! RGBA`, to the level.
//!
//! What `videoconvert` does for NV12 → RGBA (gst-plugins-base 1.22, gst-libs/gst/video; checked bit for bit
//! against this machine's GStreamer by tests/chroma.rs):
//!
//! - No fast path exists for NV12 → RGB (video-converter.c, `transforms[]`), so the generic line converter
//!   runs: unpack each row to AYUV (video-format.c `unpack_NV12`: both pixels of a pair get their UV), upsample
//!   the chroma (video-chroma.c, `gst_video_chroma_resample_new`; the default `chroma-resampler=linear` is not
//!   consulted there), one matrix (video-converter.c `chain_convert`), pack.
//! - Chroma, horizontally, per row, 8-bit integer taps with rounding: chroma between the pixels (siting `jpeg`
//!   or none in the caps): odd column 2k−1 = (3·C[k−1] + C[k] + 2) >> 2, even column 2k =
//!   (C[k−1] + 3·C[k] + 2) >> 2 (`video_chroma_up_h2_u8`); chroma on the even columns (`mpeg2`, `cosited`):
//!   odd column 2k+1 = (C[k] + C[k+1] + 1) >> 1 (`video_chroma_up_h2_cs_u8`). Column 0, and the last column
//!   when the width is even, keep their sample.
//! - Then vertically, on those rows: between the rows (no `v-cosited` in the siting): row 2k−1 =
//!   (3·A + B + 2) >> 2, row 2k = (A + 3·B + 2) >> 2 with A, B the filtered chroma rows k−1, k
//!   (`video_chroma_up_v2_u8`, `video_orc_chroma_up_v2_u8`); row 0, and the last row when the height is even,
//!   keep theirs. V-cosited chroma is not filtered vertically at all in 1.22 ("IMPLEMENT ME").
//! - Threads (`n-threads`): the converter splits the frame into stripes of ⌈h / n⌉ rows, each with its own line
//!   cache, and the vertical filter pairs rows from the stripe's first row on. A stripe that starts on an even
//!   row therefore pairs rows (2k, 2k+1), which share their chroma row: no vertical interpolation at all in
//!   that stripe. With the CPU stages' `n-threads=2`, a 1080p frame is interpolated above row 540 and not
//!   below. [`videoconvert_stripe`] gives that row count; the kernels reproduce it.
//! - Matrix: the YUV → R'G'B' matrix in doubles (`compute_matrix_to_RGB`: range offsets and `1 / (float)`
//!   range scales, Kr/Kb of the colorimetry's matrix; then × 255 for full-range RGB output), × 256 and
//!   `rint` to integers (`prepare_matrix`). As the three luma coefficients are equal and R has no U term nor B
//!   a V term, the "fast AYUV → RGB" function runs (`video_converter_matrix8_AYUV_ARGB`,
//!   `video_orc_convert_AYUV_ARGB` in video-orc.orc): every byte minus 128, splatted to 16 bits
//!   ((b << 8) | b, signed), multiplied keeping the high 16 bits, summed, saturated to a signed byte, plus 128.
//!   That path ignores the matrix's offsets: limited-range luma is centred on 128, not 16, so Y 235 gives 253
//!   and Y 16 gives 0 (clamped). It is what GStreamer gives, so it is what we give.

use gstreamer_video as gst_video;

/// The stream's YUV → RGB matrix (its colorimetry's `matrix`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matrix {
    Bt601,
    Bt709,
    Bt2020,
    Smpte240m,
    Fcc,
}

impl Matrix {
    /// Kr and Kb, as `gst_video_color_matrix_get_Kr_Kb` gives them.
    fn kr_kb(self) -> (f64, f64) {
        match self {
            Matrix::Bt601 => (0.2990, 0.1140),
            Matrix::Bt709 => (0.2126, 0.0722),
            Matrix::Bt2020 => (0.2627, 0.0593),
            Matrix::Smpte240m => (0.212, 0.087),
            Matrix::Fcc => (0.30, 0.11),
        }
    }
}

/// How a YUV stream's values are to be read, from its caps: matrix, range and chroma siting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct YuvColor {
    pub matrix: Matrix,
    /// 0..255 luma and chroma (JPEG, "full range") rather than 16..235 / 16..240.
    pub full_range: bool,
    /// Chroma samples sit on the even columns (MPEG-2 siting, `chroma-site=mpeg2`) rather than between them.
    pub h_cosited: bool,
    /// Chroma samples sit on the even rows (`chroma-site=cosited`) rather than between them.
    pub v_cosited: bool,
}

impl YuvColor {
    /// Read as `videoconvert` reads them: a matrix it has no coefficients for (unknown, RGB) becomes GStreamer's
    /// default for the frame height (BT.709 above 576 rows, else BT.601); any range other than 16..235 is full
    /// range (`gst_video_color_range_offsets`); no `chroma-site` in the caps is chroma between the samples.
    pub fn from_info(info: &gst_video::VideoInfo) -> YuvColor {
        let c = info.colorimetry();
        let matrix = match c.matrix() {
            gst_video::VideoColorMatrix::Bt601 => Matrix::Bt601,
            gst_video::VideoColorMatrix::Bt709 => Matrix::Bt709,
            gst_video::VideoColorMatrix::Bt2020 => Matrix::Bt2020,
            gst_video::VideoColorMatrix::Smpte240m => Matrix::Smpte240m,
            gst_video::VideoColorMatrix::Fcc => Matrix::Fcc,
            _ if info.height() > 576 => Matrix::Bt709,
            _ => Matrix::Bt601,
        };
        let site = info.chroma_site();
        YuvColor {
            matrix,
            full_range: c.range() != gst_video::VideoColorRange::Range16_235,
            h_cosited: site.contains(gst_video::VideoChromaSite::H_COSITED),
            v_cosited: site.contains(gst_video::VideoChromaSite::V_COSITED),
        }
    }

    /// Limited-range BT.709 with chroma between the samples.
    pub const BT709: YuvColor = YuvColor { matrix: Matrix::Bt709, full_range: false, h_cosited: false, v_cosited: false };

    /// The integer coefficients of `videoconvert`'s matrix: R←Y (= G←Y = B←Y), R←V, B←U, G←U, G←V, each
    /// rint(coefficient · 255 / range scale · 256) computed in the order GStreamer computes it.
    pub fn coefficients(self) -> [i32; 5] {
        let (kr, kb) = self.matrix.kr_kb();
        let kg = 1.0 - kr - kb;
        let (scale_y, scale_c) = if self.full_range { (255.0f32, 255.0f32) } else { (219.0f32, 224.0f32) };
        // `color_matrix_scale_components (data, 1 / ((float) scale[0]), ...)`: the reciprocal is a float.
        let (inv_y, inv_c) = ((1.0f32 / scale_y) as f64, (1.0f32 / scale_c) as f64);
        let fixed = |k: f64, inv: f64| (k * inv * 255.0 * 256.0).round_ties_even() as i32;
        [
            fixed(1.0, inv_y),
            fixed(2.0 * (1.0 - kr), inv_c),
            fixed(2.0 * (1.0 - kb), inv_c),
            fixed(-2.0 * kb * (1.0 - kb) / kg, inv_c),
            fixed(-2.0 * kr * (1.0 - kr) / kg, inv_c),
        ]
    }
}

/// Threads of the `videoconvert` that makes the CPU stages' RGBA frames (`source::video_branch`); the GPU
/// conversion reproduces its stripes (see [`videoconvert_stripe`]).
pub const VIDEOCONVERT_THREADS: u32 = 2;

/// Rows per thread of a `videoconvert` with `n-threads=threads` on frames `height` rows high, as
/// `gst_video_converter_new_with_pool` settles them (at most the processor count, at least 200 rows each);
/// 0 when it runs one thread. Stripes starting on an even row get no vertical chroma interpolation.
pub fn videoconvert_stripe(height: u32, threads: u32) -> u32 {
    let processors = gstreamer::glib::num_processors().max(1);
    let mut n = if threads == 0 || threads > processors { processors } else { threads };
    if height / n < 200 {
        n = height.div_ceil(200);
    }
    if n <= 1 {
        0
    } else {
        height.div_ceil(n)
    }
}

/// Everything the kernels need to read NV12 as `videoconvert` does. Its layout is the `Nv12` struct of
/// kernels.cu (passed by value).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Nv12Conversion {
    /// [`YuvColor::coefficients`].
    pub coef: [i32; 5],
    pub h_cosited: i32,
    pub v_cosited: i32,
    /// [`videoconvert_stripe`] of the frame height (0: one stripe).
    pub stripe: i32,
}

// SAFETY: plain old data of i32s, laid out as the kernels' `Nv12` struct.
unsafe impl cudarc::driver::DeviceRepr for Nv12Conversion {}

impl Nv12Conversion {
    /// The conversion of frames `height` rows high in `color`, matching the CPU stages' `videoconvert`.
    pub fn new(color: YuvColor, height: u32) -> Nv12Conversion {
        Nv12Conversion::with_threads(color, height, VIDEOCONVERT_THREADS)
    }

    /// As `new`, for a `videoconvert` with `n-threads=threads`.
    pub fn with_threads(color: YuvColor, height: u32, threads: u32) -> Nv12Conversion {
        Nv12Conversion {
            coef: color.coefficients(),
            h_cosited: color.h_cosited as i32,
            v_cosited: color.v_cosited as i32,
            stripe: videoconvert_stripe(height, threads) as i32,
        }
    }
}

/// An NV12 frame in host memory: the Y plane's rows `pitch` bytes apart, the interleaved UV plane at
/// `uv_offset` with the same pitch.
#[derive(Debug, Clone, Copy)]
pub struct Nv12Planes<'a> {
    pub data: &'a [u8],
    pub width: usize,
    pub height: usize,
    pub pitch: usize,
    pub uv_offset: usize,
}

impl Nv12Planes<'_> {
    /// U and V of column `x` on chroma row `row`, upsampled horizontally (`video_chroma_up_h2{,_cs}_u8`).
    fn chroma_h(&self, row: usize, x: usize, cosited: bool) -> [i32; 2] {
        let uv = &self.data[self.uv_offset + row * self.pitch..];
        let k = x / 2;
        let c = |k: usize, ch: usize| uv[k * 2 + ch] as i32;
        std::array::from_fn(|ch| {
            let last_odd = x == self.width - 1 && x % 2 == 1;
            if x == 0 || last_odd {
                c(k, ch)
            } else if x % 2 == 1 {
                if cosited { (c(k, ch) + c(k + 1, ch) + 1) >> 1 } else { (3 * c(k, ch) + c(k + 1, ch) + 2) >> 2 }
            } else if cosited {
                c(k, ch)
            } else {
                (c(k - 1, ch) + 3 * c(k, ch) + 2) >> 2
            }
        })
    }

    /// The R, G, B `videoconvert` gives pixel (x, y): the same steps as `nv12_pixel` in kernels.cu.
    pub fn pixel(&self, conv: &Nv12Conversion, x: usize, y: usize) -> [u8; 3] {
        let (a, b, wa) = chroma_rows(y, self.height, conv);
        let (ca, cb) = (self.chroma_h(a, x, conv.h_cosited != 0), self.chroma_h(b, x, conv.h_cosited != 0));
        let uv: [i32; 2] = std::array::from_fn(|ch| (wa * ca[ch] + (4 - wa) * cb[ch] + 2) >> 2);
        rgb_fixed(self.data[y * self.pitch + x] as i32, uv[0], uv[1], &conv.coef)
    }

    /// The whole frame as packed RGBA (alpha 255): the CPU reference of the `nv12_to_rgba` kernel.
    pub fn to_rgba(&self, conv: &Nv12Conversion) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.width * self.height * 4);
        for y in 0..self.height {
            for x in 0..self.width {
                let [r, g, b] = self.pixel(conv, x, y);
                out.extend_from_slice(&[r, g, b, 255]);
            }
        }
        out
    }
}

/// The two chroma rows row `y` blends and the first one's weight in quarters (4: that row alone).
fn chroma_rows(y: usize, height: usize, conv: &Nv12Conversion) -> (usize, usize, i32) {
    let stripe = conv.stripe as usize;
    let even_stripe = stripe > 0 && y >= stripe && (y / stripe * stripe) % 2 == 0;
    let k = y / 2;
    if conv.v_cosited != 0 || y == 0 || even_stripe || (y == height - 1 && y % 2 == 1) {
        (k, k, 4)
    } else if y % 2 == 1 {
        (k, k + 1, 3)
    } else {
        (k - 1, k, 1)
    }
}

/// `video_orc_convert_AYUV_ARGB` on one pixel: bytes minus 128 splatted to signed 16 bits, high halves of
/// the products, saturated to a signed byte, plus 128.
fn rgb_fixed(y: i32, u: i32, v: i32, coef: &[i32; 5]) -> [u8; 3] {
    let splat = |b: i32| {
        let s = (b ^ 0x80) & 0xff;
        ((s << 8) | s) as i16 as i32
    };
    let mulhs = |a: i32, c: i32| (a * c) >> 16;
    let sat = |x: i32| (x.clamp(-128, 127) + 128) as u8;
    let (wy, wu, wv) = (mulhs(splat(y), coef[0]), splat(u), splat(v));
    [sat(wy + mulhs(wv, coef[1])), sat(wy + mulhs(wu, coef[3]) + mulhs(wv, coef[4])), sat(wy + mulhs(wu, coef[2]))]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The coefficients GStreamer 1.22 logs for NV12 → RGBA (GST_DEBUG=video-converter:5, `color_matrix_convert`,
    /// then "use fast AYUV -> RGB matrix").
    #[test]
    fn coefficients_are_gstreamers() {
        let c = |matrix, full_range| YuvColor { matrix, full_range, h_cosited: false, v_cosited: false }.coefficients();
        assert_eq!(c(Matrix::Bt601, false), [298, 409, 516, -100, -208]);
        assert_eq!(c(Matrix::Bt709, false), [298, 459, 541, -55, -136]);
        assert_eq!(c(Matrix::Bt601, true), [256, 359, 454, -88, -183]);
        assert_eq!(c(Matrix::Bt709, true), [256, 403, 475, -48, -120]);
        assert_eq!(c(Matrix::Bt2020, false), [298, 430, 548, -48, -167]);
    }

    /// White, black and mid grey of limited and full range, and a pitched frame's padding ignored.
    #[test]
    fn grey_levels_are_videoconverts() {
        let (w, h, pitch) = (4usize, 2usize, 8usize);
        let mut data = vec![0xEEu8; pitch * h + pitch];
        data[..4].copy_from_slice(&[16, 128, 235, 255]);
        data[pitch..pitch + 4].copy_from_slice(&[16, 128, 235, 255]);
        data[pitch * h..pitch * h + 4].copy_from_slice(&[128; 4]);
        let f = Nv12Planes { data: &data, width: w, height: h, pitch, uv_offset: pitch * h };
        let limited = f.to_rgba(&Nv12Conversion::with_threads(YuvColor::BT709, 2, 1));
        // videoconvert centres limited-range luma on 128: 16 → 0, 128 → 128, 235 → 253.
        let reds: Vec<u8> = limited.chunks(4).map(|p| p[0]).collect();
        assert_eq!(reds, [0, 128, 253, 255, 0, 128, 253, 255]);
        let full = f.to_rgba(&Nv12Conversion::with_threads(YuvColor { full_range: true, ..YuvColor::BT709 }, 2, 1));
        assert_eq!(full.chunks(4).map(|p| p[1]).collect::<Vec<_>>(), [16, 128, 235, 255, 16, 128, 235, 255]);
        assert!(full.chunks(4).all(|p| p[3] == 255));
    }

    #[test]
    fn stripes_follow_the_converters_thread_split() {
        let threads = gstreamer::glib::num_processors().min(2);
        let expect = |h: u32| if threads < 2 { 0 } else { h.div_ceil(2) };
        assert_eq!(videoconvert_stripe(1080, 2), expect(1080));
        assert_eq!(videoconvert_stripe(272, 2), expect(272), "under 200 rows a thread, still two threads");
        assert_eq!(videoconvert_stripe(144, 2), 0, "one thread for 200 rows or fewer");
        assert_eq!(videoconvert_stripe(1080, 1), 0);
    }
}
