#!/usr/bin/env python
"""Speed of the data pipeline: corpus build, feature extraction, DataModule batches.

    python benchmarks/data_pipeline.py                          # 600/100/100 utterances, ~1 min on 2 idle cores
    python benchmarks/data_pipeline.py --full                   # the default corpus size, 3000/400/400
    python benchmarks/data_pipeline.py --train 1200 --speakers 40 5 5

Everything is built from scratch in a temporary directory (removed at the end); the
corpus under data/ and the feature cache under cache/features are neither read nor
touched. Only the corpus text is reused from cache/text (fetched there on first use).
The script prints its numbers and checks nothing:

1. corpus build: build_corpus() with conf/corpus/synthetic.yaml, sizes from the flags;
2. feature extraction: FeatureCache.precompute() into an empty cache with 1 process and
   with all cores (real-time factor = audio seconds per wall second), then reading every
   entry back from the cache with get() (the files are in the OS page cache by then);
3. DataModule: AsrDataModule (conf/data/synthetic.yaml settings) prepare_data + setup,
   one epoch of the training loader (SpecAugment on), and the share of padding frames
   in its length-bucketed batches against batches of randomly shuffled utterances.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

# Heavy modules (torch, lightning, the asr package) are imported inside the functions: FeatureCache's
# process pool uses the "spawn" start method, whose workers re-import this script, and they should pay
# only for the imports the library's own workers need (lightning alone takes several seconds).
REPO = Path(__file__).resolve().parents[1]
CORPUS_CONF = REPO / "conf" / "corpus" / "synthetic.yaml"
DATA_CONF = REPO / "conf" / "data" / "synthetic.yaml"
SPLITS = ("train", "dev", "test")
SMALL_SPLITS = {"train": 600, "dev": 100, "test": 100}
SMALL_SPEAKERS = {"train": 20, "dev": 5, "test": 5}
_TUPLE_KEYS = ("rate", "pitch", "intonation", "snr_db", "gain", "pad_seconds")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, help=f"training utterances (default {SMALL_SPLITS['train']})")
    parser.add_argument("--dev", type=int, help=f"dev utterances (default {SMALL_SPLITS['dev']})")
    parser.add_argument("--test", type=int, help=f"test utterances (default {SMALL_SPLITS['test']})")
    parser.add_argument("--speakers", type=int, nargs=3, metavar=("TRAIN", "DEV", "TEST"),
                        help="speakers per split (default {train} {dev} {test}; capped at the utterances)".format(
                            **SMALL_SPEAKERS))
    parser.add_argument("--full", action="store_true",
                        help=f"the full default corpus size and speakers of {CORPUS_CONF.relative_to(REPO)} "
                             "(3000/400/400 utterances, 100/20/20 speakers); other size flags still override")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="processes for the corpus build and the parallel feature run (default: all cores, "
                             "%(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="training batch size (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="corpus, sampler and baseline seed (default %(default)s)")
    parser.add_argument("--tmp-dir", help="parent of the temporary directory (default: the system's)")
    parser.add_argument("--progress", action="store_true", help="show the library's progress bars")
    args = parser.parse_args(argv)
    for name in ("train", "dev", "test", "batch_size", "jobs"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.speakers is not None and min(args.speakers) < 1:
        parser.error("--speakers must be at least 1 each")
    return args


def corpus_spec(args: argparse.Namespace, out: Path):
    """conf/corpus/synthetic.yaml with out, splits, speakers, seed and jobs from the flags, as a CorpusSpec."""
    from asr.data.synthetic.build import CorpusSpec

    cfg = OmegaConf.to_container(OmegaConf.load(CORPUS_CONF), resolve=True)
    splits = dict(cfg["splits"]) if args.full else dict(SMALL_SPLITS)
    speakers = dict(cfg["speakers"]) if args.full else dict(SMALL_SPEAKERS)
    for split in SPLITS:
        if getattr(args, split) is not None:
            splits[split] = getattr(args, split)
    if args.speakers is not None:
        speakers = dict(zip(SPLITS, args.speakers, strict=True))
    speakers = {split: min(n, splits[split]) for split, n in speakers.items()}
    cfg.update(out=str(out), splits=splits, speakers=speakers, seed=args.seed, jobs=args.jobs)
    text_cache = Path(cfg["text_cache"])
    cfg["text_cache"] = str(text_cache if text_cache.is_absolute() else REPO / text_cache)
    if cfg["text"] and not Path(cfg["text"]).is_absolute():
        cfg["text"] = str(REPO / cfg["text"])
    for key in _TUPLE_KEYS:
        cfg[key] = tuple(cfg[key])
    return CorpusSpec(**cfg)


def data_config(args: argparse.Namespace, root: Path, cache_dir: Path) -> dict:
    """conf/data/synthetic.yaml's AsrDataModule arguments, pointed at the temporary corpus and cache."""
    cfg = OmegaConf.load(DATA_CONF)
    cfg.root, cfg.cache_dir, cfg.seed = str(root), str(cache_dir), args.seed
    cfg.tokenizer.dir = str(root / "tokenizer")
    cfg.batch_size, cfg.feature_jobs, cfg.progress = args.batch_size, args.jobs, args.progress
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    kwargs.pop("_target_", None)
    if not kwargs.get("spec_augment"):
        raise SystemExit(f"{DATA_CONF} switches SpecAugment off; this benchmark measures training batches with it")
    return kwargs


