"""``LowRankCompression``: a Lightning callback that fine-tunes a compressed model.

Given a scheme file (from the manual baselines or the search), it swaps the low-rank modules into
the Lightning module's model before fitting (``setup``), so the optimizer, which Lightning builds
afterwards, trains the factors ``U'`` and ``V*``. Checkpoints then carry the scheme
(:mod:`compress.checkpoint`), and resuming with ``ckpt_path`` works because the structure is in
place before Lightning restores the weights.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch

from compress.checkpoint import SCHEME_KEY, compression_record, get_submodule, set_submodule
from compress.scheme import Scheme, SchemeError, apply_scheme, count_parameters, file_fingerprint
from compress.svd import SvdCache
from compress.targets import discover_targets

log = logging.getLogger(__name__)


class LowRankCompression(L.Callback):
    """Apply ``scheme`` (a JSON path) to ``pl_module.<attribute>`` once, before training.

    Args:
        scheme: scheme JSON (``compress.scheme.Scheme``).
        init_from: a dense checkpoint whose ``state_dict`` is loaded into the Lightning module
            first (the baseline to compress); None compresses the module's current weights.
        attribute: dotted path of the model inside the Lightning module (``model`` for ``AsrModule``).
        include, exclude: target name patterns, as for :func:`compress.targets.discover_targets`.
        check_provenance: stop when the scheme records a source checkpoint (``meta.checkpoint_sha256``)
            other than ``init_from``: a search result made for another baseline is stale.
    """

    def __init__(self, scheme: str | Path, init_from: str | Path | None = None, attribute: str = "model",
                 include: Sequence[str] = ("*",), exclude: Sequence[str] = (), check_provenance: bool = True):
        if not attribute:
            raise SchemeError("compress.attribute must name the model inside the LightningModule, e.g. 'model'")
        self.scheme_path = Path(scheme)
        if not self.scheme_path.is_file():  # fail at start-up, not after data preparation
            raise SchemeError(f"compress.scheme {self.scheme_path} not found: run the stage that writes it first "
                              "(make search for the AutoML result, make manual for the manual baselines)")
        self.scheme = Scheme.load(self.scheme_path)
        self.init_from = Path(init_from) if init_from else None
        if self.init_from is not None and not self.init_from.is_file():
            raise FileNotFoundError(f"compress.init_from checkpoint {self.init_from} not found; give the baseline's "
                                    "checkpoint (e.g. runs/baseline/checkpoints/best.ckpt)")
        if check_provenance and self.init_from is not None:
            self._check_made_from(self.init_from)
        self.attribute = attribute
        self.include, self.exclude = list(include), list(exclude)
        self.applied = False

    def _check_made_from(self, checkpoint: Path) -> None:
        """Stop when the scheme records another source checkpoint than ``init_from`` (a stale result)."""
        made_from = self.scheme.meta.get("checkpoint_sha256")
        if made_from and made_from != file_fingerprint(checkpoint):
            raise SchemeError(
                f"compress.scheme {self.scheme_path} is stale: it was made from the checkpoint "
                f"{self.scheme.meta.get('checkpoint', '?')} as it was then, not from compress.init_from {checkpoint} "
                "as it is now; run the stage that made the scheme again on the current baseline (make search, or "
                "make manual), or pass compress.check_provenance=false to fine-tune it anyway")

    def summary(self) -> dict:
        """Entries for the run summary: the scheme's provenance, file and estimated speed-ups."""
        return {"provenance": self.scheme.provenance, "scheme": str(self.scheme_path),
                **{k: v for k, v in self.scheme.estimates.items() if k.startswith("speedup/")}}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.applied:
            return
        if self.init_from is not None:
            checkpoint = torch.load(self.init_from, map_location="cpu", weights_only=False)
            if SCHEME_KEY in checkpoint:
                raise SchemeError(f"compress.init_from {self.init_from} is already compressed; start from the dense "
                                  "baseline, or resume a compressed run with ckpt_path=")
            pl_module.load_state_dict(checkpoint["state_dict"])
        model = get_submodule(pl_module, self.attribute)
        dense_params = count_parameters(model)
        targets = discover_targets(model, self.include, self.exclude)
        compressed = apply_scheme(model, self.scheme, targets, SvdCache())
        set_submodule(pl_module, self.attribute, compressed)
        self.applied = True
        log.info("compressed %s with %s (%s): %.2f M -> %.2f M parameters", self.attribute, self.scheme_path,
                 self.scheme.provenance, dense_params / 1e6, count_parameters(compressed) / 1e6)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[SCHEME_KEY] = compression_record(self.scheme, self.attribute, self.include, self.exclude)
