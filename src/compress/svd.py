"""Singular value decomposition of weight matrices, computed once and sliced per rank (paper section 2.2).

``M = U S V^T`` (Eq. 1). Keeping the ``k`` largest singular values gives ``M ~ U' V*`` with
``U' = U_k S_k`` (``m x k``) and ``V* = V_k^T`` (``k x n``) (Eq. 2). The *energy* of a rank is the
normalized sum of the kept singular values, ``sum_{i<k} s_i / sum_i s_i`` (the paper's definition).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Spectrum:
    """The full SVD of one ``m x n`` matrix (float64 for exact slicing)."""

    u: torch.Tensor  # (m, r), r = min(m, n)
    s: torch.Tensor  # (r,), descending
    vh: torch.Tensor  # (r, n)

    @classmethod
    def of(cls, weight: torch.Tensor) -> Spectrum:
        u, s, vh = torch.linalg.svd(weight.detach().to(torch.float64), full_matrices=False)
        return cls(u, s, vh)

    @property
    def shape(self) -> tuple[int, int]:
        return self.u.shape[0], self.vh.shape[1]

    @property
    def max_rank(self) -> int:
        return int(self.s.numel())

    def check_rank(self, rank: int, name: str = "matrix") -> int:
        if not 1 <= rank <= self.max_rank:
            raise ValueError(f"rank {rank} for {name} is outside the allowed range 1..{self.max_rank} "
                             f"(min(m, n) of its {self.shape[0]} x {self.shape[1]} matrix)")
        return int(rank)

    def energy(self, rank: int) -> float:
        """Share of the singular-value sum kept by ``rank`` (1.0 at full rank)."""
        rank = self.check_rank(rank)
        total = float(self.s.sum())
        return float(self.s[:rank].sum()) / total if total > 0 else 1.0

    def rank_for_energy(self, energy: float, name: str = "matrix") -> int:
        """Smallest rank whose energy is at least ``energy`` (in (0, 1])."""
        if not 0.0 < energy <= 1.0:
            raise ValueError(f"energy {energy} for {name} is outside (0, 1]")
        total = float(self.s.sum())
        if total <= 0:
            return 1
        cumulative = torch.cumsum(self.s, 0) / total
        rank = int(torch.searchsorted(cumulative, torch.tensor(energy - 1e-12, dtype=cumulative.dtype))) + 1
        return min(max(rank, 1), self.max_rank)

    def factors(self, rank: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """``(U' (m x k), V* (k x n))`` with ``U' V*`` the best rank-``k`` approximation."""
        rank = self.check_rank(rank)
        return (self.u[:, :rank] * self.s[:rank]).to(dtype), self.vh[:rank].to(dtype)


class SvdCache:
    """Full SVDs of named matrices, each computed on first use and then only sliced."""

    def __init__(self):
        self._spectra: dict[str, Spectrum] = {}

    def get(self, name: str, weight: torch.Tensor) -> Spectrum:
        if name not in self._spectra:
            self._spectra[name] = Spectrum.of(weight)
        return self._spectra[name]

    def __contains__(self, name: str) -> bool:
        return name in self._spectra

    def __len__(self) -> int:
        return len(self._spectra)
