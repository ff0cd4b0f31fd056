#!/usr/bin/env python
"""Measured speed-up of sparse pruning on the sparse kernels: batch-1 decoding and the kernels alone (prints numbers).

    taskset -c 1 python benchmarks/sparse_speedup.py                  # runs/baseline, 40 dev utterances
    taskset -c 1 python benchmarks/sparse_speedup.py --json runs/sparse_speedup.json --repeats 9

From the baseline checkpoint every target but ``ctc_head`` is pruned one shot by magnitude
(``compress.prune.magnitude_mask``) at each ``--sparsities``, unstructured and in 1x4 and 4x1 blocks (a
block shape that does not divide a target leaves that target dense: ``decoder.attention.chunk_v``,
1 x 256, for 4x1). No fine-tuning: the pruned models' WER is irrelevant here, only their speed.

**Decoding.** Every model greedy-decodes the same dev utterances one at a time (batch 1) under
``torch.inference_mode`` on one thread, for the number of steps the dense model's greedy hypothesis
took (so a pruned model that would decode longer or shorter does the same work): encoder
(``model.encode``) and decoder (attention keys, then the C++ decoder step) timed apart on
``asr.latency.DecodeClock`` (the thread's CPU time). The dense model is the model as it ships: the
encoder on oneDNN's fused LSTM, the dense C++ decoder step. A pruned model decodes with
``sparse_min_sparsity=0`` (every pruned matrix on the sparse kernels: the encoder recurrences, the
decoder cell and step linears; the encoder's input side and the attention keys stay dense products).
All models run in turn within each repeat, in rotating order, after a warm-up (``asr.latency.alternate``);
a time is the median over repeats with its spread (lowest-highest), a speed-up the median of the
per-repeat ratios dense / pruned (``asr.latency.ratio_summary``). The table ends with the lowest
sparsity from which every sparser model of the pattern measured faster than the dense one. A control
row, ``unpruned``, runs the dense weights on the sparse kernels (every matrix packed, no zeros): what the
kernels' loop gains over oneDNN and the dense step by itself, which the pruned models' speed-ups include.

**Kernels.** For the real shapes -- each encoder layer's kernel ``4H x (in + H)``, the decoder cell's
``4H x (E + D + H)`` -- the batch-1 product ``W x`` dense (``F.linear``, MKL) against sparse (the block
shape ``asr.model.sparse.choose_block`` picks, and the pattern's own), and the encoder recurrence per step
on ``W_hh`` (``4H x H``): the library's dense loop against the sparse one; alternating as above.

**Factorized layers** (``--factorized-only`` runs this section alone, on a seeded random layer instead of the
checkpoint's): one encoder LSTM layer of the checkpoint's ``4H x (in + H)`` shape (``encoder.layers.1``, 1024 x
512) over ``--frames`` frames at batch 1, whole layer calls (``ConcatLSTM`` under ``torch.no_grad``), one thread,
the thread's CPU time, the minimum over alternating repeats: the dense layer on oneDNN's fused LSTM; the kernel
magnitude-pruned to 80% in 4x1 blocks (the sparse ``W_hh`` recurrence); factorized by truncated SVD
(``compress.lowrank.factorize_kernel``, ``U = U_k S^1/2``, ``V = S^1/2 V_k^T``) at each ``--ranks`` on the dense
rank-``k`` loop; the same factors on the sparse rank-``k`` recurrence without zeros (control); and the factors
magnitude-pruned (each of ``U`` and ``V``) to each ``--factor-sparsities``, unstructured and in 4x1 blocks, on the
sparse rank-``k`` recurrence (``asr.model.sparse.sparse_factorized_layer_forward`` without its cost check), with
whether decoding runs them there (``asr.model.sparse.sparse_factors_pay``) or on the dense rank-``k`` loop.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import date
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from asr.data.tokenizer import BOS_ID
from asr.latency import DecodeClock, alternate, ratio_summary, single_utterances, spread
from asr.model import lowrank_lstm, sparse
from asr.model.asr_model import AsrModel
from asr.model.lstm import ConcatLSTM
from common.atomic import write_json_atomic
from compress.lowrank import factorize_kernel
from compress.prune import magnitude_mask, prunable_matrices
from shrinkml.stage import data_module, eval_batches, load_recognizer

ROOT = Path(__file__).resolve().parents[1]
PATTERNS = {"unstructured": (1, 1), "1x4": (1, 4), "4x1": (4, 1)}
CONTROL = "unpruned 0"  # the dense weights on the sparse kernels: what the kernels' loop gains without zeros
EXCLUDE = ("ctc_head",)


# -- models ------------------------------------------------------------------------------------
def prune_one_shot(model: AsrModel, sparsity: float, block: tuple[int, int]) -> tuple[AsrModel, list[str]]:
    """A copy of ``model`` with every target but ``ctc_head`` magnitude-pruned to ``sparsity`` in ``block``
    blocks, and the targets the block shape does not divide (left dense)."""
    pruned = copy.deepcopy(model).eval()
    skipped = []
    with torch.no_grad():
        for matrix in prunable_matrices(pruned, exclude=EXCLUDE):
            weight = matrix.param
            if weight.shape[0] % block[0] or weight.shape[1] % block[1]:
                skipped.append(matrix.path)
                continue
            weight.mul_(magnitude_mask(weight, sparsity, block))
    return pruned, skipped


def kernel_blocks(model: AsrModel) -> dict[str, str]:
    """The block shape each pruned matrix of ``model`` is packed in (encoder layers: their ``W_hh``)."""
    out = {}
    for i, layer in enumerate(model.encoder.layers):
        w_hh = layer.kernel.detach()[:, layer.input_size:]
        out[f"encoder.layers.{i}"] = "x".join(map(str, sparse.choose_block(w_hh)))
    for matrix in prunable_matrices(model.decoder, exclude=("attention.mono_key", "attention.chunk_key",
                                                            "attention.chunk_v")):
        out[f"decoder.{matrix.target}"] = "x".join(map(str, sparse.choose_block(matrix.param.detach())))
    return out


# -- decoding ----------------------------------------------------------------------------------
Utterances = Sequence[tuple[torch.Tensor, torch.Tensor]]


def greedy_steps(model: AsrModel, utterances: Utterances) -> list[int]:
    """Steps of the dense model's greedy decoding of each utterance (its tokens and the end id)."""
    with torch.inference_mode():
        return [len(model.greedy_decode(features, lengths)[0]) + 1 for features, lengths in utterances]


