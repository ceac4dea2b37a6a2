#!/usr/bin/env python3
"""Re-saves an ONNX model whose batch is fixed at 1 with a symbolic batch dimension ("batch") on its inputs and
outputs, so that `--batch N` runs N frames a call. Only for graphs that compute their shapes at run time (IS-Net
does: no Reshape fixes its batch); check the masks at batch N against batch 1 afterwards (`matteflow convert
--batch N -k mask`, then scripts/compare-masks.py).

    PYTHONPATH=.deps/py python3 scripts/dynamic-batch.py .deps/models/isnet-medium.onnx /tmp/isnet-dyn.onnx
"""
import sys

import onnx

if len(sys.argv) != 3:
    sys.exit(__doc__)
model = onnx.load(sys.argv[1])
graph = model.graph
fixed = [n.name for n in graph.node if n.op_type == "Reshape"]
if fixed:
    sys.exit(f"{sys.argv[1]}: {len(fixed)} Reshape nodes may fix the batch ({fixed[0]}, …): not changed")
for v in list(graph.input) + list(graph.output):
    dims = v.type.tensor_type.shape.dim
    if not dims or dims[0].dim_value not in (0, 1):
        sys.exit(f"{sys.argv[1]}: {v.name}'s first dimension is not a batch of 1: not changed")
    dims[0].ClearField("dim_value")
    dims[0].dim_param = "batch"
del graph.value_info[:]  # inferred shapes with a batch of 1 would contradict the new inputs
onnx.save(model, sys.argv[2])
print(f"{sys.argv[2]}: inputs and outputs take any batch")
