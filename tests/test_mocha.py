"""MoChA: expected (training) alignments are valid distributions that match the recursion of
Chiu & Raffel, stay finite for long inputs and extreme energies; hard (inference) attention
is monotonic and only looks at the chunk ending at its boundary."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from asr.model.mocha import MoChA, chunkwise_weights, exclusive_cumsum, expected_alignment, moving_sum

D, Q, A = 6, 5, 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- references -------------------------------------------------------------------------------
def reference_alignment(p: torch.Tensor, alpha_prev: torch.Tensor) -> torch.Tensor:
    """The O(T) recursion in float64: ``q_j = (1 - p_{j-1}) q_{j-1} + alpha_prev_j``, ``alpha_j = p_j q_j``."""
    p, alpha_prev = p.double(), alpha_prev.double()
    alpha = torch.zeros_like(p)
    for b in range(p.shape[0]):
        q = 0.0
        for j in range(p.shape[1]):
            q = (1 - p[b, j - 1]) * q + alpha_prev[b, j] if j > 0 else alpha_prev[b, 0]
            alpha[b, j] = p[b, j] * q
    return alpha


def reference_chunkwise(alpha: torch.Tensor, u: torch.Tensor, mask: torch.Tensor, w: int) -> torch.Tensor:
    """``beta_ij = sum_{k=j}^{j+w-1} alpha_ik exp(u_ij) / sum_{l=k-w+1}^{k} exp(u_il)`` over valid frames, float64
    (each chunk's exponentials taken relative to that chunk's largest energy)."""
    alpha, u = alpha.double(), u.double()
    beta = torch.zeros_like(alpha)
    batch, frames = alpha.shape
    for b in range(batch):
        for j in range(frames):
            if not mask[b, j]:
                continue
            for k in range(j, min(j + w, frames)):
                if not mask[b, k]:
                    continue
                chunk = [float(u[b, m]) for m in range(max(0, k - w + 1), k + 1) if mask[b, m]]
                top = max(chunk)
                beta[b, j] += alpha[b, k] * math.exp(u[b, j] - top) / sum(math.exp(x - top) for x in chunk)
    return beta


def random_distributions(batch: int, frames: int, mass: float = 1.0) -> torch.Tensor:
    x = torch.rand(batch, frames) ** 4  # peaky
    return mass * x / x.sum(dim=-1, keepdim=True)


def log_probs(p: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    log_p, log_1mp = torch.log(p), torch.log1p(-p)
    if mask is not None:
        log_p, log_1mp = log_p.masked_fill(~mask, -math.inf), log_1mp.masked_fill(~mask, 0.0)
    return log_p, log_1mp


def assert_valid(alpha: torch.Tensor, what: str = "alpha") -> None:
    assert torch.isfinite(alpha).all(), f"{what} has NaN/inf"
    assert (alpha >= 0).all(), f"{what} has negative entries: {alpha.min()}"
    assert (alpha.sum(dim=-1) <= 1 + 1e-5).all(), f"{what} row sums exceed 1: {alpha.sum(dim=-1).max()}"


# -- helpers ------------------------------------------------------------------------------------
def test_exclusive_cumsum_and_moving_sum():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    assert exclusive_cumsum(x).tolist() == [[0.0, 1.0, 3.0, 6.0, 10.0]]
    assert moving_sum(x, 2, 0).tolist() == [[1.0, 3.0, 6.0, 9.0, 12.0]]
    assert moving_sum(x, 0, 2).tolist() == [[6.0, 9.0, 12.0, 9.0, 5.0]]
    assert moving_sum(x, 1, 1).tolist() == [[3.0, 6.0, 9.0, 12.0, 9.0]]
    assert moving_sum(x, 9, 0).tolist() == [[1.0, 3.0, 6.0, 10.0, 15.0]]  # window longer than the sequence


# -- expected alignment ---------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expected_alignment_matches_recursive_reference(seed):
    torch.manual_seed(seed)
    p = torch.rand(3, 40) * 0.98 + 0.01
    alpha_prev = random_distributions(3, 40)
    alpha_prev[2] *= 0.6  # a previous step that already lost mass off the end
    alpha = expected_alignment(*log_probs(p), alpha_prev)
    expected = reference_alignment(p, alpha_prev)
    torch.testing.assert_close(alpha.double(), expected, atol=1e-5, rtol=1e-4)
    assert_valid(alpha)


def test_expected_alignment_first_step_and_saturated_probabilities():
    one_hot = torch.zeros(1, 6)
    one_hot[0, 0] = 1.0
    # p = (0, 0, 1, ...): all the mass stops at frame 2
    p = torch.tensor([[1e-7, 1e-7, 1 - 1e-7, 0.5, 0.5, 0.5]])
    alpha = expected_alignment(*log_probs(p), one_hot)
    torch.testing.assert_close(alpha, torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0, 0.0]]), atol=1e-5, rtol=0)
    # from a boundary at frame 2 (attention never moves backwards) with p = 0.5 everywhere
    prev = torch.zeros(1, 6)
    prev[0, 2] = 1.0
    alpha = expected_alignment(*log_probs(torch.full((1, 6), 0.5)), prev)
    torch.testing.assert_close(alpha, torch.tensor([[0.0, 0.0, 0.5, 0.25, 0.125, 0.0625]]), atol=1e-6, rtol=0)


def test_expected_alignment_matches_reference_with_padding():
    torch.manual_seed(3)
    p = torch.rand(2, 20) * 0.9 + 0.05
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, 12:] = False
    alpha_prev = random_distributions(2, 20) * mask
    alpha_prev = alpha_prev / alpha_prev.sum(dim=-1, keepdim=True)
    alpha = expected_alignment(*log_probs(p, mask), alpha_prev)
    assert (alpha[1, 12:] == 0).all()
    torch.testing.assert_close(alpha.double(), reference_alignment(p * mask, alpha_prev), atol=1e-5, rtol=1e-4)


def test_expected_alignment_stays_exact_after_a_long_run_of_saturated_frames():
    """Mass waiting at frame 1000 after 1000 frames with log(1 - p) = -scale, then p = 0.3: the
    prefix sums of log(1 - p) reach -scale * 1000, yet the alignment must stay a distribution."""
    frames = 2000
    for scale in (100.0, 1000.0):
        energy = torch.cat([torch.full((1, 1000), scale), torch.full((1, 1000), math.log(0.3 / 0.7))], dim=1)
        energy = energy + 0.01 * torch.randn(1, frames, generator=torch.Generator().manual_seed(0))
        prev = torch.zeros(1, frames)
        prev[0, 1000] = 1.0
        alpha = expected_alignment(F.logsigmoid(energy), F.logsigmoid(-energy), prev)
        assert_valid(alpha)
        expected = reference_alignment(torch.sigmoid(energy.double()), prev)
        torch.testing.assert_close(alpha.double(), expected, atol=1e-5, rtol=1e-4)


# -- chunkwise weights ----------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [1, 3, 4])
@pytest.mark.parametrize("energy_scale", [3.0, 30.0, 1000.0])
def test_chunkwise_weights_match_brute_force_and_keep_mass(chunk_size, energy_scale):
    torch.manual_seed(chunk_size)
    mask = torch.ones(3, 15, dtype=torch.bool)
    mask[1, 9:] = False
    mask[2, 3:] = False
    alpha = random_distributions(3, 15, mass=0.8) * mask
    u = torch.randn(3, 15) * energy_scale
    beta = chunkwise_weights(alpha, u, mask, chunk_size)
    torch.testing.assert_close(beta.double(), reference_chunkwise(alpha, u, mask, chunk_size), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(beta.sum(dim=-1), alpha.sum(dim=-1), atol=1e-5, rtol=0)
    assert_valid(beta, "beta")
    assert (beta[~mask] == 0).all()
    if chunk_size == 1:
        torch.testing.assert_close(beta, alpha, atol=1e-6, rtol=0)


@pytest.mark.parametrize("frames", [1, 2, 3, 5])
@pytest.mark.parametrize("chunk_size", [1, 2, 4, 7])
def test_chunkwise_weights_on_inputs_shorter_than_the_chunk(frames, chunk_size):
    """Any length >= 1 works, also when the chunk is wider than the input by 2 or more frames."""
    torch.manual_seed(frames * 10 + chunk_size)
    mask = torch.ones(2, frames, dtype=torch.bool)
    mask[1, (frames + 1) // 2 :] = False
    alpha = random_distributions(2, frames, mass=0.9) * mask
    u = torch.randn(2, frames) * 3
    beta = chunkwise_weights(alpha, u, mask, chunk_size)
    assert beta.shape == (2, frames)
    torch.testing.assert_close(beta.double(), reference_chunkwise(alpha, u, mask, chunk_size), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(beta.sum(dim=-1), alpha.sum(dim=-1), atol=1e-5, rtol=0)


def test_chunkwise_weights_gradients_are_finite_with_padding():
    torch.manual_seed(4)
    u = (torch.randn(2, 12) * 100).requires_grad_()
    alpha = random_distributions(2, 12).requires_grad_()
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 5:] = False
    beta = chunkwise_weights(alpha, u, mask, 4)
    (beta * torch.randn(2, 12)).sum().backward()
    assert torch.isfinite(u.grad).all() and torch.isfinite(alpha.grad).all()
    assert (u.grad[1, 5:] == 0).all()


# -- the module in training mode ------------------------------------------------------------
def run_expected(attention: MoChA, memory: torch.Tensor, queries: torch.Tensor, mask: torch.Tensor):
    """Several output steps of expected attention, feeding each alpha into the next."""
    keys = attention.keys(memory)
    alpha = memory.new_zeros(memory.shape[:2])
    alpha[:, 0] = 1.0
    alphas, betas = [], []
    for i in range(queries.shape[1]):
        alpha, beta = attention.expected(keys, queries[:, i], alpha, mask)
        alphas.append(alpha)
        betas.append(beta)
    return alphas, betas


@pytest.mark.parametrize(
    ("scale", "init_r", "gain", "training"),
    [(1.0, -4.0, 1.0, True), (100.0, -4.0, 1.0, True), (100.0, -4.0, 1.0, False), (100.0, -60.0, 1.0, False),
     (100.0, 60.0, 1.0, False), (1.0, -1000.0, 1.0, True), (1.0, 1000.0, 1.0, True), (100.0, 0.0, 100.0, False),
     (1.0, 0.0, 300.0, True)],
)
def test_expected_attention_is_valid_for_long_inputs_and_extreme_energies(scale, init_r, gain, training):
    torch.manual_seed(5)
    frames = 2000
    attention = MoChA(D, Q, A, chunk_size=4, init_r=init_r, init_gain=gain).train(training)
    with torch.no_grad():  # chunk energies spanning hundreds too
        attention.chunk_v.weight.mul_(gain)
    memory = (torch.randn(2, frames, D) * scale).requires_grad_()
    queries = torch.randn(2, 3, Q) * scale
    mask = torch.ones(2, frames, dtype=torch.bool)
    mask[1, 1500:] = False
    alphas, betas = run_expected(attention, memory, queries, mask)
    for alpha, beta in zip(alphas, betas, strict=True):
        assert_valid(alpha, "alpha")
        assert_valid(beta, "beta")
        assert (alpha[1, 1500:] == 0).all() and (beta[1, 1500:] == 0).all()
        torch.testing.assert_close(beta.sum(dim=-1), alpha.sum(dim=-1), atol=1e-4, rtol=1e-4)
    context = torch.bmm(betas[-1].unsqueeze(1), memory).sum() + sum(a.sum() for a in alphas)
    context.backward()
    grads = {"memory": memory.grad, **{n: p.grad for n, p in attention.named_parameters() if p.grad is not None}}
    assert "mono_r" in grads and "chunk_v.weight" in grads
    for name, grad in grads.items():
        assert torch.isfinite(grad).all(), f"non-finite gradient for {name}"


def test_expected_attention_with_p_saturated_equals_hard_attention():
    """With energies far from 0 (p in {0, 1}) the expected alignment is the hard one-hot boundary."""
    torch.manual_seed(6)
    attention = MoChA(D, Q, A, chunk_size=3, init_r=0.0, init_gain=1e5, noise_std=0.0).eval()
    memory = torch.randn(1, 30, D)
    mask = torch.ones(1, 30, dtype=torch.bool)
    keys = attention.keys(memory)
    alpha = torch.zeros(1, 30)
    alpha[0, 0] = 1.0
    boundary = torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        for _ in range(4):
            query = torch.randn(1, Q)
            energy = attention.monotonic_energy(keys[0], query)
            assert energy.abs().min() > 25, "test setup: some energy is not saturated"
            alpha, beta = attention.expected(keys, query, alpha, mask)
            weights, boundary = attention.hard(keys, query, boundary, mask)
            if int(boundary) < 30:
                torch.testing.assert_close(alpha, F.one_hot(boundary, 30).float(), atol=1e-5, rtol=0)
                torch.testing.assert_close(beta, weights, atol=1e-5, rtol=0)
            else:
                assert alpha.abs().max() < 1e-5 and weights.abs().max() == 0
                break


# -- hard attention -------------------------------------------------------------------------
def test_hard_attention_is_monotonic_and_looks_only_at_the_chunk():
    torch.manual_seed(7)
    batch, frames, w = 4, 40, 3
    attention = MoChA(D, Q, A, chunk_size=w, init_r=0.0, init_gain=3.0).eval()
    memory = torch.randn(batch, frames, D)
    lengths = torch.tensor([40, 33, 25, 9])
    mask = torch.arange(frames).unsqueeze(0) < lengths.unsqueeze(1)
    keys = attention.keys(memory)
    boundary = torch.zeros(batch, dtype=torch.long)
    fired = ran_off = 0
    positions = torch.arange(frames)
    with torch.no_grad():
        for _ in range(25):
            query = torch.randn(batch, Q)
            p = torch.sigmoid(attention.monotonic_energy(keys[0], query))
            weights, new = attention.hard(keys, query, boundary, mask)
            assert weights.shape == (batch, frames) and new.shape == (batch,)
            assert (new >= boundary).all(), "a boundary moved backwards"
            for b in range(batch):
                start, chosen = int(boundary[b]), int(new[b])
                candidates = [j for j in range(start, int(lengths[b])) if p[b, j] >= 0.5]
                if candidates:
                    fired += 1
                    assert chosen == candidates[0], "not the first frame at or after the boundary with p >= 0.5"
                    window = (positions > chosen - w) & (positions <= chosen)
                    assert (weights[b][~window] == 0).all(), "weight outside [boundary - w + 1, boundary]"
                    assert (weights[b][window] > 0).all()
                    assert abs(float(weights[b].sum()) - 1) < 1e-5
                else:
                    ran_off += 1
                    assert chosen == frames
                    assert (weights[b] == 0).all()
                assert (weights[b][~mask[b]] == 0).all()
            boundary = new
    assert fired > 20 and ran_off > 0, "test setup: the attention should both fire and run off the end"


def test_hard_attention_never_fires_gives_zero_weights_and_boundary_T():
    torch.manual_seed(8)
    attention = MoChA(D, Q, A, chunk_size=4, init_r=-50.0).eval()
    memory = torch.randn(2, 12, D)
    keys = attention.keys(memory)
    mask = torch.ones(2, 12, dtype=torch.bool)
    with torch.no_grad():
        weights, boundary = attention.hard(keys, torch.randn(2, Q), torch.tensor([0, 5]), mask)
    assert boundary.tolist() == [12, 12]
    assert torch.equal(weights, torch.zeros(2, 12))


def test_hard_attention_ignores_frames_before_the_boundary_and_padding():
    torch.manual_seed(9)
    attention = MoChA(D, Q, A, chunk_size=2, init_r=50.0).eval()  # every frame fires
    memory = torch.randn(3, 10, D)
    keys = attention.keys(memory)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[2, 6:] = False
    with torch.no_grad():
        weights, boundary = attention.hard(keys, torch.randn(3, Q), torch.tensor([0, 7, 6]), mask)
    assert boundary.tolist() == [0, 7, 10]  # row 2: only padding at or after its boundary
    assert (weights[0, 1:] == 0).all() and weights[0, 0] == pytest.approx(1.0)
    assert (weights[1, [6, 7]] > 0).all() and weights[1].sum() == pytest.approx(1.0)
    assert (weights[1, :6] == 0).all() and (weights[1, 8:] == 0).all()
    assert (weights[2] == 0).all()


def test_hard_fallback_stops_at_the_most_likely_frame_strictly_ahead():
    torch.manual_seed(8)
    attention = MoChA(D, Q, A, chunk_size=3, init_r=-50.0, hard_fallback=True).eval()  # p far below 0.5
    memory = torch.randn(3, 12, D)
    keys = attention.keys(memory)
    mask = torch.ones(3, 12, dtype=torch.bool)
    query = torch.randn(3, Q)
    with torch.no_grad():
        p = torch.sigmoid(attention.monotonic_energy(keys[0], query))
        weights, boundary = attention.hard(keys, query, torch.tensor([0, 5, 11]), mask)
        off, off_boundary = attention.hard(keys, query, torch.tensor([0, 5, 11]), mask, fallback=False)
    assert boundary[0] == 1 + int(p[0, 1:].argmax()) and boundary[1] == 6 + int(p[1, 6:].argmax())
    assert boundary[2] == 12 and weights[2].sum() == 0  # nothing strictly ahead of the last frame: ran off
    for b in (0, 1):
        j = int(boundary[b])
        assert weights[b].sum() == pytest.approx(1.0) and (weights[b, j + 1 :] == 0).all()
        assert (weights[b, : max(j - 2, 0)] == 0).all()
    assert off_boundary.tolist() == [12, 12, 12] and off.sum() == 0  # the paper's inference
