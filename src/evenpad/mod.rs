//! `matteflow-evenpad`: pads odd-sized RGBA (or I420) frames to even width and height by repeating the last column and
//! row, for encoders that only take even sizes (H.264 in 4:2:0: x264 and NVENC refuse odd ones). Even frames
//! pass through untouched (BaseTransform passthrough: no copy).
//!
//! ```text
//! appsrc (RGBA 193×145) ─ matteflow-evenpad ─ RGBA 194×146 ─ videoconvert ─ I420 ─ x264enc
//! ```
//!
//! Used by the H.264 branches of `convert` ([`crate::sink`]) and `live` (recordings, RTMP). Registered on first
//! use by [`make`], so the library needs no set-up call.

use std::sync::Once;

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;

mod imp;

glib::wrapper! {
    pub struct EvenPad(ObjectSubclass<imp::EvenPad>) @extends gstreamer_video::VideoFilter, gstreamer_base::BaseTransform, gst::Element, gst::Object;
}

pub const ELEMENT_NAME: &str = "matteflow-evenpad";

/// Registers the element with `plugin`, or statically (for this process) with `None`.
pub fn register(plugin: Option<&gst::Plugin>) -> Result<(), glib::BoolError> {
    gst::Element::register(plugin, ELEMENT_NAME, gst::Rank::NONE, EvenPad::static_type())
}

/// A new padding element (registering it for this process the first time).
pub fn make() -> Result<gst::Element, glib::BoolError> {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        if gst::ElementFactory::find(ELEMENT_NAME).is_none() {
            let _ = register(None);
        }
    });
    gst::ElementFactory::make(ELEMENT_NAME).build()
}

/// The even size a frame of `width`×`height` is padded to.
pub fn even_size(width: u32, height: u32) -> (u32, u32) {
    (width + (width & 1), height + (height & 1))
}

#[cfg(test)]
mod tests {
    use gstreamer_app as gst_app;
    use gstreamer_video as gst_video;
    use gstreamer_video::prelude::*;

    use super::*;

    /// An odd I420 frame (what no GPU path makes, but any user of the element may send) is padded plane by plane:
    /// luma's last column and row repeated, the chroma planes (⌈w/2⌉ × ⌈h/2⌉ either way) unchanged.
    #[test]
    fn odd_i420_is_padded_plane_by_plane() {
        gst::init().unwrap();
        make().unwrap(); // registers the element for the launch line
        let pipeline = gst::parse::launch(&format!(
            "videotestsrc pattern=smpte num-buffers=1 ! video/x-raw,format=I420,width=193,height=145 ! tee name=t \
             t. ! queue ! appsink name=raw  t. ! queue ! {ELEMENT_NAME} ! appsink name=padded"
        ))
        .unwrap();
        let bin = pipeline.downcast::<gst::Bin>().unwrap();
        let pull = |name: &str| bin.by_name(name).unwrap().downcast::<gst_app::AppSink>().unwrap();
        let (raw, padded) = (pull("raw"), pull("padded"));
        bin.set_state(gst::State::Playing).unwrap();
        let frame = |sink: &gst_app::AppSink| {
            let s = sink.pull_sample().unwrap();
            let info = gst_video::VideoInfo::from_caps(s.caps().unwrap()).unwrap();
            gst_video::VideoFrame::from_buffer_readable(s.buffer_owned().unwrap(), &info).unwrap()
        };
        let (a, b) = (frame(&raw), frame(&padded));
        bin.set_state(gst::State::Null).unwrap();
        assert_eq!((b.width(), b.height(), b.format()), (194, 146, gst_video::VideoFormat::I420));
        let px = |f: &gst_video::VideoFrame<gst_video::video_frame::Readable>, plane: u32, x: usize, y: usize| {
            f.plane_data(plane).unwrap()[y * f.plane_stride()[plane as usize] as usize + x]
        };
        for y in 0..146 {
            for x in 0..194 {
                assert_eq!(px(&b, 0, x, y), px(&a, 0, x.min(192), y.min(144)), "luma ({x}, {y})");
            }
        }
        for plane in [1, 2] {
            for y in 0..73 {
                for x in 0..97 {
                    assert_eq!(px(&b, plane, x, y), px(&a, plane, x, y), "plane {plane} ({x}, {y})");
                }
            }
        }
    }
}
