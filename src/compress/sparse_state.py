"""Sparse matrices stored sparse in saved files: a bitmask of the kept entries and their values, loaded back identical.

:func:`sparse_state` rewrites a state dict for ``torch.save``: every tensor of two or more dimensions that is
cheaper so (mostly zeros: a pruned matrix) becomes an entry ``{"format": FORMAT, "shape", "bits", "values", ...}``:

* ``bits``: one bit per element, packed eight to a ``uint8`` (row-major, the first element in the highest bit);
* ``values``: the kept elements in row-major order, in the tensor's own dtype (float32, or int8 for the rounded
  rows of :mod:`compress.quantize`); a quantized tensor (a dynamic int8 Linear's packed weight) keeps its integer
  values and its scale(s) and zero point(s), so it comes back bit for bit;
* the kept entries are the tensor's pruning mask when one is stored next to it (``<param>_mask``, ``bool``, zero
  wherever it drops): the mask then travels as these bits and is restored by :func:`dense_state`. Else the
  nonzero entries (a quantized tensor's: the ones off its zero point).

A bitmask costs ``numel / 8`` bytes, so a matrix is stored sparse once fewer than ``7/8`` of its int8 values
(``31/32`` of its float32 values) are kept; at 80% sparsity an int8 matrix takes ``0.125 + 0.2`` of its dense
bytes. (CSR would take ``0.2 * (1 + 1)`` or more: :mod:`compress.storage` counts both for the size reports.)
:func:`save_sparse` / :func:`load_sparse` write and read a float model in this form.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from common.atomic import save_atomic
from common.errors import KnownError

FORMAT = "shrinkml-bitmask/1"
FILE_FORMAT = "shrinkml-sparse/1"
MASK_SUFFIX = "_mask"  # compress.prune.MASK_SUFFIX (not imported: prune's module is heavier than this one)
INT8_SUFFIX = ".int8"  # compress.quantize's int8 rows: the mask of "<key>.int8" is "<key>_mask"
_SHIFTS = torch.arange(7, -1, -1, dtype=torch.uint8)


class SparseFileError(KnownError, ValueError):
    """A sparse model file that is damaged or not one."""


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A ``bool`` tensor as ``ceil(numel / 8)`` ``uint8`` bytes, row-major, the first element in the highest bit."""
    flat = mask.reshape(-1).to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)]).reshape(-1, 8)
    return (flat << _SHIFTS).sum(dim=1, dtype=torch.uint8)


def unpack_bits(bits: torch.Tensor, numel: int) -> torch.Tensor:
    """The ``bool`` vector of ``numel`` elements :func:`pack_bits` packed into ``bits``."""
    return ((bits[:, None] >> _SHIFTS) & 1).reshape(-1)[:numel].bool()


