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

    def refresh(self, again=False):
        """Links, and shapes by ONNX shape inference (once: it knows no com.microsoft ops, so it runs before the
        fusing passes; the names they keep keep their shapes). `again`: a re-inference, which fails once the fused
        ops are in (the shapes written into the graph's value_info stay): no warning then."""
        self.refresh_links()
        if getattr(self, "types", None):
            return
        self.types = {}
        try:
            inferred = shape_inference.infer_shapes(self.model, data_prop=True)
        except Exception as e:  # noqa: BLE001 - shapes are a help, not a must
            if not again:
                print(f"prepare: shape inference failed ({e}); passes that need shapes skip", file=sys.stderr)
            inferred = self.model
        for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim] if t.HasField("shape") else None
            self.types[v.name] = (t.elem_type, dims)
        for i in self.g.initializer:
            self.types[i.name] = (i.data_type, list(i.dims))

    def reinfer(self):
        """Shapes again (after a pass made more of them static)."""
        self.types = None
        self.refresh(again=True)

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


MOVES = {"Reshape", "Transpose", "Slice", "Concat", "Pad", "Squeeze", "Unsqueeze", "Identity", "Flatten"}


def row_move(g, n, rows, channels):
    """The rows (token) index array of `n`'s output when `n` only moves whole rows of a tensor whose last axis
    (`channels` wide) it leaves alone, given `rows` (input name → index array over that input's leading axes;
    0 marks a zero row, k + 1 row k of the chain's source). None when `n` touches the last axis or anything is
    not static."""
    out_shape = g.static_shape(n.output[0])
    if out_shape is None or out_shape[-1] != channels or len(n.output) != 1:
        return None
    op = n.op_type
    src = rows.get(n.input[0])
    if op == "Concat":
        axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
        axis = axis + len(out_shape) if axis < 0 else axis
        if axis == len(out_shape) - 1:
            return None
        parts = []
        for i in n.input:
            if i in rows:
                parts.append(rows[i])
                continue
            c = g.const(i)
            if c is None or np.any(c != 0) or c.shape[-1] != channels:
                return None
            parts.append(np.zeros(c.shape[:-1], dtype=np.int64))
        a = np.concatenate(parts, axis=axis)
    elif src is None or any(i in rows for i in n.input[1:]):
        return None
    elif op in ("Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten"):
        in_shape = g.static_shape(n.input[0])
        if in_shape is None or in_shape[-1] != channels:
            return None
        a = src.reshape(out_shape[:-1])
    elif op == "Transpose":
        perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), None)
        if perm is None or perm[-1] != len(perm) - 1:
            return None
        a = src.transpose(perm[:-1])
    elif op == "Slice":
        consts = [g.const(i) if i else None for i in n.input[1:]]
        if len(consts) < 2 or any(c is None for c in consts[:2]) or any(i and c is None for i, c in zip(n.input[1:], consts)):
            return None
        starts, ends = consts[0], consts[1]
        rank = src.ndim + 1
        axes = consts[2] if len(consts) > 2 and consts[2] is not None else np.arange(len(starts))
        steps = consts[3] if len(consts) > 3 and consts[3] is not None else np.ones(len(starts), dtype=np.int64)
        index = [slice(None)] * src.ndim
        for s, e, ax, st in zip(starts, ends, axes, steps):
            ax = int(ax) + rank if ax < 0 else int(ax)
            if ax == rank - 1:
                return None
            index[ax] = slice(int(s), int(e), int(st))
        a = src[tuple(index)]
    elif op == "Pad":
        mode = next((a.s.decode() for a in n.attribute if a.name == "mode"), "constant")
        pads = g.const(n.input[1]) if len(n.input) > 1 else None
        value = g.const(n.input[2]) if len(n.input) > 2 and n.input[2] else np.zeros(())
        if mode != "constant" or pads is None or value is None or np.any(value != 0) or len(n.input) > 3 and n.input[3]:
            return None
        rank = src.ndim + 1
        if len(pads) != 2 * rank or pads[rank - 1] or pads[-1] or np.any(pads < 0):
            return None
        a = np.pad(src, [(int(pads[i]), int(pads[rank + i])) for i in range(rank - 1)])
    else:
        return None
    return a if list(a.shape) == out_shape[:-1] else None


NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Dropout"}
FOLD_LIMIT = 1 << 24  # elements: larger constant results stay computed at run time (a BiRefNet-L stage-3 shift
# mask plus relative-position bias is 17.9M: 9 of them would add 320 MB to the file for ~0.9 ms a frame — not measured)


