"""Every file of conf/experiment, conf/search and conf/debug composes and runs end to end on the tiny corpus
with a tiny model (the directories are globbed: a new file is tested without a change here).

- experiment: one epoch, test, a summary with finite WERs (fine-tuning experiments start from a tiny trained
  checkpoint; a compressing one gets a quarter-rank scheme, a pruning one a schedule within the epoch; another
  corpus's data config is pointed at the tiny one)
- search: two steps from the tiny checkpoint with a sensitivity table, a report, and a result chosen on dev
- debug: alone and with +experiment=baseline, its run directory under logs/debug and nothing under runs/
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from asr_helpers import (
    CONF_DIR,
    VOCAB,
    compose_train,
    hydra_job,
    run_overrides,
    trained_run,
)
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from test_compress_callback import half_rank_scheme

from asr.checkpoint import load_module
from asr.train import train
from shrinkml.search import run_search
from shrinkml.sensitivity import run_sensitivity


def config_names(group: str) -> list[str]:
    names = sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))
    assert names, f"no configs in conf/{group}"
    return names


EXPERIMENTS, SEARCHES, DEBUGS = config_names("experiment"), config_names("search"), config_names("debug")
# what the tiny corpus holds; an experiment whose data config reads another corpus is pointed at it
TINY_SPLITS = ["data.train_split=train", "data.dev_splits=[dev]", "data.test_splits=[test]"]
# the tiny model of run_overrides keeps the experiment's model config otherwise (input stacking, layer norm, ...)
SHORT = ["model.encoder.pool=[2,2]", "trainer.max_epochs=1", "trainer.max_time=null", "data.num_workers=0"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tiny_corpus, base) -> Path:
    """The tiny trained dense model (one epoch), as the baseline every fine-tuning and search starts from."""
    run_dir, _ = trained_run(tiny_corpus, base)
    return run_dir / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def scheme(checkpoint, base) -> Path:
    path = base / "every_config" / "quarter-rank.json"
    path.parent.mkdir(exist_ok=True)
    half_rank_scheme(load_module(checkpoint).model).save(path)
    return path


def assert_finite_rates(summary: dict, splits) -> None:
    for split in splits:
        for kind in ("wer", "cer"):
            value = summary.get(f"{kind}/{split}")
            assert isinstance(value, float) and math.isfinite(value) and value >= 0, (kind, split, value)


# -- experiments ------------------------------------------------------------------------------------------
def experiment_config(name: str, corpus: Path, base: Path, checkpoint: Path, scheme: Path) -> DictConfig:
    """``+experiment=name`` on the tiny corpus with a tiny model, with what the experiment needs added."""
    overrides = run_overrides(corpus, base, f"+experiment={name}", *SHORT)
    cfg = compose_train(overrides)
    if cfg.data.train_split != "train":
        overrides += TINY_SPLITS
    if cfg.init_from is not None:
        overrides.append(f"init_from={checkpoint}")
    if cfg.get("compress") and OmegaConf.is_missing(cfg.compress, "scheme"):  # ???: the scheme is given
        overrides.append(f"compress.scheme={scheme}")
    if cfg.get("compress") and "sparsity" in cfg.compress:  # pruning: a schedule that ends within the epoch
        overrides += ["compress.start_step=0", "compress.frequency=1", "compress.updates=2"]
    return compose_train(overrides)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_trains_tests_and_writes_a_summary(name, corpus, base, checkpoint, scheme):
    cfg = experiment_config(name, corpus, base, checkpoint, scheme)
    assert cfg.task_name != "train" and cfg.stage, "an experiment names its task and stage"
    output_dir = base / "every_config" / f"experiment_{name}"
    with hydra_job(cfg, output_dir) as task:
        summary = train(task)
    assert summary["stage"] == cfg.stage and summary["params"] > 0
    assert_finite_rates(summary, [*cfg.data.dev_splits, *cfg.data.test_splits])
    assert Path(summary["best_checkpoint"]).is_file()
    saved = json.loads((output_dir / "summary.json").read_text())
    assert saved["wer/test"] == pytest.approx(summary["wer/test"])
    if cfg.init_from is not None:
        assert cfg.init_from == str(checkpoint)
        dense_params = load_module(checkpoint).num_parameters()
        if cfg.evaluate_seed:
            assert_finite_rates({k.removeprefix("seed/"): v for k, v in summary.items()}, cfg.data.dev_splits)
        if cfg.measure_speedup.reference:
            assert summary["speedup/measured"] > 0
        low_rank = bool(cfg.get("compress")) and "scheme" in cfg.compress
        assert (summary["params"] < dense_params) == low_rank  # only low-rank compression shrinks it
        if cfg.get("compress") and "sparsity" in cfg.compress:  # pruning keeps the parameters, zeroes some
            assert summary["params/nonzero"] < dense_params and summary["sparsity"] > 0


# -- searches ---------------------------------------------------------------------------------------------
def data_overrides(corpus: Path, base: Path) -> list[str]:
    return [f"paths.root_dir={base}", f"data.root={corpus}", f"data.cache_dir={base / 'features'}",
            f"data.tokenizer.vocab_size={VOCAB}", f"data.tokenizer.dir={base / 'tokenizer'}", "data.feature_jobs=1",
            "data.progress=false", "logger=csv"]


def compose_root(name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=overrides, return_hydra_config=True)


@pytest.fixture(scope="module")
def table(checkpoint, corpus, base) -> Path:
    """The sensitivity stage's table of the tiny checkpoint at two energies: 0.9 and the guided baseline's
    (conf/search.yaml), which the search's report needs."""
    energy = compose_root("search", [f"paths.root_dir={base}"]).guided.energy
    output_dir = base / "every_config" / "sensitivity"
    cfg = compose_root("sensitivity", [*data_overrides(corpus, base), f"ckpt={checkpoint}",
                                       f"energies=[0.9,{energy}]", f"output_dir={output_dir}"])
    with hydra_job(cfg, output_dir) as task:
        run_sensitivity(task)
    return output_dir / "sensitivity.json"


