"""The quantize stage: the retrained compressed model in 8 bits (paper section 4.3), measured.

Reads a (compressed) checkpoint, writes its int8 version (:mod:`compress.quantize`), and reports
model size before and after (also the bytes it ships in with pruned targets stored sparse, float32 and
int8, and its nonzero parameters: :mod:`compress.storage`), WER per test split before and after, and
decoding latency against the dense baseline (:mod:`asr.latency`), as ``report.json`` and a W&B run of group
``quantize``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from asr.evaluate import evaluate
from asr.latency import measured_speedups, single_utterances
from asr.module import AsrModule
from common.atomic import write_json_atomic
from compress.checkpoint import SCHEME_KEY, restore_compression
from compress.prune import MASK_SUFFIX, PRUNE_KEY
from compress.quantize import int8_state_dict, load_int8, quantize_int8, save_int8, serialized_mb
from compress.scheme import count_parameters
from compress.storage import model_storage
from shrinkml.stage import data_module, eval_batches, load_recognizer, log_stage_summary

log = logging.getLogger(__name__)


def build_from_file(stored: dict) -> torch.nn.Module:
    """The float model (compression restored, weights unset) described by a checkpoint or int8 file."""
    module = AsrModule(**stored["hyper_parameters"])
    module.on_load_checkpoint(stored)
    restore_compression(module, stored)
    return module.model


def load_int8_recognizer(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """The int8 ``AsrModel`` of a file written by :func:`run_quantize` and the file's entries."""
    return load_int8(path, build_from_file)


def dense_mb(state: dict) -> float:
    """``state``'s size in MB as ``torch.save`` writes it, stored dense: a pruned model's ``<param>_mask`` buffers
    are left out, since in a dense file the zeros are the mask (the sparse formats: :mod:`compress.storage`)."""
    return serialized_mb({name: value for name, value in state.items() if not name.endswith(MASK_SUFFIX)})


def run_quantize(cfg: DictConfig) -> dict:
    """Quantize ``cfg.ckpt``, measure it against ``cfg.baseline``; returns the summary it logs."""
    out = Path(cfg.output_dir)
    module = load_recognizer(cfg.ckpt, cfg.decoding)
    checkpoint = torch.load(cfg.ckpt, map_location="cpu", weights_only=False)
    baseline = load_recognizer(cfg.baseline, cfg.decoding)
    quantized = quantize_int8(module.model, cfg.linear)
    # what rebuilds the float model: its low-rank scheme and a pruned model's mask record (its masks are in the state)
    extras = {key: checkpoint[key] for key in ("hyper_parameters", "asr_assets", SCHEME_KEY, PRUNE_KEY)
              if key in checkpoint}
    file_mb = save_int8(out / "model_int8.pt", quantized, source_checkpoint=str(cfg.ckpt), **extras)
    quantized, _ = load_int8_recognizer(out / "model_int8.pt")  # measure what was written, not what was meant
    quantized.set_decoding(cfg.decoding.max_decode_ratio, cfg.decoding.hard_fallback, cfg.decoding.sparse_min_sparsity)
    datamodule = data_module(cfg.data)
    tokenizer = module.assets.tokenizer
    summary = {"stage": "quantize", "source_checkpoint": str(cfg.ckpt), "linear": cfg.linear,
               "params": count_parameters(module.model),
               # weights as torch.save writes them, dense (the file also holds the tokenizer and CMVN: file_mb)
               "size_mb": round(dense_mb(int8_state_dict(quantized)), 3), "file_mb": round(file_mb, 3),
               "size_mb_float": round(dense_mb(module.model.state_dict()), 3),
               "size_mb_baseline": round(dense_mb(baseline.model.state_dict()), 3)}
    # the float model with its pruned (sparse) targets stored sparse: bytes/dense, bytes/sparse, bytes/sparse_int8
    summary.update(model_storage(module.model).summary())
    scheme = (checkpoint.get(SCHEME_KEY) or {}).get("scheme", {})
    summary["provenance"] = scheme.get("provenance", "dense")
    summary.update({k: v for k, v in scheme.get("estimates", {}).items() if k.startswith("speedup/")})
    for split in cfg.splits:
        batches = eval_batches(datamodule, split)
        for name, model in (("float", module.model), ("int8", quantized)):
            result = evaluate(model, batches, tokenizer, cfg.decoding.beam_size, cfg.decoding.length_penalty)
            key = f"wer/{split}" if name == "int8" else f"wer_float/{split}"
            summary[key] = result.wer
            summary[key.replace("wer", "cer", 1)] = result.cer
            log.info("%s %s: WER %.2f", name, split, result.wer)
    utterances = single_utterances(eval_batches(datamodule, cfg.splits[0]), cfg.latency.utterances)
    shift = module.assets.features.frame_shift_ms
    timed = measured_speedups({"baseline": baseline.model, "float": module.model, "int8": quantized}, "baseline",
                              utterances, shift, cfg.latency.threads, cfg.latency.repeats)
    summary["speedup/measured"] = timed["int8"]["speedup"]
    summary["speedup/measured_float"] = timed["float"]["speedup"]
    summary["rtf"] = {name: value["rtf"] for name, value in timed.items()}
    write_json_atomic(out / "report.json", summary)
    log_stage_summary(cfg, summary)
    return summary