def disk_bytes(root: Path) -> tuple[int, int]:
    """(bytes allocated on disk as du counts them, apparent bytes) of every file under ``root``."""
    allocated = apparent = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            allocated += st.st_blocks * 512
            apparent += st.st_size
    return allocated, apparent


def padding(batches: list[list[int]], lengths) -> tuple[float, int, int]:
    """(padded / total frames, real frames, total frames) of ``batches`` padded to their longest item."""
    real = sum(int(lengths[b].sum()) for b in batches)
    total = sum(int(lengths[b].max()) * len(b) for b in batches)
    return (total - real) / total, real, total


def _startup_probe(barrier) -> None:
    """Pool initializer: import what FeatureCache's workers import, then report ready."""
    import torch

    import asr.data.features  # noqa: F401

    torch.set_num_threads(1)
    barrier.wait()


def worker_startup_seconds(jobs: int) -> float:
    """Seconds to start ``jobs`` spawned processes that import the feature code (what precompute pays first)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(jobs + 1)
    start = time.perf_counter()
    with ctx.Pool(jobs, initializer=_startup_probe, initargs=(barrier,)):
        barrier.wait()
        return time.perf_counter() - start


def timed(fn, *a, **kw):
    start = time.perf_counter()
    result = fn(*a, **kw)
    return result, time.perf_counter() - start


def machine() -> str:
    import torch

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{model}; os.cpu_count()={os.cpu_count()}, usable cores={affinity}, "
            f"torch threads={torch.get_num_threads()}; Python {platform.python_version()}, torch {torch.__version__}")


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run(args: argparse.Namespace, tmp: Path) -> list[tuple[str, str, str]]:
    import numpy as np
    import soundfile as sf
    import torch

    from asr.data.corpus import read_split
    from asr.data.datamodule import AsrDataModule
    from asr.data.features import FeatureCache, FeatureConfig
    from asr.data.synthetic.build import build_corpus

    rows: list[tuple[str, str, str]] = []  # (stage, measure, value)

    # 1. corpus build ----------------------------------------------------------------------
    spec = corpus_spec(args, tmp / "corpus")
    root = Path(spec.out)
    section(f"corpus build: {spec.splits} utterances, {spec.speakers} speakers, {spec.jobs} processes")
    manifest, build_s = timed(build_corpus, spec, progress=args.progress)
    utterances = {split: read_split(root, split) for split in spec.splits}
    paths = [u.audio_path for utts in utterances.values() for u in utts]
    n_utt = len(paths)
    audio_s = sum(info.frames / info.samplerate for info in map(sf.info, map(str, paths)))
    allocated, apparent = disk_bytes(root)
    print(f"{n_utt} utterances, {audio_s / 3600:.3f} h of audio ({audio_s / n_utt:.2f} s per utterance) in "
          f"{build_s:.1f} s = {n_utt / build_s:.1f} utt/s, {audio_s / build_s:.0f}x real time; "
          f"{allocated / 1e6:.1f} MB on disk ({apparent / 1e6:.1f} MB of file data)")
    for split, stats in manifest["splits"].items():
        print(f"  {split:>5}: {stats['utterances']} utterances, {stats['speakers']} speakers, {stats['hours']} h")
    rows += [("corpus build", "utterances", f"{n_utt}"),
             ("", "audio", f"{audio_s / 3600:.3f} h"),
             ("", f"wall time ({spec.jobs} proc)", f"{build_s:.1f} s"),
             ("", "throughput", f"{n_utt / build_s:.1f} utt/s"),
             ("", "on disk (du)", f"{allocated / 1e6:.1f} MB")]

    # 2. feature extraction: cold with 1 and N processes, then cached reads ----------------
    cfg = FeatureConfig(**OmegaConf.to_container(OmegaConf.load(DATA_CONF).features))
    cache = None
    for jobs in dict.fromkeys((1, args.jobs)):
        if jobs == 1 or len(paths) < 32:  # FeatureCache.precompute's serial path
            how = f"in this process, torch threads={torch.get_num_threads()}"
        else:
            how = f"{jobs} spawned worker processes with 1 torch thread each, their start-up included"
        section(f"features, cold cache, jobs={jobs} ({how})")
        cache = FeatureCache(tmp / f"features-jobs{jobs}", cfg)
        computed, seconds = timed(cache.precompute, paths, jobs=jobs, progress=args.progress,
                                  desc=f"features jobs={jobs}")
        print(f"{computed} utterances in {seconds:.2f} s = {computed / seconds:.1f} utt/s, "
              f"real-time factor {audio_s / seconds:.0f} (audio s per wall s)")
        rows += [(f"features cold, jobs={jobs}", "throughput", f"{computed / seconds:.1f} utt/s"),
                 ("", "real-time factor", f"{audio_s / seconds:.0f}x")]
        if jobs > 1 and len(paths) >= 32:
            startup = worker_startup_seconds(jobs)
            rest = f"{computed / (seconds - startup):.1f} utt/s" if seconds > startup else "n/a"
            print(f"of which about {startup:.1f} s is starting the {jobs} workers (spawn + importing torch and the "
                  f"feature code, measured separately); without it {rest}")
            rows += [("", "  of which worker start-up", f"{startup:.1f} s")]
    assert cache is not None
    section("features, cached: FeatureCache.get over every entry")
    frames = 0
    start = time.perf_counter()
    for p in paths:
        frames += cache.get(p).shape[0]
    seconds = time.perf_counter() - start
    entry_bytes = sum(f.stat().st_size for f in cache.dir.glob("*/*.npy"))
    print(f"{n_utt} entries ({frames} frames, {entry_bytes / 1e6:.1f} MB) in {seconds:.3f} s = "
          f"{n_utt / seconds:.0f} utt/s (files in the OS page cache)")
    rows += [("features cached (get)", "throughput", f"{n_utt / seconds:.0f} utt/s"),
             ("", "cache size", f"{entry_bytes / 1e6:.1f} MB")]

    # 3. DataModule -----------------------------------------------------------------------
    section(f"AsrDataModule: prepare_data + setup('fit'), one training epoch (batch {args.batch_size}, SpecAugment)")
    dm = AsrDataModule(**data_config(args, root, cache.dir.parent))
    _, prepare_s = timed(dm.prepare_data)
    _, setup_s = timed(dm.setup, "fit")
    print(f"prepare_data {prepare_s:.2f} s (tokenizer + CMVN, features already cached), setup {setup_s:.2f} s "
          f"(preload={dm.hparams.preload}, num_workers={dm.hparams.num_workers})")
    train = dm.datasets[dm.train_split]
    lengths = np.asarray(train.lengths)
    loader = dm.train_dataloader()
    bucketed: list[list[int]] = list(loader.batch_sampler)  # the epoch the loader will draw (epoch 0)
    n_batches = n_items = real = total = 0
    start = time.perf_counter()
    for batch in loader:
        n_batches += 1
        n_items += batch["features"].shape[0]
        real += int(batch["feature_lengths"].sum())
        total += batch["features"].shape[0] * batch["features"].shape[1]
    epoch_s = time.perf_counter() - start
    bucket_pad = (total - real) / total
    check_pad, _, _ = padding(bucketed, lengths)
    if abs(check_pad - bucket_pad) > 1e-9:
        print(f"note: padding of the sampler's batches ({check_pad:.4f}) differs from the loader's ({bucket_pad:.4f})")
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(lengths))
    shuffled = [order[i : i + args.batch_size].tolist() for i in range(0, len(order), args.batch_size)]
    random_pad, _, random_total = padding(shuffled, lengths)
    print(f"{n_batches} batches, {n_items} utterances in {epoch_s:.2f} s = {n_batches / epoch_s:.1f} batches/s, "
          f"{n_items / epoch_s:.0f} utt/s")
    print(f"padding: {bucket_pad:.1%} of {total} frames with length bucketing (jitter {dm.hparams.length_jitter}), "
          f"{random_pad:.1%} of {random_total} frames with random batches of {args.batch_size}; random batching "
          f"computes {random_total / total:.2f}x the frames")
    rows += [("DataModule", "prepare_data + setup", f"{prepare_s + setup_s:.2f} s"),
             ("", "train epoch", f"{n_batches / epoch_s:.1f} batches/s"),
             ("", "", f"{n_items / epoch_s:.0f} utt/s"),
             ("", "padding, bucketed", f"{bucket_pad:.1%}"),
             ("", "padding, random batches", f"{random_pad:.1%}"),
             ("", "frames random / bucketed", f"{random_total / total:.2f}x")]
    return rows


def load_average() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def print_table(rows: list[tuple[str, str, str]], wall_s: float, load_before: str) -> None:
    rows = [*rows, ("total", "benchmark wall time", f"{wall_s:.1f} s")]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    rule = "-" * (sum(widths) + 6)
    print(f"\n{rule}")
    print(f"command: {shlex.join(getattr(sys, 'orig_argv', sys.argv))}")
    print(f"machine: {machine()}")
    print(f"load average (1/5/15 min): {load_before} at the start, {load_average()} at the end "
          "(this run's own processes count too; other work on the machine skews every number)")
    print(rule)
    for index, (stage, measure, value) in enumerate(rows):
        if stage and index:
            print(rule)
        print(f"{stage:<{widths[0]}}   {measure:<{widths[1]}}   {value:>{widths[2]}}")
    print(rule)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = load_average()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="shrinkml-bench-", dir=args.tmp_dir) as tmp:
        print(f"temporary directory: {tmp}")
        rows = run(args, Path(tmp))
    print_table(rows, time.perf_counter() - start, load_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
