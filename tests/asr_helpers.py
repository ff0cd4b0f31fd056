"""Shared set-up for the model/training/streaming tests: tiny models, the tiny corpus prepared once,
Hydra composition that mirrors ``@hydra.main``, and one short training run reused by several files.

Expensive results are memoized per process (keyed by the tiny corpus of the pytest run), so test files can
share them through their own fixtures without a conftest entry.
"""

from __future__ import annotations

import copy
import importlib.util
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from asr.data.datamodule import AsrDataModule

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
VOCAB = 40  # sentencepiece pieces trained on the tiny corpus's 24 training transcripts

TINY_MODEL_OVERRIDES = [
    "model.encoder.hidden_size=16", "model.encoder.num_layers=2", "model.decoder.hidden_size=16",
    "model.decoder.attention_size=16", "model.decoder.embedding_size=8", "model.decoder.pre_output_size=16",
]


def tiny_decoding(**overrides) -> dict:
    """The ``decoding`` settings of conf/decoding/default.yaml with ``overrides``."""
    settings = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "decoding" / "default.yaml"))
    settings.update(overrides)
    return settings


def tiny_model_config(**decoder) -> dict:
    """``AsrModel`` keyword arguments of a tiny model (``decoder`` entries override)."""
    settings = dict(embedding_size=8, hidden_size=16, attention_size=16, pre_output_size=16, chunk_size=3,
                    init_r=0.0, init_gain=3.0, noise_std=0.0, dropout=0.0)
    settings.update(decoder)
    return dict(encoder=dict(hidden_size=16, num_layers=2, pool=[2, 2], dropout=0.0), decoder=settings,
                ctc_weight=0.0, label_smoothing=0.1)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: on a busy 2-core machine, two OpenMP threads make tiny ops ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


_MEMO: dict[tuple, object] = {}


def prepared_datamodule(tiny_corpus: Path, workdir: Path) -> AsrDataModule:
    """The tiny corpus as a data module (tokenizer of ``VOCAB`` pieces, features and CMVN under
    ``workdir``, nothing written into the corpus), prepared and set up once per process."""
    key = ("datamodule", str(tiny_corpus))
    if key not in _MEMO:
        datamodule = AsrDataModule(root=str(tiny_corpus), train_split="train", dev_splits=["dev"],
                                   test_splits=["test"], cache_dir=str(workdir / "features"),
                                   tokenizer=dict(vocab_size=VOCAB, dir=str(workdir / "tokenizer")),
                                   spec_augment=None, batch_size=8, eval_batch_size=8, feature_jobs=1,
                                   progress=False)
        datamodule.prepare_data()
        datamodule.setup("fit")
        _MEMO[key] = datamodule
    return _MEMO[key]


def tiny_assets(tiny_corpus: Path, tmp_path_factory):
    """The tiny corpus's front-end assets (tokenizer, CMVN, feature settings)."""
    return prepared_datamodule(tiny_corpus, shared_dir(tmp_path_factory)).assets()


def streaming_waves(tiny_corpus: Path, assets) -> list[torch.Tensor]:
    """Two dev utterances and one test utterance of the tiny corpus as waveforms."""
    from asr.data.audio import load_audio
    from asr.data.corpus import read_split

    utterances = read_split(tiny_corpus, "dev")[:2] + read_split(tiny_corpus, "test")[:1]
    return [load_audio(u.audio_path, assets.features.sample_rate) for u in utterances]


def firing_model(assets, seed: int, **decoder):
    """A random tiny ``AsrModel`` whose hard attention fires on some frames and not others, so that its boundary
    moves through the utterance (mono keys scaled up: energies vary strongly over frames)."""
    from asr.model.asr_model import AsrModel

    torch.manual_seed(seed)
    model = AsrModel(assets.tokenizer.vocab_size, assets.features.n_mels,
                     **tiny_model_config(init_r=-1.5, init_gain=3.0, **decoder)).eval()
    with torch.no_grad():
        model.decoder.attention.mono_key.weight.mul_(10.0)
    return model


# -- Hydra ------------------------------------------------------------------------------------
def compose_root(root: str, overrides: list[str]) -> DictConfig:
    """``conf/<root>.yaml`` with ``overrides``, including the ``hydra`` node, as its entry point would see it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(root, overrides=overrides, return_hydra_config=True)


def compose_train(overrides: list[str]) -> DictConfig:
    """``conf/train.yaml`` as ``train.py`` would see it."""
    return compose_root("train", overrides)


def compose_search(overrides: list[str]) -> DictConfig:
    """``conf/search.yaml`` as ``search.py`` would see it."""
    return compose_root("search", overrides)


def search_overrides(base: Path, corpus: Path, checkpoint: Path, *extra: str, options: int = 4) -> list[str]:
    """Overrides that run search.py's config from ``checkpoint`` on the runs' copy of the tiny corpus, quietly: a
    uniform space of ``options`` ranks per target, a_t = 1.5, a random 6-utterance proxy, no sensitivity table;
    the paper's RL (search=aggressive) unless a later override names another searcher."""
    return ["search=aggressive", f"ckpt={checkpoint}", f"data.root={corpus}", f"data.cache_dir={base / 'features'}",
            f"data.tokenizer.vocab_size={VOCAB}", f"data.tokenizer.dir={base / 'tokenizer'}", "data.feature_jobs=1",
            "data.progress=false", "logger=csv", "proxy=random", "proxy_size=6",
            "search.space.kind=uniform", f"search.space.options={options}", "search.target_speedup=1.5",
            "report.curve_speedups=[1.5]", f"sensitivity_table={base / 'no-table.json'}", *extra]


