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
        self.inits = {i.name: i for i in self.g.initializer}
        self.producer = {o: n for n in self.g.node for o in n.output}
        self.consumers = collections.defaultdict(list)
        for n in self.g.node:
            for i in n.input:
                self.consumers[i].append(n)
        self.graph_outputs = {o.name for o in self.g.output}
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


PASSES = {
    "window-pad": pass_window_pad,
}
DEFAULT_PASSES = ["window-pad"]


def prune(model):
    """Drops initializers no node reads any more (the passes leave the old pads and weights behind)."""
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    dropped = len(model.graph.initializer) - len(keep)
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return dropped


def op_counts(model):
    return dict(collections.Counter(n.op_type for n in model.graph.node).most_common())


def to_fp16(model):
    from onnxconverter_common import float16

    # DeformConv stays fp32 (ONNX Runtime's CUDA kernel is fp32); inputs and outputs stay fp32.
    return float16.convert_float_to_float16(model, keep_io_types=True,
                                            op_block_list=float16.DEFAULT_OP_BLOCK_LIST + ["DeformConv"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--passes", default=",".join(DEFAULT_PASSES),
                    help=f"comma-separated, in order (known: {', '.join(PASSES)}; 'none' for none)")
    ap.add_argument("--fp16", action="store_true", help="convert to float16 after the passes (fp32 input/output)")
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
        print(f"prepare: {name}: {fired} rewrites", flush=True)
    report["initializers_dropped"] = prune(g.model)
    if a.fp16:
        model = to_fp16(g.model)
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
    print(f"prepare: {report['nodes_before']} → {report['nodes_after']} nodes in {report['seconds']} s → {a.output}")
    if a.report:
        with open(a.report, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
