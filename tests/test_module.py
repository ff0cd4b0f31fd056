"""AsrModule: checkpoints carry the assets and refuse a model of another shape; a non-finite loss stops
training with a message naming the step and the batch."""

from __future__ import annotations

import copy
from functools import partial

import lightning as L
import pytest
import torch
from asr_helpers import VOCAB, prepared_datamodule, shared_dir, tiny_decoding, tiny_model_config

from asr.checkpoint import load_module, transcribe_features
from asr.module import AsrModule, ModelMismatchError, TrainingDivergedError, decoding_settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def datamodule(tiny_corpus, tmp_path_factory):
    return prepared_datamodule(tiny_corpus, shared_dir(tmp_path_factory))


def make_module(datamodule, vocab_size: int | None = None, distill: dict | None = None, **model) -> AsrModule:
    torch.manual_seed(0)
    config = tiny_model_config()
    for key, value in model.items():  # e.g. encoder={"hidden_size": 32}
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    return AsrModule(vocab_size=vocab_size or datamodule.tokenizer.vocab_size,
                     input_size=datamodule.feature_cfg.n_mels, model=config,
                     optimizer=partial(torch.optim.Adam, lr=1e-3), decoding=tiny_decoding(beam_size=2),
                     assets=datamodule.assets(),
                     distill=distill)


def make_trainer(root, **settings) -> L.Trainer:
    options = dict(default_root_dir=str(root), accelerator="cpu", devices=1, max_steps=1, logger=False,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False)
    options.update(settings)
    return L.Trainer(**options)


@pytest.fixture(scope="module")
def checkpoint(datamodule, tmp_path_factory):
    """A checkpoint written by a Lightning Trainer after one training step."""
    root = tmp_path_factory.mktemp("module_ckpt")
    module = make_module(datamodule)
    trainer = make_trainer(root)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 1
    path = root / "one_step.ckpt"
    trainer.save_checkpoint(path)
    return path, module


def test_checkpoint_loads_with_weights_and_assets(checkpoint, datamodule):
    path, trained = checkpoint
    assert datamodule.tokenizer.vocab_size == VOCAB
    module = load_module(path)
    assert not module.training
    assert module.hparams.vocab_size == VOCAB and module.decoding["beam_size"] == 2
    for (name, expected), (_, loaded) in zip(trained.model.state_dict().items(), module.model.state_dict().items(),
                                             strict=True):
        assert torch.equal(expected, loaded), name
    assets = module.assets
    assert assets is not None and assets.features == datamodule.feature_cfg
    assert assets.tokenizer.vocab_size == VOCAB
    text = "THE OLD MAN SAW A GOOD HOUSE"
    assert assets.tokenizer.encode(text) == datamodule.tokenizer.encode(text)
    assert torch.equal(assets.cmvn.mean, datamodule.cmvn.mean) and torch.equal(assets.cmvn.std, datamodule.cmvn.std)
    features = [datamodule.datasets["dev"][0]["features"]]
    assert transcribe_features(module, features) == transcribe_features(module, features, beam_size=1)


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_module(tmp_path / "nope.ckpt")


def test_loading_into_another_vocab_size_raises(checkpoint):
    path, _ = checkpoint
    with pytest.raises(ModelMismatchError) as info:
        AsrModule.load_from_checkpoint(path, vocab_size=VOCAB + 10, weights_only=False)
    message = str(info.value)
    assert f"({VOCAB}, 8)" in message and f"({VOCAB + 10}, 8)" in message  # the embedding, 8 wide


def test_loading_into_another_hidden_size_raises(checkpoint):
    path, _ = checkpoint
    model = tiny_model_config()
    model["encoder"] = {**model["encoder"], "hidden_size": 32}
    with pytest.raises(ModelMismatchError) as info:
        AsrModule.load_from_checkpoint(path, model=model, weights_only=False)
    message = str(info.value)
    assert "(64, 96)" in message and "(128, 112)" in message  # first encoder kernel: 4H x (80 + H), H = 16 vs 32


def test_resuming_with_another_vocab_size_names_both_values(checkpoint, datamodule, tmp_path):
    path, _ = checkpoint
    module = make_module(datamodule, vocab_size=VOCAB + 10)
    with pytest.raises(ModelMismatchError) as info:
        make_trainer(tmp_path, max_steps=2).fit(module, datamodule=datamodule, ckpt_path=str(path))
    message = str(info.value)
    assert f"vocab_size={VOCAB}" in message and f"vocab_size={VOCAB + 10}" in message


def test_resuming_with_another_model_shape_raises(checkpoint, datamodule, tmp_path):
    path, _ = checkpoint
    module = make_module(datamodule, decoder={"hidden_size": 24})
    with pytest.raises(ModelMismatchError) as info:
        make_trainer(tmp_path, max_steps=2).fit(module, datamodule=datamodule, ckpt_path=str(path))
    message = str(info.value)
    assert "checkpoint was made with model=" in message
    assert "'hidden_size': 16" in message and "'hidden_size': 24" in message