def pass_fold(g):
    """Shape arithmetic and constant subgraphs → initializers. PyTorch's TorchScript exporter (the official
    BiRefNet releases: opset 17) computes every reshape target, pad and slice bound from Shape at run time —
    7530 Constants, 1286 Shapes and thousands of Gather/Unsqueeze/Concat/Cast nodes in Swin-T — so the other
    passes see no static pattern until the shapes are known. Shape of a tensor whose shape inference knows it
    becomes a constant; then every node whose inputs are all constant is evaluated (onnx's reference
    evaluator, once per round over the whole constant subgraph); shape inference runs again; until nothing
    changes. ONNX Runtime folds the same at session start, but too late for these passes (and not in float16:
    it has no CPU float16 Add)."""
    from onnx.reference import ReferenceEvaluator

    fired = 0
    for n in list(g.g.node):  # Constant nodes → initializers
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            v = g.const(n.output[0])
            if v is not None:
                g.g.initializer.append(numpy_helper.from_array(np.asarray(v), n.output[0]))
                g.g.node.remove(n)
                fired += 1
    g.refresh_links()
    for _ in range(20):
        folded = {}
        for n in g.g.node:
            if n.op_type == "Shape" and n.domain in ("", "ai.onnx"):
                shape = g.static_shape(n.input[0])
                if shape is not None:
                    start, end = attr(n, "start", 0), attr(n, "end", None)
                    folded[n.output[0]] = np.array(shape, dtype=np.int64)[start:end]
        # The constant closure: nodes whose inputs are initializers, folded Shapes or outputs of such nodes.
        known = set(g.inits) | set(folded) | {""}
        closure = []
        for n in g.g.node:
            if n.output[0] in folded or n.domain not in ("", "ai.onnx") or n.op_type in NONDETERMINISTIC:
                continue
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
                continue
            if all(i in known for i in n.input):
                closure.append(n)
                known.update(n.output)
        if closure:
            need = {i for n in closure for i in n.input if i}
            feeds = {name: v for name, v in folded.items() if name in need}
            inits = [i for i in g.g.initializer if i.name in need]
            outs = [o for n in closure for o in n.output if o]
            sub = helper.make_graph(closure, "fold", [helper.make_tensor_value_info(k, TensorProto.INT64, None) for k in feeds],
                                    [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outs], inits)
            sub_model = helper.make_model(sub, opset_imports=list(g.model.opset_import))
            sub_model.ir_version = g.model.ir_version
            values = ReferenceEvaluator(sub_model).run(None, feeds)
            produced = dict(zip(outs, values))
            # Keep what a non-constant node (or the graph's output) reads, within the size limit.
            closure_names = {n.name for n in closure}
            readers = {i for n in g.g.node if n.name not in closure_names for i in n.input} | g.graph_outputs
            # A value over the limit (e.g. a shift mask broadcast over the batch) stays computed, from the
            # largest values upstream of it that are within the limit.
            producer = {o: n for n in closure for o in n.output}
            want, seen = [name for name in produced if name in readers], set()
            while want:
                name = want.pop()
                v = produced.get(name)
                if name in seen or v is None:
                    continue
                seen.add(name)
                if np.asarray(v).size <= FOLD_LIMIT:
                    folded[name] = np.asarray(v)
                elif name in producer:
                    want.extend(i for i in producer[name].input if i in produced)
        # Replace every folded tensor's producer by an initializer of the same name.
        done = 0
        for n in list(g.g.node):
            if n.output and all(o in folded or not o for o in n.output) and any(o in folded for o in n.output):
                for o in n.output:
                    if o:
                        g.g.initializer.append(numpy_helper.from_array(folded[o], o))
                g.g.node.remove(n)
                done += 1
        g.refresh_links()
        if not done:
            break
        drop_dead(g)
        fired += done
        g.reinfer()
    return fired


def pass_window_gather(g, min_row=64, max_row=1 << 30):
    """Each chain of data-movement ops (Reshape, Transpose, Slice, Concat, Pad, ...) that only moves whole
    token rows → one Gather of rows. Swin's window partition (pad to the window, cyclic shift as Slice + Slice
    + Concat twice, 6-D Reshape + Transpose) and its reverse (Reshape + Transpose, shift back, crop) are ten
    ONNX Runtime kernels each, every one a full copy of the feature map (concat/split/slice/transpose: 6.8 ms of
    BiRefNet-L's 26.2 ms, Nsight Compute 2026-12-02); the rows they end up in are known when the graph is
    prepared. Padding rows read a zero row put after the source. Only rows of at least `min_row` values:
    ONNX Runtime's Gather copies element by element, so the attention heads' 32-wide rows (`head-gather`) stay
    with its vectorised Transpose unless measured otherwise."""
    rows, source, moves = {}, {}, {}
    for n in list(g.g.node):
        if n.op_type not in MOVES or not n.input or n.domain not in ("", "ai.onnx"):
            continue
        ins = [i for i in n.input if i in rows]
        if ins:
            roots = {source[i] for i in ins}
            if len(roots) != 1:
                continue
            root = roots.pop()
            channels = g.static_shape(root)[-1]
        else:
            root = n.input[0]
            shape = g.static_shape(root)
            if shape is None or len(shape) < 2 or not min_row <= shape[-1] < max_row or g.const(root) is not None:
                continue
            channels = shape[-1]
            local = dict(rows)
            local[root] = np.arange(1, int(np.prod(shape[:-1])) + 1, dtype=np.int64).reshape(shape[:-1])
            if row_move(g, n, local, channels) is not None:
                rows[root], source[root], moves[root] = local[root], root, 0
            ins = [root]
        a = row_move(g, n, rows, channels)
        if a is None:
            continue
        copies = int(n.op_type in ("Transpose", "Slice", "Concat", "Pad"))
        rows[n.output[0]], source[n.output[0]] = a, root
        moves[n.output[0]] = copies + sum(moves[i] for i in ins)
    # The tensors a non-movement node reads (or the graph puts out): each is a Gather from its source.
    fired = 0
    for name, a in rows.items():
        root = source[name]
        if name == root or moves[name] < 2:
            continue  # a Gather for one copy kernel gains nothing
        users = g.consumers.get(name, [])
        if not any(u.name and (u.op_type not in MOVES or u.output[0] not in rows) for u in users) and name not in g.graph_outputs:
            continue
        flat = a.reshape(-1)
        if np.array_equal(flat, np.arange(1, flat.size + 1)):
            continue  # only reshapes: free in ONNX Runtime
        shape = g.static_shape(root)
        dtype = g.elem_type(root)
        n_rows = int(np.prod(shape[:-1]))
        new = []
        table = g.unique("rows")
        new.append(helper.make_node("Reshape", [root, g.add_init("rows_shape", np.array([n_rows, shape[-1]], np.int64))],
                                    [table], name=table))
        g.types[table] = (dtype, [n_rows, shape[-1]])
        if (flat == 0).any():
            zero = g.add_init("zero_row", np.zeros((1, shape[-1]), helper.tensor_dtype_to_np_dtype(dtype)))
            padded = g.unique("rows_zero")
            new.append(helper.make_node("Concat", [table, zero], [padded], axis=0, name=padded))
            g.types[padded] = (dtype, [n_rows + 1, shape[-1]])
            index = np.where(a == 0, n_rows, a - 1)
            table = padded
        else:
            index = a - 1
        idx = g.add_init("rows_index", index.astype(np.int32))
        new.append(helper.make_node("Gather", [table, idx], [name], axis=0, name=g.unique("window_gather")))
        producer = g.producer[name]
        insert_after(g, producer, new)
        g.g.node.remove(producer)
        fired += 1
    g.refresh_links()
    if fired:
        drop_dead(g)
    return fired


