"""Overfitting 8 real utterances: the full model and loss can fit data (the spec's overfit-one-batch check)."""

from __future__ import annotations

import torch
from asr_helpers import one_thread, prepared_datamodule, tiny_model_config

from asr.model.asr_model import AsrModel


def test_loss_falls_by_a_large_factor_on_eight_utterances(tiny_corpus, tmp_path_factory):
    datamodule = prepared_datamodule(tiny_corpus, tmp_path_factory.mktemp("overfit"))
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["features"].shape[0] == 8
    with one_thread():
        torch.manual_seed(0)
        config = tiny_model_config(noise_std=0.0)
        config["encoder"]["hidden_size"] = 32
        model = AsrModel(datamodule.tokenizer.vocab_size, datamodule.feature_cfg.n_mels, **config).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(120):
            optimizer.zero_grad()
            loss = model.loss(batch)["attention"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            losses.append(float(loss))
    assert losses[-1] < 0.25 * losses[0], losses[::20]