def decode_fixed(model: AsrModel, features: torch.Tensor, lengths: torch.Tensor, steps: int,
                 clock: Callable[[], float]) -> tuple[float, float]:
    """Greedy decoding of one utterance for exactly ``steps`` steps: (encoder seconds, decoder seconds)."""
    start = clock()
    memory, memory_lengths = model.encode(features, lengths)
    encoded = clock()
    decoder = model.decoder
    mask = torch.arange(memory.shape[1]).unsqueeze(0) < memory_lengths.unsqueeze(1)
    keys = decoder.attention.keys(memory)
    state = decoder.initial_state(memory)
    tokens = torch.full((1,), BOS_ID, dtype=torch.long)
    plan = decoder.inference_plan()
    for _ in range(steps):
        log_probs, state, _ = decoder.step(memory, keys, mask, tokens, state, plan)
        tokens = log_probs.argmax(dim=-1)
    return encoded - start, clock() - encoded


def decode_pass(model: AsrModel, utterances: Utterances, steps: Sequence[int], clock: Callable[[], float]
                ) -> Callable[[], tuple[float, float]]:
    def timed() -> tuple[float, float]:
        encoder = decoder = 0.0
        with torch.inference_mode():
            for (features, lengths), n in zip(utterances, steps, strict=True):
                e, d = decode_fixed(model, features, lengths, n, clock)
                encoder, decoder = encoder + e, decoder + d
        return encoder, decoder

    return timed