def _plain(tensor: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """A quantized tensor's integer values and what rebuilds it; a plain tensor and ``{}``."""
    if not tensor.is_quantized:
        return tensor, {}
    if tensor.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return tensor.int_repr(), {"qscheme": "per_tensor", "scale": tensor.q_scale(),
                                   "zero_point": tensor.q_zero_point(), "dtype": tensor.dtype}
    return tensor.int_repr(), {"qscheme": "per_channel", "scale": tensor.q_per_channel_scales(),
                               "zero_point": tensor.q_per_channel_zero_points(),
                               "axis": tensor.q_per_channel_axis(), "dtype": tensor.dtype}


def _requantize(values: torch.Tensor, entry: Mapping) -> torch.Tensor:
    if entry.get("qscheme") == "per_tensor":
        return torch._make_per_tensor_quantized_tensor(values, entry["scale"], entry["zero_point"])
    if entry.get("qscheme") == "per_channel":
        return torch._make_per_channel_quantized_tensor(values, entry["scale"], entry["zero_point"], entry["axis"])
    return values


def encode(tensor: torch.Tensor, mask: torch.Tensor | None = None) -> dict | None:
    """``tensor`` (two or more dimensions) as a bitmask entry of its kept entries (``mask``, or its nonzeros), or
    None when that is not smaller than dense (or ``mask`` drops a nonzero value)."""
    if not isinstance(tensor, torch.Tensor) or tensor.dim() < 2 or tensor.layout != torch.strided:
        return None
    plain, quantization = _plain(tensor.detach().cpu())
    fill = int(quantization.get("zero_point", 0)) if quantization.get("qscheme") == "per_tensor" else 0
    if quantization.get("qscheme") == "per_channel" and bool((quantization["zero_point"] != 0).any()):
        return None
    kept = plain != fill if mask is None else mask.detach().cpu().bool()
    if kept.shape != plain.shape or bool((plain[~kept] != fill).any()):
        return None
    nnz, numel = int(kept.sum()), plain.numel()
    if (numel + 7) // 8 + nnz * plain.element_size() >= numel * plain.element_size():
        return None
    return {"format": FORMAT, "shape": list(plain.shape), "bits": pack_bits(kept), "values": plain[kept].clone(),
            "fill": fill, "mask": mask is not None, **quantization}


def decode(entry: Mapping) -> tuple[torch.Tensor, torch.Tensor]:
    """The tensor :func:`encode` stored, and the ``bool`` mask of its kept entries."""
    shape = torch.Size(entry["shape"])
    kept = unpack_bits(entry["bits"], shape.numel()).reshape(shape)
    values = entry["values"]
    tensor = torch.full(shape, entry["fill"], dtype=values.dtype)
    tensor[kept] = values
    return _requantize(tensor, entry), kept


def is_encoded(value: object) -> bool:
    return isinstance(value, Mapping) and value.get("format") == FORMAT


def _mask_key(key: str) -> str:
    return (key[: -len(INT8_SUFFIX)] if key.endswith(INT8_SUFFIX) else key) + MASK_SUFFIX


def sparse_state(state: Mapping[str, object]) -> OrderedDict:
    """``state`` with every sparse tensor (also the weight inside a tuple of packed parameters) as a bitmask entry,
    and the ``<param>_mask`` buffers those entries carry left out (:func:`dense_state` restores both)."""
    out: dict[str, object] = {}
    carried = set()
    for key, value in state.items():
        if isinstance(value, tuple):
            out[key] = tuple(encode(v) or v for v in value)
            continue
        mask = state.get(_mask_key(key)) if not key.endswith(MASK_SUFFIX) else None
        usable = isinstance(mask, torch.Tensor) and mask.dtype == torch.bool
        entry = encode(value, mask if usable else None) if isinstance(value, torch.Tensor) else None
        if entry is None and usable:
            entry = encode(value)
        elif entry is not None and usable:
            carried.add(_mask_key(key))
        out[key] = value if entry is None else entry
    sparse = OrderedDict((k, v) for k, v in out.items() if k not in carried)
    sparse._metadata = getattr(state, "_metadata", None)  # module versions: some loaders read them
    return sparse


def dense_state(state: Mapping[str, object]) -> OrderedDict:
    """The state dict :func:`sparse_state` was given (its ``_metadata`` kept), every tensor dense again."""
    out = OrderedDict()
    for key, value in state.items():
        if isinstance(value, tuple):
            out[key] = tuple(decode(v)[0] if is_encoded(v) else v for v in value)
        elif is_encoded(value):
            out[key], kept = decode(value)
            if value["mask"]:
                out[_mask_key(key)] = kept
        else:
            out[key] = value
    out._metadata = getattr(state, "_metadata", None)  # module versions: some loaders read them
    return out


def save_sparse(path: str | Path, model: nn.Module, **extra) -> float:
    """Write ``model``'s state dict with its sparse tensors stored sparse (and ``extra`` entries, e.g. how to build
    the model) atomically; returns the file's size in MB (2^20 bytes)."""
    stored = {"format": FILE_FORMAT, "state_dict": sparse_state(model.state_dict()), **extra}
    return save_atomic(path, lambda tmp: torch.save(stored, tmp)).stat().st_size / 2**20


def read_model_file(path: str | Path, file_format: str, what: str, error: type[Exception], make: str, again: str
                    ) -> dict:
    """The entries of the model file ``path`` of format ``file_format`` (a ``what``, e.g. "int8 model"). A missing
    file raises ``FileNotFoundError`` ending in ``make`` (how to write one); an unreadable one ``error`` ending in
    ``again``; a file of another format ``error`` naming the expected one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found; {make}")
    try:
        stored = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise error(f"{what} {path} is damaged ({type(err).__name__}: {err}); {again}") from err
    if not isinstance(stored, dict) or stored.get("format") != file_format:
        raise error(f"{path} is not {'an' if what[0] in 'aeiou' else 'a'} {what} file (expected format "
                    f"{file_format!r})")
    return stored


def load_sparse(path: str | Path, build: Callable[[dict], nn.Module]) -> tuple[nn.Module, dict]:
    """Read a :func:`save_sparse` file: ``build(file)`` makes the model of the right structure (its compression
    restored, e.g. the low-rank parametrizations and mask buffers), which then loads the stored state. Returns the
    model and the file's entries."""
    stored = read_model_file(path, FILE_FORMAT, "sparse model", SparseFileError,
                             "write it with compress.sparse_state.save_sparse", "write it again")
    model = build(stored)
    model.load_state_dict(dense_state(stored["state_dict"]))
    return model, stored
