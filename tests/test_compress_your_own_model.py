"""docs/compress_your_own_model.md runs as written: every python block of it, in order, in one namespace; then its
functions are checked on its two models (a torchaudio Conformer and an nn.LSTM language model)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch

from compress.quantize import int8_state_dict
from compress.scheme import count_parameters, dense_equivalent
from compress.sparse_state import is_encoded
from compress.targets import discover_targets

DOC = Path(__file__).resolve().parents[1] / "docs" / "compress_your_own_model.md"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def doc_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


@pytest.fixture(scope="module")
def doc(tmp_path_factory) -> dict:
    namespace: dict = {"__name__": "compress_your_own_model"}
    for number, block in enumerate(doc_blocks()):
        exec(compile(block, f"{DOC.name} block {number}", "exec"), namespace)  # noqa: S102 - the document's own code
    return namespace


def test_the_document_has_its_four_blocks_each_of_at_most_twenty_lines_of_code():
    blocks = doc_blocks()
    assert len(blocks) == 4
    for block in blocks[1:]:  # the techniques (the first block only builds the two models)
        code = [line for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
        assert len(code) <= 20


def outputs(doc: dict, model) -> torch.Tensor:
    return doc["run"](model)


@pytest.mark.parametrize("name", ["conformer", "lm"])
def test_factorized_to_2x_by_the_targets_parameters_and_exact_to_the_truncated_svd(doc, name):
    model = doc[name]
    small = doc["factorize"](model)
    targets = discover_targets(model)
    dense_targets = sum(t.params for t in targets)
    assert dense_targets / (dense_targets - (count_parameters(model) - count_parameters(small))) >= 2.0
    reference = outputs(doc, dense_equivalent(model, small, targets))
    tolerance = 1e-5 * float(reference.abs().max()) + 1e-6
    assert torch.allclose(outputs(doc, small), reference, atol=tolerance)
    assert torch.allclose(outputs(doc, doc["inference_form"](small)), reference, atol=tolerance)
    kinds = {t.kind for t in targets}  # nn.LSTM's / attention's matrices and convolutions next to the Linears
    assert kinds == ({"linear", "weight", "conv"} if name == "conformer" else {"linear", "weight"})


@pytest.mark.parametrize("name", ["conformer", "lm"])
def test_pruned_to_80_percent_and_exact_to_the_masked_weights(doc, name):
    model = doc[name]
    pruned = doc["prune"](model)
    targets = discover_targets(model)
    zeros = sum(int((t.weight(pruned) == 0).sum()) for t in targets)
    assert abs(zeros / sum(t.params for t in targets) - 0.8) < 0.01
    assert torch.equal(outputs(doc, pruned), outputs(doc, dense_equivalent(model, pruned, targets)))


@pytest.mark.parametrize("name", ["conformer", "lm"])
def test_int8_file_stores_the_zeros_sparse_and_loads_back_the_same_model(doc, name, tmp_path):
    model = doc[name]
    int8 = doc["quantize_int8"](doc["prune"](model))
    path = tmp_path / "int8.pt"
    megabytes = doc["save_int8"](path, int8)
    loaded, _ = doc["load_int8"](path, lambda stored: doc["prune"](model))
    assert torch.equal(outputs(doc, loaded), outputs(doc, int8))
    buffer = io.BytesIO()
    torch.save(int8_state_dict(int8), buffer)  # the same state stored dense
    assert megabytes * 2**20 < 0.7 * buffer.getbuffer().nbytes
    state = torch.load(path, weights_only=False)["state_dict"]
    pruned = [v for k, v in state.items() if k.endswith((".int8", "_packed_params._packed_params"))]
    assert pruned and all(is_encoded(v if isinstance(v, dict) else v[0]) for v in pruned)  # each as a bitmask
    assert not any(k.endswith("_mask") for k in state)  # the masks travel as those bitmasks
    scale = float(outputs(doc, model).abs().max())
    assert (outputs(doc, loaded) - outputs(doc, doc["prune"](model))).abs().max() < 0.05 * scale
