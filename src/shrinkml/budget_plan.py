"""Parameter budgets of ``scripts/budget.py``: what each compression method must reach to fit one.

A budget is a fraction ``b`` of the baseline's parameters. "Parameters" are those of the *decoded* model:
every parameter except the CTC head's (``model.ctc_weight > 0`` adds a head that only trains the encoder
and is never run when decoding); for a sparse model, its nonzeros. The baseline's ``P`` parameters split
into ``C``, the weight matrices of the compression targets (LSTM kernels, Linears), and ``F = P - C``,
which no method here compresses (biases, LayerNorms, the embedding, MoChA's scalars). To hold ``b P``
parameters in all, the targets must hold at most ``b P - F``, so each method gets:

* **factorization** (SVD): the target speed-up ``a_t = C / (b P - F)`` by parameters (the paper's
  proxy counts targets only, so ``a_t`` is a little above ``1 / b``), rounded up to 3 decimals;
* **sparsity** (magnitude, CSP): every target at sparsity ``s = 1 - (b P - F) / C``, rounded up to 4
  decimals, then raised by 0.0001 until the entries every pruning method keeps, with its own rounding, fit
  ``b P - F`` (:func:`fitting_sparsity`: CSP keeps the same count in every row, rounded per row, which rounding
  ``s`` up does not cover);
* **SVD + sparsity**: a scheme at ``a_t ** svd_share`` first, then its factors (and any target it leaves
  dense) pruned to ``s = 1 - (b P - F) / C_scheme``, ``C_scheme`` the parameters the scheme stores (made to fit
  the same way);
* **a smaller dense student**: the baseline's widths (``student.widths``, e.g. hidden, attention and
  embedding sizes) scaled by one common factor, each rounded down to a multiple of ``student.multiple``,
  the largest factor whose model fits ``b P``; the depth (layers, time reduction) is kept.

A budget at or below ``F / P`` is reachable by no method and refused with that smallest budget.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass

from torch import nn

from common.errors import KnownError
from compress.cost import compressed_params
from compress.scheme import Scheme
from compress.techniques.prune import STRATEGIES as PRUNE_METHODS
from compress.techniques.prune import kept_entries

CTC_HEAD = "ctc_head"


class BudgetError(KnownError, ValueError):
    """A budget or student no method can meet; the message names the key and the sizes."""


def parse_budget(value: float | int | str) -> float:
    """A budget as a fraction in ``(0, 1]``: a number, or a string ``"1/3.7"``."""
    text = str(value).strip()
    try:
        if "/" in text:
            numerator, denominator = text.split("/", 1)
            fraction = float(numerator) / float(denominator)
        else:
            fraction = float(text)
    except (ValueError, ZeroDivisionError):
        raise BudgetError(f"budgets: {value!r} is not a fraction of the baseline's parameters; write e.g. 0.27 "
                          "or 1/3.7") from None
    if not 0.0 < fraction <= 1.0:
        raise BudgetError(f"budgets: {value!r} = {fraction:g} is not a fraction in (0, 1] of the baseline's "
                          "parameters; write e.g. 1/3.7 or 1/5")
    return fraction


def budget_label(fraction: float) -> str:
    """``x3.7`` for the budget 1/3.7 (the compression factor, 3 significant decimals)."""
    return f"x{round(1.0 / fraction, 3):g}"


def decoded_params(model: nn.Module) -> int:
    """Parameters of ``model`` as decoded: all but the CTC head's."""
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith(CTC_HEAD + "."))


def _ceil(value: float, digits: int) -> float:
    scale = 10**digits
    return math.ceil(value * scale - 1e-9) / scale


def fitting_sparsity(shapes: Iterable[tuple[int, int]], allowance: int, digits: int = 4) -> float:
    """The smallest sparsity at ``digits`` decimals, at least ``1 - allowance / (sum m n)`` rounded up, at which
    the matrices of ``shapes`` (``(m, n)`` each) keep at most ``allowance`` entries in all under every pruning
    method's own rounding (:func:`compress.techniques.prune.kept_entries`); 0 when they fit unpruned."""
    shapes = list(shapes)
    step = 10.0**-digits

    def most_kept(sparsity: float) -> int:
        return max(sum(kept_entries(shape, sparsity, method) for shape in shapes) for method in PRUNE_METHODS)

    sparsity = max(0.0, _ceil(1.0 - allowance / sum(m * n for m, n in shapes), digits))
    while most_kept(sparsity) > allowance:
        sparsity = round(sparsity + step, digits)
        if sparsity >= 1.0:
            raise BudgetError(f"budgets: no sparsity below 1 keeps {allowance:,} entries or fewer of the targets "
                              f"{shapes}; raise the budget")
    return sparsity


