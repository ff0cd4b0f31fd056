#!/usr/bin/env python
"""Where dense batch-1 greedy decoding spends its time, part by part (prints numbers, asserts nothing).

    taskset -c 1 python benchmarks/decode_breakdown.py --ckpt runs/baseline/checkpoints/best.ckpt
    python benchmarks/decode_breakdown.py --ckpt ... --utterances 20 --repeats 7 --json runs/decode_breakdown.json

Decodes the first ``--utterances`` dev utterances one at a time (``asr.latency.single_utterances``, as the latency
table and ``speedup/measured`` take them) with ``AsrModel.decode`` (greedy) on one thread, and times every part of
that decode on its own, on the inputs it gets while decoding:

* ``encoder.lstm<i>``: the LSTM layers (a compression target: torch's fused LSTM when dense);
* ``encoder.norm_pool<i>``: LayerNorm and max-pool time reduction after layer ``i``, as the encoder runs them when
  decoding (one C++ operator where the extension is built, :func:`asr.model.encoder.norm_pool`);
* ``encoder.other``: the rest of ``model.encode`` (stacking input frames, lengths, per-module overhead);
* ``decoder.keys``: MoChA's key projections over all encoder frames (targets);
* ``decoder.loop``: the greedy loop given the keys (the C++ decoder, ``decoder.greedy``), and within it:
  ``step.products``: the dense targets the step runs (the decoder cell, two query projections, pre-output and output
  layers; ``torch.addmm`` of a 1-row input per step, as the latency table times a target's own dense time),
  ``step.attention``: the attention scan, chunk softmax and context (the C++ step's own clock, wall time, less the
  query products it holds), and
  ``loop.rest``: everything else (gate math, log-softmax, argmax, per-step dispatch and Python).

Every part is a closure per utterance; all closures run alternating in rotating order (``asr.latency.alternate``),
``--repeats`` times after a warm-up; a part's time is the sum over utterances of the min over repeats of the thread's
CPU time (``time.thread_time``; another process holding a core does not count). Times are milliseconds of decoding
per second of audio. ``fixed`` is as the latency table defines it (``shrinkml.latency_table``): the whole decode minus
the dense targets' times (LSTM layers, keys, step products); it bounds any compression's speed-up at
``whole / fixed``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from asr.latency import alternate, single_utterances
from asr.model import fast_decode, lowrank_lstm
from common.atomic import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
STEP_TARGETS = ("cell", "attention.mono_query", "attention.chunk_query", "pre_output", "output")
QUERIES = ("attention.mono_query", "attention.chunk_query")  # timed inside the C++ step's attention clock


def load(ckpt: str, root: str, cache: str | None, count: int):
    """The recognizer of ``ckpt`` (as ``shrinkml.stage.load_recognizer`` loads it, with conf/decoding/default.yaml)
    and the first ``count`` dev utterances of the embedded corpus under ``root``."""
    from shrinkml.stage import data_module, eval_batches, load_recognizer

    overrides = [f"paths.root_dir={root}", "data.progress=false", "paths.output_dir=/tmp/decode_breakdown"]
    if cache:
        overrides.append(f"data.cache_dir={cache}")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    module = load_recognizer(ckpt, cfg.decoding)
    datamodule = data_module(cfg.data)
    utterances = single_utterances(eval_batches(datamodule, datamodule.dev_split_names[0]), count)
    return module.model.eval(), utterances, datamodule.feature_cfg.frame_shift_ms


def part_runs(model, features: torch.Tensor, lengths: torch.Tensor) -> tuple[dict, int]:
    """``{part: closure}`` for one utterance, and the number of decoder steps its greedy decode runs."""
    encoder, decoder = model.encoder, model.decoder
    runs = {"whole": lambda: model.decode(features, lengths, 0), "encoder": lambda: model.encode(features, lengths)}
    x = encoder._stack(features)
    for i, layer in enumerate(encoder.layers):
        runs[f"encoder.lstm{i}"] = lambda layer=layer, x=x: layer(x)
        y, _ = layer(x)
        # the encoder asks once per call whether its norms run fused (an older encoder has no such question)
        fused = {"fused": encoder.fused_norm_pool(y)} if hasattr(encoder, "fused_norm_pool") else {}
        runs[f"encoder.norm_pool{i}"] = lambda i=i, y=y, fused=fused: encoder.norm_pool(i, y, **fused)
        x = encoder.norm_pool(i, y, **fused)
    memory, memory_lengths = model.encode(features, lengths)
    max_len = model.max_len(int(memory_lengths.max()))
    runs["decoder.keys"] = lambda: decoder.attention.keys(memory)
    runs["decoder.greedy"] = lambda: decoder.greedy(memory, memory_lengths, max_len)
    steps = min(max_len, len(decoder.greedy(memory, memory_lengths, max_len)[0]) + 1)
    products = []
    for name in STEP_TARGETS:
        module = decoder.get_submodule(name)
        weight = module.kernel if name == "cell" else module.weight
        bias = getattr(module, "bias", None)
        products.append((torch.randn(1, weight.shape[1]), weight.detach().t(), bias))

    def step_products(chosen: list) -> None:
        for _ in range(steps):
            for x, w_t, b in chosen:
                torch.addmm(b, x, w_t) if b is not None else torch.mm(x, w_t)

    runs["step.products"] = lambda: step_products(products)
    runs["step.query_products"] = lambda: step_products([products[STEP_TARGETS.index(name)] for name in QUERIES])
    return runs, steps


def attention_ms(model, utterances) -> float:
    """Milliseconds of the C++ step's attention part (its own clock) over one greedy decode of every utterance."""
    torch.ops.shrinkml_lowrank.take_attention_nanoseconds()
    for features, lengths in utterances:
        model.decode(features, lengths, 0)
    return torch.ops.shrinkml_lowrank.take_attention_nanoseconds() / 1e6


