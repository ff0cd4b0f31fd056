// Factorized LSTM recurrence on pruned factors: z_t = x_proj_t + V_h h_{t-1}, gates_t = bias + U z_t, gate order
// i, f, g, o (asr.model.lowrank_lstm), with V_h (k, H) and U (4H, k) packed sparse (sparse_kernels.h) and their
// products the sparse kernels' own (sparse_gemv at batch 1, sparse_gemm_t batched). x_proj = V_x x_t of every
// frame is computed beforehand as one dense product. Adds its operator to the library shrinkml_lowrank.
#include "lstm_math.h"
#include "sparse_kernels.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <tuple>

namespace {

using shrinkml::check_float_cpu;
using shrinkml::Recurrence;
using shrinkml::run_batched;
using shrinkml::run_rows;
using shrinkml::SparseView;
using shrinkml::start_recurrence;

// The recurrence on packed sparse factors. Batches up to gemv_rows run row after row (matrix-vector products,
// each row's weights stay hot); larger ones all rows together per step (the transposed batch products).
std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_factorized_lstm_forward(
        const at::Tensor& x_proj, const at::Tensor& v_h, const at::Tensor& u, const at::Tensor& bias,
        const at::Tensor& h0, const at::Tensor& c0, int64_t gemv_rows) {
    for (const at::Tensor* t : {&x_proj, &bias, &h0, &c0}) check_float_cpu(*t, "sparse_factorized_lstm_forward");
    const SparseView vh = shrinkml::sparse_view(v_h);
    const SparseView uw = shrinkml::sparse_view(u);
    TORCH_CHECK(x_proj.dim() == 3, "x_proj must be (B, T, k)");
    const int64_t batch = x_proj.size(0), steps = x_proj.size(1), rank = x_proj.size(2);
    const int64_t hidden = vh.cols, width = 4 * hidden;
    TORCH_CHECK(vh.rows == rank && uw.rows == width && uw.cols == rank && bias.dim() == 1 && bias.numel() == width,
                "shapes must be x_proj (B, T, k), V_h (k, H), U (4H, k), bias (4H,); got k = ", rank, ", V_h ",
                vh.rows, "x", vh.cols, ", U ", uw.rows, "x", uw.cols, ", bias ", bias.numel());
    Recurrence r = start_recurrence(x_proj, hidden, h0, c0);
    const at::Tensor xp = x_proj.contiguous();
    const at::Tensor b_c = bias.contiguous();
    const float* xp_data = xp.data_ptr<float>();
    const float* b_data = b_c.data_ptr<float>();
    if (batch <= gemv_rows) {
        at::Tensor buffers = at::empty({rank + width}, x_proj.options());
        float* z = buffers.data_ptr<float>();
        run_rows(r, z + rank, [&](int64_t b, int64_t t, const float* h_prev, float* gates) {
            std::memcpy(z, xp_data + (b * steps + t) * rank, sizeof(float) * rank);
            shrinkml::sparse_gemv(vh, h_prev, z);
            std::memcpy(gates, b_data, sizeof(float) * width);
            shrinkml::sparse_gemv(uw, z, gates);
        });
    } else {
        at::Tensor buffers = at::empty({(hidden + rank + 2 * width) * batch}, x_proj.options());
        float* ht = buffers.data_ptr<float>();  // (H, B)
        float* zt = ht + hidden * batch;          // (k, B)
        float* gt = zt + rank * batch;            // (4H, B)
        run_batched(r, gt + width * batch, width, [&](int64_t t, const float* h_prev, int64_t ld_prev, float* gates) {
            shrinkml::transpose_into(h_prev, batch, hidden, ld_prev, ht, batch);
            shrinkml::transpose_into(xp_data + t * rank, batch, rank, steps * rank, zt, batch);
            shrinkml::sparse_gemm_t(vh, ht, batch, zt);
            for (int64_t row = 0; row < width; ++row) {
                for (int64_t q = 0; q < batch; ++q) gt[row * batch + q] = b_data[row];
            }
            shrinkml::sparse_gemm_t(uw, zt, batch, gt);
            shrinkml::transpose_into(gt, width, batch, batch, gates, width);  // (B, 4H)
        });
    }
    return {r.out, r.h, r.c};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(shrinkml_lowrank, m) {
    m.def("sparse_factorized_lstm_forward(Tensor x_proj, Tensor v_h, Tensor u, Tensor bias, Tensor h0, Tensor c0,"
          " int gemv_rows) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(shrinkml_lowrank, CPU, m) {
    m.impl("sparse_factorized_lstm_forward", &sparse_factorized_lstm_forward);
}