def pass_head_gather(g):
    """`window-gather` for the narrow rows too (attention heads' split and merge): off by default."""
    return pass_window_gather(g, min_row=2, max_row=64)


def pass_gather_linear(g):
    """Gather of rows from a Linear's output (MatMul + bias) → the Linear after the Gather: the window reverse
    then feeds the residual Add as MatMul + bias, which `skip-layernorm` folds (no Gemm bias broadcast for
    Swin's attention projection), and the GEMM skips the padding rows."""
    fired = 0
    for n in list(g.g.node):
        if n.op_type != "Gather" or not n.name.startswith("mf_prep_window_gather"):
            continue
        reshape = g.producer.get(n.input[0])
        if reshape is None or reshape.op_type != "Reshape" or getattr(g.only_consumer(reshape.output[0]), "name", None) != n.name:
            continue
        add = g.producer.get(reshape.input[0])
        mb = bias_of(g, add)
        if mb is None or getattr(g.only_consumer(add.output[0]), "name", None) != reshape.name:
            continue
        mm = g.producer[mb[0]]
        x = mm.input[0]
        x_shape, w_shape = g.static_shape(x), g.static_shape(mm.input[1])
        out_shape = g.static_shape(n.output[0])
        if x_shape is None or w_shape is None or len(w_shape) != 2 or out_shape is None:
            continue
        dtype = g.elem_type(x)
        k = x_shape[-1]
        rows_in = g.unique("lin_rows")
        gathered = g.unique("lin_gathered")
        product = g.unique("lin_mm")
        idx_shape = out_shape[:-1]
        new = [
            helper.make_node("Reshape", [x, g.add_init("rows_shape", np.array([-1, k], np.int64))], [rows_in], name=rows_in),
            helper.make_node("Gather", [rows_in, n.input[1]], [gathered], axis=0, name=gathered),
            helper.make_node("MatMul", [gathered, mm.input[1]], [product], name=product),
            helper.make_node("Add", [product, mb[1]], [n.output[0]], name=g.unique("lin_bias")),
        ]
        g.types[rows_in] = (dtype, [int(np.prod(x_shape[:-1])), k])
        g.types[gathered] = (dtype, idx_shape + [k])
        g.types[product] = (dtype, out_shape)
        insert_after(g, n, new)
        for old in (n, reshape, add, mm):
            g.g.node.remove(old)
        g.refresh_links()
        fired += 1
    return fired


def insert_after(g, anchor, new):
    nodes = list(g.g.node)
    at = next(i for i, m in enumerate(nodes) if m.name == anchor.name)
    del g.g.node[:]
    g.g.node.extend(nodes[:at + 1] + list(new) + nodes[at + 1:])


def drop_dead(g):
    """Removes nodes none of whose outputs anyone reads (what a rewrite left behind)."""
    while True:
        used = {i for n in g.g.node for i in n.input} | g.graph_outputs
        dead = [n for n in g.g.node if n.output and not any(o in used for o in n.output if o)]
        if not dead:
            break
        for n in dead:
            g.g.node.remove(n)
    g.refresh_links()


def pass_conv_bn(g):
    """BatchNormalization after a DeformConv (or a Conv ONNX Runtime did not fold) → folded into its weights and
    bias. BiRefNet's ASPPDeformable blocks run DeformConv → BatchNormalization → ReLU: cuDNN's
    `bn_fw_inf_1C11_kernel_NCHW` then reads and writes every map again (20 launches, 0.3 ms on Swin-T)."""
    fired = 0
    for bn in list(g.g.node):
        if bn.op_type != "BatchNormalization" or len(bn.output) > 1 and any(bn.output[1:]):
            continue
        conv = g.producer.get(bn.input[0])
        if conv is None or conv.op_type not in ("DeformConv", "Conv") or getattr(g.only_consumer(conv.output[0]), "name", None) != bn.name:
            continue
        bias_at = 3 if conv.op_type == "DeformConv" else 2
        w = g.const(conv.input[1]) if conv.input[1] in g.inits else None
        has_b = len(conv.input) > bias_at and conv.input[bias_at]
        b = g.const(conv.input[bias_at]) if has_b else None
        stats = [g.const(i) for i in bn.input[1:5]]
        if w is None or has_b and b is None or any(x is None for x in stats):
            continue
        gamma, beta, mean, var = (x.astype(np.float64) for x in stats)
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        k = gamma / np.sqrt(var + eps)
        new_w = (w.astype(np.float64) * k.reshape(-1, *[1] * (w.ndim - 1))).astype(w.dtype)
        new_b = (((b.astype(np.float64) if b is not None else 0) - mean) * k + beta).astype(w.dtype)
        ins = list(conv.input)
        while len(ins) <= bias_at:
            ins.append("")
        ins[1] = g.add_init("bn_w", new_w)
        ins[bias_at] = g.add_init("bn_b", new_b)
        node = helper.make_node(conv.op_type, ins, [bn.output[0]], name=g.unique("conv_bn"), domain=conv.domain)
        node.attribute.extend(conv.attribute)
        replace_nodes(g, [conv, bn], [node])
        g.refresh_links()
        fired += 1
    return fired


