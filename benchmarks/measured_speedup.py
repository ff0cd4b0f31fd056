#!/usr/bin/env python
"""Estimated vs measured speed-up of low-rank compression: real CPU inference, dense vs compressed (prints numbers).

    python benchmarks/measured_speedup.py                          # baseline shape, random weights
    python benchmarks/measured_speedup.py --ckpt runs/baseline/checkpoints/best.ckpt
    python benchmarks/measured_speedup.py --json runs/measured_speedup.json --threads 1

For each target speed-up (estimated by parameters, the paper's proxy) a naive scheme is built
(one energy for all targets, ``compress.manual.uniform_energy_scheme``; ``ctc_head`` excluded) and
the compressed model is timed against the dense one, split as in the paper's Fig. 6:

* encoder: ``model.encode`` over the utterance (batch 16 offline), or ``model.encoder.stream``
  fed in chunks (batch 1 streaming);
* attention: MoChA's key projections and its hard monotonic step (``decoder.attention.keys`` and
  ``.hard``), timed inside the greedy decoding loop;
* decoder: the rest of that loop (``decoder.step``: LSTM cell, output layers, argmax), run for a
  fixed number of steps (``--tokens-per-4s`` per 4 s of audio) rather than to end-of-sentence.

Decoding runs the decoder step as greedy decoding does: as one C++ operator (``asr.model.fast_decode``),
which counts the time of its own attention part (query projections, monotonic scan, chunk softmax and
context), added to the attention column. ``--python-step`` times the PyTorch step instead.

Inference runs under ``torch.inference_mode``: factorized LSTM layers take the k-dimensional
recurrence of ``asr.model.lowrank_lstm`` (C++ extension), dense ones torch's fused (oneDNN)
LSTM, which is checked against ``torch.nn.LSTM`` first. Every model is timed in turn within each
repeat, encoder and decoding loop together (``asr.latency.alternate``: after the warm-up, each repeat
runs every model once, in an order that rotates between repeats), so load from other processes hits
all alike. Times are medians over repeats, with their spread (lowest-highest); a measured speed-up is
the median over repeats of the per-repeat ratio dense / compressed of that part (two runs of the same
repeat, close in time, so a slow drift of the load cancels), with the spread of those ratios.
On one thread (``--threads 1``, the default) the clock is the thread's CPU time (``asr.latency.DecodeClock``):
on a machine shared with other processes the time they are given meanwhile is the largest and least
repeatable part of wall time (``--wall-clock`` keeps it).
At batch 1 the dense encoder is also timed on the extension's own loop (the kind of kernel the
factorized layers run), which separates what compression gains from what the kernel gains.
Both estimates count matrix products only: the elementwise work of attention (energies over the
encoder frames at every step) and the per-operation overhead of small decoder steps are not in
them, and compression does not shrink them. The paper measured 2.16x for an estimated 3.74x
(ratio 0.58).
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from copy import deepcopy
from functools import partial
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.weak import WeakIdKeyDictionary

from asr.data.tokenizer import BOS_ID
from asr.latency import DecodeClock, alternate, ratio_summary, spread
from asr.model import lowrank_lstm
from asr.model.asr_model import AsrModel
from asr.model.lstm import ConcatLSTM
from common.atomic import write_json_atomic
from compress.cost import estimate_speedup
from compress.manual import uniform_energy_scheme
from compress.scheme import Scheme, apply_scheme, count_parameters
from compress.svd import SvdCache
from compress.targets import Target, discover_targets, profile_uses

ROOT = Path(__file__).resolve().parents[1]
FRAME_SECONDS = 0.01  # 10 ms feature frames: 400 frames = 4 s of audio
PARTS = ("encoder", "attention", "decoder")
COLUMNS = (*PARTS, "whole")


# -- model and schemes -----------------------------------------------------------------------
def build_model(ckpt: str | None, config: Path, vocab: int, features: int) -> tuple[AsrModel, str]:
    if ckpt:
        from asr.checkpoint import load_module

        return load_module(ckpt).model, ckpt
    cfg = OmegaConf.to_container(load_model_config(config), resolve=True)
    accepted = inspect.signature(AsrModel.__init__).parameters
    dropped = sorted(k for k in cfg if k not in accepted)
    model = AsrModel(vocab_size=vocab, input_size=features, **{k: v for k, v in cfg.items() if k in accepted})
    note = f" (ignored keys: {', '.join(dropped)})" if dropped else ""
    return model, f"{config.relative_to(ROOT) if config.is_relative_to(ROOT) else config}, random weights{note}"


def load_model_config(path: Path):
    """A model config YAML with its ``defaults`` list applied (siblings in the same group, then ``_self_``),
    as Hydra composes ``conf/model/paper.yaml`` on top of ``small.yaml``."""
    own = OmegaConf.load(path)
    defaults = own.pop("defaults", None) or []
    parts = [load_model_config(path.parent / f"{name}.yaml") for name in defaults if name != "_self_"]
    return OmegaConf.merge(*parts, own) if parts else own


def fraction_scheme(targets: list[Target], target_speedup: float) -> Scheme:
    """Per-target ranks ``max(1, round(f * max_rank))``, ``f`` bisected to the largest that meets the target."""
    def ranks(f: float) -> dict[str, int | str]:
        return {t.name: max(1, round(f * t.max_rank)) for t in targets}

    low, high = 0.0, 1.0
    for _ in range(40):
        mid = (low + high) / 2
        if estimate_speedup(targets, ranks(mid), "params") >= target_speedup:
            low = mid
        else:
            high = mid
    return Scheme.build(targets, ranks(low), "uniform-fraction", fraction=low, target_speedup=target_speedup)


def make_scheme(targets: list[Target], weights: dict, cache: SvdCache, target_speedup: float) -> Scheme:
    try:
        return uniform_energy_scheme(targets, weights, cache, target_speedup, by="params")
    except ValueError as err:
        print(f"  uniform energy cannot reach {target_speedup}x ({err}); using one rank fraction for all targets")
        return fraction_scheme(targets, target_speedup)


def part_of(target: Target) -> str:
    if target.name.startswith("decoder.attention."):
        return "attention"
    return "encoder" if target.name.startswith("encoder.") else "decoder"


# -- timing ----------------------------------------------------------------------------------
def take_attention_seconds() -> float:
    """Seconds the C++ decoder step has spent in hard attention (query projections, monotonic scan, chunk
    softmax, context) since the last call, in this process; the counter restarts at 0."""
    return torch.ops.shrinkml_lowrank.take_attention_nanoseconds() / 1e9


class Stopwatch:
    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.seconds, self.clock = 0.0, clock

    def wrap(self, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            start = self.clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += self.clock() - start

        return timed


@contextmanager
def timed_attention(model: AsrModel, watch: Stopwatch):
    """Times MoChA's ``keys`` and ``hard`` (instance attributes shadow the methods, removed afterwards)."""
    attention = model.decoder.attention
    attention.keys = watch.wrap(type(attention).keys.__get__(attention))
    attention.hard = watch.wrap(type(attention).hard.__get__(attention))
    try:
        yield
    finally:
        del attention.keys, attention.hard


