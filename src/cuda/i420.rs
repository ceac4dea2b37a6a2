//! RGBA → I420 as GStreamer 1.22's `videoconvert` makes it for an encoder that takes 4:2:0 (x264enc, vp9enc), so
//! that the GPU stages can hand the encoder its frame already converted: 12 bits a pixel cross the bus instead of
//! 32, and the CPU's `videoconvert` (2 threads, on the encoder's streaming thread) passes the frame through.
//!
//! What `videoconvert` does for RGBA → I420 with no colorimetry in the caps (checked bit for bit against this
//! machine's GStreamer by tests/chroma.rs, on random frames):
//!
//! - The output gets GStreamer's default colorimetry for the frame size (`VideoInfo` of I420 w × h): BT.709
//!   above 576 rows (4K included), else BT.601; limited range; chroma on the even columns (`mpeg2`) above 576 rows,
//!   else between them (`jpeg`).
//! - Matrix: Y = Kr·R + Kg·G + Kb·B scaled by 219/255, Cb = (B − Y')/(2(1 − Kb)) and Cr = (R − Y')/(2(1 − Kr))
//!   scaled by 224/255; each coefficient × 256 rounded to an integer, offsets 16·256 and 128·256; the sum shifted
//!   right by 8 and clamped to 0..255, per pixel.
//! - Chroma, vertically: rows 2j and 2j+1 averaged, (a + b + 1) >> 1. Then horizontally on those: chroma
//!   between the columns: (c[2i] + c[2i+1] + 1) >> 1; chroma on the even columns: (c[2i−1] + 2·c[2i] + c[2i+1]
//!   + 2) >> 2, the first column with c[−1] = c[0], the last (c[2i−1] + 3·c[2i] + 2) >> 2.
//! - Threads: with `n-threads=2` the frame is split into stripes of ⌈h / 2⌉ rows. When a stripe starts on an odd
//!   row (h ≡ 2 mod 4, e.g. 1078 or 722 rows) `videoconvert` averages the rows of the second stripe in the wrong
//!   pairs; the conversion here pairs them as I420 defines, so for those heights the GPU's chroma is the correct
//!   one and differs from the CPU's below the middle row.
//!
//! Only even sizes (whose chroma planes are exactly half), and the defaults above, are converted here; any other
//! frame stays RGBA for `videoconvert`.

use gstreamer as gst;
use gstreamer_video as gst_video;

/// The conversion the `rgba_to_i420` kernel does. Its layout is the `I420` struct of kernels.cu (passed by value).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct I420Conversion {
    /// Y, Cb, Cr rows of R, G, B coefficients × 256.
    pub coef: [i32; 9],
    /// Y, Cb, Cr offsets × 256.
    pub offset: [i32; 3],
    /// Chroma on the even columns (MPEG-2 siting) rather than between them.
    pub h_cosited: i32,
    pub y_stride: i32,
    pub c_stride: i32,
    pub u_offset: i32,
    pub v_offset: i32,
}

// SAFETY: plain old data of i32s, laid out as the kernels' `I420` struct.
unsafe impl cudarc::driver::DeviceRepr for I420Conversion {}

/// I420 frames of one size as the encoder gets them: GStreamer's default layout and colorimetry for that size,
/// and the conversion that makes them.
#[derive(Debug, Clone)]
pub struct I420Out {
    pub info: gst_video::VideoInfo,
    pub conv: I420Conversion,
}