@torch.no_grad()
def breakdown(model, utterances, frame_shift_ms: float, repeats: int) -> dict[str, float]:
    """Milliseconds per audio second of every part (see the module docstring)."""
    audio = sum(float(lengths.sum()) for _, lengths in utterances) * frame_shift_ms / 1000.0
    runs, names = {}, []
    for u, (features, lengths) in enumerate(utterances):
        parts, _ = part_runs(model, features, lengths)
        for name, fn in parts.items():
            if name not in names:
                names.append(name)

            def timed(fn=fn) -> float:
                start = time.thread_time()
                fn()
                return time.thread_time() - start

            runs[(name, u)] = timed
    samples = alternate(runs, repeats, warmup=1)
    ms = {name: 0.0 for name in names}
    for (name, _), values in samples.items():
        ms[name] += 1000.0 * min(values) / audio
    attention = min(attention_ms(model, utterances) for _ in range(3)) / audio
    out = dict(ms)
    lstm = sum(v for k, v in ms.items() if k.startswith("encoder.lstm"))
    norm_pool = sum(v for k, v in ms.items() if k.startswith("encoder.norm_pool"))
    out["encoder.other"] = ms["encoder"] - lstm - norm_pool
    out["decoder.loop"] = ms["decoder.greedy"] - ms["decoder.keys"]
    out["step.attention"] = attention - ms["step.query_products"]
    out["loop.rest"] = out["decoder.loop"] - ms["step.products"] - attention
    out["decode.other"] = ms["whole"] - ms["encoder"] - ms["decoder.greedy"]
    out["targets"] = lstm + ms["decoder.keys"] + ms["step.products"]
    out["fixed"] = ms["whole"] - out["targets"]
    return out


def report(ms: dict[str, float]) -> None:
    whole = ms["whole"]
    print(f"{'part':<22}{'ms / audio s':>13}{'share':>8}")
    order = [k for k in ms if k.startswith("encoder.lstm")] + [k for k in ms if k.startswith("encoder.norm_pool")]
    order += ["encoder.other", "decoder.keys", "decoder.loop", "step.products", "step.attention", "loop.rest",
              "decode.other"]
    for name in order:
        indent = "    " if name.startswith(("step.", "loop.")) else ""
        print(f"{indent + name:<22}{ms[name]:13.3f}{ms[name] / whole:8.1%}")
    print(f"{'whole decode':<22}{whole:13.3f}{1:8.1%}")
    print(f"{'targets (dense)':<22}{ms['targets']:13.3f}{ms['targets'] / whole:8.1%}")
    print(f"{'fixed (non-target)':<22}{ms['fixed']:13.3f}{ms['fixed'] / whole:8.1%}"
          f"   ceiling of any compression: {whole / ms['fixed']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a trained checkpoint (dense or compressed)")
    parser.add_argument("--root", default=os.environ.get("SHRINKML_ROOT", str(ROOT)),
                        help="project root whose data/ holds the embedded corpus (paths.root_dir)")
    parser.add_argument("--cache", help="feature cache folder (data.cache_dir; default the config's)")
    parser.add_argument("--utterances", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="write the breakdown here too")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, utterances, shift = load(args.ckpt, args.root, args.cache, args.utterances)
    info = lowrank_lstm.backend_info()
    with torch.no_grad():
        plan = fast_decode.step_plan(model.decoder)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread, kernels "
          f"{info['backend']}, C++ step {'on' if plan is not None else 'off'}; {len(utterances)} utterances, "
          f"min of {args.repeats} alternating repeats, thread CPU time")
    ms = breakdown(model, utterances, shift, args.repeats)
    report(ms)
    if args.json:
        write_json_atomic(Path(args.json), {"ms_per_audio_second": ms, "utterances": len(utterances),
                                            "repeats": args.repeats, "ckpt": args.ckpt, "backend": info["backend"]})


if __name__ == "__main__":
    main()
