"""What a checkpoint holds, target by target: shape, rank, nonzeros and the bytes it would ship in.

Reads any file this project writes with a model in it: a training checkpoint (baseline, retrained
low-rank, pruned) or an int8 model of the quantize stage (weight-only or dynamic int8 Linears). The
model's structure is built from the file's hyper-parameters (no weights are loaded into it, so a
pruned checkpoint's ``<param>_mask`` buffers or a compression record this code does not restore do
not matter); each state-dict tensor is then matched to its target by that structure
(:func:`compress.storage.target_tensors`) and sized (:mod:`compress.storage`). Sparsity is read from
the zeros in the weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from asr.checkpoint import CheckpointError, read_checkpoint
from asr.module import AsrModule
from compress.checkpoint import SCHEME_KEY
from compress.prune import PRUNE_KEY
from compress.quantize import FORMAT as INT8_FORMAT
from compress.quantize import dequantize_rows
from compress.sparse_state import dense_state
from compress.storage import BLOCKS, StorageReport, TensorStorage, state_storage, target_tensors

INT8_SUFFIX, SCALE_SUFFIX = ".int8", ".int8_scale"
PACKED_SUFFIX = "._packed_params._packed_params"  # a dynamic int8 Linear's (weight, bias)
RECORD_KEYS = ("method", "pattern", "block", "sparsity")  # shown from the pruning record


def float_state(state: Mapping) -> dict[str, torch.Tensor]:
    """``state`` with int8 entries back in float under their parameter's key: weight-only rows
    (``<key>.int8`` and ``<key>.int8_scale``) and dynamic int8 Linears' packed weights and biases; the
    other non-tensor entries are dropped. Matrices the file stores as a bitmask come back dense first."""
    state = dense_state(state)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(SCALE_SUFFIX):
            continue
        if key.endswith(INT8_SUFFIX):
            name = key[: -len(INT8_SUFFIX)]
            out[name] = dequantize_rows(value, state[name + SCALE_SUFFIX])
        elif key.endswith(PACKED_SUFFIX) and isinstance(value, tuple):
            prefix = key[: -len(PACKED_SUFFIX)]
            weight, bias = value[0], value[1] if len(value) > 1 else None
            out[f"{prefix}.weight"] = weight.dequantize() if weight.is_quantized else weight
            if bias is not None:
                out[f"{prefix}.bias"] = bias
        elif key.endswith((".scale", ".zero_point")) and f"{key.rsplit('.', 1)[0]}{PACKED_SUFFIX}" in state:
            continue  # the dynamic Linear's output quantization parameters: not weights
        elif isinstance(value, torch.Tensor):
            out[key] = value
    return out


def _target_row(name: str, tensors: list[TensorStorage]) -> dict:
    roles = {t.target.role: t for t in tensors}
    if "U" in roles and "V" in roles:
        shape, rank = [roles["U"].shape[0], roles["V"].shape[1]], roles["U"].shape[1]
    else:
        shape, rank = list(tensors[0].shape), "full"
    params, nonzeros = sum(t.numel for t in tensors), sum(t.nonzeros for t in tensors)
    return {"target": name, "kind": tensors[0].target.kind, "shape": shape, "rank": rank, "params": params,
            "nonzeros": nonzeros, "sparsity": round(1.0 - nonzeros / params, 4) if params else 0.0,
            "bytes_dense": sum(t.dense_bytes for t in tensors), "bytes_sparse": sum(t.sparse_bytes for t in tensors),
            "bytes_int8": sum(t.int8_bytes for t in tensors),
            "format_sparse": "+".join(dict.fromkeys(t.sparse_format for t in tensors)),
            "format_int8": "+".join(dict.fromkeys(t.int8_format for t in tensors)),
            "tensors": [t.key for t in tensors]}


def _record(checkpoint: Mapping) -> dict:
    """What the compression records say: the pruning record's method, pattern, block and sparsity
    (:data:`PRUNE_KEY`, docs/pruning.md) and the low-rank scheme's provenance (:data:`SCHEME_KEY`)."""
    out = {}
    pruning = checkpoint.get(PRUNE_KEY)
    if isinstance(pruning, Mapping):
        out.update({k: pruning[k] for k in RECORD_KEYS if k in pruning})
    record = checkpoint.get(SCHEME_KEY)
    scheme = record.get("scheme") if isinstance(record, Mapping) else None
    if isinstance(scheme, Mapping) and "provenance" in scheme:
        out["provenance"] = scheme["provenance"]
    return out


def _blocks(record: Mapping) -> tuple[tuple[int, int], ...]:
    """The default block shapes, and the record's own blocks where it names them (``[rows, columns]``: the
    record's one ``block``, and each target's, which a scheme may give in different shapes)."""
    targets = record.get("targets")
    entries = targets.values() if isinstance(targets, Mapping) else ()
    named = [record.get("block"), *(e.get("block") for e in entries if isinstance(e, Mapping))]
    own = [(b[0], b[1]) for b in named
           if isinstance(b, list | tuple) and len(b) == 2 and all(isinstance(x, int) and x > 0 for x in b)]
    return tuple(dict.fromkeys((*BLOCKS, *own)))


