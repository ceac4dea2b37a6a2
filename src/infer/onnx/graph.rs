//! CUDA graphs of our own for device runs: one run of a binding is captured from the stream ONNX Runtime runs
//! the session on, and replayed after with one launch that the host does not wait for.
//!
//! ONNX Runtime's own graphs (`enable_cuda_graph`) replay the same kernels but wait for each replay to end
//! (`CUDAGraphManager::Replay` synchronises the stream): the host cannot queue the next frame's run while the GPU
//! runs this one, so the GPU idles between runs for the host's turn-around, and more so when the encoder's
//! threads take the cores (IS-Net on the H200: 5.45 ms a run inside the pipeline against 5.12 alone, tenth
//! session).
//!
//! A run is captured in relaxed mode (ONNX Runtime may grow its memory arena meanwhile) and kept only if
//! every node of the graph replays as captured: kernels, memsets, device-to-device copies and copies from
//! page-locked memory (see [`copy_replayable`]), events, stream-ordered allocations freed inside the graph. A
//! copy from pageable memory or to the host, or a host callback, would not; such a run, or one that fails to
//! capture, runs without a graph from then on.

use std::sync::Arc;

use cudarc::driver::sys;
use cudarc::driver::{CudaGraph, CudaStream};

/// The run that is captured: the first warms up (cuDNN's algorithm search, the arena's first allocations), the
/// second runs with the output bound at its final address; the third is captured.
pub(super) const CAPTURE_AT: u32 = 3;

/// Captures what `run` queues on `stream` into a graph, without running it, and checks the graph
/// ([`device_only`]). Without a graph (the reason returned), `run`'s work did not happen: run it again.
pub(super) fn capture<T, E: std::fmt::Display>(stream: &Arc<CudaStream>, run: impl FnOnce() -> Result<T, E>) -> Result<CudaGraph, String> {
    stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
        .map_err(|e| format!("the capture did not start ({e})"))?;
    let ran = run().map(drop).map_err(|e| format!("the run failed while captured ({e})"));
    let ended = stream.end_capture(sys::CUgraphInstantiate_flags(0));
    ran?;
    let g = ended.map_err(|e| format!("the capture failed ({e})"))?.ok_or("the capture made no graph")?;
    device_only(&g)?;
    Ok(g)
}

/// The graph's node count, if every node stays on the device; else which node does not.
pub(super) fn device_only(g: &CudaGraph) -> Result<usize, String> {
    use sys::CUgraphNodeType as T;
    let graph = g.cu_graph();
    let err = |what: &str, r: sys::CUresult| format!("{what}: {r:?}");
    let mut n = 0usize;
    // SAFETY: a null array asks for the count only.
    let r = unsafe { sys::cuGraphGetNodes(graph, std::ptr::null_mut(), &mut n) };
    if r != sys::CUresult::CUDA_SUCCESS {
        return Err(err("listing the graph's nodes", r));
    }
    let mut nodes: Vec<sys::CUgraphNode> = vec![std::ptr::null_mut(); n];
    // SAFETY: room for `n` nodes.
    let r = unsafe { sys::cuGraphGetNodes(graph, nodes.as_mut_ptr(), &mut n) };
    if r != sys::CUresult::CUDA_SUCCESS {
        return Err(err("listing the graph's nodes", r));
    }
    // Stream-ordered allocations (cuDNN's and cuBLAS's workspaces, for one) become allocation and free nodes:
    // fine where each is freed inside the graph, which a relaunch needs.
    let (mut allocs, mut frees) = (0usize, 0usize);
    for node in &nodes[..n] {
        // Read as a plain number: a node type newer than these bindings is not a valid value of their enum.
        let mut ty = 0u32;
        // SAFETY: the driver writes one enum value (32 bits) there.
        let r = unsafe { sys::cuGraphNodeGetType(*node, (&mut ty as *mut u32).cast()) };
        if r != sys::CUresult::CUDA_SUCCESS {
            return Err(err("reading a node's type", r));
        }
        match ty {
            t if t == T::CU_GRAPH_NODE_TYPE_KERNEL as u32
                || t == T::CU_GRAPH_NODE_TYPE_MEMSET as u32
                || t == T::CU_GRAPH_NODE_TYPE_EMPTY as u32
                || t == T::CU_GRAPH_NODE_TYPE_WAIT_EVENT as u32
                || t == T::CU_GRAPH_NODE_TYPE_EVENT_RECORD as u32 => {}
            t if t == T::CU_GRAPH_NODE_TYPE_MEMCPY as u32 => copy_replayable(*node)?,
            t if t == T::CU_GRAPH_NODE_TYPE_MEM_ALLOC as u32 => allocs += 1,
            t if t == T::CU_GRAPH_NODE_TYPE_MEM_FREE as u32 => frees += 1,
            t if t == T::CU_GRAPH_NODE_TYPE_HOST as u32 => return Err("the run calls back to the host".into()),
            t => return Err(format!("the run has a node of type {t}, which replays are not checked for")),
        }
    }
    if allocs != frees {
        return Err(format!("the run allocates {allocs} buffers on the stream and frees {frees} of them"));
    }
    Ok(n)
}

