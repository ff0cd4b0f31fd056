// Factorized LSTM recurrence: z_t = x_proj_t + V_h h_{t-1}, gates_t = bias + U z_t, gate order i, f, g, o
// (asr.model.lowrank_lstm), and the same loop on a dense kernel for speed comparisons. Per step two
// hand-written products into preallocated buffers (register-blocked over 4 batch rows x 64 outputs) and
// the gate math of lstm_math.h in one vectorized pass. Registers the library shrinkml_lowrank.
#include "lstm_math.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <tuple>

namespace {

using shrinkml::check_float_cpu;
using shrinkml::Recurrence;
using shrinkml::run_batched;
using shrinkml::run_rows;
using shrinkml::start_recurrence;

constexpr int64_t kLanes = 16;  // padding unit of the packed weights (one AVX-512 register of floats)

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

// 16 floats as a GCC vector type (one AVX-512 register, two AVX2 ones in each target clone).
typedef float Lanes __attribute__((vector_size(4 * kLanes)));

SHRINKML_INLINE Lanes load_lanes(const float* p) {
    Lanes v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// Y[r, n0 : n0 + 16] += sum_j X[r, j] w[j, n0 : n0 + 16] for R rows, the last 16 outputs of a row that is no whole
// number of 64-output blocks, in P = 4 / R interleaved partial sums per row. With one sum per row each multiply-add
// would wait on the previous one (latency-bound: a rank-32 layer measured slower than a rank-64 one at batch 1, and
// 3.6x slower at batch 4, where the compiler did not even vectorize the 16-wide block).
template <int R>
SHRINKML_INLINE void gemm_tail(const float* __restrict x, int64_t ldx, int64_t K, const float* __restrict w,
                               int64_t N, int64_t n0, float* __restrict y, int64_t ldy) {
    constexpr int P = 4 / R;
    Lanes acc[P][R];
    for (int p = 0; p < P; ++p)
        for (int r = 0; r < R; ++r) acc[p][r] = Lanes{};
    int64_t j = 0;
    for (; j + P <= K; j += P) {
        for (int p = 0; p < P; ++p) {
            const Lanes row = load_lanes(w + (j + p) * N + n0);
            for (int r = 0; r < R; ++r) acc[p][r] += x[r * ldx + j + p] * row;
        }
    }
    for (; j < K; ++j) {
        const Lanes row = load_lanes(w + j * N + n0);
        for (int r = 0; r < R; ++r) acc[0][r] += x[r * ldx + j] * row;
    }
    for (int r = 0; r < R; ++r) {
        Lanes sum = load_lanes(y + r * ldy + n0);
        for (int p = 0; p < P; ++p) sum += acc[p][r];
        std::memcpy(y + r * ldy + n0, &sum, sizeof sum);
    }
}

// y (N) += x (K) @ w (K, N), N a multiple of kLanes: blocks of 64 outputs kept in registers, then 16.
SHRINKML_CLONES
void gemv_accumulate(const float* __restrict x, int64_t K, const float* __restrict w, int64_t N,
                     float* __restrict y) {
    int64_t n0 = 0;
    for (; n0 + 64 <= N; n0 += 64) gemv_block<64>(x, K, w, N, n0, y);
    for (; n0 < N; n0 += kLanes) gemm_tail<1>(x, 0, K, w, N, n0, y, 0);
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
    for (; n0 < N; n0 += kLanes) gemm_tail<R>(x, ldx, K, w, N, n0, y, ldy);
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
    Recurrence r = start_recurrence(x_proj, hidden, h0, c0);
    const at::Tensor xp = x_proj.contiguous();
    const float* xp_data = xp.data_ptr<float>();
    const float* v_data = v_packed.data_ptr<float>();
    const float* u_data = u_packed.data_ptr<float>();
    const float* b_data = b_packed.data_ptr<float>();
    if (batch <= gemv_rows) {
        at::Tensor buffers = at::empty({kp + np}, x_proj.options());
        float* z = buffers.data_ptr<float>();
        run_rows(r, z + kp, [&](int64_t b, int64_t t, const float* h_prev, float* gates) {
            const float* xp_t = xp_data + (b * steps + t) * rank;
            std::memset(z, 0, sizeof(float) * kp);
            gemv_accumulate(h_prev, hidden, v_data, kp, z);
            for (int64_t j = 0; j < rank; ++j) z[j] += xp_t[j];
            std::memcpy(gates, b_data, sizeof(float) * np);
            gemv_accumulate(z, rank, u_data, np, gates);
        });
    } else {
        // all rows together, step by step: each weight row read once per block of 4 rows
        at::Tensor buffers = at::empty({batch, kp + np}, x_proj.options());
        float* z = buffers.data_ptr<float>();
        run_batched(r, z + batch * kp, np, [&](int64_t t, const float* h_prev, int64_t ld_prev, float* gates) {
            for (int64_t b = 0; b < batch; ++b) {
                float* z_b = z + b * kp;
                std::memcpy(z_b, xp_data + (b * steps + t) * rank, sizeof(float) * rank);
                std::memset(z_b + rank, 0, sizeof(float) * (kp - rank));
                std::memcpy(gates + b * np, b_data, sizeof(float) * np);
            }
            gemm_accumulate(h_prev, ld_prev, batch, hidden, v_data, kp, z, kp);
            gemm_accumulate(z, kp, batch, rank, u_data, np, gates, np);
        });
    }
    return {r.out, r.h, r.c};
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
    const int64_t steps = x_gates.size(1), width = x_gates.size(2);
    const int64_t hidden = w_packed.size(0), np = w_packed.size(1);
    TORCH_CHECK(width == 4 * hidden && np == padded(width) && w_packed.is_contiguous(),
                "weights must come from pack_dense()");
    Recurrence r = start_recurrence(x_gates, hidden, h0, c0);
    const at::Tensor xg = x_gates.contiguous();
    const float* xg_data = xg.data_ptr<float>();
    const float* w = w_packed.data_ptr<float>();
    at::Tensor buffer = at::zeros({np}, x_gates.options());
    run_rows(r, buffer.data_ptr<float>(), [&](int64_t b, int64_t t, const float* h_prev, float* gates) {
        std::memcpy(gates, xg_data + (b * steps + t) * width, sizeof(float) * width);
        gemv_accumulate(h_prev, hidden, w, np, gates);
    });
    return {r.out, r.h, r.c};
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
