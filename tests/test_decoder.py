"""AttentionDecoder / AsrModel: training loss and its gradients, padding invariance, greedy and beam
decoding (special ids, length limits, beam 1 == greedy), and overfitting one tiny batch."""

from __future__ import annotations

import pytest
import torch

from asr.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from asr.model.asr_model import AsrModel

VOCAB, FEATS = 40, 20
SPECIAL = {PAD_ID, BOS_ID, EOS_ID}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_model(ctc_weight: float = 0.0, seed: int = 0, **decoder) -> AsrModel:
    torch.manual_seed(seed)
    settings = dict(embedding_size=8, hidden_size=16, attention_size=16, pre_output_size=16, chunk_size=3,
                    init_r=0.0, init_gain=3.0, noise_std=2.0, dropout=0.0)
    settings.update(decoder)
    return AsrModel(VOCAB, FEATS, encoder=dict(hidden_size=16, num_layers=2, pool=[2, 2], dropout=0.0),
                    decoder=settings, ctc_weight=ctc_weight, label_smoothing=0.1)


def make_batch(lengths=(48, 37, 29), token_lengths=(5, 3, 4), seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    features = torch.zeros(len(lengths), max(lengths), FEATS)
    for b, n in enumerate(lengths):
        features[b, :n] = torch.randn(n, FEATS, generator=generator)
    tokens = torch.full((len(lengths), max(token_lengths)), PAD_ID)
    for b, n in enumerate(token_lengths):
        tokens[b, :n] = torch.randint(4, VOCAB, (n,), generator=generator)
    return {"features": features, "feature_lengths": torch.tensor(lengths), "tokens": tokens,
            "token_lengths": torch.tensor(token_lengths)}


def select(batch: dict, b: int) -> dict:
    n, u = int(batch["feature_lengths"][b]), int(batch["token_lengths"][b])
    return {"features": batch["features"][b : b + 1, :n], "feature_lengths": batch["feature_lengths"][b : b + 1],
            "tokens": batch["tokens"][b : b + 1, :u], "token_lengths": batch["token_lengths"][b : b + 1]}


@pytest.mark.parametrize("ctc_weight", [0.0, 0.3])
def test_loss_is_finite_and_every_parameter_gets_a_gradient(ctc_weight):
    model = make_model(ctc_weight).train()
    batch = make_batch()
    losses = model.loss(batch)
    assert torch.isfinite(losses["loss"]) and losses["loss"] > 0
    assert int(losses["tokens"]) == sum(n + 1 for n in (5, 3, 4))  # targets + an end id each
    assert ("ctc" in losses) == (ctc_weight > 0)
    if ctc_weight:
        assert torch.isfinite(losses["ctc"])
        expected = (1 - ctc_weight) * losses["attention"] + ctc_weight * losses["ctc"]
        torch.testing.assert_close(losses["loss"], expected)
        assert model.ctc_head is not None
    else:
        assert model.ctc_head is None
        torch.testing.assert_close(losses["loss"], losses["attention"])
    losses["loss"].backward()
    names = [name for name, _ in model.named_parameters()]
    assert any(n.startswith("encoder.") for n in names) and any(n.startswith("decoder.attention.") for n in names)
    assert any(n.startswith("ctc_head.") for n in names) == (ctc_weight > 0)
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(parameter.grad).all(), f"non-finite gradient for {name}"
        assert parameter.grad.abs().sum() > 0, f"zero gradient for {name}"


def test_invalid_ctc_weight_raises():
    with pytest.raises(ValueError, match="ctc_weight"):
        make_model(ctc_weight=1.0)


def test_padding_does_not_change_the_loss():
    """The batch loss is the token-weighted mean of each utterance's loss computed alone."""
    model = make_model(noise_std=0.0).eval()
    batch = make_batch()
    with torch.no_grad():
        together = model.loss(batch)["attention"]
        alone = [model.loss(select(batch, b))["attention"] for b in range(3)]
    weights = batch["token_lengths"] + 1
    expected = sum(loss * w for loss, w in zip(alone, weights, strict=True)) / weights.sum()
    torch.testing.assert_close(together, expected, atol=1e-5, rtol=1e-5)


def test_training_noise_only_in_training_mode():
    model = make_model(noise_std=2.0)
    batch = make_batch()
    with torch.no_grad():
        model.eval()
        assert torch.equal(model.loss(batch)["loss"], model.loss(batch)["loss"])
        model.train()
        assert not torch.equal(model.loss(batch)["loss"], model.loss(batch)["loss"])


def check_ids(hypotheses: list[list[int]], limits: list[int]) -> None:
    for ids, limit in zip(hypotheses, limits, strict=True):
        assert isinstance(ids, list) and all(type(i) is int for i in ids)
        assert not SPECIAL & set(ids), f"special ids in {ids}"
        assert all(0 <= i < VOCAB for i in ids)
        assert len(ids) <= limit


def test_greedy_and_beam_return_plain_token_ids_within_max_length():
    for seed in range(8):  # random models put the arg max on padding/start ids too; they must never come out
        model = make_model(seed=seed).eval()
        batch = make_batch(seed=seed)
        memory_lengths = model.encoder.output_lengths(batch["feature_lengths"])
        limits = [model.max_len(int(n)) for n in memory_lengths]
        greedy = model.greedy_decode(batch["features"], batch["feature_lengths"])
        check_ids(greedy, [model.max_len(int(memory_lengths.max()))] * 3)
        beam = model.beam_decode(batch["features"], batch["feature_lengths"], beam_size=3)
        check_ids(beam, limits)


def test_padding_and_start_ids_are_never_decoded_even_when_most_likely():
    model = make_model().eval()
    batch = make_batch(lengths=(40,), token_lengths=(3,))
    with torch.no_grad():
        model.decoder.output.bias[PAD_ID] = 50.0
        model.decoder.output.bias[BOS_ID] = 40.0
    for ids in (model.greedy_decode(batch["features"], batch["feature_lengths"])[0],
                model.beam_decode(batch["features"], batch["feature_lengths"], beam_size=2)[0]):
        assert ids and not SPECIAL & set(ids)


def test_decoding_stops_at_max_length_or_end_id():
    model = make_model().eval()
    batch = make_batch(lengths=(40,), token_lengths=(3,))
    limit = model.max_len(int(model.encoder.output_lengths(batch["feature_lengths"])[0]))
    with torch.no_grad():
        model.decoder.output.bias[EOS_ID] = -1e4  # never ends: runs to the limit
    assert len(model.greedy_decode(batch["features"], batch["feature_lengths"])[0]) == limit
    assert len(model.beam_decode(batch["features"], batch["feature_lengths"], beam_size=2)[0]) == limit
    with torch.no_grad():
        model.decoder.output.bias[EOS_ID] = 1e4  # ends at once
    assert model.greedy_decode(batch["features"], batch["feature_lengths"]) == [[]]
    assert model.beam_decode(batch["features"], batch["feature_lengths"], beam_size=2) == [[]]


def min_gap_along(model: AsrModel, one: dict, ids: list[int]) -> float:
    """Smallest margin between the best and second-best next token along the hypothesis ``ids``."""
    with torch.no_grad():
        memory, _ = model.encode(one["features"], one["feature_lengths"])
        keys = model.decoder.attention.keys(memory)
    decoder = model.decoder
    mask = torch.ones(1, memory.shape[1], dtype=torch.bool)
    state = decoder.initial_state(memory)
    gap, previous = float("inf"), BOS_ID
    for token in [*ids, EOS_ID]:
        with torch.no_grad():
            scores, state, _ = decoder.step(memory, keys, mask, torch.tensor([previous]), state)
        top = scores[0].topk(2).values
        gap, previous = min(gap, float(top[0] - top[1])), token
    return gap


def test_beam_of_one_equals_greedy():
    compared = 0
    for seed in range(12):
        model = make_model(seed=seed).eval()
        with torch.no_grad():  # sharper output distributions: fewer near-ties, and ends before the limit
            model.decoder.output.weight.mul_(4.0)
        batch = make_batch(lengths=(44, 31, 52), seed=seed)
        for b in range(3):
            one = select(batch, b)
            greedy = model.greedy_decode(one["features"], one["feature_lengths"])
            if min_gap_along(model, one, greedy[0]) < 1e-4:
                continue  # a float tie: the sums of scores in the beam may break it the other way
            assert model.beam_decode(one["features"], one["feature_lengths"], beam_size=1) == greedy, (seed, b)
            compared += 1
    assert compared >= 30


def test_batched_greedy_equals_one_by_one():
    model = make_model().eval()
    batch = make_batch(lengths=(44, 31, 52))
    batched = model.greedy_decode(batch["features"], batch["feature_lengths"])
    for b in range(3):
        one = select(batch, b)
        alone = model.greedy_decode(one["features"], one["feature_lengths"])[0]
        # the batch shares one max length (of its longest utterance): compare up to the shorter limit
        limit = model.max_len(int(model.encoder.output_lengths(one["feature_lengths"])[0]))
        assert batched[b][:limit] == alone


def test_wider_beam_never_scores_worse_than_greedy():
    """Beam search finds a hypothesis at least as likely as greedy's (length penalty 0)."""
    model = make_model(seed=3).eval()
    batch = make_batch(lengths=(36,), token_lengths=(3,), seed=3)

    def log_prob(ids: list[int]) -> float:
        memory, lengths = model.encode(batch["features"], batch["feature_lengths"])
        decoder = model.decoder
        mask = torch.ones(1, memory.shape[1], dtype=torch.bool)
        keys, state = decoder.attention.keys(memory), decoder.initial_state(memory)
        total, previous = 0.0, BOS_ID
        for token in [*ids, EOS_ID]:
            scores, state, _ = decoder.step(memory, keys, mask, torch.tensor([previous]), state)
            total += float(scores[0, token])
            previous = token
        return total

    with torch.no_grad():
        model.decoder.output.bias[EOS_ID] += 3.0  # let hypotheses end well before the length limit
        greedy = model.greedy_decode(batch["features"], batch["feature_lengths"])[0]
        beam = model.beam_decode(batch["features"], batch["feature_lengths"], beam_size=4)[0]
        assert log_prob(beam) >= log_prob(greedy) - 1e-4


def test_overfits_one_tiny_batch():
    model = make_model(noise_std=0.0)
    batch = make_batch(lengths=(40, 32), token_lengths=(5, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = model.loss(batch)["loss"]
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.35 * losses[0], losses


def test_alignment_mass_is_a_diagnostic_of_lost_alignment():
    batch = make_batch()
    plain = make_model(init_r=-6.0, init_gain=1.0).eval()  # p ~ 0.003: almost all alignment mass runs off the end
    losses = plain.loss(batch)
    assert 0.5 < float(losses["mass"]) <= 1.0
    assert torch.equal(losses["loss"], losses["attention"])  # reported, not minimized
    firing = make_model(init_r=8.0, init_gain=1.0).eval()  # p ~ 1 at the first allowed frame: nothing lost
    assert float(firing.loss(batch)["mass"]) < 1e-3


def test_ctc_only_loss_trains_the_encoder_alone():
    model = make_model(ctc_weight=0.3).train()
    batch = make_batch()
    losses = model.loss(batch, ctc_only=True)
    assert set(losses) == {"ctc", "loss", "tokens"} and torch.equal(losses["loss"], losses["ctc"])
    losses["loss"].backward()
    assert all(p.grad is None for p in model.decoder.parameters())
    assert all(p.grad is not None for p in model.encoder.parameters())
    with pytest.raises(ValueError, match="ctc_weight"):
        make_model(ctc_weight=0.0).loss(batch, ctc_only=True)
