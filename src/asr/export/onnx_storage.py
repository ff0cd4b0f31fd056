"""Smaller ONNX files with the same graph: pruned weights stored sparse, 8-bit weights stored as int8.

:func:`compact` rewrites an exported ONNX file's float initializers

* with so many zeros that values and their int64 flat indices take fewer bytes than the dense tensor (above 2/3
  zeros in float32, 8/9 in int8) as ONNX ``sparse_initializer`` s (ONNX Runtime makes them dense when it loads
  the model): a pruned model's file holds its nonzeros only;
* that lie exactly on a symmetric 8-bit grid per slice along one axis (an int8 model's weights, e.g.
  ``scripts/quantize.py``'s ``weight_only`` rounding) as int8 tensors with one float scale per slice and a
  ``DequantizeLinear`` node that restores the float weight the graph reads (ONNX Runtime folds it at load).

The values the graph computes with are unchanged bit for bit; what changes is the file.
"""

from __future__ import annotations

import numpy as np

MIN_ELEMENTS = 256  # smaller tensors stay as they are


def int8_grid(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, int] | None:
    """``(q int8, scale float32, axis)`` with ``weight == q * scale`` (scale broadcast along ``axis``) exactly, for the
    first axis where ``weight`` is a symmetric 8-bit grid per slice (largest magnitude 127 steps); None if none is."""
    for axis in range(weight.ndim):
        if weight.shape[axis] == 1 or weight.size // weight.shape[axis] < 16:
            continue  # slices of fewer than 16 values: a scale per few values saves nothing
        others = tuple(d for d in range(weight.ndim) if d != axis)
        amax = np.abs(weight).max(axis=others, keepdims=True).astype(np.float32)
        scale = np.where(amax > 0, amax / np.float32(127.0), np.float32(1.0)).astype(np.float32)
        with np.errstate(invalid="ignore", over="ignore"):  # inf/nan weights: not a grid
            q = np.clip(np.round(weight / scale), -127, 127)
        if np.array_equal((q * scale).astype(np.float32), weight):
            return q.astype(np.int8), scale.reshape(-1), axis
    return None


def compact(path: str, int8: bool = True, sparse: bool = True) -> dict[str, int]:
    """Rewrite the ONNX file ``path`` in place (atomically) as the module docstring says; returns how many
    initializers went ``sparse`` and ``int8``, and the file's ``bytes_before`` and ``bytes_after``."""
    import os

    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(path)
    graph = model.graph
    stats = {"sparse": 0, "int8": 0, "bytes_before": os.path.getsize(path)}
    keep, new_nodes = [], []
    for init in graph.initializer:
        weight = numpy_helper.to_array(init)
        if weight.dtype != np.float32 or weight.size < MIN_ELEMENTS:
            keep.append(init)
            continue
        grid = int8_grid(weight) if int8 else None
        stored, name = (weight, init.name) if grid is None else (grid[0], f"{init.name}_int8")
        nonzero = np.flatnonzero(weight.reshape(-1)).astype(np.int64)
        # bytes: dense = size * itemsize; sparse = nonzeros * (itemsize + 8 for an int64 index)
        if sparse and nonzero.size * (stored.itemsize + 8) < weight.size * stored.itemsize:
            values = numpy_helper.from_array(stored.reshape(-1)[nonzero], name)
            indices = numpy_helper.from_array(nonzero, f"{init.name}_indices")
            graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, list(weight.shape)))
            stats["sparse"] += 1
        elif grid is not None:
            keep.append(numpy_helper.from_array(stored, name))
        else:
            keep.append(init)
        if grid is not None:
            scale = numpy_helper.from_array(grid[1], f"{init.name}_scale")
            keep.append(scale)
            new_nodes.append(helper.make_node("DequantizeLinear", [name, scale.name], [init.name], axis=grid[2],
                                              name=f"{init.name}_dequantize"))
            stats["int8"] += 1
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + nodes)  # the dequantized weights exist before any node reads them
    tmp = f"{path}.tmp"
    onnx.save(model, tmp)
    os.replace(tmp, path)
    stats["bytes_after"] = os.path.getsize(path)
    return stats
