#!/usr/bin/env python
"""Validate a LibriSpeech-layout corpus (or Lhotse manifests) and print per split: utterances, hours, speakers,
vocabulary.

    python scripts/check_corpus.py data/synthetic
    python scripts/check_corpus.py /data/LibriSpeech --splits dev-clean test-clean
    python scripts/check_corpus.py data/manifests --lhotse synthetic     # Lhotse manifests synthetic_*.jsonl.gz

Every directory under the root is checked as a split (except hidden ones and the tokenizer's), so an
empty or misplaced split fails here as it would in scripts/prepare_data.py. Transcripts that are not in
the LibriSpeech form are normalized as training will normalize them, with one warning per file.
Exits with status 2 and one line naming the first bad file or directory, what is wrong and the fix.
"""

from __future__ import annotations

import argparse
import logging
import sys

from asr.data.validate import validate_corpus
from common.cli import cli_main


@cli_main("check_corpus")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="corpus root (holds one directory per split), or with --lhotse the manifests' "
                        "directory")
    parser.add_argument("--lhotse", metavar="PREFIX", help="read Lhotse manifests PREFIX_{recordings,supervisions,"
                        "cuts}_SPLIT.SUFFIX instead of the LibriSpeech layout (as data.format=lhotse does)")
    parser.add_argument("--suffix", default="jsonl.gz", help="the Lhotse manifests' suffix (default: %(default)s)")
    parser.add_argument("--splits", nargs="+", help="splits to check (default: all)")
    parser.add_argument("--no-decode", action="store_true", help="read audio headers only (faster)")
    args = parser.parse_args(argv)
    logging.basicConfig(format="check_corpus: warning: %(message)s", level=logging.WARNING)
    report = validate_corpus(args.root, args.splits, decode=not args.no_decode, lhotse_prefix=args.lhotse,
                             lhotse_suffix=args.suffix)
    print(f"{'split':<18}{'utterances':>11}{'hours':>9}{'speakers':>10}{'vocabulary':>12}  sample rates")
    for s in report:
        rates = ",".join(str(r) for r in sorted(s.sample_rates))
        print(f"{s.name:<18}{s.utterances:>11}{s.hours:>9.2f}{len(s.speakers):>10}{len(s.vocabulary):>12}  {rates}")
    for i, a in enumerate(report):
        for b in report[i + 1 :]:
            shared = a.speakers & b.speakers
            if shared:
                print(f"note: splits {a.name} and {b.name} share {len(shared)} speakers")
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
