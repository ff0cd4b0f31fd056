"""The export stage: a (compressed) checkpoint written for deployment, then checked against PyTorch.

Writes ``cfg.bundle_dir`` (:func:`asr.export.bundle.export`: ONNX graphs and/or TorchScript with the C++ kernels) and
``report.json``: per backend the largest difference of log-probabilities from the PyTorch model's on the first
``parity_utterances`` of ``parity_split`` (every greedy step, fed the same previous token), and the WER of each split
decoded by PyTorch and by the backend with the configured decoding.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from asr.data.tokenizer import BOS_ID, EOS_ID
from asr.evaluate import evaluate
from asr.export.bundle import ExportError, export
from asr.metrics import error_counts, rates
from asr.module import AsrModule
from asr.runtime import Hypotheses, Recognizer
from common.atomic import write_json_atomic
from compress.quantize import FORMAT as INT8_FORMAT
from compress.quantize import linear_mode
from shrinkml.deploy_speed import REFERENCES, cpu_name, format_table, forms, measure
from shrinkml.quantize import load_int8_recognizer
from shrinkml.stage import data_module, eval_batches, load_recognizer, log_stage_summary

log = logging.getLogger(__name__)


def utterances(batches: list[dict]) -> list[tuple[str, torch.Tensor, str]]:
    """``(utt_id, features (T, F), transcript)`` of every utterance in ``batches``, unpadded."""
    out = []
    for batch in batches:
        for i, utt_id in enumerate(batch["utt_ids"]):
            length = int(batch["feature_lengths"][i])
            out.append((utt_id, batch["features"][i, :length], batch["transcripts"][i]))
    return out


@torch.no_grad()
def log_prob_difference(reference: Recognizer, other: Recognizer, features: torch.Tensor) -> float:
    """Largest ``|log p - log p'|`` over the vocabulary and every step of ``reference``'s greedy decoding of
    ``features`` ``(T, F)``, ``other`` fed the same previous tokens (ids whose both values are ``-inf`` agree)."""
    encoded = [r.encode(features) for r in (reference, other)]
    if encoded[0][0].shape[1] == 0:
        return 0.0
    worst = max(float((a - b).abs().max()) for a, b in zip(*encoded, strict=True))
    states = [reference.initial_state(), other.initial_state()]
    tokens = torch.tensor([BOS_ID])
    for _ in range(reference.max_len(encoded[0][0].shape[1])):
        outs = [r.steps.step(tokens, s, *e, False) for r, s, e in zip((reference, other), states, encoded,
                                                                       strict=True)]
        a, b = outs[0][0], outs[1][0]
        finite = torch.isfinite(a) | torch.isfinite(b)
        worst = max(worst, float((a - b)[finite].abs().max()))
        states = [Hypotheses(*o[1:]) for o in outs]
        token = int(a.argmax(dim=-1))
        if token == EOS_ID:
            break
        tokens = torch.tensor([token])
    return worst


def backend_wer(recognizer: Recognizer, items: list[tuple[str, torch.Tensor, str]], beam_size: int
                ) -> tuple[float, float, float]:
    """``(WER, CER, seconds)`` of ``recognizer`` decoding ``items`` one utterance at a time."""
    total = torch.zeros(4, dtype=torch.float64)
    start = time.perf_counter()
    for _, features, transcript in items:
        hypothesis = recognizer.tokenizer.decode(recognizer.decode(features, beam_size))
        total += error_counts([transcript], [hypothesis])
    wer, cer = rates(total)
    return wer, cer, time.perf_counter() - start


def is_int8_file(path: str | Path) -> bool:
    """Whether ``path`` is an int8 model of ``scripts/quantize.py`` (else a training checkpoint)."""
    try:
        stored = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 - the checkpoint loader reports unreadable files with its own message
        return False
    return isinstance(stored, dict) and stored.get("format") == INT8_FORMAT


def int8_module(path: str | Path, cfg: DictConfig) -> AsrModule:
    """The int8 model of ``path`` in a training module with its assets, decoding with ``cfg.decoding``."""
    model, stored = load_int8_recognizer(path)
    if linear_mode(model) != "weight_only":
        raise ExportError(f"{path}: int8 Linears of mode 'dynamic' (PyTorch's quantized modules) do not export; "
                          "quantize with linear=weight_only (the default) for export")
    module = AsrModule(**stored["hyper_parameters"])
    module.on_load_checkpoint(stored)
    module.model = model
    module.set_decoding(dict(cfg.decoding))
    return module.eval()


def deployment_speed(cfg: DictConfig, model, module: AsrModule, items: list) -> dict:
    """:func:`shrinkml.deploy_speed.measure` of the exported model's forms (named ``<form> model``) against
    ``cfg.baseline`` in PyTorch and ONNX Runtime, on the first ``cfg.latency.utterances`` of ``items``."""
    baseline = load_recognizer(cfg.baseline, cfg.decoding)
    features = [f for _, f, _ in items[: cfg.latency.utterances]]
    with tempfile.TemporaryDirectory() as tmp:
        decoders = {**forms("dense", baseline.model.eval(), baseline.assets, baseline.decoding, Path(tmp) / "dense",
                            cfg.latency.threads),
                    **forms("model", model, module.assets, module.decoding, Path(tmp) / "model", cfg.latency.threads)}
        threads = torch.get_num_threads()
        torch.set_num_threads(cfg.latency.threads)
        try:
            table = measure(decoders, features, module.assets.features.frame_shift_ms, cfg.latency.repeats,
                            cfg.latency.threads)
        finally:
            torch.set_num_threads(threads)
    log.info("deployment speed (%s):\n%s", cpu_name(), "\n".join(format_table(table)))
    return table


@torch.no_grad()
def run_export(cfg: DictConfig) -> dict:
    """Export ``cfg.ckpt`` in ``cfg.format`` and check every backend; returns the summary it writes and logs."""
    formats = list(cfg.format) if not isinstance(cfg.format, str) else [cfg.format]
    module = load_recognizer(cfg.ckpt, cfg.decoding) if not is_int8_file(cfg.ckpt) else int8_module(cfg.ckpt, cfg)
    model = module.model.eval()
    start = time.perf_counter()
    folder = export(model, module.assets, dict(module.decoding), cfg.bundle_dir, formats, cfg.opset,
                    cfg.onnx_compact)
    summary: dict = {"stage": "export", "source_checkpoint": str(cfg.ckpt), "bundle": str(folder),
                     "formats": formats, "export_seconds": round(time.perf_counter() - start, 2),
                     "files_mb": {p.name: round(p.stat().st_size / 2**20, 3) for p in sorted(Path(folder).iterdir())}}
    reference = Recognizer.from_model(model, module.assets, module.decoding)
    backends = {name: Recognizer.load(folder, name, cfg.threads) for name in formats}
    datamodule = data_module(cfg.data)
    parity_items = utterances(eval_batches(datamodule, cfg.parity_split, cfg.parity_utterances))
    for name, recognizer in backends.items():
        worst = max(log_prob_difference(reference, recognizer, f) for _, f, _ in parity_items)
        summary[f"parity/{name}"] = worst
        log.info("%s: max |log p difference| %.2e on %d utterances of %s", name, worst, len(parity_items),
                 cfg.parity_split)
        if worst > cfg.parity_tolerance:
            raise ExportError(f"the {name} export differs from PyTorch by {worst:.2e} in log-probabilities "
                              f"(parity_tolerance {cfg.parity_tolerance}); report it with the checkpoint")
    beam = int(module.decoding["beam_size"])
    for split in cfg.splits:
        batches = eval_batches(datamodule, split)
        result = evaluate(model, batches, module.assets.tokenizer, beam, module.decoding["length_penalty"])
        summary[f"wer/{split}/pytorch"] = result.wer
        items = utterances(batches)
        for name, recognizer in backends.items():
            wer, _, seconds = backend_wer(recognizer, items, beam)
            summary[f"wer/{split}/{name}"] = wer
            log.info("%s %s: WER %.2f (PyTorch %.2f), %.1f s", name, split, wer, result.wer, seconds)
    if cfg.latency.measure and cfg.splits:
        summary["cpu"], summary["speed_threads"] = cpu_name(), cfg.latency.threads
        summary["speed"] = deployment_speed(cfg, model, module, utterances(eval_batches(datamodule, cfg.splits[0])))
        for form, row in summary["speed"].items():
            if not form.endswith(" dense"):
                for reference in REFERENCES:
                    summary[f"speedup/{form.split(' ')[0]}_vs_{reference.replace(' ', '_')}"] = row[f"vs_{reference}"]
    write_json_atomic(Path(cfg.output_dir) / "report.json", summary)
    log_stage_summary(cfg, summary)
    return summary
