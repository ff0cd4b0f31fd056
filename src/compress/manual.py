"""Manual baselines of the paper's Fig. 4 for a target speed-up ``a_t``.

* naive: every target at the same energy, the energy bisected to the largest value that still
  meets ``a_t``;
* guided: the same, but the targets that the sensitivity table marks as sensitive stay dense.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from compress.cost import FULL, estimate_speedup
from compress.scheme import Scheme
from compress.svd import SvdCache
from compress.targets import NoTargetsError, Target

if TYPE_CHECKING:
    from compress.latency_cost import LatencyTable


def ranks_at_energy(targets: Sequence[Target], cache_spectra: dict, energy: float,
                    dense: Sequence[str] = ()) -> dict[str, int | str]:
    return {t.name: FULL if t.name in dense else cache_spectra[t.name].rank_for_energy(energy, t.name)
            for t in targets}


def uniform_energy_scheme(targets: Sequence[Target], weights: dict, cache: SvdCache, target_speedup: float,
                          by: str = "params", dense: Sequence[str] = (), provenance: str = "uniform",
                          iterations: int = 40, latency_table: LatencyTable | None = None) -> Scheme:
    """The scheme with one energy for all (non-``dense``) targets, the highest that reaches ``target_speedup``.

    ``weights`` maps target name -> dense matrix; ``latency_table``: the measured table of ``by="latency"``
    (also fills the scheme's ``speedup/latency`` under any ``by``). Raises ``ValueError`` when ``target_speedup``
    is below 1 or beyond what rank 1 everywhere reaches.
    """
    if not targets:
        raise NoTargetsError("uniform_energy_scheme got no targets: discover_targets found none that the include/"
                             "exclude patterns leave; widen the patterns")
    if target_speedup < 1.0:
        raise ValueError(f"target speed-up a_t={target_speedup} is below 1; choose a_t >= 1")
    spectra = {t.name: cache.get(t.name, weights[t.name]) for t in targets}
    lowest = min(s.energy(1) for s in spectra.values())
    reachable = estimate_speedup(targets, ranks_at_energy(targets, spectra, lowest, dense), by, latency_table)
    if reachable < target_speedup:
        raise ValueError(f"target speed-up a_t={target_speedup} is out of reach: with targets {list(dense)} dense and "
                         f"every other at rank 1 the estimate is {reachable:.2f}x; lower a_t or allow more targets")
    low, high = lowest, 1.0  # speed-up falls as energy rises
    for _ in range(iterations):
        mid = (low + high) / 2
        if estimate_speedup(targets, ranks_at_energy(targets, spectra, mid, dense), by,
                            latency_table) >= target_speedup:
            low = mid
        else:
            high = mid
    ranks = ranks_at_energy(targets, spectra, low, dense)
    return Scheme.build(targets, ranks, provenance, latency_table=latency_table, energy=low,
                        target_speedup=target_speedup, by=by, dense=list(dense))