/// Whether a copy node replays as captured: device to device, or from page-locked host memory to the device
/// (ONNX Runtime's kernels stage small parameters — pads, scales, shapes — through its pinned arena, whose
/// buffers keep their values as long as the session runs nothing else: what its own graphs rely on too).
fn copy_replayable(node: sys::CUgraphNode) -> Result<(), String> {
    let mut p = std::mem::MaybeUninit::<sys::CUDA_MEMCPY3D>::uninit();
    // SAFETY: the driver fills the whole struct.
    let r = unsafe { sys::cuGraphMemcpyNodeGetParams(node, p.as_mut_ptr()) };
    if r != sys::CUresult::CUDA_SUCCESS {
        return Err(format!("reading a copy's parameters: {r:?}"));
    }
    let p = p.as_ptr();
    // SAFETY: filled above; the memory types are read as plain numbers (see device_only), the rest as is.
    let (src_ty, dst_ty, src, src_host, dst) = unsafe {
        (
            std::ptr::addr_of!((*p).srcMemoryType).cast::<u32>().read(),
            std::ptr::addr_of!((*p).dstMemoryType).cast::<u32>().read(),
            std::ptr::addr_of!((*p).srcDevice).read(),
            std::ptr::addr_of!((*p).srcHost).read() as sys::CUdeviceptr,
            std::ptr::addr_of!((*p).dstDevice).read(),
        )
    };
    use sys::CUmemorytype as M;
    if memory_type(dst_ty, dst) != Some(M::CU_MEMORYTYPE_DEVICE as u32) {
        return Err("the run copies to host memory".into());
    }
    let src_ptr = if src_ty == M::CU_MEMORYTYPE_HOST as u32 { src_host } else { src };
    match memory_type(src_ty, src_ptr) {
        Some(t) if t == M::CU_MEMORYTYPE_DEVICE as u32 || t == M::CU_MEMORYTYPE_HOST as u32 => Ok(()),
        _ => Err("the run copies from pageable host memory".into()),
    }
}

/// What a copy end of memory type `ty` at `ptr` is: device (arrays count as device) or page-locked host memory,
/// as CUDA knows it; None for memory CUDA does not know (pageable host memory).
fn memory_type(ty: u32, ptr: sys::CUdeviceptr) -> Option<u32> {
    use sys::CUmemorytype as M;
    if ty == M::CU_MEMORYTYPE_DEVICE as u32 || ty == M::CU_MEMORYTYPE_ARRAY as u32 {
        return Some(M::CU_MEMORYTYPE_DEVICE as u32);
    }
    let mut kind = 0u32;
    // SAFETY: the attribute is one CUmemorytype (32 bits); memory CUDA does not know is an error, not a write.
    let r = unsafe {
        sys::cuPointerGetAttribute((&mut kind as *mut u32).cast(), sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE, ptr)
    };
    (r == sys::CUresult::CUDA_SUCCESS).then_some(kind)
}
