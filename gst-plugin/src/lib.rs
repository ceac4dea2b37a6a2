//! `libgstmatteflow.so`: the `matteflow` element (`matteflow::element`) as a GStreamer plugin.
//!
//! ```text
//! GST_PLUGIN_PATH=target/release gst-inspect-1.0 matteflow
//! ```

use gstreamer as gst;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), gst::glib::BoolError> {
    matteflow::element::register(Some(plugin))
}

gst::plugin_define!(
    matteflow,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    env!("CARGO_PKG_VERSION"),
    "Apache 2.0",
    "matteflow",
    "matteflow",
    "matteflow (this repository)"
);