@dataclass(frozen=True)
class BaselineSize:
    """The baseline's decoded parameters ``total`` (P), its target weights ``targets`` (C, ``shapes``: target
    name -> (m, n)), and the rest ``fixed`` (F)."""

    total: int
    shapes: Mapping[str, tuple[int, int]]

    @property
    def targets(self) -> int:
        return sum(m * n for m, n in self.shapes.values())

    @property
    def fixed(self) -> int:
        return self.total - self.targets

    @property
    def smallest_budget(self) -> float:
        """The budget below which no method fits: the untouched part ``F / P``."""
        return self.fixed / self.total

    def check(self, fraction: float) -> None:
        if fraction * self.total <= self.fixed:
            raise BudgetError(
                f"budgets: {fraction:.4g} of the baseline ({fraction * self.total:,.0f} parameters) is not reachable: "
                f"{self.fixed:,} of its {self.total:,} parameters (biases, norms, embedding) are compressed by no "
                f"method; the smallest reachable budget is above {self.smallest_budget:.4f} "
                f"(1/{1 / self.smallest_budget:.1f})")

    def target_allowance(self, fraction: float) -> int:
        """``b P - F``: the parameters the targets may keep."""
        self.check(fraction)
        return int(fraction * self.total) - self.fixed

    def svd_speedup(self, fraction: float) -> float:
        """``a_t = C / (b P - F)``, rounded up to 3 decimals."""
        return _ceil(self.targets / self.target_allowance(fraction), 3)

    def sparsity(self, fraction: float) -> float:
        """``s = 1 - (b P - F) / C``, rounded up to 4 decimals and raised until every pruning method's kept
        entries fit (:func:`fitting_sparsity`; 0 when the budget needs none)."""
        return fitting_sparsity(self.shapes.values(), self.target_allowance(fraction))

    def scheme_sparsity(self, fraction: float, scheme: Scheme) -> float:
        """The sparsity of a low-rank model of ``scheme`` (its factors and dense targets pruned alike) that
        meets the budget: ``1 - (b P - F) / C_scheme``, rounded up to 4 decimals and raised until the kept
        entries fit (:func:`fitting_sparsity`)."""
        return fitting_sparsity(stored_matrices(self.shapes, scheme), self.target_allowance(fraction))


def stored_matrices(shapes: Mapping[str, tuple[int, int]], scheme: Scheme) -> list[tuple[int, int]]:
    """The shapes of the matrices a low-rank model of ``scheme`` stores for targets of ``shapes``: ``(m, k)`` and
    ``(k, n)`` for a target at rank ``k`` (the factors ``U`` and ``V``), ``(m, n)`` for a dense one."""
    stored = []
    for name, (m, n) in shapes.items():
        rank = scheme.ranks.get(name, "full")
        dense = compressed_params((m, n), rank) == m * n
        stored += [(m, n)] if dense else [(m, int(rank)), (int(rank), n)]
    return stored


def baseline_size(model: nn.Module, targets: Sequence) -> BaselineSize:
    """The :class:`BaselineSize` of ``model`` with its compression ``targets`` (``compress.targets.Target``)."""
    return BaselineSize(total=decoded_params(model), shapes={t.name: tuple(t.shape) for t in targets})


def _get(config: Mapping, dotted: str, source: str = "student.widths"):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise BudgetError(f"{source}: {dotted!r} is not a key of the baseline's model config "
                              f"(model.{dotted}); name existing keys, e.g. encoder.hidden_size")
        node = node[part]
    return node


def _set(config: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        config = config[part]
    config[last] = value


def scaled_model(model_cfg: Mapping, widths: Sequence[str], factor: float, multiple: int) -> dict:
    """``model_cfg`` with each size in ``widths`` (dotted keys) times ``factor``, rounded down to a multiple of
    ``multiple`` (at least ``multiple``)."""
    scaled = deepcopy(dict(model_cfg))
    for key in widths:
        size = int(_get(model_cfg, key))
        _set(scaled, key, max(multiple, int(size * factor) // multiple * multiple))
    return scaled


def student_sizes(model_cfg: Mapping, widths: Sequence[str]) -> dict[str, int]:
    return {key: int(_get(model_cfg, key)) for key in widths}


def flatten(config: Mapping, prefix: str = "") -> dict:
    """``{"encoder": {"hidden_size": 128}}`` -> ``{"encoder.hidden_size": 128}`` (lists are values)."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def explicit_student(model_cfg: Mapping, given: Mapping) -> tuple[dict, dict]:
    """An explicit student (``student.model``, part of a model config): ``(the baseline's model_cfg with the
    given keys replaced, the given keys flattened)``; a key the baseline's config lacks is refused, naming it."""
    student, changes = deepcopy(dict(model_cfg)), flatten(given)
    for key, value in changes.items():
        _get(model_cfg, key, source="student.model")
        _set(student, key, value)
    return student, changes


def fit_student(count, model_cfg: Mapping, widths: Sequence[str], budget_params: int, multiple: int = 8) -> dict:
    """The largest common scaling of the baseline's ``widths`` whose model has at most ``budget_params``
    decoded parameters (``count(model_cfg) -> int``); raises :class:`BudgetError` when even the smallest
    (every width ``multiple``) does not fit."""
    if not widths:
        raise BudgetError("student.widths is empty: name the sizes to scale, e.g. [encoder.hidden_size]")
    smallest = scaled_model(model_cfg, widths, 0.0, multiple)
    if count(smallest) > budget_params:
        raise BudgetError(f"no student fits {budget_params:,} parameters: with every width at {multiple} "
                          f"({student_sizes(smallest, widths)}) it has {count(smallest):,}; raise the budget or "
                          "scale more sizes (student.widths)")
    low, high = 0.0, 1.0
    for _ in range(40):  # bisection on the factor; the count grows with it
        middle = (low + high) / 2
        if count(scaled_model(model_cfg, widths, middle, multiple)) <= budget_params:
            low = middle
        else:
            high = middle
    return scaled_model(model_cfg, widths, low, multiple)


def check_student(count, model_cfg: Mapping, widths: Sequence[str], budget_params: int) -> None:
    """Refuse an explicit student (``student.model``) over the budget, naming its sizes."""
    params = count(model_cfg)
    if params > budget_params:
        raise BudgetError(f"student.model {student_sizes(model_cfg, widths)} has {params:,} parameters, over the "
                          f"budget's {budget_params:,}; choose smaller sizes or student.model=null (scaled to fit)")

