#!/usr/bin/env python
"""Generate the embedded LibriSpeech-format corpus (synthesized English speech).

    python scripts/make_corpus.py                       # conf/corpus/synthetic.yaml -> data/synthetic
    python scripts/make_corpus.py --hard                # conf/corpus/synthetic_hard.yaml
    python scripts/make_corpus.py --out DIR --train 3000 --dev 400 --test 400 --seed 0
    python scripts/make_corpus.py --text my_book.txt snr_db=[15,30]   # any other key as key=value

Defaults live in conf/corpus/; flags and key=value overrides change them for one build.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from asr.data.synthetic.build import CorpusSpec, build_corpus
from asr.data.synthetic.text import TextSourceError
from common.cli import cli_main

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "corpus"


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="corpus root to write")
    parser.add_argument("--train", type=int, help="training utterances")
    parser.add_argument("--dev", type=int, help="dev utterances")
    parser.add_argument("--test", type=int, help="test utterances")
    parser.add_argument("--seed", type=int, help="random seed (the corpus is deterministic for a seed)")
    parser.add_argument("--text", help="plain-text file to take sentences from (default: Jane Austen)")
    parser.add_argument("--top-words", type=int, help="keep sentences made of the N most frequent words")
    parser.add_argument("--jobs", type=int, help="worker processes (0 = all cores)")
    parser.add_argument("--hard", action="store_true", help="harder variant: conf/corpus/synthetic_hard.yaml")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_known_args(argv)


@cli_main("make_corpus")
def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="synthetic_hard" if args.hard else "synthetic", overrides=overrides)
    for key in ("out", "seed", "text", "top_words", "jobs"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    for split in ("train", "dev", "test"):
        if getattr(args, split) is not None:
            if split not in cfg.splits:
                raise SystemExit(f"--{split}: the corpus config has no split '{split}' (splits: {list(cfg.splits)})")
            cfg.splits[split] = getattr(args, split)
            cfg.speakers[split] = min(cfg.speakers[split], getattr(args, split))
    spec_dict = OmegaConf.to_container(cfg, resolve=True)
    for key in ("rate", "pitch", "intonation", "snr_db", "gain", "pad_seconds"):
        spec_dict[key] = tuple(spec_dict[key])
    spec = CorpusSpec(**spec_dict)
    try:
        manifest = build_corpus(spec, progress=not args.quiet)
    except (TextSourceError, FileExistsError, ValueError) as err:
        print(f"make_corpus: error: {err}", file=sys.stderr)
        return 2
    for split, stats in manifest["splits"].items():
        print(f"{split:>8}: {stats['utterances']} utterances, {stats['speakers']} speakers, {stats['hours']} h")
    print(f"corpus at {spec.out} (built in {manifest['build_seconds']} s on {manifest['processes']} processes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