def inspect_checkpoint(path: str | Path) -> dict:
    """``{"file", "format", "compression", "targets": [row per target], "totals": {...}}`` of the model in ``path``.

    A target row: ``target``, ``kind`` (``lstm``/``linear``), ``shape`` (the ``m x n`` matrix it stands
    for), ``rank`` (``"full"``, or ``k`` when factorized), ``params`` and ``nonzeros`` (over its stored
    tensors), ``sparsity``, ``bytes_dense`` (float32), ``bytes_sparse`` (float32, cheapest format),
    ``bytes_int8`` (int8 values and row scales, cheapest format) and the formats chosen. Totals cover every
    tensor (non-targets dense), the targets alone, and the ``<param>_mask`` bytes that are not shipped.
    Raises ``FileNotFoundError``/:class:`asr.checkpoint.CheckpointError` naming the file.
    """
    path = Path(path)
    try:
        checkpoint = read_checkpoint(path)
    except (CheckpointError, FileNotFoundError):
        raise
    except Exception as err:  # noqa: BLE001 - torch.load of a file that is no pickle raises many kinds
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); it is damaged or not "
                              "a PyTorch checkpoint") from err
    try:
        module = AsrModule(**checkpoint["hyper_parameters"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} describes a model this code cannot build ({err}); inspect it with "
                              "the version that wrote it") from err
    int8 = checkpoint.get("format") == INT8_FORMAT
    state = float_state(checkpoint["state_dict"])
    structure = module if any(key.startswith("model.") for key in state) else module.model
    targets = target_tensors(structure, state)
    if not targets:
        raise CheckpointError(f"checkpoint {path}: no LSTM kernel or Linear weight of the model it describes is in "
                              "its state_dict; it is not a model this code wrote")
    record = _record(checkpoint)
    report: StorageReport = state_storage(state, targets, _blocks(record))
    rows = [_target_row(name, tensors) for name, tensors in report.targets().items()]
    target_params = sum(r["params"] for r in rows)
    totals = {"params": report.params, "nonzeros": report.nonzeros,
              "bytes_dense": report.dense_bytes, "bytes_sparse": report.sparse_bytes, "bytes_int8": report.int8_bytes,
              "target_params": target_params, "target_nonzeros": sum(r["nonzeros"] for r in rows),
              "target_sparsity": round(1.0 - sum(r["nonzeros"] for r in rows) / target_params, 4),
              "mask_bytes": report.mask_bytes}
    return {"file": str(path), "format": "int8 (" + checkpoint.get("linear", "dynamic") + ")" if int8 else "checkpoint",
            "compression": record, "targets": rows, "totals": totals}


def _kb(n: int) -> str:
    return f"{n / 1024:,.1f}"


def format_table(result: dict) -> str:
    """The result of :func:`inspect_checkpoint` as a text table (bytes in KiB)."""
    header = ("target", "kind", "shape", "rank", "params", "nonzeros", "sparsity", "dense KiB", "sparse KiB",
              "int8 KiB", "format (sparse / int8)")
    lines = [[r["target"], r["kind"], "x".join(map(str, r["shape"])), str(r["rank"]), f"{r['params']:,}",
              f"{r['nonzeros']:,}", f"{r['sparsity']:.1%}", _kb(r["bytes_dense"]), _kb(r["bytes_sparse"]),
              _kb(r["bytes_int8"]), f"{r['format_sparse']} / {r['format_int8']}"] for r in result["targets"]]
    t = result["totals"]
    lines.append(["targets", "", "", "", f"{t['target_params']:,}", f"{t['target_nonzeros']:,}",
                  f"{t['target_sparsity']:.1%}", "", "", "", ""])
    lines.append(["model (non-targets dense)", "", "", "", f"{t['params']:,}", f"{t['nonzeros']:,}",
                  f"{1 - t['nonzeros'] / t['params']:.1%}" if t["params"] else "", _kb(t["bytes_dense"]),
                  _kb(t["bytes_sparse"]), _kb(t["bytes_int8"]), ""])
    widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]
    right = {4, 5, 6, 7, 8, 9}

    def render(row) -> str:
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

    compression = ", ".join(f"{k} {v}" for k, v in result["compression"].items()) or "none recorded"
    out = [f"{result['file']} ({result['format']}; compression: {compression})", render(header),
           render(["-" * w for w in widths])]
    out += [render(row) for row in lines[:-2]] + [render(["-" * w for w in widths])] + [render(r) for r in lines[-2:]]
    if t["mask_bytes"]:
        out.append(f"masks in the file, not shipped: {_kb(t['mask_bytes'])} KiB")
    return "\n".join(out)
