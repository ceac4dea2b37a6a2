//! The `matteflow` GStreamer element: raw video in, matted video out, over the engine ([`crate::engine`]).
//!
//! ```text
//! … ! videoconvert ! matteflow background=blur ! videoconvert ! …
//!        RGBA/BGRx/… ─▶ [ordered: batch frames → Matter → Finisher] ─▶ RGBA (twice as wide side by side)
//!                     └▶ [budget-ms > 0: MaskScheduler (mask reuse) → Compositor]
//! ```
//!
//! Registered statically by the `matteflow` binary and the tests ([`register_static`]), and loadable as the
//! plugin `libgstmatteflow.so` (the `gst-plugin/` crate of this workspace).

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;

mod caps;
mod imp;
mod policy;

glib::wrapper! {
    pub struct MatteFlow(ObjectSubclass<imp::MatteFlow>) @extends gstreamer_base::BaseTransform, gst::Element, gst::Object;
}

/// Registers the element with `plugin`, or statically (for this process) with `None`.
pub fn register(plugin: Option<&gst::Plugin>) -> Result<(), glib::BoolError> {
    gst::Element::register(plugin, "matteflow", gst::Rank::NONE, MatteFlow::static_type())
}

/// Initialises GStreamer and registers the element for this process (no plugin file needed).
pub fn register_static() -> Result<(), glib::BoolError> {
    gst::init().map_err(|e| glib::bool_error!("GStreamer cannot start: {}", e))?;
    register(None)
}
