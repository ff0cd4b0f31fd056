"""Bytes of a model as it would ship, with its sparse (pruned) targets stored sparse.

A pruned target holds exact zeros where it was pruned; this module reads sparsity from those zeros
only (no mask, no record needed). Per target tensor -- an LSTM concatenated kernel, an ``nn.Linear``
weight, a convolution's (as its ``out x (in * kernel elements)`` matrix), an ``nn.LSTM`` or attention weight, or a
factor of a low-rank one (:func:`target_tensors`) -- the stored size is the cheapest of:

* ``dense``: every entry;
* ``csr``: the nonzero values, one column index each and ``rows + 1`` row pointers;
* ``bitmask``: the nonzero values and one bit per entry;
* ``bsr<h>x<w>`` / ``bitmask<h>x<w>``: the same by ``h x w`` blocks (the values of every block holding a
  nonzero, zeros inside it included; one column index or one bit per block): cheaper only when the zeros
  form blocks, as structured pruning leaves them.

Indices are unsigned integers of the narrowest width that holds them (:func:`index_width`: 1, 2 or 4
bytes): column indices up to the number of (block) columns, row pointers up to the number of stored
values (blocks). Values are 4 bytes (float32) for the ``sparse`` size and 1 byte (int8) for the
``int8`` size, which adds one float32 scale per row as ``make quantize`` stores it
(:func:`compress.quantize.quantize_rows`) and counts the zeros of the rounded values (rounding makes
more). Everything that is not a target (biases, norms, embeddings) ships dense in its own dtype.
``<param>_mask`` buffers restate the zeros of their parameter and are not shipped (counted apart).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from compress.quantize import quantize_rows
from compress.targets import is_conv_target, is_lstm_kernel_module, weight_attributes

FLOAT_BYTES, INT8_BYTES, SCALE_BYTES = 4, 1, 4
BLOCKS = ((1, 4), (4, 1))  # block shapes tried by default (rows x columns)
MASK_SUFFIX = "_mask"

# where a target's tensors live below its module: key remainder -> role
LINEAR_ROLES = {"weight": "dense", "first.weight": "V", "second.weight": "U"}
LSTM_ROLES = {"kernel": "dense", "parametrizations.kernel.original0": "U", "parametrizations.kernel.original1": "V"}


def index_width(largest: int) -> int:
    """Bytes of the narrowest unsigned integer holding values up to ``largest``: 1 (uint8), 2 (uint16), 4."""
    if largest < 0:
        raise ValueError(f"index_width: negative value {largest}")
    return 1 if largest <= 0xFF else 2 if largest <= 0xFFFF else 4


@dataclass(frozen=True)
class TargetTensor:
    """A state-dict tensor that belongs to a target: ``target`` (its name), ``kind`` (``linear``, ``conv``, ``lstm``
    or ``weight``) and ``role`` (``dense``, or ``U``/``V`` of a low-rank factorization)."""

    target: str
    kind: str
    role: str


def _is_linear_target(module: nn.Module) -> bool:
    """An ``nn.Linear``, or a two-stage low-rank linear (``first`` and ``second`` ``nn.Linear`` children)."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(getattr(module, "first", None), nn.Linear) and isinstance(getattr(module, "second", None),
                                                                                nn.Linear)


def _is_conv_target(module: nn.Module) -> bool:
    """A convolution target, or a two-stage low-rank convolution (``first`` and ``second`` convolutions)."""
    return is_conv_target(module) or (is_conv_target(getattr(module, "first", None))
                                      and is_conv_target(getattr(module, "second", None)))


def _weight_role(rest: str, attributes: Sequence[str]) -> tuple[str, str] | None:
    """``(attribute, role)`` when ``rest`` (a state-dict key below a module) is one of its ``weight`` targets
    ``attributes`` (dense) or a factor of one (``parametrizations.<attribute>.original0/1``: ``U``/``V``)."""
    for attribute in attributes:
        if rest == attribute:
            return attribute, "dense"
        for index, role in (("0", "U"), ("1", "V")):
            if rest == f"parametrizations.{attribute}.original{index}":
                return attribute, role
    return None