def pass_deform_im2col(g):
    """DeformConv (group 1, one offset group, constant weights, static output size) → com.matteflow
    DeformIm2Col + MatMul with the weights [Cout, C·kh·kw] (a bias as one more weight column over a row of ones
    the op writes) + Reshape. ONNX Runtime's CUDA DeformConv
    is the same im2col + GEMM, but its im2col kernel works out each sample's position and bilinear weights again
    for every channel: 1.16 ms of BiRefNet lite's ~10 (five 7×7 at up to 256², 0.83 ms the largest). matteflow's
    kernel (src/cuda/deform.cu) does them once per (tap, pixel) for all channels; the GEMM stays ONNX
    Runtime's. Only matteflow's runtime runs the result (its host operator on the CPU, its kernel on CUDA).
    Runs after conv-bn (which folds the following BatchNormalization into the weights)."""
    fired = 0
    for dc in list(g.g.node):
        if dc.op_type != "DeformConv" or attr(dc, "group", 1) != 1 or attr(dc, "offset_group", 1) != 1:
            continue
        w = g.const(dc.input[1])
        out = g.static_shape(dc.output[0])
        if w is None or w.ndim != 4 or out is None or len(out) != 4:
            continue
        cout, cin, kh, kw = w.shape
        if list(attr(dc, "kernel_shape", [kh, kw])) != [kh, kw]:
            continue
        b = g.const(dc.input[3]) if len(dc.input) > 3 and dc.input[3] else None
        if len(dc.input) > 3 and dc.input[3] and b is None:
            continue  # a computed bias: left alone
        n, _, ho, wo = out
        ins = [dc.input[0], dc.input[2]] + ([dc.input[4]] if len(dc.input) > 4 and dc.input[4] else [])
        cols = g.unique("deform_cols")
        geo = {a: list(attr(dc, a, d)) for a, d in
               (("kernel_shape", [kh, kw]), ("strides", [1, 1]), ("pads", [0, 0, 0, 0]), ("dilations", [1, 1]))}
        # A bias rides in the GEMM: the columns end with a row of ones (and 7 zero rows, keeping the inner size a
        # multiple of 8), the weights with the bias column (and 7 zero columns).
        w2 = w.reshape(cout, cin * kh * kw)
        ones = 8 if b is not None and np.any(b) else 0
        if ones:
            w2 = np.concatenate([w2, b.reshape(cout, 1).astype(w2.dtype), np.zeros((cout, ones - 1), w2.dtype)], axis=1)
            geo["ones_rows"] = ones
        rows = cin * kh * kw + ones
        new = [helper.make_node("DeformIm2Col", ins, [cols], domain=MF, name=cols, **geo)]
        ty = g.elem_type(dc.output[0])
        g.types[cols] = (ty, [n, rows, ho * wo])
        g.g.value_info.append(helper.make_tensor_value_info(cols, ty, [n, rows, ho * wo]))
        mm = g.unique("deform_gemm")
        new.append(helper.make_node("MatMul", [g.add_init("deform_w", w2), cols], [mm], name=mm))
        new.append(helper.make_node("Reshape", [mm, g.add_init("deform_shape", np.array([0, cout, ho, wo], dtype=np.int64))],
                                    [dc.output[0]], name=g.unique("deform_out")))
        replace_nodes(g, [dc], new)
        g.refresh_links()
        fired += 1
    if fired and not any(o.domain == MF for o in g.model.opset_import):
        g.model.opset_import.append(helper.make_opsetid(MF, 1))
    return fired


def const_value(g, name):
    """An initializer's value, also through a Transpose of one (exports write Linear weights as W and W^T)."""
    c = g.const(name)
    if c is not None:
        return c
    n = g.producer.get(name)
    if n is not None and n.op_type == "Transpose":
        inner = g.const(n.input[0])
        perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), None)
        if inner is not None:
            return inner.transpose(perm) if perm else inner.T
    return None


def attr(n, name, default=None):
    a = next((a for a in n.attribute if a.name == name), None)
    return default if a is None else helper.get_attribute_value(a)