impl I420Out {
    /// The I420 frame `videoconvert` would make of a `width` × `height` RGBA frame, where the GPU can make the
    /// same one (even sizes, GStreamer's default BT.601/BT.709 limited range with chroma between or on the even
    /// columns; see the module's notes); `None` otherwise.
    pub fn for_size(width: u32, height: u32) -> Option<I420Out> {
        if width == 0 || height == 0 || width % 2 == 1 || height % 2 == 1 {
            return None;
        }
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, width, height).build().ok()?;
        let c = info.colorimetry();
        let (kr, kb) = match c.matrix() {
            gst_video::VideoColorMatrix::Bt709 => (0.2126, 0.0722),
            gst_video::VideoColorMatrix::Bt601 => (0.2990, 0.1140),
            _ => return None,
        };
        let site = info.chroma_site();
        if c.range() != gst_video::VideoColorRange::Range16_235 || site.contains(gst_video::VideoChromaSite::V_COSITED) {
            return None;
        }
        let kg = 1.0 - kr - kb;
        let rows: [[f64; 3]; 3] = [
            [kr, kg, kb],
            [-kr / (2.0 * (1.0 - kb)), -kg / (2.0 * (1.0 - kb)), 0.5],
            [0.5, -kg / (2.0 * (1.0 - kr)), -kb / (2.0 * (1.0 - kr))],
        ];
        let scale = [219.0 / 255.0, 224.0 / 255.0, 224.0 / 255.0];
        let coef = std::array::from_fn(|i| (rows[i / 3][i % 3] * scale[i / 3] * 256.0).round() as i32);
        let conv = I420Conversion {
            coef,
            offset: [16 * 256, 128 * 256, 128 * 256],
            h_cosited: site.contains(gst_video::VideoChromaSite::H_COSITED) as i32,
            y_stride: info.stride()[0],
            c_stride: info.stride()[1],
            u_offset: info.offset()[1] as i32,
            v_offset: info.offset()[2] as i32,
        };
        Some(I420Out { info, conv })
    }

    /// Bytes of one frame (planes and their row padding).
    pub fn size(&self) -> usize {
        self.info.size()
    }

    /// The encoder's caps for these frames (the colorimetry said, as `videoconvert` would have settled it).
    pub fn caps(&self, fps: gst::Fraction, par: gst::Fraction) -> Option<gst::Caps> {
        let (w, h) = (self.info.width(), self.info.height());
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, w, h).fps(fps).par(par).build().ok()?;
        info.to_caps().ok()
    }

    /// Marks `buffer` (its first [`I420Out::size`] bytes) as such a frame.
    pub fn tag(&self, buffer: &mut gst::BufferRef) -> Result<(), gst::glib::BoolError> {
        buffer.set_size(self.size());
        let i = &self.info;
        gst_video::VideoMeta::add_full(buffer, gst_video::VideoFrameFlags::empty(), i.format(), i.width(), i.height(), i.offset(), i.stride())?;
        Ok(())
    }

    /// The CPU reference of the `rgba_to_i420` kernel: packed RGBA (w × h × 4) → one I420 frame of
    /// [`I420Out::size`] bytes (row padding zero).
    pub fn convert(&self, rgba: &[u8]) -> Vec<u8> {
        let (w, h) = (self.info.width() as usize, self.info.height() as usize);
        let c = &self.conv;
        let mut out = vec![0u8; self.size()];
        let component = |x: usize, y: usize, k: usize| -> i32 {
            let p = &rgba[(y * w + x) * 4..];
            let s = c.coef[3 * k] * p[0] as i32 + c.coef[3 * k + 1] * p[1] as i32 + c.coef[3 * k + 2] * p[2] as i32 + c.offset[k];
            (s >> 8).clamp(0, 255)
        };
        for y in 0..h {
            for x in 0..w {
                out[y * c.y_stride as usize + x] = component(x, y, 0) as u8;
            }
        }
        for j in 0..h / 2 {
            for i in 0..w / 2 {
                for (k, plane) in [(1, c.u_offset), (2, c.v_offset)] {
                    let pair = |x: usize| (component(x, 2 * j, k) + component(x, 2 * j + 1, k) + 1) >> 1;
                    let (m, r) = (pair(2 * i), pair(2 * i + 1));
                    let v = if c.h_cosited == 0 {
                        (m + r + 1) >> 1
                    } else {
                        let l = if i == 0 { m } else { pair(2 * i - 1) };
                        if i == w / 2 - 1 { (l + 3 * m + 2) >> 2 } else { (l + 2 * m + r + 2) >> 2 }
                    };
                    out[plane as usize + j * c.c_stride as usize + i] = v as u8;
                }
            }
        }
        out
    }

    /// The visible bytes of an I420 frame in this layout (row padding left out), to compare frames by.
    pub fn visible(&self, frame: &[u8]) -> Vec<u8> {
        let (w, h) = (self.info.width() as usize, self.info.height() as usize);
        let c = &self.conv;
        let rows = |at: usize, stride: usize, width: usize, n: usize| (0..n).flat_map(move |r| at + r * stride..at + r * stride + width);
        rows(0, c.y_stride as usize, w, h)
            .chain(rows(c.u_offset as usize, c.c_stride as usize, w / 2, h / 2))
            .chain(rows(c.v_offset as usize, c.c_stride as usize, w / 2, h / 2))
            .map(|i| frame[i])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_frame_size() {
        gst::init().unwrap();
        let hd = I420Out::for_size(1920, 1080).unwrap();
        assert_eq!(hd.conv.coef[..3], [47, 157, 16], "BT.709 luma");
        assert_eq!(hd.conv.h_cosited, 1);
        let sd = I420Out::for_size(640, 480).unwrap();
        assert_eq!(sd.conv.coef[..3], [66, 129, 25], "BT.601 luma");
        assert_eq!(sd.conv.h_cosited, 0);
        let padded = I420Out::for_size(642, 480).unwrap();
        assert_eq!((padded.conv.y_stride, padded.conv.c_stride), (644, 324), "rows padded to 4 bytes");
        assert!(I420Out::for_size(641, 480).is_none() && I420Out::for_size(640, 481).is_none(), "odd sizes stay RGBA");
    }

    #[test]
    fn white_black_and_grey_are_limited_range() {
        gst::init().unwrap();
        let o = I420Out::for_size(4, 2).unwrap();
        let mut rgba = Vec::new();
        for v in [255u8, 0, 128, 128, 255, 0, 128, 128] {
            rgba.extend_from_slice(&[v, v, v, 255]);
        }
        let f = o.visible(&o.convert(&rgba));
        assert_eq!(&f[..8], &[235, 16, 126, 126, 235, 16, 126, 126]);
        assert!(f[8..].iter().all(|&c| c == 128), "grey has no chroma: {:?}", &f[8..]);
    }
}
