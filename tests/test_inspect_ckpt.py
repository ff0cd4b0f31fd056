"""scripts/inspect_ckpt.py: per-target shape, rank, nonzeros and shipped bytes of tiny checkpoints with zeros
injected (dense, pruned with masks, low-rank, int8 files), and one-line errors for missing or damaged files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from asr_helpers import tiny_decoding, tiny_model_config

from asr.checkpoint import CheckpointError
from asr.module import AsrModule
from compress.checkpoint import SCHEME_KEY, compression_record
from compress.quantize import quantize_int8, save_int8
from compress.scheme import Scheme, apply_scheme
from compress.svd import SvdCache
from compress.targets import discover_targets
from shrinkml.inspect_ckpt import format_table, inspect_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def tiny_module() -> AsrModule:
    torch.manual_seed(0)
    return AsrModule(vocab_size=20, input_size=12, model=tiny_model_config(), decoding=tiny_decoding()).eval()


def save(path: Path, module: AsrModule, **extra) -> Path:
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), **extra}, path)
    return path


def prune_unstructured(weight: torch.Tensor, share: float) -> torch.Tensor:
    """Zero the ``share`` of smallest-magnitude entries in place; returns the mask."""
    k = int(share * weight.numel())
    threshold = weight.abs().flatten().kthvalue(k).values
    mask = weight.abs() > threshold
    weight.mul_(mask)
    return mask


def rows_of(result: dict) -> dict[str, dict]:
    return {row["target"].removeprefix("model."): row for row in result["targets"]}


def test_dense_checkpoint(tmp_path):
    result = inspect_checkpoint(save(tmp_path / "dense.ckpt", tiny_module()))
    rows = rows_of(result)
    assert set(rows) == {t.name for t in discover_targets(tiny_module().model)}
    layer = rows["encoder.layers.0"]
    assert layer["kind"] == "lstm" and layer["shape"] == [64, 12 + 16] and layer["rank"] == "full"
    assert layer["nonzeros"] == layer["params"] == 64 * 28 and layer["sparsity"] == 0.0
    assert layer["bytes_sparse"] == layer["bytes_dense"] == 64 * 28 * 4 and layer["format_sparse"] == "dense"
    totals = result["totals"]
    assert totals["bytes_sparse"] == totals["bytes_dense"] and totals["target_sparsity"] == 0.0


def test_pruned_checkpoint_with_masks_and_blocks(tmp_path):
    module = tiny_module()
    state = module.state_dict()
    with torch.no_grad():
        kernel = module.model.encoder.layers[1].kernel
        mask = prune_unstructured(kernel, 0.8)
        pre = module.model.decoder.pre_output.weight  # (16, 32): 1x4 blocks, 3 of 4 pruned
        keep = (torch.arange(8) % 4 == 0).repeat(16, 1)
        keep[torch.arange(16), torch.arange(16) % 8] = True
        pre.mul_(keep.repeat_interleave(4, 1))
        pre.add_(3.0 * pre.sign())  # no accidental zero inside a kept block
    state = {**module.state_dict(), "model.encoder.layers.1.kernel_mask": mask}  # bool, as the pruning writes it
    torch.save({"state_dict": state, "hyper_parameters": dict(module.hparams),
                "compression_pruning": {"format": "shrinkml-prune/1", "method": "magnitude", "pattern": "unstructured",
                                        "block": [1, 1], "sparsity": 0.8, "targets": {}}}, tmp_path / "p.ckpt")
    result = inspect_checkpoint(tmp_path / "p.ckpt")
    rows = rows_of(result)
    layer = rows["encoder.layers.1"]
    assert layer["nonzeros"] == int(mask.sum()) and abs(layer["sparsity"] - 0.8) < 0.01
    assert layer["format_sparse"] in ("csr", "bitmask") and layer["bytes_sparse"] < 0.3 * layer["bytes_dense"]
    blocks = rows["decoder.pre_output"]
    assert blocks["format_sparse"].startswith(("bsr1x4", "bitmask1x4")) and blocks["sparsity"] > 0.6
    assert rows["encoder.layers.0"]["sparsity"] == 0.0
    assert result["compression"] == {"method": "magnitude", "pattern": "unstructured", "block": [1, 1], "sparsity": 0.8}
    assert result["totals"]["mask_bytes"] == mask.numel()
    table = format_table(result)
    assert "masks in the file, not shipped" in table and "method magnitude" in table


def test_low_rank_checkpoint_reports_ranks_and_pruned_factors(tmp_path):
    module = tiny_module()
    targets = discover_targets(module.model, exclude=["ctc_head"])
    scheme = Scheme.build(targets, {"decoder.cell": 5, "decoder.pre_output": 4}, "automl")
    module.model = apply_scheme(module.model, scheme, targets, SvdCache()).eval()
    with torch.no_grad():
        prune_unstructured(module.model.decoder.pre_output.first.weight, 0.5)
    record = compression_record(scheme, "model", ["*"], ["ctc_head"])
    result = inspect_checkpoint(save(tmp_path / "lr.ckpt", module, **{SCHEME_KEY: record}))
    rows = rows_of(result)
    assert rows["decoder.cell"]["rank"] == 5 and rows["decoder.cell"]["shape"] == [64, 8 + 16 + 16]
    assert rows["decoder.cell"]["params"] == 5 * (64 + 40)
    pre = rows["decoder.pre_output"]
    assert pre["rank"] == 4 and pre["params"] == 4 * (16 + 32) and pre["nonzeros"] == 4 * 16 + 4 * 32 // 2
    assert rows["decoder.output"]["rank"] == "full" and result["compression"]["provenance"] == "automl"


@pytest.mark.parametrize("linear", ["weight_only", "dynamic"])
def test_int8_model_files(tmp_path, linear):
    module = tiny_module()
    with torch.no_grad():
        prune_unstructured(module.model.decoder.output.weight, 0.75)
    path = tmp_path / "model_int8.pt"
    save_int8(path, quantize_int8(module.model, linear), hyper_parameters=dict(module.hparams))
    result = inspect_checkpoint(path)
    rows = rows_of(result)
    assert result["format"] == f"int8 ({linear})" and set(rows) == {t.name for t in discover_targets(module.model)}
    output = rows["decoder.output"]
    assert output["sparsity"] >= 0.75 and output["bytes_int8"] < output["bytes_sparse"] < output["bytes_dense"]


def test_script_prints_a_table_or_json_and_one_line_errors(tmp_path):
    path = save(tmp_path / "dense.ckpt", tiny_module())
    script = [sys.executable, str(ROOT / "scripts" / "inspect_ckpt.py")]
    done = subprocess.run([*script, str(path), "--json"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["totals"]["params"] == sum(p.numel() for p in tiny_module().parameters())
    (tmp_path / "bad.ckpt").write_text("not a checkpoint\n")
    for bad in (tmp_path / "missing.ckpt", tmp_path / "bad.ckpt"):
        done = subprocess.run([*script, str(bad)], capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and str(bad) in done.stderr
        assert "Traceback" not in done.stderr


def test_a_file_without_model_weights_is_refused(tmp_path):
    torch.save({"state_dict": {"x": torch.zeros(3)}, "hyper_parameters": dict(tiny_module().hparams)},
               tmp_path / "empty.ckpt")
    with pytest.raises(CheckpointError, match="empty.ckpt: no LSTM kernel"):
        inspect_checkpoint(tmp_path / "empty.ckpt")
