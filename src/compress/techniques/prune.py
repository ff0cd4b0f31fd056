"""Sparse pruning: scheme keys ``sparsity`` (the final fraction of a target's entries pruned) and ``pattern``
(``unstructured``, or ``"RxC"``: whole ``R x C`` blocks kept or dropped, e.g. ``"4x1"``).

The math lives in :mod:`compress.prune` (Zhu & Gupta's :class:`compress.prune.Schedule`, magnitude masks, CSP's
recovery, the recorded inputs). Here, after ``torch.ao.pruning``'s sparsifier:

* a mask method is a :class:`MaskStrategy` subclass with its own :meth:`MaskStrategy.update_mask`
  (:class:`Magnitude`, :class:`Csp`; registered by name in :data:`STRATEGIES`), never an if-chain;
* :class:`Pruner` holds the per-matrix masks (the per-tensor config list) and updates them with its strategy;
* :class:`PruneSettings` checks the gradual-pruning settings of a retraining (``conf/prune/default.yaml``, the one
  source of their defaults) and gives their :class:`compress.prune.Schedule`;
* :class:`Pruning` is the technique (:mod:`compress.techniques.base`): options, cost, one-shot ``apply`` by
  magnitude, and the masks' restore from a checkpoint's :data:`compress.prune.PRUNE_KEY` record.

Which sparsity each target gets (uniform, overrides, the sensitivity allocation of
:mod:`compress.prune_allocation`, or a scheme) is decided apart from the pruner, as AIMET splits ratio selection
from the pruner that applies the ratios.
"""

from __future__ import annotations

import copy
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from compress.prune import (
    FORMAT,
    PRUNE_KEY,
    Matrix,
    PruneError,
    Schedule,
    check_block,
    check_blocks_fit,
    check_choice,
    check_settings,
    check_sparsity,
    csp_recover,
    final_sparsities,
    kept,
    magnitude_mask,
    overridden_sparsities,
    prunable_matrices,
    register_mask_buffers,
    restore_pruning,
)
from compress.prune_allocation import allocate_sparsities
from compress.targets import Target
from compress.techniques.base import SchemeError, Settings, Technique, register

log = logging.getLogger(__name__)

ALLOCATIONS = ("uniform", "sensitivity")
UNSTRUCTURED = "unstructured"
MIXED = "mixed"  # the record's pattern when targets are pruned in different block shapes