def decode_steps(model: AsrModel, memory: torch.Tensor, memory_lengths: torch.Tensor, steps: int,
                 cpp_step: bool = True) -> None:
    """``decoder.greedy`` without the early stop: exactly ``steps`` hard-attention steps (on the C++ step
    where it applies, as ``greedy`` does, unless ``cpp_step`` is False)."""
    decoder = model.decoder
    frames = memory.shape[1]
    mask = torch.arange(frames).unsqueeze(0) < memory_lengths.unsqueeze(1)
    keys = decoder.attention.keys(memory)
    state = decoder.initial_state(memory)
    tokens = torch.full((memory.shape[0],), BOS_ID, dtype=torch.long)
    plan = decoder.inference_plan() if cpp_step else None
    for _ in range(steps):
        log_probs, state, _ = decoder.step(memory, keys, mask, tokens, state, plan)
        tokens = log_probs.argmax(dim=-1)


def encode(model: AsrModel, x: torch.Tensor, lengths: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    if chunk <= 0:
        return model.encode(x, lengths)
    state, outputs = model.encoder.initial_state(), []
    for start in range(0, x.shape[1], chunk):
        out, state = model.encoder.stream(x[:, start : start + chunk], state)
        outputs.append(out)
    return torch.cat(outputs, dim=1), model.encoder.output_lengths(lengths)


def run_once(model: AsrModel, x: torch.Tensor, lengths: torch.Tensor, chunk: int, steps: int,
             cpp_step: bool = True, clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Seconds of ``clock`` spent in encoder, attention and decoder on one utterance batch (see the module
    docstring). The C++ step clocks its attention part on wall time: on another clock that part is scaled by
    the loop's ``clock`` / wall seconds (the share of the loop the thread ran)."""
    watch = Stopwatch(clock)
    with torch.inference_mode(), timed_attention(model, watch):
        start = clock()
        memory, memory_lengths = encode(model, x, lengths, chunk)
        encoder = clock() - start
        if cpp_step:
            take_attention_seconds()  # restart the C++ step's attention clock
        start, wall = clock(), time.perf_counter()
        decode_steps(model, memory, memory_lengths, steps, cpp_step)
        loop, wall = clock() - start, time.perf_counter() - wall
        ran = 1.0 if clock is time.perf_counter or wall <= 0 else min(1.0, loop / wall)
        attention = watch.seconds + (take_attention_seconds() * ran if cpp_step else 0.0)
    return {"encoder": encoder, "attention": attention, "decoder": loop - attention}


def measure(models: dict[str, AsrModel], batch: int, frames: int, chunk: int, steps: int, warmup: int,
            repeats: int, features: int, cpp_step: bool = True, clock: Callable[[], float] = time.perf_counter
            ) -> dict[str, list[dict[str, float]]]:
    """Seconds per part and whole of every model in every repeat (``{name: [repeat 0, repeat 1, ...]}``);
    models take turns within each repeat, in rotating order, after ``warmup`` rounds (``asr.latency.alternate``)."""
    torch.manual_seed(1)
    x = torch.randn(batch, frames, features)
    lengths = torch.full((batch,), frames)
    runs = {name: partial(run_once, model, x, lengths, chunk, steps, cpp_step, clock)
            for name, model in models.items()}
    samples = alternate(runs, repeats, warmup)
    return {name: [{**r, "whole": sum(r[part] for part in PARTS)} for r in runs] for name, runs in samples.items()}


def summarize(samples: dict[str, list[dict[str, float]]], reference: str) -> dict[str, dict[str, dict]]:
    """Per model and column (parts and whole): ``seconds`` (median over repeats), ``seconds_spread`` (lowest,
    highest), ``speedup`` (median over repeats of reference / model seconds of the same repeat) and
    ``speedup_spread`` (lowest, highest of those ratios)."""
    out = {}
    for name, runs in samples.items():
        ratios = {c: ratio_summary([r[c] for r in samples[reference]], [r[c] for r in runs]) for c in COLUMNS}
        out[name] = {"seconds": {c: statistics.median(r[c] for r in runs) for c in COLUMNS},
                     "seconds_spread": {c: spread([r[c] for r in runs]) for c in COLUMNS},
                     "speedup": {c: ratios[c]["median"] for c in COLUMNS},
                     "speedup_spread": {c: ratios[c]["spread"] for c in COLUMNS}}
    return out


def dense_on_extension_loop(model: AsrModel) -> AsrModel:
    """A copy of the dense model whose encoder layers run the extension's hand-written loop (rows one
    after another) instead of torch's fused kernel: the same kind of kernel as the factorized layers."""
    clone = deepcopy(model)
    for layer in clone.encoder.layers:
        layer.forward = partial(loop_forward, layer)
    return clone


_dense_packed = WeakIdKeyDictionary()  # dense kernel -> (key, its W_hh packed for the extension's loop)


def dense_layer_forward(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor,
                        state: tuple[torch.Tensor, torch.Tensor] | None
                        ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """A dense layer (``kernel`` ``(4H, in + H)``) on the extension's C++ loop, rows one after another
    (the model's dense layers run torch's fused kernel). Needs the ``"cpp"`` backend and CPU float32."""
    if lowrank_lstm.backend() != "cpp":
        raise RuntimeError(f"dense_layer_forward needs the C++ extension ({lowrank_lstm.backend_info()['reason']})")
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in (x, kernel, bias)):
        raise RuntimeError("dense_layer_forward runs CPU float32 tensors only")
    hidden = kernel.shape[0] // 4
    w_ih, w_hh = kernel.split([kernel.shape[1] - hidden, hidden], dim=1)
    with torch.no_grad():
        x_gates = torch.addmm(bias, x.reshape(-1, x.shape[-1]), w_ih.t()).reshape(*x.shape[:2], 4 * hidden)
        key = (kernel.data_ptr(), kernel._version) if not kernel.is_inference() else None
        cached = _dense_packed.get(kernel)
        if key is None or cached is None or cached[0] != key:
            cached = (key, torch.ops.shrinkml_lowrank.pack_dense(w_hh))
            if key is not None:
                _dense_packed[kernel] = cached
        h0, c0 = state if state is not None else (x.new_zeros(x.shape[0], hidden),) * 2
        out, h, c = torch.ops.shrinkml_lowrank.dense_forward(x_gates, cached[1], h0, c0)
    return out, (h, c)


def loop_forward(layer: ConcatLSTM, x: torch.Tensor, state=None):
    return dense_layer_forward(x, layer.kernel, layer.bias, state)


def dense_kernel_check(hidden: int, input_size: int, batch: int, frames: int, repeats: int,
                       clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median ms of the dense :class:`ConcatLSTM`, of ``torch.nn.LSTM`` of the same size and (with the
    C++ backend) of the dense layer on the extension's loop, taking turns in rotating order."""
    torch.manual_seed(2)
    ours, ref = ConcatLSTM(input_size, hidden).eval(), torch.nn.LSTM(input_size, hidden, batch_first=True).eval()
    x = torch.randn(batch, frames, input_size)
    runs = {"concat_lstm_ms": ours, "nn_lstm_ms": ref}
    if lowrank_lstm.backend() == "cpp":
        runs["extension_loop_ms"] = partial(loop_forward, ours)
    def timed(run: Callable) -> Callable[[], float]:
        def once() -> float:
            start = clock()
            run(x)
            return clock() - start

        return once

    with torch.inference_mode():
        times = alternate({name: timed(run) for name, run in runs.items()}, repeats, warmup=3)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def _has_plan(model: AsrModel) -> bool:
    with torch.inference_mode():
        return model.decoder.inference_plan() is not None


# -- output ----------------------------------------------------------------------------------
def scheme_rows(schemes: dict[str, Scheme], targets: list[Target], summary: dict[str, dict]) -> list[dict]:
    """One row per scheme: estimates, median ms and measured speed-ups per column with their spreads over repeats
    (``summarize``), and the ratio measured / estimated of the whole (its spread: the whole's divided alike)."""
    rows = []
    for name, scheme in schemes.items():
        timed = summary[name]
        est_params = scheme.estimates["speedup/params"]
        est_macs = scheme.estimates.get("speedup/macs")
        measured, measured_spread = timed["speedup"], timed["speedup_spread"]
        by_part = {part: estimate_speedup([t for t in targets if part_of(t) == part], scheme.ranks, "macs")
                   for part in PARTS}
        rows.append({
            "scheme": name, "est_params": est_params, "est_macs": est_macs, "est_macs_by_part": by_part,
            "ms": {k: 1000 * v for k, v in timed["seconds"].items()},
            "ms_spread": {k: [1000 * v for v in pair] for k, pair in timed["seconds_spread"].items()},
            "measured": dict(measured), "measured_spread": {k: list(pair) for k, pair in measured_spread.items()},
            "ratio_params": measured["whole"] / est_params,
            "ratio_params_spread": [v / est_params for v in measured_spread["whole"]],
            "ratio_macs": measured["whole"] / est_macs if est_macs else None,
            "ratio_macs_spread": [v / est_macs for v in measured_spread["whole"]] if est_macs else None})
    return rows


def _range(pair, digits: int = 2) -> str:
    return f"{pair[0]:.{digits}f}-{pair[1]:.{digits}f}"


def print_spread_table(dense_ms_spread: dict[str, list[float]], rows: list[dict], repeats: int) -> None:
    """Lowest-highest over the repeats of every column of :func:`print_table` (ms, measured speed-ups, ratios)."""
    print(f"spread over {repeats} repeats (lowest-highest; speed-ups and ratios per repeat):")
    header = (f"{'scheme':<8} | {'ms enc':>13} {'ms att':>13} {'ms dec':>13} {'ms whole':>13} | {'meas.enc':>11} "
              f"{'meas.att':>11} {'meas.dec':>11} {'meas.whole':>11} | {'ratio/params':>12} {'ratio/macs':>11}")
    print(header)
    print("-" * len(header))
    print(f"{'dense':<8} | " + " ".join(f"{_range(dense_ms_spread[k]):>13}" for k in COLUMNS) + " |")
    for row in rows:
        macs = _range(row["ratio_macs_spread"]) if row["ratio_macs_spread"] else "-"
        print(f"{row['scheme']:<8} | " + " ".join(f"{_range(row['ms_spread'][k]):>13}" for k in COLUMNS) + " | "
              + " ".join(f"{_range(row['measured_spread'][k]):>11}" for k in COLUMNS)
              + f" | {_range(row['ratio_params_spread']):>12} {macs:>11}")


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    header = (f"{'scheme':<8} {'est.params':>10} {'est.macs':>9} | {'ms enc':>7} {'ms att':>7} {'ms dec':>7} "
              f"{'ms whole':>8} | {'meas.enc':>8} {'meas.att':>8} {'meas.dec':>8} {'meas.whole':>10} | "
              f"{'ratio/params':>12} {'ratio/macs':>10}")
    print(header)
    print("-" * len(header))
    for row in rows:
        ms = row["ms"]
        sp = row["measured"]
        ratio_macs = f"{row['ratio_macs']:10.2f}" if row["ratio_macs"] is not None else f"{'-':>10}"
        est_macs = f"{row['est_macs']:8.2f}x" if row["est_macs"] is not None else f"{'-':>9}"
        print(f"{row['scheme']:<8} {row['est_params']:9.2f}x {est_macs} | {ms['encoder']:7.2f} {ms['attention']:7.2f} "
              f"{ms['decoder']:7.2f} {ms['whole']:8.2f} | {sp['encoder']:7.2f}x {sp['attention']:7.2f}x "
              f"{sp['decoder']:7.2f}x {sp['whole']:9.2f}x | {row['ratio_params']:12.2f} {ratio_macs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="trained checkpoint (default: --config with random weights)")
    parser.add_argument("--config", type=Path, default=ROOT / "conf/model/small.yaml", help="model config (YAML)")
    parser.add_argument("--vocab", type=int, default=500, help="vocabulary size of the random-weight model")
    parser.add_argument("--features", type=int, default=80, help="input features per frame (random-weight model)")
    parser.add_argument("--speedups", type=float, nargs="+", default=[1.2, 2.0, 3.0, 3.7],
                        help="target speed-ups, estimated by parameters")
    parser.add_argument("--frames", type=int, default=400, help="frames per utterance (10 ms each)")
    parser.add_argument("--chunk", type=int, default=40, help="streaming chunk in frames (batch 1)")
    parser.add_argument("--batch", type=int, default=16, help="offline batch size")
    parser.add_argument("--tokens-per-4s", type=float, default=25.0, help="decoder steps per 4 s of audio")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=41, help="timed rounds of every model (median and spread)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--wall-clock", action="store_true",
                        help="time on wall time (default: the thread's CPU time on --threads 1, wall time on more)")
    parser.add_argument("--python-step", action="store_true",
                        help="decode with the PyTorch decoder step (attention timed apart) instead of the C++ one")
    parser.add_argument("--json", type=Path, help="also write every number to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = DecodeClock(args.threads, args.wall_clock)
    torch.manual_seed(0)
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); timed on {clock.kind} time, "
          f"{args.repeats} repeats after {args.warmup} warm-up rounds")

    model, source = build_model(args.ckpt, args.config, args.vocab, args.features)
    model.eval()
    features = model.encoder.layers[0].input_size // model.encoder.input_stack
    print(f"model: {source} ({count_parameters(model) / 1e6:.2f} M parameters)")
    if not args.ckpt:
        print("note: random weights have flat singular spectra, so the ranks that a given energy keeps differ "
              "from a trained model's (the measured speed follows the ranks, not the weights)")

    start = time.perf_counter()
    info = lowrank_lstm.backend_info()
    print(f"factorized LSTM backend: {info['backend']}"
          + (f" (built or loaded in {time.perf_counter() - start:.1f} s)" if info["backend"] == "cpp"
             else f" ({info['reason']})"))

    hidden = model.encoder.hidden_size
    print(f"dense kernel check (ConcatLSTM fused vs torch.nn.LSTM, {hidden} -> {hidden}, inference, median ms):")
    checks = []
    for batch, frames in ((1, args.chunk), (1, args.frames), (args.batch, args.frames)):
        with clock.checked():
            check = dense_kernel_check(hidden, hidden, batch, frames, max(args.repeats, 5), clock)
        checks.append({"batch": batch, "frames": frames, **check})
        ours, ref, loop = check["concat_lstm_ms"], check["nn_lstm_ms"], check.get("extension_loop_ms")
        print(f"  batch {batch:>2}, {frames:>3} frames: ConcatLSTM {ours:7.2f} ms, nn.LSTM {ref:7.2f} ms "
              f"(ConcatLSTM / nn.LSTM = {ours / ref:.2f})"
              + (f"; dense on the extension's loop {loop:7.2f} ms" if loop is not None else ""))

    seconds = args.frames * FRAME_SECONDS
    steps = max(1, round(args.tokens_per_4s * seconds / 4.0))
    targets = discover_targets(model, exclude=["ctc_head", "ctc_head.*"])
    x1 = torch.randn(1, args.frames, features)

    def profile_run() -> None:
        memory, memory_lengths = model.encode(x1, torch.tensor([args.frames]))
        decode_steps(model, memory, memory_lengths, steps)

    targets = profile_uses(model, targets, profile_run, seconds)
    weights = {t.name: t.weight(model).detach() for t in targets}
    cache = SvdCache()
    models: dict[str, AsrModel] = {"dense": model}
    schemes: dict[str, Scheme] = {}
    for target_speedup in args.speedups:
        scheme = make_scheme(targets, weights, cache, target_speedup)
        name = f"{target_speedup:g}x"
        schemes[name] = scheme
        models[name] = apply_scheme(model, scheme, targets, cache).eval()
    print(f"targets: {len(targets)} matrices (ctc_head excluded); decoding {steps} steps per {seconds:g} s utterance")
    for name, scheme in schemes.items():
        lstm_ranks = {t.name.rsplit(".", 1)[-1] if t.name.startswith("encoder.") else t.name: scheme.ranks[t.name]
                      for t in targets if t.kind == "lstm"}
        energy = scheme.meta.get("energy")
        print(f"  {name}: {scheme.provenance}" + (f", energy {energy:.3f}" if energy is not None else "")
              + f", {count_parameters(models[name]) / 1e6:.2f} M parameters; LSTM ranks {lstm_ranks}")

    cpp_step = not args.python_step and _has_plan(model)
    print("decoder step: " + ("C++ operator (asr.model.fast_decode)" if cpp_step else "PyTorch (--python-step)"))
    scenarios = {
        f"batch 1 streaming ({args.chunk}-frame chunks of {args.frames} frames)": dict(batch=1, chunk=args.chunk),
        f"batch {args.batch} offline ({args.frames} frames)": dict(batch=args.batch, chunk=0),
    }
    results: dict = {
        "model": source, "parameters": count_parameters(model), "threads": torch.get_num_threads(),
        "clock": clock.kind, "repeats": args.repeats, "warmup": args.warmup,
        "backend": info, "cpp_step": cpp_step, "dense_kernel_check": checks, "frames": args.frames,
        "decoder_steps": steps,
        "schemes": {name: s.to_dict() for name, s in schemes.items()}, "scenarios": {},
    }
    for title, scenario in scenarios.items():
        timed = dict(models)
        if scenario["batch"] <= lowrank_lstm.GEMV_ROWS and info["backend"] == "cpp":
            timed["dense-loop"] = dense_on_extension_loop(model)
        with clock.checked():
            timing = measure(timed, scenario["batch"], args.frames, scenario["chunk"], steps, args.warmup,
                             args.repeats, features, cpp_step, clock)
        summary = summarize(timing, "dense")
        rows = scheme_rows(schemes, targets, summary)
        dense_ms = {k: 1000 * v for k, v in summary["dense"]["seconds"].items()}
        dense_ms_spread = {k: [1000 * v for v in pair] for k, pair in summary["dense"]["seconds_spread"].items()}
        print_table(f"{title}: dense {dense_ms['encoder']:.2f} / {dense_ms['attention']:.2f} / "
                    f"{dense_ms['decoder']:.2f} ms (encoder / attention / decoder), whole {dense_ms['whole']:.2f} ms, "
                    f"real-time factor {dense_ms['whole'] / 1000 / seconds / scenario['batch']:.4f} per utterance; "
                    f"medians of {args.repeats} repeats", rows)
        print_spread_table(dense_ms_spread, rows, args.repeats)
        results["scenarios"][title] = {**scenario, "dense_ms": dense_ms, "dense_ms_spread": dense_ms_spread,
                                       "rows": rows}
        if "dense-loop" in timing:
            loop_ms = 1000 * summary["dense-loop"]["seconds"]["encoder"]
            against = {name: ratio_summary([r["encoder"] for r in timing["dense-loop"]],
                                           [r["encoder"] for r in timing[name]]) for name in schemes}
            results["scenarios"][title]["dense_loop_encoder_ms"] = loop_ms
            results["scenarios"][title]["measured_encoder_vs_dense_loop"] = {n: a["median"] for n, a in against.items()}
            results["scenarios"][title]["measured_encoder_vs_dense_loop_spread"] = {
                n: a["spread"] for n, a in against.items()}
            print(f"dense encoder on the extension's own loop (same kernel as the factorized layers): {loop_ms:.2f} ms "
                  f"(fused oneDNN: {dense_ms['encoder']:.2f} ms); measured encoder speed-up against it: "
                  + ", ".join(f"{name} {a['median']:.2f}x ({a['spread'][0]:.2f}-{a['spread'][1]:.2f})"
                              for name, a in against.items()))
    print("\nestimated speed-up by part (macs): " + "; ".join(
        f"{row['scheme']} " + " / ".join(f"{row['est_macs_by_part'][p]:.2f}" for p in PARTS) for row in rows)
        + " (encoder / attention / decoder)")
    print("the paper: measured 2.16x for estimated 3.74x (ratio 0.58)")
    if args.json:
        write_json_atomic(args.json, results)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