def head_part(g, n):
    """(index, output) when `n` takes part `index` of axis 0 of a [3, ...] tensor and drops that axis: Slice +
    Squeeze or Gather with a scalar index."""
    if n.op_type == "Gather" and attr(n, "axis", 0) == 0:
        i = g.const(n.input[1])
        return (int(i), n.output[0]) if i is not None and i.ndim == 0 else None
    if n.op_type != "Slice" or len(n.input) < 4:
        return None
    st, en, ax = (g.const(i) for i in n.input[1:4])
    if st is None or en is None or ax is None or list(ax) != [0] or int(en[0]) != int(st[0]) + 1:
        return None
    if len(n.input) > 4 and n.input[4] and list(g.const(n.input[4]) if g.const(n.input[4]) is not None else [0]) != [1]:
        return None
    sq = g.only_consumer(n.output[0])
    if sq is None or sq.op_type != "Squeeze":
        return None
    axes = attr(sq, "axes") if len(sq.input) < 2 else g.const(sq.input[1])
    return (int(st[0]), sq.output[0]) if axes is not None and list(axes) == [0] else None


def keys_transposed(g, k):
    """The MatMul that takes `k` (through Reshapes, Transposes and Muls by a scalar) as its right side with the
    last two axes swapped — checked by moving an index array along — else None."""
    shape = g.static_shape(k)
    if shape is None or len(shape) < 2:
        return None
    start = np.arange(int(np.prod(shape))).reshape(shape)
    idx, x = start, k
    while True:
        u = g.only_consumer(x)
        if u is None:
            return None
        if u.op_type == "Reshape" and u.input[0] == x and g.static_shape(u.output[0]) is not None:
            idx = idx.reshape(g.static_shape(u.output[0]))
        elif u.op_type == "Transpose":
            perm = attr(u, "perm")
            idx = idx.transpose(perm) if perm is not None else idx.T
        elif u.op_type == "Mul" and any(i != x and g.const(i) is not None and g.const(i).size == 1 for i in u.input):
            pass
        elif u.op_type == "MatMul" and u.input[1] == x:
            want = np.swapaxes(start, -1, -2)
            return u if idx.shape == want.shape and np.array_equal(idx, want) else None
        else:
            return None
        x = u.output[0]


def split_parts(g, n):
    """[(index, output)] when Split `n` cuts axis 0 of a [3, ...] tensor into three single parts, each then
    squeezed (how the TorchScript exporter writes `qkv.unbind(0)`), else [None]."""
    sizes = g.const(n.input[1]) if len(n.input) > 1 and n.input[1] else None
    if attr(n, "axis", 0) != 0 or len(n.output) != 3 or sizes is not None and list(sizes) != [1, 1, 1]:
        return [None]
    parts = []
    for i, o in enumerate(n.output):
        sq = g.only_consumer(o)
        if sq is None or sq.op_type != "Squeeze":
            return [None]
        axes = attr(sq, "axes") if len(sq.input) < 2 else g.const(sq.input[1])
        if axes is None or list(axes) != [0]:
            return [None]
        parts.append((i, sq.output[0]))
    return parts


def pass_qkv_bias(g):
    """Attention's qkv bias without a Gemm: the key bias dropped (it shifts each query's logits by one constant,
    which softmax ignores), the value bias moved into the output projection's bias (softmax rows sum to one),
    the query bias added to the query alone. ONNX Runtime otherwise runs the qkv projection as a Gemm whose
    `BroadcastBiasKernel` writes the whole [tokens, 3C] output first (the remaining bias broadcasts after
    `gather-linear`, 1.1 ms of BiRefNet-L)."""
    fired = 0
    for t in list(g.g.node):
        if t.op_type != "Transpose" or attr(t, "perm") != [2, 0, 3, 1, 4]:
            continue
        r = g.producer.get(t.input[0])
        if r is None or r.op_type != "Reshape" or getattr(g.only_consumer(r.output[0]), "name", None) != t.name:
            continue
        shape = g.static_shape(r.output[0])
        add = g.producer.get(r.input[0])
        mb = bias_of(g, add)
        if shape is None or len(shape) != 5 or shape[2] != 3 or mb is None:
            continue
        if getattr(g.only_consumer(add.output[0]), "name", None) != r.name:
            continue
        heads, hd = shape[3], shape[4]
        c = heads * hd
        b = g.const(mb[1])
        if b.shape != (3 * c,):
            continue
        users = g.consumers.get(t.output[0], [])
        if len(users) == 1 and users[0].op_type == "Split":
            parts = split_parts(g, users[0])
        else:
            parts = [head_part(g, u) for u in users]
        if len(parts) != 3 or any(p is None for p in parts) or sorted(p[0] for p in parts) != [0, 1, 2]:
            continue
        q, k, v = (next(p[1] for p in parts if p[0] == i) for i in range(3))
        # k: only into the logits MatMul as its transposed right side (through Reshapes, Transposes and scalar
        # Muls, as PyTorch's SDPA decomposition writes it), whose rows reach a last-axis Softmax through Adds,
        # Muls by constants and Reshapes that keep the last axis.
        ku = keys_transposed(g, k)
        if ku is None:
            continue
        x, ok = ku.output[0], False
        while True:
            u = g.only_consumer(x)
            if u is None:
                break
            if u.op_type == "Softmax":
                ok = attr(u, "axis", -1) in (-1, len(g.static_shape(x) or [0]) - 1)
                soft = u
                break
            shp_in, shp_out = g.static_shape(x), g.static_shape(u.output[0])
            if shp_in is None or shp_out is None or shp_in[-1] != shp_out[-1]:
                break
            if u.op_type == "Add" or u.op_type == "Reshape" and u.input[0] == x:
                x = u.output[0]
            elif u.op_type == "Mul" and any(g.const(i) is not None and g.const(i).size == 1 for i in u.input):
                x = u.output[0]
            else:
                break
        if not ok:
            continue
        # v: the Softmax's output times v, then through Transpose/Reshape/row Gathers into the projection.
        av = g.only_consumer(v)
        if av is None or av.op_type != "MatMul" or av.input[1] != v or av.input[0] != soft.output[0]:
            continue
        if len(g.consumers.get(soft.output[0], [])) != 1:
            continue
        x, proj = av.output[0], None
        while True:
            u = g.only_consumer(x)
            if u is None or u.input[0] != x:
                break
            if u.op_type in ("Transpose", "Reshape") or u.op_type == "Gather" and attr(u, "axis", 0) == 0 and g.const(u.input[1]) is not None:
                x = u.output[0]
                continue
            if u.op_type == "MatMul":
                proj = u
            break
        proj_bias = bias_of(g, g.only_consumer(proj.output[0])) if proj is not None else None
        wp = const_value(g, proj.input[1]) if proj is not None else None
        if proj_bias is None or wp is None or wp.shape[0] != c:
            continue
        padd = g.only_consumer(proj.output[0])
        bp = g.const(proj_bias[1])
        new_bp = (bp.astype(np.float64) + b[2 * c:].astype(np.float64) @ wp.astype(np.float64)).astype(bp.dtype)
        for i, name in enumerate(padd.input):
            if name == proj_bias[1]:
                padd.input[i] = g.add_init("proj_bias", new_bp)
        # q: its bias added before the scale.
        q_biased = g.unique("q_bias")
        qb = g.add_init("q_bias_value", b[:c].reshape(heads, 1, hd))
        for u in g.consumers.get(q, []):
            for i, name in enumerate(u.input):
                if name == q:
                    u.input[i] = q_biased
        q_node = helper.make_node("Add", [q, qb], [q_biased], name=q_biased)
        g.types[q_biased] = g.types.get(q, (None, None))
        insert_after(g, g.producer[q], [q_node])
        # The projection without its bias: the Reshape reads the MatMul.
        for n in g.g.node:
            if n.name == r.name:
                n.input[0] = mb[0]
        g.refresh_links()
        drop_dead(g)
        fired += 1
    return fired


