"""One target's compression option in one canonical form, and its short name.

A search space, a scheme and the measured-latency table all speak of a target's option, which may be given as

* ``"full"``: dense;
* an ``int`` rank ``k`` (the SVD-only spaces), the same as ``{"rank": k}``;
* a mapping of technique keys (:mod:`compress.techniques`): ``{"rank": 96}``, ``{"sparsity": 0.8}``,
  ``{"sparsity": 0.8, "pattern": "4x1"}``, ``{"rank": 96, "sparsity": 0.5, "pattern": "4x1"}``.

:func:`normalize` gives the one form (``"full"`` or a dict with ``rank`` an int, ``sparsity`` a float rounded to
:data:`SPARSITY_DIGITS` digits and ``pattern`` given whenever there is a sparsity); :func:`option_key` its short,
sortable name (``full``, ``r96``, ``s0.8``, ``s0.8@4x1``, ``r96+s0.5@4x1``), the key of latency-table entries.
"""

from __future__ import annotations

from collections.abc import Mapping

FULL = "full"
UNSTRUCTURED = "unstructured"
SPARSITY_DIGITS = 4

Option = int | str | Mapping  # as given: "full", a rank, or technique keys


def normalize(option: Option) -> str | dict:
    """``"full"`` or ``{"rank": int, "sparsity": float, "pattern": str, ...}`` (only the keys given; a sparsity
    gets ``pattern`` ``unstructured`` when none is given; a sparsity of 0 is no sparsity); ``ValueError`` for
    anything else."""
    if option == FULL:
        return FULL
    if isinstance(option, bool):
        raise ValueError(f"not a compression option: {option!r}")
    if isinstance(option, int):
        return {"rank": option}
    if not isinstance(option, Mapping):
        raise ValueError(f"not a compression option: {option!r} (give 'full', a rank or e.g. {{'sparsity': 0.8}})")
    out = dict(option)
    if "rank" in out:
        out["rank"] = int(out["rank"])
    if "sparsity" in out:
        out["sparsity"] = round(float(out["sparsity"]), SPARSITY_DIGITS)
        if out["sparsity"] == 0:
            out.pop("sparsity")
            out.pop("pattern", None)
        else:
            out["pattern"] = str(out.get("pattern", UNSTRUCTURED))
    elif "pattern" in out:
        raise ValueError(f"a pruning pattern needs a sparsity: {option!r}")
    return out or FULL


def option_key(option: Option) -> str:
    """The short name of ``option``: ``full``, ``r96``, ``s0.8`` (unstructured), ``s0.8@4x1``, ``r96+s0.5@4x1``;
    other techniques' keys follow as ``key=value`` (e.g. ``bits=8``)."""
    setting = normalize(option)
    if setting == FULL:
        return FULL
    parts = []
    if "rank" in setting:
        parts.append(f"r{setting['rank']}")
    if "sparsity" in setting:
        pattern = setting["pattern"]
        parts.append(f"s{setting['sparsity']:g}" + ("" if pattern == UNSTRUCTURED else f"@{pattern}"))
    parts += [f"{k}={setting[k]}" for k in sorted(setting) if k not in ("rank", "sparsity", "pattern")]
    return "+".join(parts)


def rank_of(option: Option) -> int | str:
    """The rank of ``option`` (``"full"`` when it has none)."""
    setting = normalize(option)
    return FULL if setting == FULL else setting.get("rank", FULL)


def sparsity_of(option: Option) -> float:
    """The sparsity of ``option`` (0 when it has none)."""
    setting = normalize(option)
    return 0.0 if setting == FULL else float(setting.get("sparsity", 0.0))


def pattern_of(option: Option) -> str:
    """The pruning pattern of ``option`` (``unstructured`` when it has none)."""
    setting = normalize(option)
    return UNSTRUCTURED if setting == FULL else str(setting.get("pattern", UNSTRUCTURED))
