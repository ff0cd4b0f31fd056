"""Fast inference for an LSTM layer whose concatenated kernel is a rank-``k`` product ``U V``.

The contract with the compression package (which this package never imports): a layer's
``kernel`` ``(4H, in + H)`` counts as factorized when it is parametrized
(``torch.nn.utils.parametrize``) by exactly one parametrization that has an ``int`` attribute
``rank`` and two originals, ``module.parametrizations.kernel.original0`` = ``U`` ``(4H, k)`` and
``original1`` = ``V`` ``(k, in + H)``, with ``kernel = U @ V``. :func:`low_rank_factors` reads
them; anything else (a dense kernel, another parametrization) is treated as dense.

With ``V = [V_x | V_h]`` the layer is the recurrence on the ``k`` values
``z_t = V_x x_t + V_h h_{t-1}``, ``gates_t = U z_t + b`` (gate order i, f, g, o), which costs
``k (4H + H)`` multiply-adds per step instead of ``4H H`` (plus the input side ``V_x x_t``, done
for all frames at once as one matrix product by the caller). :func:`factorized_lstm_forward`
runs it:

* backend ``"cpp"``: a small C++ loop built on first use with ``torch.utils.cpp_extension``
  (about a minute, then cached in torch's extensions directory, which ``TORCH_EXTENSIONS_DIR``
  overrides): per step two hand-written products into preallocated buffers (register-blocked over
  4 batch rows x 64 outputs; at batch 16 about 2x faster than MKL's small products on this AMD CPU)
  and the gate math in one vectorized pass (with its own exp, compiled for AVX-512, AVX2 and plain
  x86-64 and chosen at load time on x86-64 with GCC). CPU float32 only. The same library holds the
  attention decoder's inference step (:mod:`asr.model.fast_decode`).
* backend ``"python"``: the same recurrence in PyTorch operations. It is used for other devices
  and dtypes, and everywhere when the extension cannot be built (one logged warning names the
  reason) or is switched off with ``SHRINKML_LSTM_EXTENSION=0``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.weak import WeakIdKeyDictionary

log = logging.getLogger(__name__)

ENV_SWITCH = "SHRINKML_LSTM_EXTENSION"  # "0" keeps the C++ extension from being built or used
_EXTENSION = "shrinkml_factorized_lstm"  # build directory name under torch's extensions directory
# the attention decoder's inference step (asr.model.fast_decode), compiled into the same library
DECODE_STEP_SOURCE = Path(__file__).with_name("csrc") / "decode_step.cpp"
GEMV_ROWS = 1  # batches up to this size run row after row, larger ones all rows together per step

_CPP_SOURCE = r"""
// Factorized LSTM recurrence: z_t = x_proj_t + V_h h_{t-1}, gates_t = bias + U z_t, gate order i, f, g, o.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <tuple>

// One copy of each hot loop per instruction set, picked when the library loads (GCC on x86-64).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SHRINKML_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SHRINKML_CLONES
#endif