MF = "com.matteflow"
WINDOW_ATTENTION_HEAD_DIMS = (32,)  # head sizes the CUDA kernel is built for (Swin: 32 in every stage)
WINDOW_ATTENTION_MAX_TOKENS = 160   # tokens per window it takes (Swin: 7² = 49, BiRefNet-L 12² = 144)


def _logits_chain(g, start):
    """From the attention logits to the Softmax over their last axis: [(node, input)] through Adds, Muls by a
    scalar constant and Reshapes that keep the last axis, and the Softmax — else None."""
    chain, x = [], start
    while True:
        u = g.only_consumer(x)
        if u is None:
            return None
        if u.op_type == "Softmax":
            return chain, u if attr(u, "axis", -1) in (-1, len(g.static_shape(x) or [0]) - 1) else None
        shp_in, shp_out = g.static_shape(x), g.static_shape(u.output[0])
        if shp_in is None or shp_out is None or shp_in[-1] != shp_out[-1]:
            return None
        scalar = u.op_type == "Mul" and any(i != x and g.const(i) is not None and g.const(i).size == 1 for i in u.input)
        if not (u.op_type == "Add" or scalar or u.op_type == "Reshape" and u.input[0] == x):
            return None
        chain.append((u, x))
        x = u.output[0]


def _replay_bias(g, chain, full4, nodes):
    """What the logits chain adds, as one tensor of shape [Wb, Hb, S, S] (Wb divides the windows, Hb is 1 or the
    heads) built by new nodes appended to `nodes`, and the chain's scale: the chain is a·logits + bias, and
    replaying it on zero logits gives the bias. Constant pieces fold afterwards (`fold` runs again)."""
    t, shape, scale = None, None, 1.0

    def emit(op, ins, out_shape, **kw):
        nonlocal t, shape
        out = g.unique("attn_bias")
        nodes.append(helper.make_node(op, ins, [out], name=out, **kw))
        t, shape = out, list(out_shape)

    for u, x in chain:
        full = g.static_shape(x)
        if u.op_type == "Add":
            other = u.input[1] if u.input[0] == x else u.input[0]
            oshape = g.static_shape(other) or (list(g.const(other).shape) if g.const(other) is not None else None)
            if oshape is None:
                return None
            if t is None:
                t, shape = other, list(oshape)
            else:
                emit("Add", [t, other], np.broadcast_shapes(tuple(shape), tuple(oshape)))
        elif u.op_type == "Mul":
            s = next(g.const(i) for i in u.input if i != x and g.const(i) is not None)
            scale *= float(np.asarray(s).reshape(()))
            if t is not None:
                emit("Mul", [t, next(i for i in u.input if i != x)], shape)
        elif t is not None:  # Reshape: of the whole tensor only
            target = g.static_shape(u.output[0])
            if [1] * (len(full) - len(shape)) + shape != full:
                emit("Expand", [t, g.add_init("attn_full", np.array(full, dtype=np.int64))], full)
            emit("Reshape", [t, g.add_init("attn_shape", np.array(target, dtype=np.int64))], target)
    if t is None:
        return None, scale
    shape = [1] * (4 - len(shape)) + shape if len(shape) <= 4 else shape
    w, heads, s = full4[0], full4[1], full4[2]
    ok = len(shape) == 4 and shape[2:] == [s, s] and w % shape[0] == 0 and shape[1] in (1, heads)
    if not ok:
        if shape != full4:
            emit("Expand", [t, g.add_init("attn_full", np.array(full4, dtype=np.int64))], full4)
    emit("Reshape", [t, g.add_init("attn_shape", np.array(shape if ok else full4, dtype=np.int64))], shape if ok else full4)
    return t, scale


