//! `matteflow-evenpad`: pads odd-sized RGBA frames to even width and height by repeating the last column and
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
