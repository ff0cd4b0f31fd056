"""Adding a technique (docs/architecture.md, "Adding a technique"): a toy one, rounding a target's weights to a
grid, implemented here against :class:`compress.techniques.base.Technique` and applied through the real scheme
(:func:`compress.scheme.apply_scheme`) and retraining (:class:`compress.callback.Compression`) paths."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import lightning as L
import pytest
import torch
from test_compress_callback import Regressor, fit
from torch import nn

from compress.callback import Compression
from compress.checkpoint import SCHEME_KEY, restore_compression
from compress.lowrank import kernel_rank
from compress.scheme import Scheme, SchemeError, apply_scheme
from compress.targets import Target, discover_targets
from compress.techniques import register, unregister
from compress.techniques.base import Settings, Technique

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Grid(Technique):
    """Round every weight of a target to a multiple of ``step`` (scheme key ``grid``: ``{"grid": 0.25}``)."""

    name = "grid"
    keys = ("grid",)

    def options(self, target: Target) -> list[dict]:
        return [{"grid": step} for step in (0.5, 0.25, 0.125)]

    def validate(self, target: Target, settings: Settings) -> None:
        step = settings["grid"]
        if not isinstance(step, float) or step <= 0:
            raise SchemeError(f"scheme target '{target.name}' grid={step!r} must be a positive float")

    def params(self, target: Target, settings: Settings, params: int) -> int:
        return params   # as many parameters, fewer distinct values

    @torch.no_grad()
    def apply(self, model: nn.Module, targets: Sequence[Target], settings: Mapping[str, Settings]) -> nn.Module:
        for name, own in settings.items():
            for weight in model.get_submodule(name).parameters():
                if weight.dim() == 2:
                    weight.copy_(torch.round(weight / own["grid"]) * own["grid"])
        return model


@pytest.fixture
def grid():
    technique = register(Grid())
    yield technique
    unregister(technique.name)


def on_grid(weight: torch.Tensor, step: float) -> bool:
    return bool(torch.equal(weight, torch.round(weight / step) * step))


def test_a_new_technique_is_a_scheme_key_and_applies_with_the_others(grid):
    model = Regressor().model
    targets = discover_targets(model)
    scheme = Scheme.build(targets, {"lstm": {"rank": 3}, "hidden": {"grid": 0.25}, "out": "full"}, "manual")
    assert scheme.techniques() == ["lowrank", "grid"] and scheme.estimates["speedup/params"] > 1
    compressed = apply_scheme(model, scheme, targets)
    assert kernel_rank(compressed["lstm"]) == 3 and on_grid(compressed["hidden"].weight, 0.25)
    assert not on_grid(model["hidden"].weight, 0.25)   # the original is untouched
    with pytest.raises(SchemeError, match="grid=-1.0 must be a positive float"):
        Scheme.build(targets, {"out": {"grid": -1.0}}, "manual")


def test_the_compression_callback_applies_it_before_training(grid, tmp_path):
    Scheme.build(discover_targets(Regressor().model), {"lstm": {"rank": 3}, "hidden": {"grid": 0.25}},
                 "manual").save(tmp_path / "grid.json")

    class Probe(L.Callback):
        def on_train_start(self, trainer, pl_module):
            self.hidden = pl_module.model["hidden"].weight.detach().clone()

    module, probe = Regressor(), Probe()
    trainer = fit(module, [Compression(tmp_path / "grid.json"), probe], tmp_path, epochs=1)
    assert on_grid(probe.hidden, 0.25) and kernel_rank(module.model["lstm"]) == 3
    trainer.save_checkpoint(tmp_path / "grid.ckpt")
    checkpoint = torch.load(tmp_path / "grid.ckpt", weights_only=False)
    assert checkpoint[SCHEME_KEY]["scheme"]["targets"]["hidden"] == {"grid": 0.25}
    fresh = Regressor()
    restore_compression(fresh, checkpoint)   # the rank's structure; the rounded weights are in the state dict
    fresh.load_state_dict(checkpoint["state_dict"])