namespace {

constexpr int64_t kLanes = 16;  // padding unit of the packed weights (one AVX-512 register of floats)

// exp(x) for x in [-87, 88]: 2^n * p(r), n = round(x / ln 2), r = x - n ln 2 (two-part ln 2),
// p the degree-7 Taylor polynomial (relative error ~5e-9 on |r| <= ln(2) / 2). The rounding uses
// the 1.5 * 2^23 trick so that n is also read from the float's bits: no libm call, vectorizable.
// always_inline: the vectorized loops that call these are target clones, and GCC stopped inlining the
// helpers into them once they had several callers (a scalar call per element, ~10x slower gate math).
#define SHRINKML_INLINE __attribute__((always_inline)) inline

SHRINKML_INLINE float exp_approx(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    const float shifter = 12582912.0f;  // 1.5 * 2^23
    float t = x * 1.44269504088896341f + shifter;
    float n = t - shifter;
    float r = x - n * 0.693145751953125f;
    r = r - n * 1.428606765330187e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits;
    std::memcpy(&bits, &t, sizeof bits);
    bits = (bits - 0x4B400000 + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

SHRINKML_INLINE float sigmoid_approx(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

SHRINKML_INLINE float tanh_approx(float x) { return 2.0f / (1.0f + exp_approx(-2.0f * x)) - 1.0f; }

// One step of gate math for one row: gates [i | f | g | o] (4H), c (H) updated in place, new h written.
SHRINKML_CLONES
void lstm_gates(const float* __restrict gates, float* __restrict c, float* __restrict h, int64_t hidden) {
    const float* __restrict gi = gates;
    const float* __restrict gf = gates + hidden;
    const float* __restrict gg = gates + 2 * hidden;
    const float* __restrict go = gates + 3 * hidden;
    for (int64_t j = 0; j < hidden; ++j) {
        float cn = sigmoid_approx(gf[j]) * c[j] + sigmoid_approx(gi[j]) * tanh_approx(gg[j]);
        c[j] = cn;
        h[j] = sigmoid_approx(go[j]) * tanh_approx(cn);
    }
}

// y[n0 : n0 + W] = sum_j x[j] w[j, n0 : n0 + W] (+ y's old values when accumulate); w is (K, N) row-major.
template <int W>
SHRINKML_INLINE void gemv_block(const float* __restrict x, int64_t K, const float* __restrict w, int64_t N,
                                int64_t n0, float* __restrict y) {
    float acc[W];
    for (int l = 0; l < W; ++l) acc[l] = y[n0 + l];
    for (int64_t j = 0; j < K; ++j) {
        const float xj = x[j];
        const float* __restrict row = w + j * N + n0;
        for (int l = 0; l < W; ++l) acc[l] += xj * row[l];
    }
    for (int l = 0; l < W; ++l) y[n0 + l] = acc[l];
}

// y (N) += x (K) @ w (K, N), N a multiple of kLanes: blocks of 64 outputs kept in registers.
SHRINKML_CLONES
void gemv_accumulate(const float* __restrict x, int64_t K, const float* __restrict w, int64_t N,
                     float* __restrict y) {
    int64_t n0 = 0;
    for (; n0 + 64 <= N; n0 += 64) gemv_block<64>(x, K, w, N, n0, y);
    for (; n0 < N; n0 += kLanes) gemv_block<kLanes>(x, K, w, N, n0, y);
}

// Y[r, n0 : n0 + W] += sum_j X[r, j] w[j, n0 : n0 + W] for R rows at once: each weight row is loaded
// once for the R rows (R x W accumulators in registers). X rows are ldx apart, Y rows ldy apart.
template <int R, int W>
SHRINKML_INLINE void gemm_block(const float* __restrict x, int64_t ldx, int64_t K, const float* __restrict w,
                                int64_t N, int64_t n0, float* __restrict y, int64_t ldy) {
    float acc[R][W];
    for (int r = 0; r < R; ++r)
        for (int l = 0; l < W; ++l) acc[r][l] = y[r * ldy + n0 + l];
    for (int64_t j = 0; j < K; ++j) {
        const float* __restrict row = w + j * N + n0;
        for (int r = 0; r < R; ++r) {
            const float xr = x[r * ldx + j];
            for (int l = 0; l < W; ++l) acc[r][l] += xr * row[l];
        }
    }
    for (int r = 0; r < R; ++r)
        for (int l = 0; l < W; ++l) y[r * ldy + n0 + l] = acc[r][l];
}

// R rows of Y (N outputs, a multiple of kLanes) += R rows of X @ w, in blocks of 64 outputs, then 16.
template <int R>
SHRINKML_INLINE void gemm_rows(const float* __restrict x, int64_t ldx, int64_t K, const float* __restrict w,
                               int64_t N, float* __restrict y, int64_t ldy) {
    int64_t n0 = 0;
    for (; n0 + 64 <= N; n0 += 64) gemm_block<R, 64>(x, ldx, K, w, N, n0, y, ldy);
    for (; n0 < N; n0 += kLanes) gemm_block<R, kLanes>(x, ldx, K, w, N, n0, y, ldy);
}

// Y (rows, N) += X (rows, K) @ w (K, N), N a multiple of kLanes: blocks of 4 (then 2, 1) rows.
SHRINKML_CLONES
void gemm_accumulate(const float* __restrict x, int64_t ldx, int64_t rows, int64_t K, const float* __restrict w,
                     int64_t N, float* __restrict y, int64_t ldy) {
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) gemm_rows<4>(x + r * ldx, ldx, K, w, N, y + r * ldy, ldy);
    for (; r + 2 <= rows; r += 2) gemm_rows<2>(x + r * ldx, ldx, K, w, N, y + r * ldy, ldy);
    for (; r < rows; ++r) gemm_rows<1>(x + r * ldx, ldx, K, w, N, y + r * ldy, ldy);
}

int64_t padded(int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; }

void check_float_cpu(const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, name, ": CPU float32 tensors only");
}

// (k, H) and (4H, k) -> the layouts the loop reads: v_h^T (H, kp) and u^T (k, Np), zero-padded to
// multiples of 16 columns, and the bias padded to Np.
std::tuple<at::Tensor, at::Tensor, at::Tensor> pack(const at::Tensor& v_h, const at::Tensor& u,
                                                     const at::Tensor& bias) {
    check_float_cpu(v_h, "v_h");
    check_float_cpu(u, "u");
    check_float_cpu(bias, "bias");
    TORCH_CHECK(v_h.dim() == 2 && u.dim() == 2 && bias.dim() == 1, "v_h (k, H), u (4H, k), bias (4H,)");
    const int64_t rank = v_h.size(0), hidden = v_h.size(1);
    TORCH_CHECK(u.size(0) == 4 * hidden && u.size(1) == rank && bias.size(0) == 4 * hidden,
                "shapes must be v_h (k, H), u (4H, k), bias (4H,)");
    at::Tensor v_packed = at::zeros({hidden, padded(rank)}, v_h.options());
    v_packed.narrow(1, 0, rank).copy_(v_h.t());
    at::Tensor u_packed = at::zeros({rank, padded(4 * hidden)}, u.options());
    u_packed.narrow(1, 0, 4 * hidden).copy_(u.t());
    at::Tensor b_packed = at::zeros({padded(4 * hidden)}, bias.options());
    b_packed.narrow(0, 0, 4 * hidden).copy_(bias);
    return {v_packed, u_packed, b_packed};
}

// The recurrence on packed weights. Rows run one after the other (each row's weights stay hot) when
// batch <= gemv_rows, else all rows together step by step, each weight row read once per block of rows.
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_packed(
        const at::Tensor& x_proj, const at::Tensor& v_packed, const at::Tensor& u_packed,
        const at::Tensor& b_packed, const at::Tensor& h0, const at::Tensor& c0, int64_t gemv_rows) {
    for (const at::Tensor* t : {&x_proj, &v_packed, &u_packed, &b_packed, &h0, &c0}) check_float_cpu(*t, "input");
    TORCH_CHECK(x_proj.dim() == 3, "x_proj must be (B, T, k)");
    const int64_t batch = x_proj.size(0), steps = x_proj.size(1), rank = x_proj.size(2);
    const int64_t hidden = v_packed.size(0), kp = v_packed.size(1), np = u_packed.size(1);
    TORCH_CHECK(kp == padded(rank) && u_packed.size(0) == rank && np == padded(4 * hidden) &&
                b_packed.numel() == np && v_packed.is_contiguous() && u_packed.is_contiguous() &&
                b_packed.is_contiguous(), "weights must come from pack()");
    TORCH_CHECK(h0.dim() == 2 && h0.size(0) == batch && h0.size(1) == hidden && c0.sizes() == h0.sizes(),
                "h0 and c0 must be (B, H)");
    const at::Tensor xp = x_proj.contiguous();
    at::Tensor out = at::empty({batch, steps, hidden}, x_proj.options());
    at::Tensor h = h0.clone(at::MemoryFormat::Contiguous);
    at::Tensor c = c0.clone(at::MemoryFormat::Contiguous);
    if (steps == 0 || batch == 0) return {out, h, c};
    const float* xp_data = xp.data_ptr<float>();
    const float* v_data = v_packed.data_ptr<float>();
    const float* u_data = u_packed.data_ptr<float>();
    const float* b_data = b_packed.data_ptr<float>();
    float* out_data = out.data_ptr<float>();
    float* h_data = h.data_ptr<float>();
    float* c_data = c.data_ptr<float>();
    if (batch <= gemv_rows) {
        at::Tensor buffers = at::empty({kp + np}, x_proj.options());
        float* z = buffers.data_ptr<float>();
        float* gates = z + kp;
        for (int64_t b = 0; b < batch; ++b) {
            const float* h_prev = h_data + b * hidden;
            float* c_row = c_data + b * hidden;
            for (int64_t t = 0; t < steps; ++t) {
                const float* xp_t = xp_data + (b * steps + t) * rank;
                std::memset(z, 0, sizeof(float) * kp);
                gemv_accumulate(h_prev, hidden, v_data, kp, z);
                for (int64_t j = 0; j < rank; ++j) z[j] += xp_t[j];
                std::memcpy(gates, b_data, sizeof(float) * np);
                gemv_accumulate(z, rank, u_data, np, gates);
                float* h_t = out_data + (b * steps + t) * hidden;
                lstm_gates(gates, c_row, h_t, hidden);
                h_prev = h_t;
            }
            std::memcpy(h_data + b * hidden, h_prev, sizeof(float) * hidden);
        }
        return {out, h, c};
    }
    // all rows together, step by step: each weight row read once per block of 4 rows
    at::Tensor buffers = at::empty({batch, kp + np}, x_proj.options());
    float* z = buffers.data_ptr<float>();
    float* gates = z + batch * kp;
    const float* h_prev = h_data;
    int64_t ld_prev = hidden;
    for (int64_t t = 0; t < steps; ++t) {
        for (int64_t b = 0; b < batch; ++b) {
            float* z_b = z + b * kp;
            std::memcpy(z_b, xp_data + (b * steps + t) * rank, sizeof(float) * rank);
            std::memset(z_b + rank, 0, sizeof(float) * (kp - rank));
            std::memcpy(gates + b * np, b_data, sizeof(float) * np);
        }
        gemm_accumulate(h_prev, ld_prev, batch, hidden, v_data, kp, z, kp);
        gemm_accumulate(z, kp, batch, rank, u_data, np, gates, np);
        for (int64_t b = 0; b < batch; ++b) {
            lstm_gates(gates + b * np, c_data + b * hidden, out_data + (b * steps + t) * hidden, hidden);
        }
        h_prev = out_data + t * hidden;  // row b of step t at (b * steps + t) * hidden
        ld_prev = steps * hidden;
    }
    for (int64_t b = 0; b < batch; ++b) {
        std::memcpy(h_data + b * hidden, out_data + (b * steps + steps - 1) * hidden, sizeof(float) * hidden);
    }
    return {out, h, c};
}

// W_hh (4H, H) -> W_hh^T (H, Np), zero-padded, for dense_forward.
at::Tensor pack_dense(const at::Tensor& w_hh) {
    check_float_cpu(w_hh, "w_hh");
    TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 4 * w_hh.size(1), "w_hh must be (4H, H)");
    at::Tensor packed = at::zeros({w_hh.size(1), padded(w_hh.size(0))}, w_hh.options());
    packed.narrow(1, 0, w_hh.size(0)).copy_(w_hh.t());
    return packed;
}

// The same loop on a dense kernel, for speed comparisons: gates_t = x_gates_t + W_hh h_{t-1}, with
// x_gates (B, T, 4H) = W_ih x_t + bias for every frame; rows run one after the other.
std::tuple<at::Tensor, at::Tensor, at::Tensor> dense_forward(const at::Tensor& x_gates, const at::Tensor& w_packed,
                                                             const at::Tensor& h0, const at::Tensor& c0) {
    for (const at::Tensor* t : {&x_gates, &w_packed, &h0, &c0}) check_float_cpu(*t, "input");
    TORCH_CHECK(x_gates.dim() == 3, "x_gates must be (B, T, 4H)");
    const int64_t batch = x_gates.size(0), steps = x_gates.size(1), width = x_gates.size(2);
    const int64_t hidden = w_packed.size(0), np = w_packed.size(1);
    TORCH_CHECK(width == 4 * hidden && np == padded(width) && w_packed.is_contiguous(),
                "weights must come from pack_dense()");
    TORCH_CHECK(h0.dim() == 2 && h0.size(0) == batch && h0.size(1) == hidden && c0.sizes() == h0.sizes(),
                "h0 and c0 must be (B, H)");
    const at::Tensor xg = x_gates.contiguous();
    at::Tensor out = at::empty({batch, steps, hidden}, x_gates.options());
    at::Tensor h = h0.clone(at::MemoryFormat::Contiguous);
    at::Tensor c = c0.clone(at::MemoryFormat::Contiguous);
    at::Tensor buffer = at::zeros({np}, x_gates.options());
    float* gates = buffer.data_ptr<float>();
    const float* w = w_packed.data_ptr<float>();
    for (int64_t b = 0; b < batch && steps > 0; ++b) {
        const float* h_prev = h.data_ptr<float>() + b * hidden;
        float* c_row = c.data_ptr<float>() + b * hidden;
        for (int64_t t = 0; t < steps; ++t) {
            std::memcpy(gates, xg.data_ptr<float>() + (b * steps + t) * width, sizeof(float) * width);
            gemv_accumulate(h_prev, hidden, w, np, gates);
            float* h_t = out.data_ptr<float>() + (b * steps + t) * hidden;
            lstm_gates(gates, c_row, h_t, hidden);
            h_prev = h_t;
        }
        std::memcpy(h.data_ptr<float>() + b * hidden, h_prev, sizeof(float) * hidden);
    }
    return {out, h, c};
}

}  // namespace