# -- mask methods ------------------------------------------------------------------------------------------
class MaskStrategy(ABC):
    """How one matrix's mask is chosen at a given sparsity."""

    name: str = ""
    needs_inputs: bool = False  # whether it needs the Gram matrix of the matrix's recorded inputs

    @staticmethod
    @abstractmethod
    def kept_entries(shape: tuple[int, int], sparsity: float, block: tuple[int, int]) -> int:
        """The entries an ``m x n`` matrix keeps at ``sparsity`` in whole ``block`` = ``(r, c)`` blocks, with this
        method's own rounding."""

    @abstractmethod
    def update_mask(self, matrix: Matrix, sparsity: float, block: tuple[int, int], gram: torch.Tensor | None
                    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """New values for ``matrix.param`` (``m x n``; None: unchanged) and its ``bool`` mask (``True`` = kept) at
        ``sparsity``, in whole ``block`` = ``(r, c)`` blocks; ``gram``: ``n x n``, when :attr:`needs_inputs`."""


class Magnitude(MaskStrategy):
    """Keep the largest ``|w|`` entries (or largest-norm blocks) over the whole matrix."""

    name = "magnitude"

    @staticmethod
    def kept_entries(shape, sparsity, block):
        """Rounded once over the matrix's ``r x c`` blocks (:func:`compress.prune.magnitude_mask`)."""
        (r, c), (m, n) = block, shape
        return kept(m // r * (n // c), sparsity) * r * c

    def update_mask(self, matrix, sparsity, block, gram=None):
        return None, magnitude_mask(matrix.param, sparsity, block)


class Csp(MaskStrategy):
    """Compressed-sensing pruning (:func:`compress.prune.csp_recover`): every row's support and values recovered to
    keep its outputs on the recorded inputs; by magnitude when no inputs were recorded."""

    name = "csp"
    needs_inputs = True

    def __init__(self, recovery: str, iterations: int, ridge: float):
        self.recovery, self.iterations, self.ridge = recovery, iterations, ridge

    @staticmethod
    def kept_entries(shape, sparsity, block):
        """Rounded once in every group of ``r`` rows (``kept(n / c, s)`` blocks each,
        :func:`compress.prune.csp_recover`), so CSP can keep up to half a block a row group more than
        ``(1 - s) m n``."""
        (r, c), (m, n) = block, shape
        return m // r * kept(n // c, sparsity) * r * c

    def update_mask(self, matrix, sparsity, block, gram=None):
        usable = gram is not None and float(gram.diagonal().max()) > 0
        if sparsity > 0 and usable:
            param = matrix.param
            return csp_recover(param, gram.to(param.device), sparsity, block, self.recovery, self.iterations,
                               self.ridge)
        if sparsity > 0:
            log.warning("CSP: no inputs of %s were recorded; pruned by magnitude this time", matrix.path)
        return None, magnitude_mask(matrix.param, sparsity, block)


STRATEGIES: dict[str, type[MaskStrategy]] = {"magnitude": Magnitude, "csp": Csp}


def kept_entries(shape: tuple[int, int], sparsity: float, method: str = "magnitude",
                 block: Sequence[int] = (1, 1)) -> int:
    """The entries a ``shape`` (``m x n``) target keeps when pruned to ``sparsity`` by ``method`` (a
    :data:`STRATEGIES` name), with that method's own rounding."""
    return STRATEGIES[check_choice(method, tuple(STRATEGIES), "compress.method")].kept_entries(shape, sparsity,
                                                                                            tuple(block))


def mask_strategy(method: str, recovery: str, iterations: int, ridge: float) -> MaskStrategy:
    """The :class:`MaskStrategy` registered as ``method``."""
    cls = STRATEGIES[check_choice(method, tuple(STRATEGIES), "compress.method")]
    return cls(recovery, iterations, ridge) if cls.needs_inputs else cls()


# -- the pruner ---------------------------------------------------------------------------------------------
class Pruner:
    """Masks on ``matrices`` of ``model`` and the updates that change them, each matrix in its own block shape.

    Args:
        model: the module the matrices belong to (the paths are relative to it).
        matrices: from :func:`compress.prune.prunable_matrices`.
        method: a :data:`STRATEGIES` name (``magnitude`` or ``csp``).
        blocks: ``{matrix path: (r, c)}``: whole ``r x c`` blocks kept or dropped, ``(1, 1)`` unstructured (one
            entry per matrix: a scheme gives each target its own pattern, :func:`matrix_blocks`).
        recovery, iterations: CSP's recovery (``iht``/``omp``) and its iterations (rounds for OMP).
        ridge: CSP's Tikhonov damping, ``λ = ridge * mean(diag G)`` (:func:`compress.prune.damped`).
    """

    def __init__(self, model: nn.Module, matrices: Sequence[Matrix], method: str,
                 blocks: Mapping[str, Sequence[int]], recovery: str, iterations: int, ridge: float):
        self.model, self.matrices = model, list(matrices)
        check_choice(method, tuple(STRATEGIES), "compress.method")
        self.method, _, _, self.recovery, self.iterations = check_settings(method, UNSTRUCTURED, (1, 1), recovery,
                                                                            iterations)
        self.strategy = mask_strategy(self.method, self.recovery, self.iterations, ridge)
        self.blocks = {m.path: check_block(blocks[m.path]) for m in self.matrices}
        for matrix in self.matrices:
            check_blocks_fit([matrix], self.blocks[matrix.path])
        self.scheduled = {m.path: 0.0 for m in self.matrices}

    @property
    def pattern(self) -> str:
        """``unstructured`` or ``block`` when every matrix has the same block shape (:attr:`block`), else
        ``mixed``."""
        shapes = set(self.blocks.values())
        if len(shapes) > 1:
            return MIXED
        return UNSTRUCTURED if shapes <= {(1, 1)} else "block"

    @property
    def block(self) -> tuple[int, int] | None:
        """The one block shape of every matrix (``(1, 1)``: unstructured); None when they differ."""
        shapes = set(self.blocks.values()) or {(1, 1)}
        return shapes.pop() if len(shapes) == 1 else None

    def register_masks(self) -> None:
        """Give every matrix an all-kept ``<param>_mask`` buffer (kept when it has one already)."""
        register_mask_buffers(self.model, [m.path for m in self.matrices])

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero the pruned entries of every matrix (after an optimizer step, which may move them)."""
        for matrix in self.matrices:
            matrix.param.mul_(matrix.mask)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        for matrix in self.matrices:
            grad = getattr(matrix.holder, matrix.name).grad  # the parameter's own (a convolution's is not 2-D)
            if grad is not None:
                grad.mul_(matrix.mask.reshape(grad.shape))

    def input_sites(self) -> dict[str, str]:
        """``{module: linear|lstm}`` whose inputs the strategy needs recorded."""
        return {m.site: "linear" if m.inputs == "linear" else "lstm" for m in self.matrices if m.inputs != "none"}

    def gram(self, matrix: Matrix, grams: Mapping[str, tuple[torch.Tensor, int]]) -> torch.Tensor | None:
        """``G = X X^T / N`` of ``matrix``'s inputs, or None when none were recorded."""
        entry = grams.get(matrix.site) if matrix.inputs != "none" else None
        if entry is None or entry[1] == 0:
            return None
        gram = entry[0] / entry[1]
        if matrix.inputs == "lstm_u":  # U's inputs are V [x | h]
            v = matrix.holder.original1.detach().double()
            gram = v @ gram.to(v.device) @ v.t()
        return gram

    @torch.no_grad()
    def update(self, sparsities: Mapping[str, float], grams: Mapping[str, tuple[torch.Tensor, int]] | None = None
               ) -> None:
        """Prune every matrix to ``sparsities[path]``: new masks (and new values where the strategy refits them),
        applied at once."""
        for matrix in self.matrices:
            sparsity = sparsities[matrix.path]
            gram = self.gram(matrix, grams or {}) if self.strategy.needs_inputs and sparsity > 0 else None
            values, mask = self.strategy.update_mask(matrix, sparsity, self.blocks[matrix.path], gram)
            if values is not None:
                matrix.param.copy_(values)
            matrix.mask.copy_(mask)
            self.scheduled[matrix.path] = float(sparsity)
        self.apply_masks()

    def pruned(self) -> int:
        return sum(int((~m.mask.bool()).sum()) for m in self.matrices)

    def total(self) -> int:
        return sum(m.param.numel() for m in self.matrices)

    def sparsity(self) -> float:
        """The actual sparsity over all matrices: pruned entries / entries."""
        total = self.total()
        return self.pruned() / total if total else 0.0

    def record(self, attribute: str, final: float, step: int | None = None) -> dict:
        """The checkpoint's :data:`compress.prune.PRUNE_KEY` entry (docs/pruning.md): ``pattern`` and ``block`` of
        all matrices (``mixed`` and None when they differ), every target's own ``block``."""
        block = self.block
        return {"format": FORMAT, "attribute": attribute, "method": self.method, "pattern": self.pattern,
                "block": None if block is None else list(block), "sparsity": final, "step": step,
                "targets": {m.path: {"shape": list(m.shape), "block": list(self.blocks[m.path]),
                                     "sparsity": self.scheduled[m.path],
                                     "actual": float((~m.mask.bool()).sum()) / m.param.numel()}
                            for m in self.matrices}}

    def check_resumable(self, record: Mapping) -> None:
        """Stop unless the checkpoint's pruning ``record`` was made with this method and every matrix's block
        (a record without per-target blocks: its one ``block``)."""
        if record["method"] != self.method:
            raise PruneError(f"the checkpoint was pruned with method={record['method']}; resume it with the same "
                             f"compress.method (not {self.method})")
        for path, entry in record["targets"].items():
            saved = tuple(entry.get("block") or record.get("block") or (1, 1))
            if path in self.blocks and saved != self.blocks[path]:
                raise PruneError(f"the checkpoint pruned {path} in {pattern_name(saved)} blocks, not "
                                 f"{pattern_name(self.blocks[path])}; resume it with the same compress.pattern and "
                                 "compress.block (or the same scheme)")


# -- the gradual-pruning settings of a retraining --------------------------------------------------------------
class PruneSettings:
    """The checked settings of gradual pruning (the keys of ``conf/prune/default.yaml``, which holds their
    defaults; every key is required here).

    Args:
        method: a :data:`STRATEGIES` name: ``magnitude`` (largest ``|w|`` kept) or ``csp`` (compressed-sensing
            recovery, docs/pruning.md).
        sparsity: the final sparsity ``s_f`` of every target, in [0, 1).
        initial_sparsity: ``s_i``, in force from ``start_step``.
        start_step, frequency, updates: ``t_0``, ``Δt`` and ``n`` of the schedule (global optimizer steps);
            ``end_step`` instead of ``updates`` gives ``t_0 + n Δt`` (then ``updates`` must be None).
        overrides: ``{glob: final sparsity}`` per target (target or parameter name; the first match wins).
        allocation: ``uniform`` (every target not in ``overrides`` at ``sparsity``) or ``sensitivity`` (the
            targets not in ``overrides`` share the entries to prune by the sparsity-sensitivity table
            ``sensitivity_table``, :mod:`compress.prune_allocation`; the model's overall sparsity is ``sparsity``).
        pattern: ``unstructured`` or ``block`` (whole ``block`` = ``[rows, cols]`` blocks kept or dropped).
        recovery, iterations: CSP's recovery (``iht`` or ``omp``) and its iterations (OMP: selection rounds).
        ridge: CSP's Tikhonov damping of its fits (``λ = ridge * mean(diag G)``), a number >= 0.
        calibration_batches: CSP records the inputs of the targets over the training batches of the last this
            many steps before each update.
        include, exclude: target name patterns (:func:`compress.targets.discover_targets`).
    """

    def __init__(self, *, method: str, sparsity: float, initial_sparsity: float, start_step: int, frequency: int,
                 updates: int | None, end_step: int | None, overrides: Mapping[str, float] | None, allocation: str,
                 sensitivity_table: str | Path | None, pattern: str, block: Sequence[int], recovery: str,
                 iterations: int, ridge: float, calibration_batches: int, include: Sequence[str],
                 exclude: Sequence[str]):
        check_choice(method, tuple(STRATEGIES), "compress.method")
        self.method, self.pattern, self.block, self.recovery, self.iterations = check_settings(
            method, pattern, block, recovery, iterations)
        if end_step is not None:
            if updates is not None:
                raise PruneError("give compress.updates or compress.end_step, not both (set the other to null)")
            Schedule(sparsity, initial_sparsity, start_step, frequency, 1)  # checks the other keys first
            span = end_step - start_step
            if span <= 0 or span % frequency:
                raise PruneError(f"compress.end_step={end_step} must lie a positive multiple of compress.frequency="
                                 f"{frequency} after compress.start_step={start_step}")
            updates = span // frequency
        self.schedule = Schedule(sparsity, initial_sparsity, start_step, frequency, updates)
        self.overrides = {str(k): v for k, v in dict(overrides or {}).items()}
        self.allocation = check_choice(allocation, ALLOCATIONS, "compress.allocation")
        self.sensitivity_table = Path(sensitivity_table) if sensitivity_table else None
        if self.allocation == "sensitivity" and (self.sensitivity_table is None
                                                 or not self.sensitivity_table.is_file()):
            raise FileNotFoundError(f"compress.sensitivity_table {self.sensitivity_table} not found; "
                                    "compress.allocation=sensitivity needs it: run make sensitivity-sparsity")
        if isinstance(ridge, bool) or not isinstance(ridge, int | float) or ridge < 0:
            raise PruneError(f"compress.ridge must be a number >= 0, got {ridge!r}")
        self.ridge = float(ridge)
        if not isinstance(calibration_batches, int) or isinstance(calibration_batches, bool) or calibration_batches < 1:
            raise PruneError(f"compress.calibration_batches must be an integer >= 1, got {calibration_batches!r}")
        if self.method == "csp" and start_step == 0 and initial_sparsity > 0:
            raise PruneError("compress.method=csp records training inputs before each update: with "
                             "compress.initial_sparsity > 0 set compress.start_step >= 1")
        self.calibration_batches = calibration_batches
        self.include, self.exclude = list(include), list(exclude)


def select_sparsities(model: nn.Module, settings: PruneSettings, scheme: Mapping[str, Settings],
                      attribute: str = "model") -> tuple[list[Matrix], dict[str, float]]:
    """The ratio selection, apart from the pruner (as AIMET splits them): the matrices of ``model`` to prune and
    ``{path: final sparsity}``. From ``scheme`` (target -> ``{"sparsity": ..}``) when it gives any: those targets
    (a low-rank target's factors) at their sparsities, the others not pruned; else every target of
    ``settings.include``/``exclude`` at ``settings``' sparsity, its ``overrides``, or the sensitivity allocation
    (:mod:`compress.prune_allocation`)."""
    matrices = prunable_matrices(model, settings.include, settings.exclude)
    if scheme:
        owners = {m.path: scheme_target(m, scheme) for m in matrices}
        matrices = [m for m in matrices if owners[m.path] is not None]
    if not matrices:
        raise PruneError(f"no targets to prune in {attribute} with compress.include={settings.include} and "
                         f"compress.exclude={settings.exclude}")
    final = settings.schedule.final
    if scheme:
        finals = {m.path: float(scheme[owners[m.path]]["sparsity"]) for m in matrices}
    elif settings.allocation == "sensitivity":
        table = json.loads(settings.sensitivity_table.read_text())
        fixed = overridden_sparsities(matrices, settings.overrides)
        finals = allocate_sparsities(matrices, final, table, fixed)
        log.info("per-target final sparsities from %s: %s", settings.sensitivity_table,
                 ", ".join(f"{path} {value:.3f}" for path, value in finals.items()))
    else:
        finals = final_sparsities(matrices, final, settings.overrides)
    return matrices, finals


def matrix_blocks(matrices: Sequence[Matrix], settings: PruneSettings, scheme: Mapping[str, Settings]
                  ) -> dict[str, tuple[int, int]]:
    """``{path: (r, c)}``, the block shape each matrix is pruned in: with a ``scheme`` (target ->
    ``{"sparsity": .., "pattern": ..}``) its target's pattern (a low-rank target's factors both in it), else
    ``settings.block`` (``(1, 1)`` unstructured). A scheme's block that does not divide a factor of its target (a
    rank the block's rows do not divide) stops with the target named."""
    if not scheme:
        return {m.path: settings.block for m in matrices}
    blocks = {}
    for matrix in matrices:
        target = scheme_target(matrix, scheme)
        pattern = scheme[target].get("pattern", UNSTRUCTURED)
        _, block = parse_pattern(pattern, f"scheme target '{target}' pattern")
        rows, cols = matrix.shape
        if rows % block[0] or cols % block[1]:
            raise SchemeError(f"scheme target '{target}': its pattern {pattern!r} does not divide {matrix.path} "
                              f"({rows}x{cols}); give the target a rank that the block divides, or another pattern")
        blocks[matrix.path] = block
    return blocks


# -- the technique -----------------------------------------------------------------------------------------------
def parse_pattern(text: str, key: str = "pattern") -> tuple[str, tuple[int, int]]:
    """A scheme's pattern: ``unstructured`` -> ``("unstructured", (1, 1))``; ``"4x1"`` -> ``("block", (4, 1))``."""
    if text == UNSTRUCTURED:
        return UNSTRUCTURED, (1, 1)
    rows, sep, cols = str(text).partition("x")
    if not (sep and rows.isdigit() and cols.isdigit() and int(rows) >= 1 and int(cols) >= 1):
        raise SchemeError(f"{key}={text!r} is not a pruning pattern; use 'unstructured' or 'RxC' blocks, e.g. '4x1'")
    return "block", (int(rows), int(cols))


def pattern_name(block: Sequence[int]) -> str:
    """The scheme's name of a block shape: ``unstructured`` for ``(1, 1)``, else ``"RxC"``."""
    return UNSTRUCTURED if tuple(block) == (1, 1) else f"{block[0]}x{block[1]}"


def scheme_target(matrix: Matrix, names: Mapping[str, object] | Sequence[str]) -> str | None:
    """The scheme target that ``matrix`` belongs to: its own target, or the target a low-rank factor replaced
    (``hidden.first`` belongs to ``hidden``); None when ``names`` has neither."""
    target = matrix.target
    while target:
        if target in names:
            return target
        target = target.rpartition(".")[0]
    return None


class Pruning(Technique):
    """Sparse pruning per target (``{"sparsity": 0.8}``, ``{"sparsity": 0.8, "pattern": "4x1"}``)."""

    name = "prune"
    keys = ("sparsity", "pattern")
    record_key = PRUNE_KEY

    def options(self, target: Target) -> list[dict]:
        """The sparsities that keep a whole number of the ``n`` entries of every row: ``1 - k / n``."""
        n = target.shape[1]
        return [{"sparsity": 1.0 - k / n} for k in range(n - 1, 0, -1)]

    def validate(self, target: Target, settings: Settings) -> None:
        key = f"scheme target '{target.name}'"
        if "sparsity" not in settings:
            raise SchemeError(f"{key}: a pattern needs a sparsity")
        try:
            check_sparsity(settings["sparsity"], f"{key} sparsity")
        except PruneError as err:
            raise SchemeError(str(err)) from err
        _, block = parse_pattern(settings.get("pattern", UNSTRUCTURED), f"{key} pattern")
        m, n = target.shape
        if m % block[0] or n % block[1]:
            raise SchemeError(f"{key} pattern {settings['pattern']!r} does not divide its {m} x {n} matrix")

    def params(self, target: Target, settings: Settings, params: int) -> int:
        """The entries kept: ``params`` less the pruned fraction (rounded as the masks round it)."""
        return kept(params, float(settings["sparsity"]))

    @torch.no_grad()
    def apply(self, model: nn.Module, targets: Sequence[Target], settings: Mapping[str, Settings]) -> nn.Module:
        """A copy of ``model`` pruned at once by magnitude to each target's sparsity (its factors, in a low-rank
        model), with the mask buffers a pruned checkpoint has."""
        pruned = copy.deepcopy(model)
        owners = {m.path: scheme_target(m, settings) for m in prunable_matrices(pruned)}
        matrices = [m for m in prunable_matrices(pruned) if owners[m.path] is not None]
        register_mask_buffers(pruned, [m.path for m in matrices])
        for matrix in matrices:
            entry = settings[owners[matrix.path]]
            _, block = parse_pattern(entry.get("pattern", UNSTRUCTURED))
            mask = magnitude_mask(matrix.param, float(entry["sparsity"]), block)
            matrix.mask.copy_(mask)
            matrix.param.mul_(mask)
        return pruned

    def restore(self, root: nn.Module, checkpoint: Mapping) -> object | None:
        return restore_pruning(root, checkpoint)


PRUNING = register(Pruning())