def test_resuming_the_same_model_continues_from_the_checkpoint(checkpoint, datamodule, tmp_path):
    path, _ = checkpoint
    module = make_module(datamodule)
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(path))
    assert trainer.global_step == 2


@pytest.mark.parametrize(("factor", "kind"), [(float("nan"), "non-finite"), (1e10, "diverged")])
def test_non_finite_or_exploding_loss_stops_naming_step_and_batch(datamodule, tmp_path, monkeypatch, factor, kind):
    """A loss from ~6 to 6e10 is a diverged run: it stops with a clear error, as a NaN does."""
    module = make_module(datamodule)
    real_loss = module.model.loss

    def bad_loss(batch, ctc_only=False, **options):
        losses = real_loss(batch, ctc_only, **options)
        return {**losses, "loss": losses["loss"] * factor}

    monkeypatch.setattr(module.model, "loss", bad_loss)
    with pytest.raises(TrainingDivergedError, match=kind + r".* loss .* global step 0, batch 0 \(utterances \d"):
        make_trainer(tmp_path).fit(module, datamodule=datamodule)


def test_ctc_pretraining_steps_leave_the_decoder_untouched(datamodule, tmp_path):
    module = make_module(datamodule, ctc_weight=0.3)
    module.hparams.ctc_pretrain_steps = 2
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    make_trainer(tmp_path, max_steps=2).fit(module, datamodule=datamodule)
    after = module.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))


def test_ctc_pretraining_without_a_ctc_head_is_refused(datamodule):
    with pytest.raises(ValueError, match="ctc_pretrain_steps=5 needs the CTC head"):
        AsrModule(vocab_size=datamodule.tokenizer.vocab_size, input_size=datamodule.feature_cfg.n_mels,
                  model=tiny_model_config(), decoding=tiny_decoding(), ctc_pretrain_steps=5)


def test_damaged_checkpoint_gives_a_clear_error(checkpoint, tmp_path):
    path, _ = checkpoint
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="damaged.ckpt cannot be read"):
        load_module(damaged)


def test_resuming_under_other_decoding_settings_continues(checkpoint, datamodule, tmp_path):
    """The ``decoding`` settings change decoding only, not the weights: a resume under others continues."""
    path, _ = checkpoint
    module = make_module(datamodule)
    module.set_decoding(tiny_decoding(beam_size=3, max_decode_ratio=2.0, hard_fallback=True))
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(path))
    assert trainer.global_step == 2
    assert module.model.decoder.attention.hard_fallback and module.model.max_decode_ratio == 2.0


def test_decoding_settings_are_checked():
    with pytest.raises(ValueError, match="missing \\['hard_fallback'\\]"):
        decoding_settings({"beam_size": 2, "length_penalty": 1.0, "max_decode_ratio": 1.0})
    with pytest.raises(ValueError, match="beam_size must be >= 0"):
        decoding_settings(tiny_decoding(beam_size=-1))


def test_distillation_from_a_checkpoint_trains_with_a_frozen_teacher_that_is_never_saved(checkpoint, datamodule,
                                                                                            tmp_path):
    path, _ = checkpoint
    module = make_module(datamodule, distill={"teacher": str(path), "weight": 1.0, "temperature": 2.0})
    with torch.no_grad():  # the student must differ from the teacher (both may start from the same seeded init)
        module.model.decoder.output.weight.add_(0.5 * torch.randn_like(module.model.decoder.output.weight))
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=datamodule)
    teacher = load_module(path).model
    assert module.teacher is not None and float(trainer.callback_metrics["train/distill"]) > 0
    assert all(torch.equal(a, b) for a, b in zip(module.teacher.state_dict().values(), teacher.state_dict().values(),
                                                  strict=True))  # the teacher did not learn
    assert not any(name.startswith("teacher") for name in module.state_dict())
    saved = tmp_path / "student.ckpt"
    trainer.save_checkpoint(saved)
    assert load_module(saved).teacher is None  # decoding a distilled model loads no teacher


def test_distillation_loss_is_zero_for_the_teacher_itself_and_positive_otherwise(datamodule):
    module = make_module(datamodule, distill={"teacher": "unused.ckpt", "weight": 1.0, "temperature": 2.0}).eval()
    batch = next(iter(datamodule.train_dataloader()))
    object.__setattr__(module, "teacher", copy.deepcopy(module.model))
    losses = module.model.loss(batch, keep_logits=True)
    assert float(module.distillation_loss(batch, losses["logits"], losses["targets"])) < 1e-6
    with torch.no_grad():
        module.teacher.decoder.output.weight.add_(0.5 * torch.randn_like(module.teacher.decoder.output.weight))
    assert float(module.distillation_loss(batch, losses["logits"], losses["targets"])) > 1e-3


@pytest.mark.parametrize("distill, match", [({"weight": 1.0}, "module.distill.teacher"),
                                            ({"teacher": "t.ckpt", "weight": 1.0, "temperature": 0.0}, "temperature"),
                                            ({"teacher": "t.ckpt", "weight": -1.0}, "weight")])
def test_impossible_distillation_settings_are_refused(datamodule, distill, match):
    with pytest.raises(ValueError, match=match):
        make_module(datamodule, distill=distill)