TORCH_LIBRARY(shrinkml_lowrank, m) {
    m.def("pack(Tensor v_h, Tensor u, Tensor bias) -> (Tensor, Tensor, Tensor)");
    m.def("forward_packed(Tensor x_proj, Tensor v_packed, Tensor u_packed, Tensor b_packed, Tensor h0, Tensor c0,"
          " int gemv_rows) -> (Tensor, Tensor, Tensor)");
    m.def("pack_dense(Tensor w_hh) -> Tensor");
    m.def("dense_forward(Tensor x_gates, Tensor w_packed, Tensor h0, Tensor c0) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(shrinkml_lowrank, CPU, m) {
    m.impl("pack", &pack);
    m.impl("forward_packed", &forward_packed);
    m.impl("pack_dense", &pack_dense);
    m.impl("dense_forward", &dense_forward);
}
"""

_lock = threading.Lock()
_status: dict = {"backend": None, "reason": None, "build_seconds": None}
_packed_cache = WeakIdKeyDictionary()  # U (or a dense kernel) -> (key, packed weights of its layer)


def _build() -> None:
    """Build (or load the cached) extension once; on failure record the reason and warn once."""
    switch = os.environ.get(ENV_SWITCH, "1").strip().lower()
    if switch in ("0", "false", "no", "off"):
        reason = f"switched off by {ENV_SWITCH}={os.environ[ENV_SWITCH]}"
    else:
        start = time.perf_counter()
        try:
            from torch.utils.cpp_extension import load_inline

            load_inline(_EXTENSION, _CPP_SOURCE + DECODE_STEP_SOURCE.read_text(),
                        extra_cflags=["-O3", "-fno-trapping-math"], is_python_module=False, no_implicit_headers=True)
            # raise if the operators were not registered
            _ = torch.ops.shrinkml_lowrank.forward_packed, torch.ops.shrinkml_lowrank.decode_step
        except Exception as err:  # any build or load failure means: use the fallback
            lines = str(err).strip().splitlines()
            reason = f"{type(err).__name__}: {lines[-1] if lines else ''}"
        else:
            _status.update(backend="cpp", reason=None, build_seconds=time.perf_counter() - start)
            return
    _status.update(backend="python", reason=reason)
    log.warning("factorized LSTM: C++ extension unavailable (%s); using the slower PyTorch fallback", reason)


def backend() -> str:
    """``"cpp"`` or ``"python"``: what CPU float32 inputs run on (builds the extension on first call)."""
    if _status["backend"] is None:
        with _lock:
            if _status["backend"] is None:
                _build()
    return _status["backend"]


def backend_info() -> dict:
    """``backend``, ``reason`` the extension is not used (None when it is) and ``build_seconds``
    (building, or loading the cached build, in this process)."""
    backend()
    return dict(_status)


def _uses_extension(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and backend() == "cpp"


def pack_factors(v_h: torch.Tensor, u: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
    """The weights in the layouts the C++ loop reads (``V_h^T`` and ``U^T``, zero-padded), or None
    where the extension does not run them. Pack once and pass ``packed`` to every call."""
    if not _uses_extension(v_h, u, bias):
        return None
    with torch.no_grad():
        return tuple(torch.ops.shrinkml_lowrank.pack(v_h, u, bias))


def factorized_lstm_forward_python(x_proj: torch.Tensor, v_h: torch.Tensor, u: torch.Tensor, bias: torch.Tensor,
                                   h0: torch.Tensor, c0: torch.Tensor
                                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The recurrence in PyTorch operations; same arguments and results as :func:`factorized_lstm_forward`."""
    h, c = h0, c0
    v_h_t, u_t = v_h.t(), u.t()
    outputs = []
    for t in range(x_proj.shape[1]):
        z = torch.addmm(x_proj[:, t], h, v_h_t)
        i, f, g, o = torch.addmm(bias, z, u_t).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    if not outputs:
        return x_proj.new_zeros(x_proj.shape[0], 0, v_h.shape[1]), h0.clone(), c0.clone()
    return torch.stack(outputs, dim=1), h, c


def factorized_lstm_forward(x_proj: torch.Tensor, v_h: torch.Tensor, u: torch.Tensor, bias: torch.Tensor,
                            h0: torch.Tensor, c0: torch.Tensor, packed: tuple[torch.Tensor, ...] | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the factorized recurrence (inference only: nothing is recorded for autograd).

    Args:
        x_proj: ``(B, T, k)``, the input side ``V_x x_t`` of every frame.
        v_h: ``(k, H)``; u: ``(4H, k)``; bias: ``(4H,)``; h0, c0: ``(B, H)``.
        packed: :func:`pack_factors` of ``(v_h, u, bias)``, to skip re-packing them on every call.
    Returns:
        outputs ``(B, T, H)`` and the final ``h``, ``c``, each ``(B, H)``.
    """
    if not _uses_extension(x_proj, v_h, u, bias, h0, c0):
        return factorized_lstm_forward_python(x_proj, v_h, u, bias, h0, c0)
    if packed is None:
        packed = pack_factors(v_h, u, bias)
    out, h, c = torch.ops.shrinkml_lowrank.forward_packed(x_proj, *packed, h0, c0, GEMV_ROWS)
    return out, h, c


def low_rank_factors(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(U (4H, k), V (k, in + H))`` when ``module.kernel`` is a rank-``k`` product (see the module
    docstring for the contract), else None."""
    if not parametrize.is_parametrized(module, "kernel"):
        return None
    entry = module.parametrizations.kernel
    rank = getattr(entry[0], "rank", None) if len(entry) == 1 else None
    if not isinstance(rank, int) or isinstance(rank, bool):
        return None
    if not (hasattr(entry, "original0") and hasattr(entry, "original1")) or hasattr(entry, "original2"):
        return None
    return entry.original0, entry.original1


def factorized_layer_forward(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                             state: tuple[torch.Tensor, torch.Tensor] | None
                             ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """A whole factorized layer for inference: ``x`` ``(B, T, in)``, ``U`` ``(4H, k)``, ``V`` ``(k, in + H)``
    -> outputs ``(B, T, H)`` and the final ``(h, c)``.

    ``V_x x_t`` of all frames is one matrix product; the packed weights are kept per ``U`` tensor
    (weakly) and rebuilt when ``U``, ``V`` or ``bias`` change (another tensor or an in-place update).
    """
    hidden = u.shape[0] // 4
    v_x, v_h = v.split([v.shape[1] - hidden, hidden], dim=1)
    x_proj = torch.matmul(x, v_x.t())
    if state is None:
        h0 = c0 = x.new_zeros(x.shape[0], hidden)
    else:
        h0, c0 = state
    packed = None  # factorized_lstm_forward packs per call (inference tensors have no version to key on)
    if _uses_extension(x, u, v, bias, h0, c0) and not any(t.is_inference() for t in (u, v, bias)):
        key = tuple((t.data_ptr(), t._version) for t in (u, v, bias))
        cached = _packed_cache.get(u)
        if cached is None or cached[0] != key:
            cached = (key, pack_factors(v_h, u, bias))
            _packed_cache[u] = cached
        packed = cached[1]
    out, h, c = factorized_lstm_forward(x_proj, v_h, u, bias, h0, c0, packed)
    return out, (h, c)


def dense_layer_forward(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor,
                        state: tuple[torch.Tensor, torch.Tensor] | None
                        ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """A dense layer (``kernel`` ``(4H, in + H)``) on the C++ loop, rows one after another: for speed
    comparisons only (``benchmarks/measured_speedup.py``); the model's dense layers run torch's fused
    kernel. Needs the ``"cpp"`` backend and CPU float32 tensors."""
    if not _uses_extension(x, kernel, bias):
        raise RuntimeError(f"dense_layer_forward needs the C++ extension ({backend_info()['reason']})")
    hidden = kernel.shape[0] // 4
    w_ih, w_hh = kernel.split([kernel.shape[1] - hidden, hidden], dim=1)
    with torch.no_grad():
        x_gates = torch.addmm(bias, x.reshape(-1, x.shape[-1]), w_ih.t()).reshape(*x.shape[:2], 4 * hidden)
        key = tuple((t.data_ptr(), t._version) for t in (kernel,)) if not kernel.is_inference() else None
        cached = _packed_cache.get(kernel)
        if key is None or cached is None or cached[0] != key:
            cached = (key, torch.ops.shrinkml_lowrank.pack_dense(w_hh))
            if key is not None:
                _packed_cache[kernel] = cached
        h0, c0 = state if state is not None else (x.new_zeros(x.shape[0], hidden),) * 2
        out, h, c = torch.ops.shrinkml_lowrank.dense_forward(x_gates, cached[1], h0, c0)
    return out, (h, c)
