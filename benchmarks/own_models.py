#!/usr/bin/env python
"""Compressing two models from outside the project, measured: a torchaudio Conformer and an ``nn.LSTM`` language model.

    python benchmarks/own_models.py                 # the sizes of SIZES, 20 alternating repeats, one thread
    python benchmarks/own_models.py --repeats 5 --json runs/own_models.json

The steps are docs/compress_your_own_model.md's (public API only): factorized to 2x by the targets' parameters
(one SVD energy for all, ``uniform_energy_scheme``), pruned to 80% by magnitude, int8 (``quantize_int8``: dynamic
int8 Linears, weight-only int8 ``nn.LSTM`` and attention weights). For each: the parameter ratio (whole model, and
the targets' alone), the largest forward difference from the dense model (relative to its largest output) and
from the technique's own reference (``dense_equivalent``: the dense model holding the compressed matrices), the
measured CPU speed-up at batch 1 on one thread, and the saved file's size.

Timing: inference mode, one thread, thread CPU time; after a warm-up every repeat runs each model once in an order
that rotates between repeats; the speed-up is the median over repeats of dense / compressed within the repeat.
A factorized ``nn.LSTM`` or attention weight is a parametrization rebuilt on every call: the ``factorized`` row
times it as it is, ``factorized, inference`` its :func:`compress.inference_form.inference_form` (the ``nn.LSTM``
recurrence run on the factors, attention weights built once; the size, ratio and errors are the factorized
model's). Weights are random (PyTorch's initialization):
their flat spectra make the factorization error far larger than a trained model's.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchaudio.models import Conformer

from compress.inference_form import inference_form
from compress.manual import uniform_energy_scheme
from compress.quantize import int8_state_dict, quantize_int8, save_int8
from compress.scheme import Scheme, apply_scheme, count_parameters, dense_equivalent
from compress.sparse_state import save_sparse
from compress.svd import SvdCache
from compress.targets import discover_targets

# every size and setting of this benchmark (one place)
SIZES = {"conformer": dict(input_dim=144, num_heads=4, ffn_dim=576, num_layers=16, depthwise_conv_kernel_size=31),
         "conformer_frames": 100,  # 4 s of audio after 4x subsampling
         "lm": dict(vocab=10000, size=512, layers=2), "lm_tokens": 32}
SETTINGS = {"speedup": 2.0, "sparsity": 0.8, "repeats": 20, "warmup": 3, "seed": 0}


class LstmLM(nn.Module):
    """Embedding, ``nn.LSTM`` and an output Linear: tokens ``(B, T)`` -> logits ``(B, T, vocab)``."""

    def __init__(self, vocab: int, size: int, layers: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, size)
        self.lstm = nn.LSTM(size, size, layers, batch_first=True)
        self.head = nn.Linear(size, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(self.embedding(tokens))[0])


def cpu_name() -> str:
    """``model name`` and the widest vector extension of ``/proc/cpuinfo``'s flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")
    flags = set(next((line for line in lines if line.startswith("flags")), "").split())
    return f"{name}, {'AVX-512' if 'avx512f' in flags else 'AVX2' if 'avx2' in flags else 'no AVX2'}"


def factorize(model: nn.Module, speedup: float) -> nn.Module:
    targets = discover_targets(model)
    cache = SvdCache()
    scheme = uniform_energy_scheme(targets, {t.name: t.weight(model) for t in targets}, cache, speedup)
    return apply_scheme(model, scheme, targets, cache)


def prune(model: nn.Module, sparsity: float) -> nn.Module:
    targets = discover_targets(model)
    scheme = Scheme.build(targets, {t.name: {"sparsity": sparsity} for t in targets}, "manual")
    return apply_scheme(model, scheme, targets)


def file_bytes(write: Callable[[Path], object]) -> int:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt"
        write(path)
        return path.stat().st_size


def dense_bytes(state: dict) -> int:
    buffer = io.BytesIO()
    torch.save({k: v for k, v in state.items() if not k.endswith("_mask")}, buffer)
    return buffer.getbuffer().nbytes


def timed(models: dict[str, nn.Module], run: Callable[[nn.Module], torch.Tensor], repeats: int,
          warmup: int) -> dict[str, dict]:
    """Alternating timing (module docstring): ``{name: {"ms": median, "speedup": median ratio to "dense"}}``."""
    names = list(models)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(warmup + repeats):
        order = names[repeat % len(names):] + names[: repeat % len(names)]
        for name in order:
            model = models[name]
            with torch.inference_mode():
                start = time.thread_time()
                run(model)
                elapsed = time.thread_time() - start
            if repeat >= warmup:
                times[name].append(elapsed)
    return {name: {"ms": round(1e3 * statistics.median(times[name]), 2),
                   "speedup": round(statistics.median(d / t for d, t in zip(times["dense"], times[name],
                                                                             strict=True)), 2)}
            for name in names}


