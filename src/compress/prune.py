"""Sparse pruning of any ``nn.Module``: the gradual schedule, magnitude masks, and CSP (compressed-sensing pruning).

* **Schedule** (Zhu & Gupta, "To prune, or not to prune", 2017): the sparsity of every target follows
  ``s_t = s_f + (s_i - s_f) (1 - (t - t_0) / (n Δt))^3`` for ``t_0 <= t <= t_0 + n Δt``, updated every ``Δt``
  steps (so it holds the value of the last update in between), ``s_i`` before ``t_0`` and ``s_f`` after
  (:class:`Schedule`).
* **Magnitude** (:func:`magnitude_mask`): per target keep the largest ``|w|`` entries, or with a block pattern
  ``r x c`` the blocks of largest L2 norm (whole blocks kept or dropped).
* **CSP** (:func:`csp_recover`). Only the abstract of the seed paper (Zhen et al., "Sparsification via
  Compressed Sensing for Automatic Speech Recognition", 2021) is available; this is our reading of it, not its
  algorithm. The abstract casts sparse pruning as a dual problem of inducing sparsity and reducing the
  compression error, solved by bringing the classic compressed-sensing recovery into training. Here, at every
  update of the same schedule, each target ``W`` (``m x n``) and the Gram matrix ``G = X X^T / N`` (``n x n``) of
  its recorded inputs ``X`` (``n x N``: a Linear's input, an LSTM kernel's ``[x_t | h_{t-1}]``) give every
  output row ``i`` a support of at most ``k`` entries and values by a sparse recovery that keeps the row's
  outputs: minimize ``|| W_i X - w X ||^2 / N = (w - W_i) G (w - W_i)^T`` over ``k``-sparse ``w``, by iterative
  hard thresholding (normalized IHT, warm-started from the current, already masked, weights; the values then refit
  on the support by conjugate gradients) or (generalized) orthogonal matching pursuit (OMP), both on the damped
  ``G + λ I`` (Tikhonov toward the current row: ``+ λ |w - W_i|^2``, ``λ = RIDGE * mean(diag G)``, which keeps the
  values bounded where the inputs leave directions undetermined; undamped, IHT's refit reached 14x the weights'
  norm on rank-deficient inputs). The recovered values
  replace the row (the compression-error reduction), the support becomes its mask (the sparsity inducing). With a
  block pattern ``r x c`` the rows are taken ``r`` at a time and the support is chosen in whole ``r x c`` blocks
  (thresholded by block norm).
  The cost does not grow with ``N``: only ``G`` is kept.

Masks (:class:`compress.techniques.prune.Pruner`, with a mask strategy per method) live next to their parameter
as a ``bool`` buffer ``<param>_mask`` (``True`` = kept), so they are saved in the state dict; the parameter
itself is kept zero where pruned (zeroed at every update and after every optimizer step, gradients masked), so
every reader of the parameter, C++ decoding steps included, sees the pruned weights. Checkpoint contract:
docs/pruning.md.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from common.errors import KnownError
from compress.targets import Target, discover_targets

log = logging.getLogger(__name__)

FORMAT = "shrinkml-prune/1"
PRUNE_KEY = "compression_pruning"  # the checkpoint entry of a pruned model (docs/pruning.md; Pruning.record_key)
MASK_SUFFIX = "_mask"
PATTERNS = ("unstructured", "block")
RECOVERIES = ("iht", "omp")
RIDGE = 1e-3  # CSP's Tikhonov damping: λ = RIDGE * mean(diag G) added to G's diagonal (csp_recover); conf/prune: ridge


class PruneError(KnownError, ValueError):
    """Bad pruning settings, or settings that do not fit the model; the message names the key."""


# -- the schedule --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Schedule:
    """Zhu & Gupta's gradual schedule from ``initial`` (``s_i``) to ``final`` (``s_f``): updates at steps
    ``start_step + j * frequency`` for ``j = 0 .. updates`` (``t_0``, ``Δt``, ``n``). No defaults here: they are
    ``conf/prune/default.yaml``'s."""

    final: float
    initial: float
    start_step: int
    frequency: int
    updates: int

    def __post_init__(self):
        check_sparsity(self.final, "compress.sparsity")
        check_sparsity(self.initial, "compress.initial_sparsity")
        if self.initial > self.final:
            raise PruneError(f"compress.initial_sparsity={self.initial} exceeds compress.sparsity={self.final}: "
                             "the schedule only raises sparsity")
        for key, value, low in (("start_step", self.start_step, 0), ("frequency", self.frequency, 1),
                                ("updates", self.updates, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise PruneError(f"compress.{key} must be an integer >= {low}, got {value!r}")

    @property
    def end_step(self) -> int:
        """``t_0 + n Δt``: the step of the last update."""
        return self.start_step + self.updates * self.frequency

    def is_update(self, step: int) -> bool:
        return self.start_step <= step <= self.end_step and (step - self.start_step) % self.frequency == 0

    def update_steps(self) -> range:
        return range(self.start_step, self.end_step + 1, self.frequency)

    def at(self, step: int, final: float | None = None) -> float:
        """The sparsity in force at ``step`` (the last update's value), for a target whose final sparsity is
        ``final`` (default: the schedule's)."""
        final = self.final if final is None else final
        if step < self.start_step + self.frequency:  # before t_0, and from t_0 up to the next update: s_i
            return self.initial
        if step >= self.end_step:
            return final
        last = self.start_step + (step - self.start_step) // self.frequency * self.frequency
        progress = (last - self.start_step) / (self.updates * self.frequency)
        return final + (self.initial - final) * (1.0 - progress) ** 3


def check_sparsity(value: float, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise PruneError(f"{key} must be a fraction in [0, 1) (0.8 = 80% of the entries pruned), got {value!r}")
    return float(value)


def check_choice(value: str, choices: Sequence[str], key: str) -> str:
    if value not in choices:
        raise PruneError(f"{key}={value!r} is unknown; choose one of {', '.join(choices)}")
    return value


def check_block(block: Sequence[int]) -> tuple[int, int]:
    block = tuple(block)
    if len(block) != 2 or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in block):
        raise PruneError(f"compress.block must be two positive integers [rows, cols], e.g. [1, 4], got {list(block)}")
    return block


def check_settings(method: str, pattern: str, block: Sequence[int], recovery: str, iterations: int
                   ) -> tuple[str, str, tuple[int, int], str, int]:
    """The pruning settings checked (``method``, a mask strategy's name, by
    :func:`compress.techniques.prune.mask_strategy`); the block is ``(1, 1)`` for the unstructured pattern."""
    check_choice(pattern, PATTERNS, "compress.pattern")
    block = check_block(block) if pattern == "block" else (1, 1)
    check_choice(recovery, RECOVERIES, "compress.recovery")
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
        raise PruneError(f"compress.iterations must be an integer >= 1, got {iterations!r}")
    return method, pattern, block, recovery, iterations


# -- what is pruned ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Matrix:
    """One prunable parameter: ``path`` relative to the model (``encoder.layers.0.kernel``), held by
    ``holder`` as attribute ``name``; ``site`` is the module whose inputs are its inputs and ``inputs`` how to
    read them: ``linear`` (the module's input), ``lstm`` (``[x_t | h_{t-1}]``), ``lstm_u`` (the ``U`` factor of
    a low-rank kernel ``U V``: its inputs are ``V [x_t | h_{t-1}]``) or ``none`` (not recorded: a ``weight``
    target's, e.g. ``nn.LSTM``'s ``weight_hh_l0``, which CSP prunes by magnitude)."""

    path: str
    target: str
    holder: nn.Module
    name: str
    site: str
    inputs: str

    @property
    def param(self) -> torch.Tensor:
        """The ``(m, n)`` matrix: a convolution's weight as a view ``(out, in * kernel elements)``, so that what is
        written to it lands in the weight."""
        param = getattr(self.holder, self.name)
        return param.flatten(1) if param.dim() > 2 else param

    @property
    def mask(self) -> torch.Tensor:
        mask = getattr(self.holder, self.name + MASK_SUFFIX)
        return mask.flatten(1) if mask.dim() > 2 else mask

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.param.shape)


def prunable_matrices(model: nn.Module, include: Sequence[str] = ("*",), exclude: Sequence[str] = ()) -> list[Matrix]:
    """The matrices of the compression targets of ``model`` (:func:`compress.targets.discover_targets`): a
    Linear's ``weight``, an LSTM's ``kernel``, and in a low-rank model the factors instead (a low-rank linear's
    ``first``/``second`` weights; a factorized kernel's ``U``, ``V`` originals). An ``exclude`` pattern also
    excludes the modules below the ones it names (``decoder.output`` excludes ``decoder.output.first``)."""
    exclude = [*exclude, *(f"{p}.*" for p in exclude)]
    matrices = []
    for target in discover_targets(model, include, exclude):
        module = target.module(model)
        if target.kind == "weight":
            matrices += weight_matrices(target, module)
        elif target.kind == "conv":  # CSP records no convolution inputs: pruned by magnitude
            matrices.append(Matrix(f"{target.name}.weight", target.name, module, "weight", target.name, "none"))
        elif target.kind == "linear":
            matrices.append(Matrix(f"{target.name}.weight", target.name, module, "weight", target.name, "linear"))
        elif parametrize.is_parametrized(module, "kernel"):
            entry = module.parametrizations.kernel
            if not (hasattr(entry, "original0") and hasattr(entry, "original1")) or hasattr(entry, "original2"):
                raise PruneError(f"target {target.name}: its kernel is parametrized in a way pruning does not know "
                                 "(neither dense nor a low-rank product U V); exclude it (compress.exclude)")
            prefix = f"{target.name}.parametrizations.kernel"
            matrices.append(Matrix(f"{prefix}.original0", target.name, entry, "original0", target.name, "lstm_u"))
            matrices.append(Matrix(f"{prefix}.original1", target.name, entry, "original1", target.name, "lstm"))
        else:
            matrices.append(Matrix(f"{target.name}.kernel", target.name, module, "kernel", target.name, "lstm"))
    return matrices


def weight_matrices(target: Target, module: nn.Module) -> list[Matrix]:
    """The matrices of a ``weight`` target (:mod:`compress.targets`): the parameter itself, or the ``U``, ``V``
    originals of its low-rank parametrization. Their masks sit on the module (or the parametrization), where the
    parameter lives: ``nn.LSTM``'s ``weight_hh_l0_mask``; pruning multiplies the parameter in place, so the zeros
    survive ``flatten_parameters`` and device moves (which copy values)."""
    attribute, prefix = target.attribute, f"{target.module_name}." if target.module_name else ""
    if not parametrize.is_parametrized(module, attribute):
        return [Matrix(target.name, target.name, module, attribute, target.module_name, "none")]
    entry = module.parametrizations[attribute]
    if not (hasattr(entry, "original0") and hasattr(entry, "original1")) or hasattr(entry, "original2"):
        raise PruneError(f"target {target.name} is parametrized in a way pruning does not know (neither dense nor a "
                         "low-rank product U V); exclude it (compress.exclude)")
    path = f"{prefix}parametrizations.{attribute}"
    return [Matrix(f"{path}.original{i}", target.name, entry, f"original{i}", target.module_name, "none")
            for i in (0, 1)]


def overridden_sparsities(matrices: Sequence[Matrix], overrides: Mapping[str, float] | None) -> dict:
    """``{path: sparsity}`` of the matrices an ``overrides`` glob matches (the first matching glob's value, on the
    target's or the parameter's name: ``encoder.*``, ``decoder.output*``); a glob naming no target is an error."""
    overrides = {str(k): check_sparsity(v, f"compress.overrides['{k}']") for k, v in dict(overrides or {}).items()}

    def hits(matrix: Matrix, pattern: str) -> bool:
        return fnmatch.fnmatchcase(matrix.target, pattern) or fnmatch.fnmatchcase(matrix.path, pattern)

    for pattern in overrides:
        if not any(hits(m, pattern) for m in matrices):
            known = ", ".join(m.path for m in matrices) or "none"
            raise PruneError(f"compress.overrides['{pattern}'] names no target; the targets are: {known}")
    matched = {m.path: next((v for p, v in overrides.items() if hits(m, p)), None) for m in matrices}
    return {path: value for path, value in matched.items() if value is not None}


def final_sparsities(matrices: Sequence[Matrix], sparsity: float, overrides: Mapping[str, float] | None) -> dict:
    """``{path: final sparsity}``: ``sparsity``, or the ``overrides`` value of the matrix
    (:func:`overridden_sparsities`)."""
    overridden = overridden_sparsities(matrices, overrides)
    return {m.path: overridden.get(m.path, sparsity) for m in matrices}


def check_blocks_fit(matrices: Sequence[Matrix], block: tuple[int, int]) -> None:
    for matrix in matrices:
        rows, cols = matrix.shape
        if rows % block[0] or cols % block[1]:
            raise PruneError(f"compress.block={list(block)} does not divide target {matrix.path} of shape "
                             f"{rows}x{cols}; choose a block that divides it or exclude it (compress.exclude)")


def kept(total: int, sparsity: float) -> int:
    """How many of ``total`` entries (or blocks) stay at ``sparsity`` (the pruned count rounded half up)."""
    return total - math.floor(sparsity * total + 0.5)


# -- masks ---------------------------------------------------------------------------------------------
def block_norms(weight: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """``(m / r, n / c)`` L2 norms of the ``r x c`` blocks of ``weight``."""
    r, c = block
    m, n = weight.shape
    return weight.reshape(m // r, r, n // c, c).pow(2).sum(dim=(1, 3)).sqrt()


def expand_blocks(block_mask: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """A ``(m / r, n / c)`` mask of blocks as the ``(m, n)`` mask of their entries."""
    r, c = block
    g, nb = block_mask.shape
    return block_mask[:, None, :, None].expand(g, r, nb, c).reshape(g * r, nb * c)


def magnitude_mask(weight: torch.Tensor, sparsity: float, block: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """The ``bool`` mask that keeps the largest-``|w|`` entries of ``weight`` (or its largest-norm ``r x c``
    blocks) at ``sparsity``, over the whole matrix."""
    scores = block_norms(weight.detach().float(), block)
    flat = scores.flatten()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.topk(kept(flat.numel(), sparsity)).indices] = True
    return expand_blocks(keep.reshape(scores.shape), block)


def _threshold(z: torch.Tensor, keep_blocks: int, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard thresholding by row group: in every ``r`` rows keep the ``keep_blocks`` ``r x c`` blocks of largest
    norm; returns the thresholded matrix and its ``bool`` mask."""
    scores = block_norms(z, block)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep.scatter_(1, scores.topk(keep_blocks, dim=1).indices, True)
    mask = expand_blocks(keep, block)
    return z * mask, mask


def _group_errors(w: torch.Tensor, z: torch.Tensor, gram: torch.Tensor, rows: int) -> torch.Tensor:
    """``(w_i - z_i) G (w_i - z_i)^T`` summed over each group of ``rows`` rows."""
    d = z - w
    return ((d @ gram) * d).sum(dim=1).reshape(-1, rows).sum(dim=1)


def reconstruction_error(weight: torch.Tensor, pruned: torch.Tensor, gram: torch.Tensor) -> float:
    """``|| W X - W' X ||_F^2 / N`` from the Gram matrix ``G = X X^T / N``."""
    d = (pruned - weight).double()
    return float(((d @ gram.double()) * d).sum())


def _iht(w: torch.Tensor, gram: torch.Tensor, keep_blocks: int, block: tuple[int, int], iterations: int
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized iterative hard thresholding (Blumensath & Davies 2010) of all rows at once, warm-started from
    ``w`` (the current, already masked, weights) thresholded: every step moves along the residual gradient
    ``(W - Z) G`` by the exact line-search step on the current support, or by the safe ``1 / λ_max(G)`` step where
    that does better, then hard-thresholds; the best iterate of every row group is kept."""
    rows = block[0]
    top = float(torch.linalg.eigvalsh(gram.double())[-1])
    z, mask = _threshold(w, keep_blocks, block)
    best, best_mask, best_err = z, mask, _group_errors(w, z, gram, rows)
    for _ in range(iterations):
        step = (w - z) @ gram
        on_support = step * mask
        num = (on_support * on_support).sum(dim=1).reshape(-1, rows).sum(dim=1)
        den = ((on_support @ gram) * on_support).sum(dim=1).reshape(-1, rows).sum(dim=1)
        normalized = torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), 1.0 / top)
        z_a, mask_a = _threshold(z + normalized.repeat_interleave(rows)[:, None] * step, keep_blocks, block)
        z_b, mask_b = _threshold(z + step / top, keep_blocks, block)
        err_a, err_b = _group_errors(w, z_a, gram, rows), _group_errors(w, z_b, gram, rows)
        pick = (err_a <= err_b).repeat_interleave(rows)[:, None]
        z, mask, err = torch.where(pick, z_a, z_b), torch.where(pick, mask_a, mask_b), torch.minimum(err_a, err_b)
        better = (err < best_err).repeat_interleave(rows)[:, None]
        best, best_mask = torch.where(better, z, best), torch.where(better, mask, best_mask)
        best_err = torch.minimum(err, best_err)
    return best, best_mask


def _refit(w: torch.Tensor, gram: torch.Tensor, z: torch.Tensor, mask: torch.Tensor, iterations: int
           ) -> torch.Tensor:
    """The values on a fixed support ``mask`` that minimize every row's ``(z - w_i) G (z - w_i)^T``: conjugate
    gradients from ``z``, all rows at once (each row its own system; each iteration lowers its error, and
    ``n`` iterations solve it exactly)."""
    z = z * mask
    residual = ((w - z) @ gram) * mask
    direction, norm = residual.clone(), (residual * residual).sum(dim=1)
    for _ in range(iterations):
        curved = (direction @ gram) * mask
        den = (direction * curved).sum(dim=1)
        alpha = torch.where(den > 0, norm / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(den))
        z = z + alpha[:, None] * direction
        residual = residual - alpha[:, None] * curved
        new_norm = (residual * residual).sum(dim=1)
        beta = torch.where(norm > 0, new_norm / norm.clamp_min(torch.finfo(norm.dtype).tiny), torch.zeros_like(norm))
        direction, norm = residual + beta[:, None] * direction, new_norm
    return z


def _least_squares(wg: torch.Tensor, gram: torch.Tensor, keep: torch.Tensor, block: tuple[int, int]
                   ) -> torch.Tensor:
    """Every row group's optimal values on its support ``keep`` (``(g, n / c)`` blocks, the same count in every
    group): ``z_S = W G_{:,S} (G_SS)^{-1}``, with ``wg = W G``; a tiny ridge keeps ``G_SS`` invertible."""
    r, c = block
    m, n = wg.shape
    groups = m // r
    chosen = keep.nonzero()[:, 1].reshape(groups, -1)  # block indices, ascending per group
    cols = (chosen[:, :, None] * c + torch.arange(c, device=wg.device)).reshape(groups, -1)  # (g, s)
    size = cols.shape[1]
    ridge = 1e-8 * float(gram.diagonal().mean()) + 1e-12
    z = torch.zeros_like(wg).reshape(groups, r, n)
    step = max(1, (1 << 24) // max(size * size, 1))  # groups per solve: about 128 MB of float64 systems
    eye = torch.eye(size, dtype=gram.dtype, device=gram.device)
    for start in range(0, groups, step):
        idx = cols[start : start + step]
        system = gram[idx[:, :, None], idx[:, None, :]] + ridge * eye
        rhs = wg.reshape(groups, r, n)[start : start + step].gather(2, idx[:, None, :].expand(-1, r, size))
        factor, _ = torch.linalg.cholesky_ex(system)
        values = torch.cholesky_solve(rhs.transpose(1, 2), factor)  # (chunk, s, r)
        z[start : start + step].scatter_(2, idx[:, None, :].expand(-1, r, size), values.transpose(1, 2))
    return z.reshape(m, n)


def _omp(w: torch.Tensor, gram: torch.Tensor, keep_blocks: int, block: tuple[int, int], rounds: int
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(Generalized) orthogonal matching pursuit for every row group at once: ``rounds`` rounds, each adding to
    the support the blocks most correlated with the residual ``(W - Z) G`` (normalized by the atoms' norms),
    then refitting the values on the support by least squares (``rounds >= k``: classic OMP, one atom a round)."""
    r, c = block
    m, n = w.shape
    wg = w @ gram
    atom_norms = gram.diagonal().reshape(n // c, c).sum(dim=1).clamp_min(1e-30).sqrt()
    keep = torch.zeros(m // r, n // c, dtype=torch.bool, device=w.device)
    z = torch.zeros_like(w)
    rounds = max(1, min(rounds, keep_blocks))
    for j in range(rounds):
        add = keep_blocks * (j + 1) // rounds - keep_blocks * j // rounds
        residual = (wg - z @ gram).reshape(m // r, r, n // c, c).pow(2).sum(dim=(1, 3)).sqrt() / atom_norms
        residual[keep] = -math.inf
        keep.scatter_(1, residual.topk(add, dim=1).indices, True)
        z = _least_squares(wg, gram, keep, block)
    return z, expand_blocks(keep, block)


def damped(gram: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    """``G + λ I`` with ``λ = ridge * mean(diag G)`` (``n x n``): Tikhonov damping of CSP's fits. As a row's error
    ``(w - W_i) (G + λ I) (w - W_i)^T = (w - W_i) G (w - W_i)^T + λ |w - W_i|^2``, it pulls the values toward the
    current weights in the directions the inputs barely excite (as if every input also carried white noise of power
    ``λ``), so a singular or ill-conditioned ``G_SS`` (rank-deficient inputs) gives bounded values."""
    lam = ridge * float(gram.diagonal().mean())
    return gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)


def csp_recover(weight: torch.Tensor, gram: torch.Tensor, sparsity: float, block: tuple[int, int] = (1, 1),
                recovery: str = "iht", iterations: int = 10, ridge: float = RIDGE) -> tuple[torch.Tensor, torch.Tensor]:
    """CSP's recovery of one target (module docstring): the new ``weight`` (``m x n``, zero off the support) and
    its ``bool`` mask, each row group keeping ``kept(n / c, sparsity)`` blocks (``r x c``) chosen and valued to
    keep the outputs ``W X`` on inputs with Gram matrix ``gram`` (``n x n``). ``recovery``: ``iht`` (``iterations``
    thresholded steps, then ``iterations`` conjugate-gradient steps on the support) or ``omp`` (``iterations``
    selection rounds, each with an exact least-squares fit), both on the damped ``G + λ I`` (:func:`damped`,
    ``λ = ridge * mean(diag G)``).
    All-zero inputs (no positive entry on ``gram``'s diagonal) leave nothing to fit, every value giving the same
    outputs: each row group keeps its largest-norm blocks with their weights."""
    check_choice(recovery, RECOVERIES, "compress.recovery")
    keep_blocks = kept(weight.shape[1] // block[1], sparsity)
    if keep_blocks == weight.shape[1] // block[1]:
        return weight.detach().clone(), torch.ones_like(weight, dtype=torch.bool)
    if keep_blocks == 0:
        return torch.zeros_like(weight), torch.zeros_like(weight, dtype=torch.bool)
    if not bool((gram.detach().diagonal() > 0).any()):
        return _threshold(weight.detach().clone(), keep_blocks, block)
    w, g = weight.detach().double(), damped(gram.detach().double(), ridge)
    if recovery == "iht":  # the support from IHT (float32 is enough for it), the values refit on it in float64
        z, mask = _iht(w.float(), g.float(), keep_blocks, block, iterations)
        z = _refit(w, g, z.double(), mask, iterations)
    else:
        z, mask = _omp(w, g, keep_blocks, block, iterations)
    return (z * mask).to(weight.dtype), mask


# -- recorded inputs ------------------------------------------------------------------------------------
class GramRecorder:
    """Accumulates ``X X^T`` and the count ``N`` of the inputs of some modules while :meth:`start`-ed (forward
    hooks, removed by :meth:`stop`). ``linear`` sites record their input ``(..., n)``; ``lstm`` sites
    ``[x_t | h_{t-1}]``: a sequence layer called as ``layer(x (B, T, in), state=None)`` returning
    ``(outputs (B, T, H), ...)`` (``h_{t-1}`` from its outputs, ``h_0`` from ``state`` or zeros; padded frames
    count too), or a cell called as ``cell(x (B, in), (h, c))``."""

    def __init__(self, model: nn.Module, sites: Mapping[str, str]):
        self.model, self.sites = model, dict(sites)
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self._handles: list = []

    def start(self) -> None:
        if self._handles:
            return
        for name, kind in self.sites.items():
            module = self.model.get_submodule(name)
            self._handles.append(module.register_forward_hook(self._hook(name, kind), with_kwargs=True))

    def stop(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def reset(self) -> None:
        self.sums, self.counts = {}, {}

    def _hook(self, name: str, kind: str):
        def hook(module, args, kwargs, output):
            with torch.no_grad():
                x = self._inputs(module, kind, args, kwargs, output).detach()
                x = x.reshape(-1, x.shape[-1]).float()
                product = (x.t() @ x).double()
                self.sums[name] = self.sums[name] + product if name in self.sums else product
                self.counts[name] = self.counts.get(name, 0) + x.shape[0]
        return hook

    @staticmethod
    def _inputs(module: nn.Module, kind: str, args: tuple, kwargs: dict, output) -> torch.Tensor:
        x = args[0] if args else kwargs["input" if kind == "linear" else "x"]
        if kind == "linear":
            return x
        state = args[1] if len(args) > 1 else kwargs.get("state")
        if x.dim() == 2:  # a cell: (x, (h, c))
            return torch.cat([x, state[0]], dim=-1)
        outputs = output[0]
        h0 = state[0] if state is not None else x.new_zeros(x.shape[0], module.hidden_size)
        previous = torch.cat([h0.unsqueeze(1), outputs[:, :-1]], dim=1)
        return torch.cat([x, previous], dim=-1)

    def grams(self) -> dict[str, tuple[torch.Tensor, int]]:
        """``{site: (sum of X X^T (float64), N)}`` recorded so far."""
        return {name: (self.sums[name], self.counts[name]) for name in self.sums}


def register_mask_buffers(model: nn.Module, paths: Iterable[str]) -> None:
    """Give the parameters at ``paths`` (relative to ``model``) all-kept mask buffers, so that a state dict
    holding their masks loads."""
    for path in paths:
        module_path, _, name = path.rpartition(".")
        holder = model.get_submodule(module_path) if module_path else model
        if not hasattr(holder, name):
            raise PruneError(f"pruned checkpoint names parameter {path}, which the model does not have; load it with "
                             "the model (and low-rank scheme) it was trained with")
        if not hasattr(holder, name + MASK_SUFFIX):
            holder.register_buffer(name + MASK_SUFFIX, torch.ones_like(getattr(holder, name), dtype=torch.bool))


def restore_pruning(root: nn.Module, checkpoint: Mapping) -> dict | None:
    """Give ``root`` (the module the checkpoint's ``state_dict`` belongs to, its low-rank structure already
    restored) the mask buffers a pruned checkpoint records; returns the record, or None for an unpruned one."""
    record = checkpoint.get(PRUNE_KEY)
    if record is None:
        return None
    attribute = record.get("attribute", "")
    try:
        holder = root.get_submodule(attribute) if attribute else root
    except AttributeError as err:
        raise PruneError(f"pruned checkpoint: attribute '{attribute}' is not a sub-module of "
                         f"{type(root).__name__}") from err
    register_mask_buffers(holder, record["targets"])
    return record