@pytest.mark.parametrize("name", SEARCHES)
def test_search_runs_two_steps_and_chooses_its_result_on_dev(name, checkpoint, table, corpus, base):
    output_dir = base / "every_config" / f"search_{name}"
    cfg = compose_root("search", [*data_overrides(corpus, base), f"search={name}", f"ckpt={checkpoint}",
                                  f"sensitivity_table={table}", f"output_dir={output_dir}", "search.steps=2",
                                  "search.target_speedup=1.2", "report.curve_speedups=[1.2]"])
    assert cfg.search.name == name
    with hydra_job(cfg, output_dir) as task:
        run_search(task)  # the tiny model's compressed WERs run hundreds of points above its baseline's
    report = json.loads((output_dir / "report.json").read_text())
    summary = report["summary"]
    policy = summary["policy"]
    assert summary["steps"] == 2 and report["rows"][0]["model"] == "baseline"
    candidates = [row for row in report["rows"] if row["model"].startswith(f"{policy} #")]
    if policy == "random_feasible" or (policy == "rl" and cfg.search.searcher.feasibility == "mask"):
        assert summary["best"] is not None, "every sample of a masked or feasible search meets a_t"
    if summary["best"] is None:  # no scheme met a_t in two steps: no result, and none left from before
        assert not candidates and not (output_dir / "best_scheme.json").exists()
        return
    chosen = json.loads((output_dir / "best_scheme.json").read_text())
    assert chosen["meta"]["selected_on"] == summary["selected_on"] == "dev"
    assert chosen["estimates"]["speedup/params"] >= 1.2
    assert chosen["metrics"]["wer/dev"] == min(row["wer/dev"] for row in candidates)
    assert [row["selected"] for row in candidates].count("on dev") == 1


# -- debug ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("experiment", [None, "baseline"])
@pytest.mark.parametrize("name", DEBUGS)
def test_debug_config_runs_under_logs_debug_never_runs(name, experiment, corpus, base, tmp_path):
    """The run directory that train.py would get (hydra.run.dir) lies under <root>/logs/debug, whatever the
    experiment says, and nothing is written under <root>/runs, where the real stages' results live."""
    root = tmp_path / "root"
    overrides = [o for o in run_overrides(corpus, base) if not o.startswith("paths.root_dir=")]
    overrides += [f"paths.root_dir={root}", f"debug={name}", "trainer.max_epochs=1", "trainer.max_time=null"]
    overrides += [f"+experiment={experiment}"] if experiment else []
    cfg = compose_train(overrides)
    if cfg.trainer.get("overfit_batches"):  # seconds, not minutes: one batch, validated once
        cfg = compose_train([*overrides, "trainer.overfit_batches=1", "trainer.check_val_every_n_epoch=1"])
    output_dir = Path(cfg.hydra.run.dir)
    assert output_dir.is_relative_to(root / "logs" / "debug"), output_dir
    with hydra_job(cfg, output_dir) as task:
        summary = train(task)
    assert_finite_rates(summary, cfg.data.test_splits)
    assert json.loads((output_dir / "summary.json").read_text())["params"] == summary["params"]
    assert not (root / "runs").exists(), sorted((root / "runs").rglob("*"))