def summarize(seconds: dict[str, list[tuple[float, float]]], audio: float) -> dict[str, dict]:
    """Per model: encoder / decoder / total ms per audio second (median and spread over repeats) and the
    speed-ups against ``dense`` (median and spread of per-repeat ratios), and against :data:`CONTROL`
    when it was timed (``speedup_vs_control``)."""
    parts = {name: {"encoder": [e for e, _ in runs], "decoder": [d for _, d in runs],
                    "total": [e + d for e, d in runs]} for name, runs in seconds.items()}
    out = {}
    for name, values in parts.items():
        row = {}
        for part, series in values.items():
            ms = [1000 * s / audio for s in series]
            ratio = ratio_summary(parts["dense"][part], series)
            row[part] = {"ms_per_s": statistics.median(ms), "ms_spread": spread(ms), "speedup": ratio["median"],
                         "speedup_spread": ratio["spread"]}
            if CONTROL in parts:
                control = ratio_summary(parts[CONTROL][part], series)
                row[part].update(speedup_vs_control=control["median"], speedup_vs_control_spread=control["spread"])
        out[name] = row
    return out


def pays_from(results: dict[str, dict], pattern: str, sparsities: Sequence[float], key: str = "speedup"
              ) -> float | None:
    """The lowest sparsity of ``pattern`` from which every sparser model decodes faster than the dense one
    (``key="speedup_vs_control"``: than the unpruned weights on the sparse kernels)."""
    start = None
    for s in sorted(sparsities, reverse=True):
        if results[f"{pattern} {s:g}"]["total"].get(key, 0.0) > 1.0:
            start = s
        else:
            break
    return start


# -- kernels -----------------------------------------------------------------------------------
def timed_loop(fn: Callable[[], object], calls: int, clock: Callable[[], float]) -> Callable[[], float]:
    def run() -> float:
        start = clock()
        for _ in range(calls):
            fn()
        return (clock() - start) / calls

    return run