def target_tensors(model: nn.Module, keys: Iterable[str] | None = None) -> dict[str, TargetTensor]:
    """The target tensors among ``keys`` (default: ``model.state_dict()``'s), by module structure.

    ``model`` may be the dense structure of a compressed state dict (the nearest module that is a target
    claims ``first.weight``/``second.weight`` and ``parametrizations.kernel.original0/1`` below it) or the
    compressed model itself; a low-rank linear's halves belong to it, not to themselves.
    """
    modules = dict(model.named_modules())
    found = {}
    for key in model.state_dict() if keys is None else keys:
        parts = key.split(".")
        for i in range(len(parts)):
            name, rest = ".".join(parts[:i]), ".".join(parts[i:])
            module = modules.get(name)
            if module is None:
                break
            parent = modules.get(name.rpartition(".")[0]) if name else None
            role = _weight_role(rest, weight_attributes(module, parent))
            if role is not None:  # nn.LSTM's, nn.MultiheadAttention's weights: the target is module.attribute
                found[key] = TargetTensor(f"{name}.{role[0]}" if name else role[0], "weight", role[1])
                break
            if _is_linear_target(module) and rest in LINEAR_ROLES:
                found[key] = TargetTensor(name, "linear", LINEAR_ROLES[rest])
                break
            if _is_conv_target(module) and rest in LINEAR_ROLES:
                found[key] = TargetTensor(name, "conv", LINEAR_ROLES[rest])
                break
            if is_lstm_kernel_module(module) and rest in LSTM_ROLES:
                found[key] = TargetTensor(name, "lstm", LSTM_ROLES[rest])
                break
    return found


def _formats(matrix: torch.Tensor, value_bytes: int, blocks: Sequence[tuple[int, int]]) -> dict[str, int]:
    """Bytes of ``matrix`` ``(m, n)`` in every format that applies, with ``value_bytes`` per stored value."""
    m, n = matrix.shape
    nonzero = matrix != 0
    nnz = int(nonzero.sum())
    out = {"dense": m * n * value_bytes,
           "csr": nnz * value_bytes + nnz * index_width(max(n - 1, 0)) + (m + 1) * index_width(nnz),
           "bitmask": nnz * value_bytes + math.ceil(m * n / 8)}
    for bh, bw in blocks:
        if m % bh or n % bw or (bh, bw) == (1, 1):
            continue
        rows, cols = m // bh, n // bw
        count = int(nonzero.reshape(rows, bh, cols, bw).any(dim=3).any(dim=1).sum())
        values = count * bh * bw * value_bytes
        out[f"bsr{bh}x{bw}"] = values + count * index_width(max(cols - 1, 0)) + (rows + 1) * index_width(count)
        out[f"bitmask{bh}x{bw}"] = values + math.ceil(rows * cols / 8)
    return out


def _cheapest(formats: Mapping[str, int]) -> tuple[str, int]:
    name = min(formats, key=lambda k: (formats[k], k != "dense"))  # a tie keeps the simplest: dense
    return name, formats[name]


@dataclass(frozen=True)
class TensorStorage:
    """One state-dict tensor: its entries and nonzeros, and its bytes dense (float32 for a float tensor,
    else its own dtype), in the cheapest fp32 format (``sparse``) and the cheapest int8 format (``int8``:
    targets only; other tensors ship as they are)."""

    key: str
    shape: tuple[int, ...]
    numel: int
    nonzeros: int
    dense_bytes: int
    sparse_bytes: int
    sparse_format: str
    int8_bytes: int
    int8_format: str
    int8_nonzeros: int
    target: TargetTensor | None = None

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.numel if self.numel else 0.0


