#!/usr/bin/env python3
"""matteflow prepare: rewrite an ONNX matting model (BiRefNet and its kin) into a graph ONNX Runtime's CUDA
provider runs faster, with the same outputs. Run once per model by `matteflow prepare` (which embeds this file
and caches the result by the model's hash); it needs Python 3 with `onnx` (and `onnxconverter-common` for
--fp16). Nothing here runs at inference time.

Each pass is a plain pattern match over the graph, told in its docstring with the measurement that motivated it
(docs/BENCHMARKS.md). A pass that finds nothing changes nothing; the report lists how often each fired and the
node counts before and after.

    python3 prepare.py IN.onnx OUT.onnx [--passes window-pad,...] [--fp16] [--report report.json]
"""
import argparse
import collections
import json
import os
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

MS = "com.microsoft"


class Graph:
    """The graph with the lookups the passes need: producers, consumers, initializers, inferred shapes."""

    def __init__(self, model):
        self.model = model
        self.g = model.graph
        seen = set()
        for i, n in enumerate(self.g.node):
            if not n.name or n.name in seen:
                n.name = f"mf_node_{i}"
            seen.add(n.name)
        self.refresh()

    def refresh(self):
        """Links, and shapes by ONNX shape inference (once: it knows no com.microsoft ops, so it runs before the
        fusing passes; the names they keep keep their shapes)."""
        self.refresh_links()
        if getattr(self, "types", None):
            return
        self.types = {}
        try:
            inferred = shape_inference.infer_shapes(self.model, data_prop=True)
        except Exception as e:  # noqa: BLE001 - shapes are a help, not a must
            print(f"prepare: shape inference failed ({e}); passes that need shapes skip", file=sys.stderr)
            inferred = self.model
        for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim] if t.HasField("shape") else None
            self.types[v.name] = (t.elem_type, dims)
        for i in self.g.initializer:
            self.types[i.name] = (i.data_type, list(i.dims))

    def refresh_links(self):
        self.inits = {i.name: i for i in self.g.initializer}
        self.producer = {o: n for n in self.g.node for o in n.output}
        self.consumers = collections.defaultdict(list)
        for n in self.g.node:
            for i in n.input:
                self.consumers[i].append(n)
        self.graph_outputs = {o.name for o in self.g.output}

    def const(self, name):
        """The value of an initializer or a Constant node's output, else None."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        n = self.producer.get(name)
        if n is not None and n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def static_shape(self, name):
        t = self.types.get(name)
        if not t or t[1] is None or any(d is None or d <= 0 for d in t[1]):
            return None
        return t[1]

    def elem_type(self, name):
        t = self.types.get(name)
        return t[0] if t else None

    def unique(self, base):
        self._n = getattr(self, "_n", 0) + 1
        return f"mf_prep_{base}_{self._n}"

    def add_init(self, base, array):
        name = self.unique(base)
        self.g.initializer.append(numpy_helper.from_array(array, name))
        return name

    def only_consumer(self, name):
        c = self.consumers.get(name, [])
        return c[0] if len(c) == 1 and name not in self.graph_outputs else None


def replace_nodes(g, old, new):
    """Puts `new` where the last of `old` stood and drops `old` (the graph stays topologically sorted when `new`
    needs only what `old` needed). Nodes are told apart by name: `Graph.__init__` names every node."""
    names = {n.name for n in old}
    nodes = list(g.g.node)
    last = max(i for i, n in enumerate(nodes) if n.name in names)
    kept = [n for n in nodes[:last] if n.name not in names] + list(new) + nodes[last + 1:]
    del g.g.node[:]
    g.g.node.extend(kept)


# --- passes -----------------------------------------------------------------------------------------------

def pass_window_pad(g):
    """Constant zero Pad with static pads and a static input shape → Concat with zero blocks, one per padded
    axis. Swin pads each block's feature map to a multiple of the window; ONNX Runtime's CUDA Pad runs those at
    ~20 GB/s (`_PadKernel<half>`: 30 % of BiRefNet-L's GPU time, 48 launches, Nsight Compute 2026-12-02), its
    Concat at memory speed."""
    fired = 0
    for n in list(g.g.node):
        if n.op_type != "Pad":
            continue
        mode = next((a.s.decode() for a in n.attribute if a.name == "mode"), "constant")
        if mode != "constant" or len(n.input) < 2 or len(n.input) > 3 and n.input[3]:
            continue
        pads = g.const(n.input[1])
        value = g.const(n.input[2]) if len(n.input) > 2 and n.input[2] else np.zeros(())
        shape = g.static_shape(n.input[0])
        dtype = g.elem_type(n.input[0])
        if pads is None or value is None or shape is None or dtype is None or np.any(value != 0) or np.any(pads < 0):
            continue
        rank = len(shape)
        pads = [int(p) for p in pads]
        if len(pads) != 2 * rank:
            continue
        np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
        cur, cur_shape, new = n.input[0], list(shape), []
        for axis in range(rank):
            before, after = pads[axis], pads[rank + axis]
            if before == 0 and after == 0:
                continue
            parts = []
            for count in (before, after):
                if count:
                    zs = list(cur_shape)
                    zs[axis] = count
                    parts.append(g.add_init("zeros", np.zeros(zs, dtype=np_dtype)))
                else:
                    parts.append(None)
            ins = [p for p in (parts[0], cur, parts[1]) if p is not None]
            out = g.unique("pad_concat")
            new.append(helper.make_node("Concat", ins, [out], axis=axis, name=out))
            cur = out
            cur_shape[axis] += before + after
        if not new:
            continue
        new[-1].output[0] = n.output[0]
        replace_nodes(g, [n], new)
        fired += 1
    return fired


def bias_of(g, add):
    """(matmul_output, bias_name) when `add` is MatMul + constant 1-D bias (either order), else None."""
    if add is None or add.op_type != "Add":
        return None
    for a, b in ((0, 1), (1, 0)):
        mm, bias = g.producer.get(add.input[a]), add.input[b]
        c = g.const(bias)
        if mm is not None and mm.op_type == "MatMul" and c is not None and c.ndim == 1 and bias in g.inits:
            if len(g.consumers.get(mm.output[0], [])) == 1:
                return mm.output[0], bias
    return None


def pass_bias_gelu(g):
    """MatMul + bias + Gelu (exact) → MatMul + com.microsoft BiasGelu. ONNX Runtime otherwise fuses MatMul +
    Add into a Gemm whose CUDA kernel first writes the bias into the output (`BroadcastBiasKernel`, 9.5 % of
    BiRefNet-L, 192 launches) and then runs GELU as another pass; BiasGelu adds the bias inside the GELU pass."""
    fired = 0
    for n in list(g.g.node):
        if n.op_type != "Gelu" or n.domain not in ("", "ai.onnx"):
            continue
        if next((a.s.decode() for a in n.attribute if a.name == "approximate"), "none") != "none":
            continue
        add = g.producer.get(n.input[0])
        mb = bias_of(g, add) if add is not None and getattr(g.only_consumer(add.output[0]), 'name', None) == n.name else None
        if mb is None:
            continue
        node = helper.make_node("BiasGelu", list(mb), [n.output[0]], domain=MS, name=g.unique("bias_gelu"))
        replace_nodes(g, [add, n], [node])
        fired += 1
    return fired


def pass_skip_layernorm(g):
    """Residual Add (+ a MatMul's bias) + LayerNormalization over the last axis → com.microsoft
    SkipLayerNormalization, which also hands out the sum for the next residual. Three passes over the
    activations (bias, add, norm) become one, and the MatMul before it keeps no bias (no Gemm, no
    `BroadcastBiasKernel`)."""
    fired = 0
    for ln in list(g.g.node):
        if ln.op_type != "LayerNormalization" or len(ln.input) < 2:
            continue
        axis = next((a.i for a in ln.attribute if a.name == "axis"), -1)
        eps = next((a.f for a in ln.attribute if a.name == "epsilon"), 1e-5)
        add = g.producer.get(ln.input[0])
        if add is None or add.op_type != "Add" or len(ln.output) > 1 and any(ln.output[1:]):
            continue
        shape = g.static_shape(add.output[0])
        if shape is None or len(shape) not in (2, 3) or axis not in (-1, len(shape) - 1):
            continue
        a_shape, b_shape = g.static_shape(add.input[0]), g.static_shape(add.input[1])
        if a_shape != shape or b_shape != shape:
            continue
        gamma, beta = ln.input[1], ln.input[2] if len(ln.input) > 2 else ""
        if g.const(gamma) is None or beta and g.const(beta) is None:
            continue
        # Which side carries a MatMul's bias (folded in), which is the skip.
        inp, skip, bias, gone = add.input[0], add.input[1], "", [add, ln]
        for x, y in ((0, 1), (1, 0)):
            inner = g.producer.get(add.input[x])
            mb = bias_of(g, inner) if inner is not None and getattr(g.only_consumer(inner.output[0]), 'name', None) == add.name else None
            if mb is not None:
                inp, skip, bias = mb[0], add.input[y], mb[1]
                gone = [inner, add, ln]
                break
        sum_used = [c for c in g.consumers.get(add.output[0], []) if c.name != ln.name] or add.output[0] in g.graph_outputs
        outs = [ln.output[0], "", "", add.output[0] if sum_used else ""]
        while outs and not outs[-1]:
            outs.pop()
        ins = [inp, skip, gamma, beta or "", bias]
        while ins and not ins[-1]:
            ins.pop()
        node = helper.make_node("SkipLayerNormalization", ins, outs, domain=MS, epsilon=eps,
                                name=g.unique("skip_ln"))
        replace_nodes(g, gone, [node])
        fired += 1
        g.refresh_links()
    return fired


PASSES = {
    "window-pad": pass_window_pad,
    "bias-gelu": pass_bias_gelu,
    "skip-layernorm": pass_skip_layernorm,
}
DEFAULT_PASSES = ["window-pad", "bias-gelu", "skip-layernorm"]


def prune(model):
    """Drops initializers no node reads any more (the passes leave the old pads and weights behind)."""
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    dropped = len(model.graph.initializer) - len(keep)
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return dropped


def topo_sort(model):
    """Kahn's order (stable): the fused nodes stand where the last of their nodes stood, which can be after a
    consumer of an output they took over."""
    g = model.graph
    nodes = list(g.node)
    have = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    waiting = collections.defaultdict(list)
    missing = []
    for idx, n in enumerate(nodes):
        need = {i for i in n.input if i not in have}
        missing.append(need)
    producer = {o: idx for idx, n in enumerate(nodes) for o in n.output}
    for idx, need in enumerate(missing):
        for i in list(need):
            if i not in producer:
                need.discard(i)  # an outer-scope or unknown name: not ours to order
            else:
                waiting[i].append(idx)
    import heapq
    ready = [idx for idx, need in enumerate(missing) if not need]
    heapq.heapify(ready)
    out = []
    while ready:
        idx = heapq.heappop(ready)
        out.append(nodes[idx])
        for o in nodes[idx].output:
            for j in waiting.pop(o, []):
                missing[j].discard(o)
                if not missing[j]:
                    heapq.heappush(ready, j)
    if len(out) != len(nodes):
        raise RuntimeError(f"prepare: the rewritten graph has a cycle ({len(nodes) - len(out)} nodes unplaced)")
    del g.node[:]
    g.node.extend(out)


def op_counts(model):
    return dict(collections.Counter(n.op_type for n in model.graph.node).most_common())


def to_fp16(model, keep_fp32=()):
    """float16 everywhere but the model's input and output. onnxconverter-common keeps Resize (and Upsample) in
    float32 by default, with Casts around each; ONNX Runtime's CUDA Resize and DeformConv (1.31) run float16, so
    they convert too — unless named in `keep_fp32`."""
    from onnxconverter_common import float16

    block = [op for op in float16.DEFAULT_OP_BLOCK_LIST if op not in ("Resize", "Upsample")] + list(keep_fp32)
    return float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--passes", default=",".join(DEFAULT_PASSES),
                    help=f"comma-separated, in order (known: {', '.join(PASSES)}; 'none' for none)")
    ap.add_argument("--fp16", action="store_true", help="convert to float16 after the passes (fp32 input/output)")
    ap.add_argument("--keep-fp32", default="", help="with --fp16: ops kept in float32 (comma-separated, e.g. DeformConv)")
    ap.add_argument("--report", help="write the report as JSON here")
    a = ap.parse_args()
    t0 = time.time()
    model = onnx.load(a.input)
    before = op_counts(model)
    names = [] if a.passes == "none" else [p.strip() for p in a.passes.split(",") if p.strip()]
    unknown = [p for p in names if p not in PASSES]
    if unknown:
        sys.exit(f"prepare: unknown pass {', '.join(unknown)} (known: {', '.join(PASSES)})")
    report = {"input": a.input, "nodes_before": sum(before.values()), "passes": []}
    g = Graph(model)
    for name in names:
        t = time.time()
        fired = PASSES[name](g)
        if fired:
            g.refresh()
        report["passes"].append({"pass": name, "fired": fired, "seconds": round(time.time() - t, 2)})
        print(f"prepare: {name}: {fired} rewrites", file=sys.stderr, flush=True)
    topo_sort(g.model)
    if any(n.domain == MS for n in g.g.node) and not any(o.domain == MS for o in g.model.opset_import):
        g.model.opset_import.append(helper.make_opsetid(MS, 1))
    report["initializers_dropped"] = prune(g.model)
    if a.fp16:
        model = to_fp16(g.model, [o for o in a.keep_fp32.split(",") if o])
        report["fp16"] = True
    else:
        model = g.model
    onnx.checker.check_model(model, full_check=False) if model.ByteSize() < 2**31 - 2**20 else None
    after = op_counts(model)
    report.update(nodes_after=sum(after.values()), ops_before=before, ops_after=after,
                  seconds=round(time.time() - t0, 1))
    tmp = a.output + ".partial"
    big = model.ByteSize() > 2**31 - 2**20
    onnx.save(model, tmp, save_as_external_data=big, location=os.path.basename(a.output) + ".data" if big else None)
    os.replace(tmp, a.output)
    print(f"prepare: {report['nodes_before']} → {report['nodes_after']} nodes in {report['seconds']} s → {a.output}",
          file=sys.stderr)
    if a.report:
        with open(a.report, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