def kernel_rows(model: AsrModel, sparsities: Sequence[float], repeats: int, calls: int) -> list[dict]:
    """Batch-1 products and recurrence steps, dense against sparse, on the real shapes (microseconds)."""
    clock = DecodeClock(1)
    generator = torch.Generator().manual_seed(0)
    shapes = {}  # one encoder layer per distinct shape, and the decoder cell
    for i, layer in enumerate(model.encoder.layers):
        shapes.setdefault(tuple(layer.kernel.shape), (f"encoder.layers.{i}", layer.kernel.detach(), layer.input_size))
    cell = model.decoder.cell
    shapes.setdefault(tuple(cell.kernel.shape), ("decoder.cell", cell.kernel.detach(), cell.input_size))
    rows = []
    with torch.inference_mode():
        for name, kernel, input_size in shapes.values():
            x = torch.randn(1, kernel.shape[1], generator=generator)
            hidden = kernel.shape[1] - input_size
            steps = 50
            x_gates = torch.randn(1, steps, kernel.shape[0], generator=generator)
            h0 = torch.zeros(1, hidden)
            dense_hh = torch.ops.shrinkml_lowrank.pack_dense(kernel[:, input_size:].contiguous())
            for s in sparsities:
                for pattern, block in PATTERNS.items():
                    weight = kernel * magnitude_mask(kernel, s, block)
                    chosen = sparse.choose_block(weight)
                    packed = {"chosen": sparse.pack(weight, chosen), "pattern": sparse.pack(weight, block)}
                    w_hh = weight[:, input_size:].contiguous()
                    packed_hh = sparse.pack(w_hh, sparse.choose_block(w_hh))
                    ops, loops = torch.ops.shrinkml_lowrank, max(1, calls // steps)
                    runs = {
                        "dense": timed_loop(partial(F.linear, x, kernel), calls, clock),
                        "sparse": timed_loop(partial(sparse.sparse_linear, x, packed["chosen"]), calls, clock),
                        "sparse_pattern": timed_loop(partial(sparse.sparse_linear, x, packed["pattern"]), calls, clock),
                        "dense_step": timed_loop(partial(ops.dense_forward, x_gates, dense_hh, h0, h0), loops, clock),
                        "sparse_step": timed_loop(
                            partial(ops.sparse_lstm_forward, x_gates, packed_hh, h0, h0, 1), loops, clock)}
                    timed = alternate(runs, repeats, warmup=1)
                    us = {k: 1e6 * statistics.median(v) for k, v in timed.items()}
                    us["dense_step"] /= steps
                    us["sparse_step"] /= steps
                    rows.append({"matrix": name, "shape": list(kernel.shape), "sparsity": s, "pattern": pattern,
                                 "block": "x".join(map(str, chosen)), "us": us,
                                 "speedup": us["dense"] / us["sparse"],
                                 "speedup_pattern_block": us["dense"] / us["sparse_pattern"],
                                 "speedup_step": us["dense_step"] / us["sparse_step"]})
    return rows


# -- factorized layers -------------------------------------------------------------------------
def factorized_layer(layer: ConcatLSTM, rank: int, sparsity: float, block: tuple[int, int],
                     min_sparsity: float | None) -> ConcatLSTM:
    """A copy of ``layer`` factorized at ``rank`` by truncated SVD, each factor magnitude-pruned to ``sparsity`` in
    ``block`` blocks, decoding with ``sparse_min_sparsity`` = ``min_sparsity``."""
    out = copy.deepcopy(layer).eval()
    with torch.no_grad():
        u_full, s, vh = torch.linalg.svd(layer.kernel.detach().double(), full_matrices=False)
        root = s[:rank].sqrt()
        u, v = (u_full[:, :rank] * root).float(), (root[:, None] * vh[:rank]).float()
        if sparsity > 0:
            u, v = u * magnitude_mask(u, sparsity, block), v * magnitude_mask(v, sparsity, block)
    factorize_kernel(out, u.contiguous(), v.contiguous())
    out.sparse_min_sparsity = min_sparsity
    return out


def factorized_cases(layer: ConcatLSTM, ranks: Sequence[int], sparsities: Sequence[float]
                     ) -> dict[str, ConcatLSTM]:
    """The layers :func:`factorized_rows` times, by name (see the module docstring)."""
    dense = copy.deepcopy(layer).eval()
    dense.sparse_min_sparsity = None
    pruned = copy.deepcopy(layer).eval()
    with torch.no_grad():
        pruned.kernel.mul_(magnitude_mask(pruned.kernel, 0.8, (4, 1)))
    pruned.sparse_min_sparsity = 0.5
    cases = {"dense (oneDNN fused)": dense, "dense pruned 0.8 4x1 (sparse W_hh)": pruned}
    for rank in ranks:
        cases[f"r{rank}"] = factorized_layer(layer, rank, 0.0, (1, 1), None)
        cases[f"r{rank} on the sparse loop (control)"] = factorized_layer(layer, rank, 0.0, (1, 1), 0.0)
        for s in sparsities:
            for pattern in ("unstructured", "4x1"):
                cases[f"r{rank}+s{s:g} {pattern}"] = factorized_layer(layer, rank, s, PATTERNS[pattern], 0.0)
    return cases


def factorized_rows(layer: ConcatLSTM, ranks: Sequence[int], sparsities: Sequence[float], frames: int,
                    repeats: int, calls: int) -> list[dict]:
    """Batch-1 milliseconds per layer call over ``frames`` frames (minimum and median over alternating repeats)."""
    clock = DecodeClock(1)
    x = torch.randn(1, frames, layer.input_size, generator=torch.Generator().manual_seed(0))
    cases = factorized_cases(layer, ranks, sparsities)

    def call(module: ConcatLSTM) -> None:
        with torch.no_grad():
            factors = lowrank_lstm.low_rank_factors(module)
            if factors is not None and module.sparse_min_sparsity is not None:  # the sparse loop, paying or not
                sparse.sparse_factorized_layer_forward(x, *factors, module.bias, None, 0.0, check_cost=False)
            else:
                module(x)

    with clock.checked():
        timed = alternate({name: timed_loop(partial(call, module), calls, clock) for name, module in cases.items()},
                          repeats, warmup=1)
    rows = []
    for name, module in cases.items():
        ms = [1000 * t for t in timed[name]]
        rank = name.split("+")[0].split()[0]
        rows.append({"layer": name, "ms": min(ms), "ms_median": statistics.median(ms),
                     "speedup_vs_dense": 1000 * min(timed["dense (oneDNN fused)"]) / min(ms),
                     "speedup_vs_rank": (1000 * min(timed[rank]) / min(ms)) if rank in timed else None,
                     **_factor_blocks(module)})
    return rows


def _factor_blocks(module: ConcatLSTM) -> dict:
    """``blocks``: the block shape the factors (V_h, U) are packed in on the sparse rank-k loop, and
    ``decodes_sparse``: whether decoding runs them there (``asr.model.sparse.sparse_factors_pay``; None: dense)."""
    factors = lowrank_lstm.low_rank_factors(module)
    if factors is None or module.sparse_min_sparsity is None:
        return {"blocks": "", "decodes_sparse": None}
    hidden = module.hidden_size
    pair = (factors[1].detach()[:, -hidden:], factors[0].detach())
    block = sparse.choose_factor_block(pair)
    return {"blocks": "x".join(map(str, block)), "decodes_sparse": sparse.sparse_factors_pay(pair, block)}


def print_factorized(rows: list[dict], shape: Sequence[int], frames: int, source: str) -> None:
    print(f"\nFactorized encoder layer {'x'.join(map(str, shape))} ({source}), batch 1, {frames} frames, one thread, "
          f"thread CPU time, ms per layer call (minimum and median over alternating repeats; a machine shared with "
          f"other processes: noisy); x = dense fused / this, x rank = the same rank's dense factors / this; pruned "
          f"factors timed on the sparse loop, decoding runs them there only where their fitted costs pay (decodes)")
    print(f"{'layer':<38} {'ms':>7} {'median':>7} {'x':>6} {'x rank':>6}  blocks  decodes")
    for r in rows:
        vs_rank = f"{r['speedup_vs_rank']:>6.2f}" if r["speedup_vs_rank"] is not None else f"{'':>6}"
        decodes = {None: "", True: "sparse", False: "dense"}[r["decodes_sparse"]]
        print(f"{r['layer']:<38} {r['ms']:>7.3f} {r['ms_median']:>7.3f} {r['speedup_vs_dense']:>6.2f} {vs_rank}  "
              f"{r['blocks']:>6}  {decodes}")


# -- report ------------------------------------------------------------------------------------
def print_decoding(results: dict[str, dict], sparsities: Sequence[float], blocks: dict[str, dict]) -> None:
    dense = results["dense"]
    print("\nBatch-1 greedy decoding, ms per second of audio (median over repeats, lowest-highest), speed-up = "
          "median of per-repeat dense / pruned")
    print(f"{'sparsity':>8} {'pattern':<12} {'encoder':>18} {'decoder':>18} {'total':>18} {'speed-up':>18} "
          f"{'enc x':>6} {'dec x':>6}  blocks packed")
    print(f"{'0':>8} {'dense':<12} " + " ".join(f"{_ms(dense[p]):>18}" for p in ("encoder", "decoder", "total"))
          + f" {'1.00':>18}")
    for s, pattern in [(0.0, "unpruned"), *((s, p) for s in sparsities for p in PATTERNS)]:
        if f"{pattern} {s:g}" in results:
            row = results[f"{pattern} {s:g}"]
            total = row["total"]
            low, high = total["speedup_spread"]
            used = blocks[f"{pattern} {s:g}"]
            shapes = ", ".join(f"{b} x{n}" for b, n in sorted(_counts(used.values()).items()))
            print(f"{s:>8g} {pattern:<12} " + " ".join(f"{_ms(row[p]):>18}" for p in ("encoder", "decoder", "total"))
                  + f" {total['speedup']:>6.2f} ({low:.2f}-{high:.2f})"
                  + f" {row['encoder']['speedup']:>6.2f} {row['decoder']['speedup']:>6.2f}  {shapes}")
    print("(unpruned: the dense weights on the sparse kernels, every matrix packed: the kernels' own gain over "
          "oneDNN and the dense step)")
    for pattern in PATTERNS:
        where = {}
        for key in ("speedup", "speedup_vs_control"):
            start = pays_from(results, pattern, sparsities, key)
            where[key] = f"from {start:g}" if start is not None else f"at none of {', '.join(map(str, sparsities))}"
        print(f"{pattern}: pruning pays (decodes faster than the dense model) {where['speedup']} sparsity; faster "
              f"than the unpruned weights on the same kernels {where['speedup_vs_control']}")


def print_kernels(rows: list[dict]) -> None:
    print("\nKernels, batch 1, microseconds (median over repeats): W x for the whole kernel, dense F.linear (MKL) "
          "against sparse (block picked / the pattern's block), and one recurrence step on W_hh (dense loop "
          "against sparse)")
    print(f"{'matrix':<18} {'shape':>9} {'sparsity':>8} {'pattern':<12} {'dense':>7} {'sparse':>7} {'block':>5} "
          f"{'x':>5} {'own blk':>7} {'x':>5} | {'step':>6} {'sparse':>7} {'x':>5}")
    for r in rows:
        us = r["us"]
        print(f"{r['matrix']:<18} {'x'.join(map(str, r['shape'])):>9} {r['sparsity']:>8g} {r['pattern']:<12} "
              f"{us['dense']:>7.1f} {us['sparse']:>7.1f} {r['block']:>5} {r['speedup']:>5.2f} "
              f"{us['sparse_pattern']:>7.1f} {r['speedup_pattern_block']:>5.2f} | {us['dense_step']:>6.1f} "
              f"{us['sparse_step']:>7.1f} {r['speedup_step']:>5.2f}")


def _ms(part: dict) -> str:
    low, high = part["ms_spread"]
    return f"{part['ms_per_s']:.1f} ({low:.1f}-{high:.1f})"


def _counts(values) -> dict:
    out: dict = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default=str(ROOT / "runs" / "baseline" / "checkpoints" / "best.ckpt"))
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9])
    parser.add_argument("--utterances", type=int, default=40, help="dev utterances decoded one at a time")
    parser.add_argument("--repeats", type=int, default=9, help="timed passes of every model (alternating)")
    parser.add_argument("--kernel-repeats", type=int, default=7)
    parser.add_argument("--kernel-calls", type=int, default=200, help="calls per timed kernel sample")
    parser.add_argument("--skip-kernels", action="store_true")
    parser.add_argument("--skip-decoding", action="store_true")
    parser.add_argument("--skip-factorized", action="store_true")
    parser.add_argument("--factorized-only", action="store_true",
                        help="only the factorized layers, on a seeded random 1024 x 512 layer (no checkpoint)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--factor-sparsities", type=float, nargs="+", default=[0.5, 0.75, 0.9])
    parser.add_argument("--frames", type=int, default=200, help="frames per factorized layer call")
    parser.add_argument("--factorized-repeats", type=int, default=15)
    parser.add_argument("--factorized-calls", type=int, default=3, help="layer calls per timed sample")
    parser.add_argument("--json", type=Path, help="also write every number to this JSON file")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml (data, decoding)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    info = lowrank_lstm.backend_info()
    if info["backend"] != "cpp":
        print(f"sparse_speedup: the C++ extension is needed ({info['reason']})", file=sys.stderr)
        return 2
    if args.factorized_only:
        torch.manual_seed(0)
        report = {"date": date.today().isoformat(), "threads": 1, "clock": DecodeClock(1).kind, "cpu": _cpu(),
                  "torch": torch.__version__}
        run_factorized(report, ConcatLSTM(256, 256).eval(), "seeded random weights", args)
        if args.json:
            write_json_atomic(args.json, report)
            print(f"wrote {args.json}")
        return 0
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["data.progress=false", *args.overrides])
    module = load_recognizer(args.ckpt, cfg.decoding)
    dense = module.model.eval()
    dense.set_decoding(cfg.decoding.max_decode_ratio, cfg.decoding.hard_fallback, None)  # as it ships: dense kernels
    report = {"date": date.today().isoformat(), "ckpt": args.ckpt, "threads": 1, "clock": DecodeClock(1).kind,
              "cpu": _cpu(), "torch": torch.__version__, "sparsities": args.sparsities, "patterns": list(PATTERNS)}
    if not args.skip_kernels:
        started = time.perf_counter()
        report["kernels"] = kernel_rows(dense, args.sparsities, args.kernel_repeats, args.kernel_calls)
        print_kernels(report["kernels"])
        print(f"(kernels measured in {time.perf_counter() - started:.0f} s)")
    if not args.skip_factorized:
        layers = dense.encoder.layers
        layer = next((m for m in layers if tuple(m.kernel.shape) == (1024, 512)), layers[-1])
        run_factorized(report, layer, f"{args.ckpt}, an encoder layer", args)
    if not args.skip_decoding:
        split = cfg.data.dev_splits[0]
        utterances = single_utterances(eval_batches(data_module(cfg.data), split, args.utterances), args.utterances)
        audio = sum(float(lengths.sum()) for _, lengths in utterances) * module.assets.features.frame_shift_ms / 1000
        steps = greedy_steps(dense, utterances)
        models, blocks, skipped = {"dense": dense, CONTROL: copy.deepcopy(dense)}, {}, {CONTROL: []}
        models[CONTROL].set_decoding(cfg.decoding.max_decode_ratio, cfg.decoding.hard_fallback, 0.0)
        blocks[CONTROL] = kernel_blocks(models[CONTROL])
        for s in args.sparsities:
            for pattern, block in PATTERNS.items():
                name = f"{pattern} {s:g}"
                models[name], skipped[name] = prune_one_shot(dense, s, block)
                models[name].set_decoding(cfg.decoding.max_decode_ratio, cfg.decoding.hard_fallback, 0.0)
                blocks[name] = kernel_blocks(models[name])
        clock = DecodeClock(1)
        print(f"\ndecoding {len(utterances)} {split} utterances ({audio:.1f} s of audio, {sum(steps)} decoder steps) "
              f"with {len(models)} models, {args.repeats} repeats, alternating ...", flush=True)
        started = time.perf_counter()
        with clock.checked():
            seconds = alternate({name: decode_pass(model, utterances, steps, clock) for name, model in models.items()},
                                args.repeats, warmup=1)
        results = summarize(seconds, audio)
        print_decoding(results, args.sparsities, blocks)
        print(f"(decoding measured in {time.perf_counter() - started:.0f} s)")
        report["decoding"] = {"split": split, "utterances": len(utterances), "audio_seconds": audio,
                              "decoder_steps": sum(steps), "repeats": args.repeats, "results": results,
                              "blocks": blocks, "left_dense": skipped,
                              "pays_from": {p: pays_from(results, p, args.sparsities) for p in PATTERNS},
                              "pays_from_vs_control": {p: pays_from(results, p, args.sparsities, "speedup_vs_control")
                                                       for p in PATTERNS}}
    if args.json:
        write_json_atomic(args.json, report)
        print(f"wrote {args.json}")
    return 0


def run_factorized(report: dict, layer: ConcatLSTM, source: str, args: argparse.Namespace) -> None:
    started = time.perf_counter()
    rows = factorized_rows(layer, args.ranks, args.factor_sparsities, args.frames, args.factorized_repeats,
                           args.factorized_calls)
    print(f"CPU: {report['cpu']} ({_simd()})")
    print_factorized(rows, tuple(layer.kernel.shape), args.frames, source)
    print(f"(factorized layers measured in {time.perf_counter() - started:.0f} s)")
    report["factorized"] = {"shape": list(layer.kernel.shape), "source": source, "frames": args.frames,
                            "repeats": args.factorized_repeats, "simd": _simd(), "rows": rows}


def _simd() -> str:
    """The widest vector extension the CPU reports (``/proc/cpuinfo`` flags): AVX-512, AVX2 or neither."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return "unknown"
    words = set(flags.split())
    return "AVX-512" if "avx512f" in words else "AVX2" if "avx2" in words else "no AVX2"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
