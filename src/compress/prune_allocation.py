"""Per-target final sparsities from a sparsity-sensitivity table (``compress.allocation=sensitivity``).

The pruning counterpart of the guided manual SVD scheme: instead of one sparsity for every target, the targets
share the same total number of pruned entries so that the sum of their single-target WER rises is least. A
target's cost curve comes from ``scripts/sensitivity.py kind=sparsity`` (each target alone magnitude-pruned,
one-shot): WER rise ``d(s)`` at each measured sparsity ``s``, with ``d(0) = 0``; negative rises (noise) count as 0.
Costs are assumed additive over targets and linear between measured sparsities, so the allocation is the
exact optimum of that model: take the lower convex hull of every target's curve of (entries pruned, cost) and
spend the pruned entries on hull segments in the order of their cost per pruned entry, cheapest first; the last
segment is taken part-way so that the total meets ``sparsity`` exactly (:func:`allocate_sparsities`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from compress.prune import Matrix, PruneError


def cost_curves(table: Mapping, matrices: Sequence[Matrix]) -> dict[str, list[tuple[float, float]]]:
    """``{path: [(sparsity, cost), ...]}`` from ``(0, 0)`` up to the table's largest sparsity, for every matrix.

    Raises :class:`PruneError` when the table has no row for a target or was measured on another shape."""
    if table.get("kind") != "sparsity":
        raise PruneError("compress.sensitivity_table is not a sparsity-sensitivity table; write one with "
                         "scripts/sensitivity.py kind=sparsity (make sensitivity-sparsity)")
    curves = {}
    for matrix in matrices:
        rows = [r for r in table["rows"] if r["target"] == matrix.target]
        if not rows or any(tuple(r["shape"]) != matrix.shape for r in rows):
            raise PruneError(f"compress.sensitivity_table has no row of shape {list(matrix.shape)} for target "
                             f"{matrix.target} ({matrix.path}); measure this model with make sensitivity-sparsity")
        points = sorted((float(r["sparsity"]), max(0.0, float(r["delta"]))) for r in rows)
        curves[matrix.path] = [(0.0, 0.0), *points]
    return curves


def lower_hull(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The lower convex hull of ``points`` sorted by x (Andrew's monotone chain), from the first to the last."""
    hull: list[tuple[float, float]] = []
    for x, y in points:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1) <= 0:  # hull[-1] lies on or above the chord
                hull.pop()
            else:
                break
        hull.append((x, y))
    return hull


def allocate_sparsities(matrices: Sequence[Matrix], sparsity: float, table: Mapping,
                        fixed: Mapping[str, float] | None = None) -> dict[str, float]:
    """``{path: final sparsity}`` whose pruned entries total ``sparsity`` of all the matrices' entries.

    ``fixed`` (``{path: sparsity}``, e.g. from ``compress.overrides``) keeps those matrices at their value; the
    others share the rest by the sensitivity table ``table`` (module docstring). Raises :class:`PruneError`
    when the rest cannot be reached within the table's largest sparsity."""
    fixed = dict(fixed or {})
    sizes = {m.path: m.shape[0] * m.shape[1] for m in matrices}
    free = [m for m in matrices if m.path not in fixed]
    to_prune = sparsity * sum(sizes.values()) - sum(fixed[p] * sizes[p] for p in fixed)
    finals = {**fixed, **{m.path: 0.0 for m in free}}
    curves = cost_curves(table, free)
    segments = []  # (cost per pruned entry, path, start sparsity, end sparsity)
    for path, curve in curves.items():
        hull = lower_hull(curve)
        segments += [((c2 - c1) / ((s2 - s1) * sizes[path]), path, s1, s2)
                     for (s1, c1), (s2, c2) in zip(hull, hull[1:], strict=False)]
    reachable = sum(curve[-1][0] * sizes[path] for path, curve in curves.items())
    if to_prune > reachable + 1e-6:
        most = (reachable + sum(fixed[p] * sizes[p] for p in fixed)) / sum(sizes.values())
        raise PruneError(f"compress.sparsity={sparsity} with compress.allocation=sensitivity needs more than the "
                         f"sensitivity table's largest sparsity on the free targets (at most {most:.4f} reachable); "
                         "lower compress.sparsity or measure higher sparsities")
    # within a target the hull's slopes rise, so sorting by slope keeps each target's segments in order
    for _slope, path, start, end in sorted(segments, key=lambda s: (s[0], -sizes[s[1]], s[2])):
        if to_prune <= 0:
            break
        take = min(end - start, to_prune / sizes[path])
        finals[path] = start + take
        to_prune -= take * sizes[path]
    return {m.path: finals[m.path] for m in matrices}