@contextmanager
def hydra_job(cfg: DictConfig, output_dir: Path) -> Iterator[DictConfig]:
    """What ``@hydra.main`` does around the task function: set ``hydra.runtime.output_dir``, register
    the Hydra config (so ``${hydra:runtime.output_dir}`` resolves) and hand over the config without
    its ``hydra`` node. The previous Hydra config is restored afterwards."""
    cfg = copy.deepcopy(cfg)
    with read_write(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = str(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    instance = HydraConfig.instance()
    previous = instance.cfg
    instance.set_config(cfg)
    task = copy.deepcopy(cfg)
    with read_write(task), open_dict(task):
        del task["hydra"]
    try:
        yield task
    finally:
        instance.cfg = previous


def run_overrides(corpus: Path, workdir: Path, *extra: str) -> list[str]:
    """Overrides that run train.py's config on a copy of the tiny corpus with a tiny model, quietly."""
    return [
        f"paths.root_dir={workdir}",
        f"data.root={corpus}",
        f"data.cache_dir={workdir / 'features'}",
        f"data.tokenizer.vocab_size={VOCAB}",
        f"data.tokenizer.dir={workdir / 'tokenizer'}",
        "data.feature_jobs=1",
        "data.progress=false",
        "data.batch_size=8",
        "data.eval_batch_size=8",
        "logger=csv",
        "callbacks.progress_bar=null",
        "trainer.enable_progress_bar=false",
        "decoding.beam_size=2",
        *TINY_MODEL_OVERRIDES,
        *extra,
    ]


def corpus_copy_for_runs(tiny_corpus: Path, base: Path) -> Path:
    """One writable copy of the tiny corpus shared by every training run of the process."""
    key = ("corpus", str(tiny_corpus))
    if key not in _MEMO:
        target = base / "corpus"
        shutil.copytree(tiny_corpus, target)
        _MEMO[key] = target
    return _MEMO[key]


def trained_run(tiny_corpus: Path, base: Path) -> tuple[Path, dict]:
    """One short real training run (one epoch, test on): ``(paths.output_dir, summary)``."""
    key = ("trained", str(tiny_corpus))
    if key not in _MEMO:
        from asr.train import train

        corpus = corpus_copy_for_runs(tiny_corpus, base)
        output_dir = base / "trained"
        cfg = compose_train(run_overrides(corpus, base, "trainer.max_epochs=1", "test=true"))
        with hydra_job(cfg, output_dir) as task, one_thread():
            summary = train(task)
        _MEMO[key] = (output_dir, summary)
    return _MEMO[key]


def search_stage(tiny_corpus: Path, tmp_path_factory, name: str, *fixed: str, options: int = 4):
    """search.py's task on the tiny corpus from the shared one-epoch run (``trained_run``), writing to
    ``<shared>/<name>``: returns ``(run, output_dir)``, where ``run(*extra)`` runs the search once on one thread
    with ``search_overrides`` + ``fixed`` + ``extra`` and returns its report."""
    from shrinkml.search import run_search

    base = shared_dir(tmp_path_factory)
    run_dir, _ = trained_run(tiny_corpus, base)
    corpus = corpus_copy_for_runs(tiny_corpus, base)
    output_dir = base / name

    def run(*extra: str) -> dict:
        cfg = compose_search(search_overrides(base, corpus, run_dir / "checkpoints" / "last.ckpt",
                                              f"paths.root_dir={base}", f"output_dir={output_dir}", *fixed, *extra,
                                              options=options))
        with one_thread(), hydra_job(cfg, output_dir) as task:
            return run_search(task)

    return run, output_dir


def shared_dir(tmp_path_factory) -> Path:
    """One directory per pytest run for the memoized results."""
    path = tmp_path_factory.getbasetemp() / "asr_shared"
    path.mkdir(exist_ok=True)
    return path


def small_asr_model(compressed: bool = False):
    """A 30-token, 20-feature ``AsrModel`` (hidden 32, 2 encoder layers), seeded; with ``compressed`` every target
    factorized at a third of its largest rank (the low-rank path of decoding, quantization and storage)."""
    from asr.model.asr_model import AsrModel
    from compress.scheme import Scheme, apply_scheme
    from compress.svd import SvdCache
    from compress.targets import discover_targets

    torch.manual_seed(0)
    model = AsrModel(30, 20, dict(hidden_size=32, num_layers=2, pool=[2]),
                     dict(hidden_size=32, attention_size=16, embedding_size=8, pre_output_size=24)).eval()
    if not compressed:
        return model
    targets = discover_targets(model)
    scheme = Scheme.build(targets, {t.name: max(1, t.max_rank // 3) for t in targets}, "test")
    return apply_scheme(model, scheme, targets, SvdCache()).eval()


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_module(path: Path, name: str) -> ModuleType:
    """The Python file ``path`` imported as module ``name`` (scripts and benchmarks are files, not a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module."""
    return load_module(BENCHMARKS / f"{name}.py", f"_benchmark_{name}")
