"""Hydra data configs: they compose, instantiate the data module, and agree with the code."""

from __future__ import annotations

import re
from dataclasses import asdict, fields
from pathlib import Path

import hydra
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from asr.data.datamodule import AsrDataModule
from asr.data.errors import DataError
from asr.data.features import FeatureConfig, SpecAugment
from asr.data.synthetic.build import CorpusSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_in(config_dir: Path, name: str, overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose(name, overrides=overrides or [])


def test_synthetic_data_config(monkeypatch):
    monkeypatch.setenv("SHRINKML_ROOT", "/somewhere")
    cfg = compose_in(CONF, "train", ["data=synthetic"]).data
    assert cfg._target_ == "asr.data.datamodule.AsrDataModule"
    assert (cfg.root, cfg.train_split, list(cfg.dev_splits), list(cfg.test_splits)) == (
        "/somewhere/data/synthetic", "train", ["dev"], ["test"])
    assert cfg.cache_dir == "/somewhere/cache/features" and cfg.tokenizer.dir == "/somewhere/data/synthetic/tokenizer"
    assert cfg.download is False
    assert FeatureConfig(**cfg.features) == FeatureConfig()  # the YAML and the dataclass defaults agree
    assert set(cfg.spec_augment) == {"freq_masks", "freq_width", "time_masks", "time_width", "time_ratio"}


def test_librispeech_data_config():
    cfg = compose_in(CONF, "train", ["data=librispeech"]).data
    assert cfg._target_ == "asr.data.datamodule.AsrDataModule"
    assert cfg.train_split == "train-clean-100"
    assert list(cfg.dev_splits) == ["dev-clean", "dev-other"]
    assert list(cfg.test_splits) == ["test-clean", "test-other"]
    assert cfg.download is False
    assert cfg.root.endswith("/LibriSpeech") and cfg.tokenizer.dir.endswith("/tokenizer/librispeech")
    assert (cfg.tokenizer.vocab_size, cfg.tokenizer.model_type, cfg.preload) == (10000, "bpe", False)
    assert FeatureConfig(**cfg.features) == FeatureConfig()  # inherited from the synthetic config
    assert (cfg.spec_augment.freq_width, cfg.spec_augment.time_width) == (27, 100)


def test_librispeech_config_never_downloads_by_default(tmp_path):
    cfg = compose_in(CONF, "train", ["data=librispeech", f"data.root={tmp_path / 'LibriSpeech'}",
                                     f"data.cache_dir={tmp_path / 'cache'}", f"data.tokenizer.dir={tmp_path / 'tok'}"])
    dm = hydra.utils.instantiate(cfg.data)
    assert isinstance(dm, AsrDataModule) and dm.all_splits == ["train-clean-100", "dev-clean", "dev-other",
                                                                "test-clean", "test-other"]
    with pytest.raises(DataError, match="LibriSpeech does not exist"):
        dm.prepare_data()
    assert not (tmp_path / "LibriSpeech").exists()


def test_instantiate_synthetic_data_module_on_the_tiny_corpus(tiny_corpus, tmp_path):
    cfg = compose_in(CONF, "train", [f"data.root={tiny_corpus}", f"data.cache_dir={tmp_path / 'features'}",
                                     f"data.tokenizer.dir={tmp_path / 'tokenizer'}", "data.tokenizer.vocab_size=60",
                                     "data.feature_jobs=1", "data.progress=false", "data.batch_size=8", "seed=7"])
    dm = hydra.utils.instantiate(cfg.data)
    assert isinstance(dm, AsrDataModule)
    assert dm.root == tiny_corpus and dm.hparams.seed == 7 and dm.vocab_size == 60
    assert dm.feature_cfg == FeatureConfig() and isinstance(dm.spec_augment, SpecAugment)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["features"].shape[0] == 8 and batch["features"].shape[2] == 80
    assert len(dm.val_dataloader()) == 1


def test_spec_augment_null_switches_it_off(tmp_path):
    cfg = compose_in(CONF, "train", ["data.spec_augment=null", f"data.root={tmp_path}", f"data.cache_dir={tmp_path}"])
    assert hydra.utils.instantiate(cfg.data).spec_augment is None


@pytest.mark.parametrize("trainer", ["cpu", "ddp"])
def test_trainers_leave_sharding_to_the_bucket_sampler(trainer):
    cfg = compose_in(CONF, "train", [f"trainer={trainer}"])
    assert cfg.trainer.use_distributed_sampler is False


@pytest.mark.parametrize("name", ["synthetic", "synthetic_hard"])
def test_corpus_configs_match_the_generator_settings(name):
    cfg = compose_in(CONF / "corpus", name)
    settings = OmegaConf.to_container(cfg, resolve=True)
    assert set(settings) == {f.name for f in fields(CorpusSpec)}
    spec = CorpusSpec(**settings)
    assert list(spec.splits) == ["train", "dev", "test"] and set(spec.speakers) == set(spec.splits)
    assert all(0 < spec.speakers[s] <= spec.splits[s] for s in spec.splits)
    assert asdict(spec)["text"] is None  # the default text is Jane Austen's


def test_hard_corpus_config_overrides():
    easy, hard = compose_in(CONF / "corpus", "synthetic"), compose_in(CONF / "corpus", "synthetic_hard")
    assert (easy.unseen_templates, hard.unseen_templates) == (False, True)
    assert hard.top_words is None and hard.out == "data/synthetic_hard" and hard.max_words > easy.max_words
    assert hard.splits == easy.splits and hard.accents == easy.accents


def test_one_default_searcher_named_once_run_by_search_py_make_search_retraining_and_the_budget():
    """conf/search.yaml names the default searcher; make search runs it (SEARCH=... another), make retrain
    retrains its scheme, and neither the experiments nor the budget name a searcher again."""
    import subprocess

    default = compose_in(CONF, "search").search.name
    assert default == "optuna_tpe"

    def dry_run(*args: str) -> str:
        return subprocess.run(["make", "-n", *args], cwd=CONF.parent, capture_output=True, text=True,
                              check=True, timeout=60).stdout

    assert f"search.py search={default} on_stale=restart" in dry_run("search")
    assert "search.py search=aggressive on_stale=restart" in dry_run("search", "SEARCH=aggressive")
    joint = dry_run("search", "retrain", "SPACE=joint", "BY=latency", "TARGET=2.5")
    name = f"{default}_joint_latency_2.5"
    assert (f"search.py search={default} search.name={name} search.space.kind=joint by=latency "
            f"search.target_speedup=2.5 logger.wandb.group={name} on_stale=restart") in joint
    assert f"task_name=retrain_{name} logger.wandb.group={name}" in joint
    assert f"compress.scheme=runs/search/{name}/best_scheme.json" in joint
    assert "search.py search=conservative_tpe on_stale=restart" in dry_run("search-conservative")
    assert f"compress.scheme=runs/search/{default}/best_scheme.json" in dry_run("retrain")
    for path in [CONF.parent / "Makefile", *CONF.glob("*.yaml"), *(CONF / "experiment").glob("*.yaml")]:
        assert path.name == "search.yaml" or default not in path.read_text(), path
    retrain = compose_in(CONF, "train", ["+experiment=retrain"])
    assert OmegaConf.is_missing(retrain.compress, "scheme")  # given by make retrain (or the budget), never a default
    assert not any(o.startswith("search=") for o in compose_in(CONF, "budget").search_overrides)


def test_targets_measured_speedup_settings_and_the_finetuning_recipe_each_live_in_one_group():
    """conf/targets, conf/latency/speedup.yaml and conf/finetune hold them; the roots and experiments that use
    them compose them, and none repeats a value."""
    targets = OmegaConf.to_container(OmegaConf.load(CONF / "targets" / "default.yaml"))
    for root in ("budget", "condense", "manual", "search", "sensitivity"):
        assert OmegaConf.to_container(compose_in(CONF, root).targets) == targets, root
    speedup = OmegaConf.to_container(OmegaConf.load(CONF / "latency" / "speedup.yaml"))
    for root, key in (("budget", "latency"), ("prune_report", "latency"), ("quantize", "latency"),
                      ("train", "measure_speedup")):
        composed = OmegaConf.to_container(OmegaConf.select(compose_in(CONF, root), key))
        assert {k: composed[k] for k in speedup} == speedup, root
    recipe = OmegaConf.load(CONF / "finetune" / "default.yaml")
    for experiment in ("retrain", "retrain_dense", "retrain_kd", "prune"):
        cfg = compose_in(CONF, "train", [f"+experiment={experiment}"])
        for key in ("trainer.max_epochs", "trainer.gradient_clip_val", "module.optimizer.lr",
                    "module.scheduler.half_life_steps", "data.spec_augment"):
            assert OmegaConf.select(cfg, key) == OmegaConf.select(recipe, key), (experiment, key)
    assert compose_in(CONF, "budget").finetune.trainer.max_epochs == recipe.trainer.max_epochs
    for path in [*CONF.glob("*.yaml"), *(CONF / "experiment").glob("*.yaml")]:
        text = path.read_text()
        assert "exclude:" not in text and "repeats:" not in text and "half_life_steps:" not in text, path


def test_librispeech_960h_config_reads_the_three_training_splits_as_one_set(tmp_path):
    root = tmp_path / "LibriSpeech"
    (root / "dev-clean").mkdir(parents=True)
    cfg = compose_in(CONF, "train", ["data=librispeech960", f"data.root={root}", f"data.cache_dir={tmp_path}"]).data
    assert list(cfg.train_split) == ["train-clean-100", "train-clean-360", "train-other-500"]
    assert list(cfg.dev_splits) == ["dev-clean", "dev-other"] and cfg.tokenizer.vocab_size == 10000
    assert cfg.tokenizer.dir != compose_in(CONF, "train", ["data=librispeech"]).data.tokenizer.dir  # its own
    dm = hydra.utils.instantiate(cfg)
    assert dm.train_splits == list(cfg.train_split) and dm.all_splits[0] == "+".join(cfg.train_split)
    with pytest.raises(DataError, match=re.escape(f"split directory {root / 'train-clean-100'} not found")):
        dm.prepare_data()


def test_lhotse_settings_default_to_the_layout_and_lhotses_recipe_names(monkeypatch):
    monkeypatch.setenv("SHRINKML_ROOT", "/somewhere")
    synthetic = compose_in(CONF, "train").data
    assert synthetic.format == "librispeech"
    assert OmegaConf.to_container(synthetic.lhotse, resolve=True) == {
        "dir": "/somewhere/data/manifests", "prefix": "synthetic", "suffix": "jsonl.gz"}
    librispeech = compose_in(CONF, "train", ["data=librispeech", "data.format=lhotse"]).data
    assert librispeech.lhotse.prefix == "librispeech" and librispeech.lhotse.dir == synthetic.lhotse.dir
    dm = hydra.utils.instantiate(librispeech)
    assert (dm.format, dm.lhotse_prefix, dm.lhotse_suffix) == ("lhotse", "librispeech", "jsonl.gz")
    assert compose_in(CONF, "lhotse_manifests", ["data=librispeech960"]).cuts is False