def tensor_storage(key: str, tensor: torch.Tensor, target: TargetTensor | None = None,
                   blocks: Sequence[tuple[int, int]] = BLOCKS) -> TensorStorage:
    """The :class:`TensorStorage` of ``tensor``; only a 2-D float ``target`` tensor is stored sparse or int8."""
    tensor = tensor.detach().cpu()
    if target is not None and tensor.dim() > 2:  # a convolution's weight: its (out, in * kernel elements) matrix
        tensor = tensor.flatten(1)
    numel, nonzeros = tensor.numel(), int((tensor != 0).sum())
    floating = tensor.is_floating_point()
    dense = numel * (FLOAT_BYTES if floating else tensor.element_size())
    if target is None or not floating or tensor.dim() != 2:
        return TensorStorage(key, tuple(tensor.shape), numel, nonzeros, dense, dense, "dense", dense, "dense", nonzeros,
                             target)
    sparse_format, sparse = _cheapest(_formats(tensor, FLOAT_BYTES, blocks))
    q, _ = quantize_rows(tensor.float())
    int8_format, int8 = _cheapest(_formats(q, INT8_BYTES, blocks))
    return TensorStorage(key, tuple(tensor.shape), numel, nonzeros, dense, sparse, sparse_format,
                         int8 + tensor.shape[0] * SCALE_BYTES, int8_format, int(q.count_nonzero()), target)


@dataclass
class StorageReport:
    """Every shipped tensor of a state dict (:func:`state_storage`), and the masks left out."""

    tensors: list[TensorStorage] = field(default_factory=list)
    mask_bytes: int = 0

    def _sum(self, attribute: str, targets_only: bool = False) -> int:
        return sum(getattr(t, attribute) for t in self.tensors if t.target is not None or not targets_only)

    @property
    def dense_bytes(self) -> int:
        return self._sum("dense_bytes")

    @property
    def sparse_bytes(self) -> int:
        return self._sum("sparse_bytes")

    @property
    def int8_bytes(self) -> int:
        return self._sum("int8_bytes")

    @property
    def params(self) -> int:
        return self._sum("numel")

    @property
    def nonzeros(self) -> int:
        return self._sum("nonzeros")

    def targets(self) -> dict[str, list[TensorStorage]]:
        """The target tensors grouped by target, in state-dict order."""
        grouped: dict[str, list[TensorStorage]] = {}
        for t in self.tensors:
            if t.target is not None:
                grouped.setdefault(t.target.target, []).append(t)
        return grouped

    def summary(self) -> dict[str, int | float]:
        """The summary keys every stage logs: ``bytes/dense`` (float32), ``bytes/sparse`` (targets in their
        cheapest format), ``bytes/sparse_int8`` (targets int8 in their cheapest format), ``params/nonzero``
        (all tensors), ``sparsity/targets`` (share of zeros over the target tensors)."""
        target_numel = self._sum("numel", targets_only=True)
        target_zeros = target_numel - self._sum("nonzeros", targets_only=True)
        return {"bytes/dense": self.dense_bytes, "bytes/sparse": self.sparse_bytes,
                "bytes/sparse_int8": self.int8_bytes, "params/nonzero": self.nonzeros,
                "sparsity/targets": round(target_zeros / target_numel, 4) if target_numel else 0.0}


def state_storage(state: Mapping[str, torch.Tensor], targets: Mapping[str, TargetTensor],
                  blocks: Sequence[tuple[int, int]] = BLOCKS) -> StorageReport:
    """The :class:`StorageReport` of ``state`` (tensors only; anything else in it is ignored) with ``targets``
    (:func:`target_tensors`) stored sparse; ``<param>_mask`` tensors next to their parameter are left out."""
    report = StorageReport()
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            continue
        if key.endswith(MASK_SUFFIX) and key[: -len(MASK_SUFFIX)] in state:
            report.mask_bytes += tensor.numel() * tensor.element_size()
            continue
        report.tensors.append(tensor_storage(key, tensor, targets.get(key), blocks))
    return report


def model_storage(model: nn.Module, blocks: Sequence[tuple[int, int]] = BLOCKS) -> StorageReport:
    """The :class:`StorageReport` of ``model``'s state dict, its targets found by structure."""
    state = model.state_dict()
    return state_storage(state, target_tensors(model, state), blocks)