def measure(name: str, model: nn.Module, run: Callable[[nn.Module], torch.Tensor], settings: dict) -> list[dict]:
    """The rows of one model: dense and every technique."""
    model.eval()
    targets = discover_targets(model)
    target_params = sum(t.params for t in targets)
    factorized = factorize(model, settings["speedup"])
    pruned = prune(model, settings["sparsity"])
    int8 = quantize_int8(model)
    variants = {"dense": model, "factorized": factorized, "factorized, inference": inference_form(factorized),
                "pruned 80%": pruned, "int8": int8}
    speed = timed(variants, run, settings["repeats"], settings["warmup"])
    with torch.inference_mode():
        reference = run(model)
        scale = float(reference.abs().max())
        own = {"factorized": run(dense_equivalent(model, factorized, targets)),
               "pruned 80%": run(dense_equivalent(model, pruned, targets))}
        rows = []
        for variant, compressed in variants.items():
            output = run(compressed)
            params = count_parameters(variants[variant.split(",")[0]]) if variant != "int8" else count_parameters(model)
            kept = target_params - (count_parameters(model) - params)
            if variant == "pruned 80%":
                kept = sum(int((t.weight(pruned) != 0).sum()) for t in targets)
                params = count_parameters(model) - (target_params - kept)
            base = variant.split(",")[0]
            rows.append({"model": name, "technique": variant,
                         "params_ratio": round(count_parameters(model) / params, 2),
                         "targets_ratio": round(target_params / kept, 2),
                         "max_error": round(float((output - reference).abs().max()) / scale, 4),
                         "error_vs_own_reference": (round(float((output - own[base]).abs().max()) / scale, 7)
                                                    if base in own else None),
                         **speed[variant]})
    sizes = {"fp32_dense": dense_bytes(model.state_dict()),
             "fp32_pruned_sparse": file_bytes(lambda path: save_sparse(path, pruned)),
             "int8": file_bytes(lambda path: save_int8(path, int8)),
             "int8_pruned_dense": dense_bytes(int8_state_dict(quantize_int8(pruned))),
             "int8_pruned_sparse": file_bytes(lambda path: save_int8(path, quantize_int8(pruned)))}
    rows.append({"model": name, "technique": "file bytes", **sizes})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=SETTINGS["repeats"])
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    settings = {**SETTINGS, "repeats": args.repeats}
    torch.set_num_threads(1)
    torch.manual_seed(settings["seed"])
    conformer = Conformer(**SIZES["conformer"])
    frames = SIZES["conformer_frames"]
    features, lengths = torch.randn(1, frames, SIZES["conformer"]["input_dim"]), torch.tensor([frames])
    lm = LstmLM(**SIZES["lm"])
    tokens = torch.randint(0, SIZES["lm"]["vocab"], (1, SIZES["lm_tokens"]))
    print(f"CPU: {cpu_name()}; torch {torch.__version__}; batch 1, 1 thread, {settings['repeats']} alternating repeats")
    print(f"Conformer {SIZES['conformer']}: {count_parameters(conformer) / 1e6:.2f} M parameters, {frames} frames")
    print(f"LSTM LM {SIZES['lm']}: {count_parameters(lm) / 1e6:.2f} M parameters, {SIZES['lm_tokens']} tokens")
    rows = measure("Conformer", conformer, lambda m: m(features, lengths)[0], settings)
    rows += measure("LSTM LM", lm, lambda m: m(tokens), settings)
    header = f"{'model':10} {'technique':22} {'params':>7} {'targets':>8} {'max err':>8} {'vs own ref':>10} " \
             f"{'ms':>8} {'speed-up':>8}"
    print(header)
    for row in rows:
        if row["technique"] == "file bytes":
            sizes = ", ".join(f"{k} {v / 2**20:.2f} MB" for k, v in row.items() if k not in ("model", "technique"))
            print(f"{row['model']:10} files: {sizes}")
            continue
        own = "" if row["error_vs_own_reference"] is None else f"{row['error_vs_own_reference']:.1e}"
        print(f"{row['model']:10} {row['technique']:22} {row['params_ratio']:>6.2f}x {row['targets_ratio']:>7.2f}x "
              f"{row['max_error']:>8.2%} {own:>10} {row['ms']:>8.2f} {row['speedup']:>7.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cpu": cpu_name(), "sizes": SIZES, "settings": settings, "rows": rows},
                                        indent=2))


if __name__ == "__main__":
    main()
