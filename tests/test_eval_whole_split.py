"""Every split a stage decodes through ``eval_batches`` (search reports, sensitivity, benchmarks) is decoded whole,
once, whatever the number of data-parallel ranks: a DDP search reports the WERs of a single-process one."""

from __future__ import annotations

import json

import pytest
import torch
from asr_helpers import VOCAB, corpus_copy_for_runs, prepared_datamodule, shared_dir, trained_run
from test_compress_scripts import run_script

from shrinkml.stage import eval_batches


@pytest.fixture
def two_ranks(monkeypatch):
    """This process seen as rank 1 of 2 (what a DDP search's second process sees after ``trainer.fit``)."""
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)


def utterances(batches) -> list[str]:
    return [u for batch in batches for u in batch["utt_ids"]]


def test_eval_batches_hold_the_whole_split_on_every_rank(tiny_corpus, tmp_path_factory, two_ranks):
    datamodule = prepared_datamodule(tiny_corpus, shared_dir(tmp_path_factory))
    datamodule.hparams.eval_batch_size = 2  # several batches, so a sharded loader would drop some
    try:
        for split in ("dev", "test"):
            ids = sorted(u.utt_id for u in datamodule.datasets[split].utterances)
            # the training loop's validation loader is sharded (the simulated 2 ranks took effect) ...
            sharded = utterances(datamodule.val_dataloader()[0] if split == "dev" else datamodule.test_dataloader()[0])
            assert 0 < len(sharded) < len(ids)
            # ... the stages' loader is not: every utterance once
            assert sorted(utterances(eval_batches(datamodule, split))) == ids
            subset = ids[:5]
            assert sorted(utterances(eval_batches(datamodule, split, utt_ids=subset))) == subset
    finally:
        datamodule.hparams.eval_batch_size = 8


@pytest.mark.slow
def test_ddp_search_report_equals_the_single_process_one(tiny_corpus, tmp_path_factory):
    """A real 2-process DDP search (gloo on CPU) reports the baseline's, the manual schemes' and the explored
    schemes' dev and test WERs that a single-process search reports for the same checkpoint."""
    base = shared_dir(tmp_path_factory)
    run_dir, _ = trained_run(tiny_corpus, base)
    corpus = corpus_copy_for_runs(tiny_corpus, base)
    common = [f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", f"data.root={corpus}",
              f"data.cache_dir={base / 'features'}", f"data.tokenizer.vocab_size={VOCAB}",
              f"data.tokenizer.dir={base / 'tokenizer'}", "data.feature_jobs=1", "data.progress=false",
              "data.eval_batch_size=2", "logger=csv", "trainer.enable_progress_bar=false", "search.space.kind=uniform",
              "search.space.options=4", "search.target_speedup=1.5", "report.curve_speedups=[1.5]",
              f"sensitivity_table={base / 'no-table.json'}", "search.steps=2"]
    reports = {}
    for name, trainer in {"single": [], "ddp": ["trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]}.items():
        out = base / f"search_{name}"
        result = run_script("../search", *common, *trainer, f"output_dir={out}")
        assert result.returncode == 0, result.stderr[-3000:]
        reports[name] = json.loads((out / "report.json").read_text())
    single, ddp = ({row["model"]: row for row in reports[k]["rows"]} for k in ("single", "ddp"))
    assert set(single) >= {"baseline", "manual naive"} and set(ddp) >= {"baseline", "manual naive"}
    for model in ("baseline", "manual naive"):  # the same model in both runs: the same WERs on every split
        assert (single[model]["wer/dev"], single[model]["wer/test"]) == (ddp[model]["wer/dev"], ddp[model]["wer/test"])
