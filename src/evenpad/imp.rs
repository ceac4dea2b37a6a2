//! The padding element: caps (odd → even sizes) and the edge-repeating copy.

use std::sync::LazyLock;

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::subclass::prelude::*;
use gstreamer_base::subclass::prelude::*;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;
use gstreamer_video::subclass::prelude::*;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new("matteflow-evenpad", gst::DebugColorFlags::empty(), Some("pads odd frame sizes to even"))
});

/// Four bytes per pixel, any channel order: the copy does not look inside a pixel.
const FORMATS: [gst_video::VideoFormat; 5] = [
    gst_video::VideoFormat::Rgba,
    gst_video::VideoFormat::Bgra,
    gst_video::VideoFormat::Rgbx,
    gst_video::VideoFormat::Bgrx,
    // what the GPU stages hand an H.264 encoder (converted there)
    gst_video::VideoFormat::I420,
];

#[derive(Default)]
pub struct EvenPad;

#[glib::object_subclass]
impl ObjectSubclass for EvenPad {
    const NAME: &'static str = "GstMatteFlowEvenPad";
    type Type = super::EvenPad;
    type ParentType = gst_video::VideoFilter;
}

impl ObjectImpl for EvenPad {}
impl GstObjectImpl for EvenPad {}

impl ElementImpl for EvenPad {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Even-size padding",
                "Filter/Converter/Video",
                "Pads odd widths and heights to even ones by repeating the last column and row (for 4:2:0 encoders)",
                "matteflow",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let caps = gst_video::VideoCapsBuilder::new().format_list(FORMATS).build();
            vec![
                gst::PadTemplate::new("src", gst::PadDirection::Src, gst::PadPresence::Always, &caps).unwrap(),
                gst::PadTemplate::new("sink", gst::PadDirection::Sink, gst::PadPresence::Always, &caps).unwrap(),
            ]
        });
        TEMPLATES.as_ref()
    }
}

/// Sink side → source side: a fixed odd size becomes the next even one. Source side → sink side: a fixed even
/// size may come from itself or from one less.
fn map_dimension(s: &mut gst::StructureRef, field: &str, direction: gst::PadDirection) {
    let Ok(v) = s.get::<i32>(field) else { return };
    match direction {
        gst::PadDirection::Sink => s.set(field, v + (v & 1)),
        _ if v % 2 == 0 && v > 1 => s.set(field, gst::List::new([v, v - 1])),
        _ => {}
    }
}

impl BaseTransformImpl for EvenPad {
    const MODE: gstreamer_base::subclass::BaseTransformMode = gstreamer_base::subclass::BaseTransformMode::NeverInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = true;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn transform_caps(&self, direction: gst::PadDirection, caps: &gst::Caps, filter: Option<&gst::Caps>) -> Option<gst::Caps> {
        let mut out = caps.clone();
        for s in out.make_mut().iter_mut() {
            map_dimension(s, "width", direction);
            map_dimension(s, "height", direction);
        }
        gst::trace!(CAT, imp = self, "{direction:?}: {caps} → {out}");
        Some(match filter {
            Some(f) => f.intersect_with_mode(&out, gst::CapsIntersectMode::First),
            None => out,
        })
    }
}

impl VideoFilterImpl for EvenPad {
    fn set_info(&self, incaps: &gst::Caps, in_info: &gst_video::VideoInfo, outcaps: &gst::Caps, out_info: &gst_video::VideoInfo) -> Result<(), gst::LoggableError> {
        let (w, h, ow, oh) = (in_info.width(), in_info.height(), out_info.width(), out_info.height());
        if (ow, oh) != super::even_size(w, h) || in_info.format() != out_info.format() {
            return Err(gst::loggable_error!(CAT, "cannot pad {incaps} to {outcaps}"));
        }
        if (w, h) != (ow, oh) {
            // Said once per negotiation (once per run): the reader of the log learns why the size differs.
            tracing::warn!(
                "the frames are {w}×{h}; H.264 (4:2:0) takes only even sizes, so they are encoded as {ow}×{oh}, \
                 the last column/row repeated (ProRes .mov, FFV1 .mkv, PNG and VP9 .webm keep {w}×{h})"
            );
        }
        Ok(())
    }

    fn transform_frame(
        &self,
        inframe: &gst_video::VideoFrameRef<&gst::BufferRef>,
        outframe: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        // Plane by plane (one for RGBA, three for I420, whose chroma planes are ⌈w/2⌉ × ⌈h/2⌉ either way).
        let finfo = inframe.format_info();
        for plane in 0..inframe.n_planes() {
            let Some(comp) = finfo.plane().iter().position(|&p| p == plane) else { continue };
            let (sw, sh) = (|v| finfo.scale_width(comp as u8, v) as usize, |v| finfo.scale_height(comp as u8, v) as usize);
            let (w, h, ow, oh) = (sw(inframe.width()), sh(inframe.height()), sw(outframe.width()), sh(outframe.height()));
            let px = finfo.pixel_stride()[comp] as usize;
            let in_stride = inframe.plane_stride()[plane as usize] as usize;
            let out_stride = outframe.plane_stride()[plane as usize] as usize;
            let src = inframe.plane_data(plane).map_err(|_| gst::FlowError::Error)?;
            let dst = outframe.plane_data_mut(plane).map_err(|_| gst::FlowError::Error)?;
            for y in 0..oh {
                let from = &src[y.min(h - 1) * in_stride..][..w * px];
                let to = &mut dst[y * out_stride..][..ow * px];
                to[..w * px].copy_from_slice(from);
                for x in w..ow {
                    to.copy_within((w - 1) * px..w * px, x * px);
                }
            }
        }
        Ok(gst::FlowSuccess::Ok)
    }
}