def _bias_terms(g, chain, w, heads, s, nodes):
    """What the logits chain adds, as at most two tensors [Wb, Hb, S, S] that the op indexes by window % Wb and
    head % Hb (Swin's relative-position bias [1, heads, S, S] and shift mask [nW, 1, S, S]) without broadcasting
    either over the other: [(tensor, [Wb, Hb, S, S])] with the reshapes appended to `nodes`, and the chain's
    scale — else None (then `_replay_bias` builds one full tensor). A term added where the logits are
    [W, heads, S, S] maps as it stands; where they are [B, nW, heads, S, S], a term the same for every image
    ([1, nW or 1, heads or 1, S, S]) maps to [nW or 1, heads or 1, S, S]."""
    terms, scale = [], 1.0
    for u, x in chain:
        if u.op_type == "Mul":
            k = float(np.asarray(next(g.const(i) for i in u.input if i != x and g.const(i) is not None)).reshape(()))
            scale *= k
            terms = [(t, shp, m * k) for t, shp, m in terms]
            continue
        if u.op_type != "Add":
            continue
        frame = g.static_shape(x)
        other = u.input[1] if u.input[0] == x else u.input[0]
        oshape = g.static_shape(other) or (list(g.const(other).shape) if g.const(other) is not None else None)
        if frame is None or oshape is None or len(oshape) > len(frame) or frame[-2:] != [s, s] or list(oshape[-2:]) != [s, s]:
            return None
        o = [1] * (len(frame) - len(oshape)) + list(oshape)
        if len(frame) == 4 and frame[:2] == [w, heads] and o[0] in (1, w) and o[1] in (1, heads):
            wb, hb = o[0], o[1]
        elif len(frame) == 5 and frame[0] * frame[1] == w and frame[2] == heads and o[0] == 1 and o[1] in (1, frame[1]) and o[2] in (1, heads):
            wb, hb = o[1], o[2]
        else:
            return None
        terms.append((other, [wb, hb, s, s], 1.0))
    if len(terms) > 2:
        return None
    out = []
    for t, shp, m in terms:
        if m != 1.0:
            k = g.unique("attn_bias")
            nodes.append(helper.make_node("Mul", [t, g.add_init("attn_scale", np.array(m, dtype=np.float32))], [k], name=k))
            t = k
        r = g.unique("attn_bias")
        nodes.append(helper.make_node("Reshape", [t, g.add_init("attn_shape", np.array(shp, dtype=np.int64))], [r], name=r))
        out.append((r, shp))
    return out, scale


def pass_window_attention(g):
    """Swin's window attention → one com.matteflow WindowAttention node (matteflow's own kernel on the CUDA
    provider, tensor cores, one block per window and head; a host version for the CPU): qkv's bias added, q·kᵀ
    scaled, the relative-position bias and shift mask added, softmax, ·v and the heads merged, without writing
    the [windows, heads, S, S] logits or the per-head copies of q, k and v. In ONNX Runtime's graph the same is
    a bias broadcast, a 5-D transpose, a split, two batched GEMMs, a softmax and a transpose per block (issue
    15: ~2 ms of BiRefNet lite's 12, more of general's). The node's output is laid out as the exporter's
    `(attn @ v).transpose(1, 2)`, so what read that reads the new node through a Reshape (free in ONNX
    Runtime). Only matteflow's runtime runs the result (its host operator on the CPU, its kernel on the CUDA provider)."""
    fired = 0
    for t in list(g.g.node):
        if t.op_type != "Transpose" or attr(t, "perm") != [2, 0, 3, 1, 4]:
            continue
        r = g.producer.get(t.input[0])
        if r is None or r.op_type != "Reshape" or getattr(g.only_consumer(r.output[0]), "name", None) != t.name:
            continue
        shape = g.static_shape(r.output[0])
        if shape is None or len(shape) != 5 or shape[2] != 3:
            continue
        w, s, heads, hd = shape[0], shape[1], shape[3], shape[4]
        if hd not in WINDOW_ATTENTION_HEAD_DIMS or s > WINDOW_ATTENTION_MAX_TOKENS:
            continue  # outside what the kernel is built for (src/cuda/attention.cu)
        c = heads * hd
        users = g.consumers.get(t.output[0], [])
        parts = split_parts(g, users[0]) if len(users) == 1 and users[0].op_type == "Split" else [head_part(g, u) for u in users]
        if len(parts) != 3 or any(p is None for p in parts) or sorted(p[0] for p in parts) != [0, 1, 2]:
            continue
        q, k, v = (next(p[1] for p in parts if p[0] == i) for i in range(3))
        # q: through Muls by a scalar into the logits MatMul's left side.
        qscale, x = 1.0, q
        while True:
            u = g.only_consumer(x)
            if u is not None and u.op_type == "Mul" and any(i != x and g.const(i) is not None and g.const(i).size == 1 for i in u.input):
                qscale *= float(np.asarray(next(g.const(i) for i in u.input if i != x and g.const(i) is not None)).reshape(()))
                x = u.output[0]
                continue
            break
        mm = keys_transposed(g, k)
        if mm is None or mm.input[0] != x:
            continue
        kscale, y = 1.0, k
        while y != mm.input[1]:
            u = g.only_consumer(y)
            if u.op_type == "Mul":
                kscale *= float(np.asarray(next(g.const(i) for i in u.input if i != y and g.const(i) is not None)).reshape(()))
            y = u.output[0]
        found = _logits_chain(g, mm.output[0])
        if found is None or found[1] is None:
            continue
        chain, soft = found
        av = g.only_consumer(v)
        if av is None or av.op_type != "MatMul" or av.input[1] != v or av.input[0] != soft.output[0]:
            continue
        if len(g.consumers.get(soft.output[0], [])) != 1:
            continue
        tr = g.only_consumer(av.output[0])
        if tr is None or tr.op_type != "Transpose" or attr(tr, "perm") != [0, 2, 1, 3]:
            continue
        new = []
        split = _bias_terms(g, chain, w, heads, s, new)
        if split is None:
            replayed = _replay_bias(g, chain, [w, heads, s, s], new)
            if replayed is None:
                continue
            bias, lscale = replayed
            split = ([(bias, None)] if bias is not None else [], lscale)
        terms, lscale = split
        # qkv and its bias (an Add of a constant [3C] after the MatMul; it is added inside the kernel).
        qkv, qkv_bias = r.input[0], None
        mb = bias_of(g, g.producer.get(qkv))
        if mb is not None and g.const(mb[1]).shape == (3 * c,) and getattr(g.only_consumer(qkv), "name", None) == r.name:
            qkv, qkv_bias = mb
        # inputs: qkv, bias, qkv's bias, mask (the second bias term)
        ins = [qkv, terms[0][0] if terms else "", qkv_bias or "", terms[1][0] if len(terms) > 1 else ""]
        while not ins[-1]:
            ins.pop()
        out = g.unique("window_attention")
        new.append(helper.make_node("WindowAttention", ins, [out], domain=MF, name=out, heads=heads, head_dim=hd,
                                    tokens=s, scale=qscale * kscale * lscale))
        g.types[out] = (g.elem_type(tr.output[0]), [w, s, c])
        new.append(helper.make_node("Reshape", [out, g.add_init("attn_out_shape", np.array([w, s, heads, hd], dtype=np.int64))],
                                    [tr.output[0]], name=g.unique("attn_out")))
        gone = [r, t, tr, av, soft, mm] + [u for u, _ in chain] + users
        replace_nodes(g, [n for n in g.g.node if n.name in {x.name for x in gone}], new)
        g.g.value_info.append(helper.make_tensor_value_info(out, g.elem_type(tr.output[0]), [w, s, c]))
        g.refresh_links()
        drop_dead(g)
        fired += 1
    if fired and not any(o.domain == MF for o in g.model.opset_import):
        g.model.opset_import.append(helper.make_opsetid(MF, 1))  # shape inference skips the op, keeps its shape
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
    "fold": pass_fold,
    "window-gather": pass_window_gather,
    "head-gather": pass_head_gather,
    "gather-linear": pass_gather_linear,
    "qkv-bias": pass_qkv_bias,
    "window-pad": pass_window_pad,
    "bias-gelu": pass_bias_gelu,
    "conv-bn": pass_conv_bn,
    "skip-layernorm": pass_skip_layernorm,
    "window-attention": pass_window_attention,
    "deform-im2col": pass_deform_im2col,
}
DEFAULT_PASSES = ["fold", "window-gather", "gather-linear", "qkv-bias", "window-pad", "bias-gelu", "skip-layernorm", "conv-bn"]
# With --fp16 (the GPU form): matteflow's own operators too (window-attention before qkv-bias takes the qkv bias
# apart, `fold` again after for the bias it replays; deform-im2col after conv-bn). Their CUDA kernels are
# checked on a GPU against the host operators (`matteflow gpu-check`), the prepared masks against the fp32
# original (scripts/gpu-bench.sh wa); the fp32 form keeps ONNX operators only.
DEFAULT_FP16_PASSES = ["fold", "window-gather", "gather-linear", "window-attention", "qkv-bias", "window-pad", "bias-gelu",
                       "skip-layernorm", "conv-bn", "deform-im2col", "fold"]


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
    global FOLD_LIMIT
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--passes", default=None,
                    help=f"comma-separated, in order (known: {', '.join(PASSES)}; 'none' for none; default "
                         f"{','.join(DEFAULT_PASSES)}, with --fp16 {','.join(DEFAULT_FP16_PASSES)})")
    ap.add_argument("--fp16", action="store_true", help="convert to float16 after the passes (fp32 input/output)")
    ap.add_argument("--keep-fp32", default="", help="with --fp16: ops kept in float32 (comma-separated, e.g. DeformConv)")
    ap.add_argument("--report", help="write the report as JSON here")
    ap.add_argument("--fold-limit", type=int, default=FOLD_LIMIT,
                    help="fold: the largest constant (elements) written into the file; larger ones stay computed")
    a = ap.parse_args()
    FOLD_LIMIT = a.fold_limit
    t0 = time.time()
    model = onnx.load(a.input)
    before = op_counts(model)
    if a.passes is None:
        a.passes = ",".join(DEFAULT_FP16_PASSES if a.fp16 else DEFAULT_PASSES)
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
    for dom in (MS, MF):
        if any(n.domain == dom for n in g.g.node) and not any(o.domain == dom for o in g.model.opset_import):
            g.model.opset_import.append(helper.make_opsetid(dom, 1))
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
