// Sparse (pruned) weights at inference: packing (sparse_pack), products (sparse_linear) and the LSTM
// recurrence on a sparse W_hh (sparse_lstm_forward), in the format of sparse_kernels.h. Adds its
// operators to the library shrinkml_lowrank that factorized_lstm.cpp defines.
//
// Batch 1 (matrix-vector): per block row, G blocks at a time into G x BH x BW independent partial sums
// (a dependency chain per sum would make every block wait for the previous one's add), summed at the
// row's end. Batch N > 1: the inputs transposed to (K, N) so that each stored weight multiplies N
// contiguous values (vectorized over the batch), the outputs accumulated transposed (M, N).
#include "sparse_kernels.h"

#include "lstm_math.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

// A lambda inlined into the target clones that call it (as SHRINKML_INLINE for functions).
#define SHRINKML_INLINE_LAMBDA __attribute__((always_inline))

namespace {

using shrinkml::check_float_cpu;
using shrinkml::kSparseMagic;
using shrinkml::Recurrence;
using shrinkml::run_batched;
using shrinkml::run_rows;
using shrinkml::SparseView;
using shrinkml::start_recurrence;

constexpr int64_t kHeader = 16;  // int32 slots of the header; every section starts at a multiple of 16
constexpr int32_t kVersion = 1;
enum Slot { kMagic, kFormatVersion, kRows, kCols, kBlockRows, kBlockCols, kBlocks, kPtrAt, kIndexAt, kValueAt };

int64_t aligned(int64_t n) { return (n + kHeader - 1) / kHeader * kHeader; }

SparseView view_of(const at::Tensor& packed) {
    TORCH_CHECK(shrinkml::is_sparse_packed(packed), "not a packed sparse matrix (make it with sparse_pack)");
    const int32_t* h = packed.data_ptr<int32_t>();
    TORCH_CHECK(h[kFormatVersion] == kVersion, "packed sparse matrix of format version ", h[kFormatVersion],
                ", expected ", kVersion, ": pack it again");
    const int32_t* base = h;
    return {h[kRows], h[kCols], h[kBlockRows], h[kBlockCols], h[kBlocks], base + h[kPtrAt],
            reinterpret_cast<const uint16_t*>(base + h[kIndexAt]), reinterpret_cast<const float*>(base + h[kValueAt])};
}

// GCC vector types (compiled for each target clone's instruction set): W floats.
template <int W>
struct Vec {
    typedef float type __attribute__((vector_size(4 * W)));
};

template <int W>
SHRINKML_INLINE typename Vec<W>::type load(const float* p) {
    typename Vec<W>::type v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// y (M) += W x (K) for CSR: 4 independent partial sums per row (a single sum would wait on every add),
// the row's tail into the same 4. Three loads per nonzero (value, index, x[index]) bound it; explicit AVX2
// gathers of x measured no faster on this AMD CPU (Zen 3), 16 sums only added per-row overhead.
SHRINKML_INLINE void gemv_csr_portable(const SparseView& w, const float* __restrict x, float* __restrict y) {
    constexpr int G = 4;
    for (int64_t r = 0; r < w.rows; ++r) {
        float acc[G] = {0.0f};
        int64_t b = w.ptr[r];
        const int64_t end = w.ptr[r + 1];
        for (; b + G <= end; b += G) {
            for (int g = 0; g < G; ++g) acc[g] += w.values[b + g] * x[w.index[b + g]];
        }
        for (int g = 0; g < G; ++g) {
            if (b + g < end) acc[g] += w.values[b + g] * x[w.index[b + g]];
        }
        float sum = 0.0f;
        for (int g = 0; g < G; ++g) sum += acc[g];
        y[r] += sum;
    }
}

SHRINKML_INLINE void gemv_csr(const SparseView& w, const float* __restrict x, float* __restrict y) {
    gemv_csr_portable(w, x, y);
}

// y += W x with BH x 1 blocks (BH rows of one column): each block's BH values times the broadcast x[c]
// into a BH-wide vector; G blocks at a time into G independent vectors.
template <int BH>
SHRINKML_INLINE void gemv_column_blocks(const SparseView& w, const float* __restrict x, float* __restrict y) {
    using V = typename Vec<BH>::type;
    constexpr int G = 4;
    const int64_t block_rows = w.rows / BH;
    for (int64_t r = 0; r < block_rows; ++r) {
        V acc[G];
        for (int g = 0; g < G; ++g) acc[g] = V{};
        int64_t b = w.ptr[r];
        const int64_t end = w.ptr[r + 1];
        for (; b + G <= end; b += G) {
            for (int g = 0; g < G; ++g) acc[g] += load<BH>(w.values + (b + g) * BH) * x[w.index[b + g]];
        }
        for (int g = 0; g < G; ++g) {
            if (b + g < end) acc[g] += load<BH>(w.values + (b + g) * BH) * x[w.index[b + g]];
        }
        for (int g = 1; g < G; ++g) acc[0] += acc[g];
        for (int i = 0; i < BH; ++i) y[r * BH + i] += acc[0][i];
    }
}

// y += W x with 1 x BW blocks (BW columns of one row): each block's BW values times BW contiguous inputs;
// G blocks at a time, summed across lanes at the row's end.
template <int BW>
SHRINKML_INLINE void gemv_row_blocks(const SparseView& w, const float* __restrict x, float* __restrict y) {
    using V = typename Vec<BW>::type;
    constexpr int G = 4;
    for (int64_t r = 0; r < w.rows; ++r) {
        V acc[G];
        for (int g = 0; g < G; ++g) acc[g] = V{};
        int64_t b = w.ptr[r];
        const int64_t end = w.ptr[r + 1];
        for (; b + G <= end; b += G) {
            for (int g = 0; g < G; ++g) acc[g] += load<BW>(w.values + (b + g) * BW) * load<BW>(x + w.index[b + g]);
        }
        for (int g = 0; g < G; ++g) {
            if (b + g < end) acc[g] += load<BW>(w.values + (b + g) * BW) * load<BW>(x + w.index[b + g]);
        }
        for (int g = 1; g < G; ++g) acc[0] += acc[g];
        float sum = 0.0f;
        for (int j = 0; j < BW; ++j) sum += acc[0][j];
        y[r] += sum;
    }
}

// y (M) += W x (K) for BH x BW blocks, BH or BW = 1.
template <int BH, int BW>
SHRINKML_INLINE void gemv_impl(const SparseView& w, const float* __restrict x, float* __restrict y) {
    static_assert(BH == 1 || BW == 1, "blocks of one row or one column");
    if constexpr (BH == 1 && BW == 1) {
        gemv_csr(w, x, y);
    } else if constexpr (BW == 1) {
        gemv_column_blocks<BH>(w, x, y);
    } else {
        gemv_row_blocks<BW>(w, x, y);
    }
}

// yt[:, q0 : q0 + 8 NV] += W xt[:, q0 : q0 + 8 NV] for a tile of the batch held in registers through a
// whole block row: each stored weight costs one FMA per 8 batch rows, each input row one load per block.
// One-row blocks alternate two sets of sums between blocks (P = 2) so that an add never waits on the last.
template <int BH, int BW, int NV>
SHRINKML_INLINE void gemm_t_tile(const SparseView& w, const float* __restrict xt, int64_t n, int64_t q0,
                                 float* __restrict yt) {
    using V = typename Vec<8>::type;
    constexpr int S = BH * BW, P = BH == 1 ? 2 : 1;
    const int64_t block_rows = w.rows / BH;
    for (int64_t r = 0; r < block_rows; ++r) {
        V acc[P][BH][NV];
        for (int i = 0; i < BH; ++i)
            for (int v = 0; v < NV; ++v) {
                acc[0][i][v] = load<8>(yt + (r * BH + i) * n + q0 + 8 * v);
                if constexpr (P == 2) acc[1][i][v] = V{};
            }
        const int64_t end = w.ptr[r + 1];
        int64_t b = w.ptr[r];
        auto block = [&](int64_t at, V (&sums)[BH][NV]) SHRINKML_INLINE_LAMBDA {
            const float* __restrict value = w.values + at * S;
            const float* __restrict xb = xt + static_cast<int64_t>(w.index[at]) * n + q0;
            for (int j = 0; j < BW; ++j) {
                V xv[NV];
                for (int v = 0; v < NV; ++v) xv[v] = load<8>(xb + j * n + 8 * v);
                for (int i = 0; i < BH; ++i)
                    for (int v = 0; v < NV; ++v) sums[i][v] += xv[v] * value[i * BW + j];
            }
        };
        for (; b + P <= end; b += P) {
            for (int p = 0; p < P; ++p) block(b + p, acc[p]);
        }
        if (b < end) block(b, acc[0]);
        for (int i = 0; i < BH; ++i)
            for (int v = 0; v < NV; ++v) {
                V sum = acc[0][i][v];
                if constexpr (P == 2) sum += acc[1][i][v];
                std::memcpy(yt + (r * BH + i) * n + q0 + 8 * v, &sum, sizeof sum);
            }
    }
}

// yt (M, n) += W xt (K, n): tiles of 32, 16 and 8 batch rows, then one row at a time.
template <int BH, int BW>
SHRINKML_INLINE void gemm_t_impl(const SparseView& w, const float* __restrict xt, int64_t n, float* __restrict yt) {
    int64_t q = 0;
    if constexpr (BH == 1) {
        for (; q + 32 <= n; q += 32) gemm_t_tile<BH, BW, 4>(w, xt, n, q, yt);
    }
    for (; q + 16 <= n; q += 16) gemm_t_tile<BH, BW, 2>(w, xt, n, q, yt);
    for (; q + 8 <= n; q += 8) gemm_t_tile<BH, BW, 1>(w, xt, n, q, yt);
    if (q == n) return;
    constexpr int S = BH * BW;
    const int64_t block_rows = w.rows / BH;
    for (int64_t r = 0; r < block_rows; ++r) {
        for (int64_t b = w.ptr[r]; b < w.ptr[r + 1]; ++b) {
            const float* __restrict value = w.values + b * S;
            const float* __restrict xb = xt + static_cast<int64_t>(w.index[b]) * n;
            for (int i = 0; i < BH; ++i) {
                float* __restrict yi = yt + (r * BH + i) * n;
                for (int64_t t = q; t < n; ++t) {
                    float sum = yi[t];
                    for (int j = 0; j < BW; ++j) sum += value[i * BW + j] * xb[j * n + t];
                    yi[t] = sum;
                }
            }
        }
    }
}

// One clone per instruction set of each kernel and block shape (target_clones does not take templates).
#define SHRINKML_SPARSE_SHAPES(X) X(1, 1) X(1, 4) X(4, 1) X(1, 8) X(8, 1) X(16, 1)
#define SHRINKML_SPARSE_DEFINE(BH, BW)                                                                      \
    SHRINKML_CLONES void gemv_##BH##x##BW(const SparseView& w, const float* x, float* y) {                 \
        gemv_impl<BH, BW>(w, x, y);                                                                         \
    }                                                                                                       \
    SHRINKML_CLONES void gemm_t_##BH##x##BW(const SparseView& w, const float* xt, int64_t n, float* yt) { \
        gemm_t_impl<BH, BW>(w, xt, n, yt);                                                                  \
    }
SHRINKML_SPARSE_SHAPES(SHRINKML_SPARSE_DEFINE)

void gemv(const SparseView& w, const float* x, float* y) {
#define SHRINKML_SPARSE_GEMV(BH, BW) \
    if (w.bh == BH && w.bw == BW) return gemv_##BH##x##BW(w, x, y);
    SHRINKML_SPARSE_SHAPES(SHRINKML_SPARSE_GEMV)
    TORCH_CHECK(false, "sparse block shape ", w.bh, "x", w.bw, " has no kernel");
}

void gemm_t(const SparseView& w, const float* xt, int64_t n, float* yt) {
#define SHRINKML_SPARSE_GEMM(BH, BW) \
    if (w.bh == BH && w.bw == BW) return gemm_t_##BH##x##BW(w, xt, n, yt);
    SHRINKML_SPARSE_SHAPES(SHRINKML_SPARSE_GEMM)
    TORCH_CHECK(false, "sparse block shape ", w.bh, "x", w.bw, " has no kernel");
}

bool supported(int64_t bh, int64_t bw) {
#define SHRINKML_SPARSE_SUPPORTED(BH, BW) \
    if (bh == BH && bw == BW) return true;
    SHRINKML_SPARSE_SHAPES(SHRINKML_SPARSE_SUPPORTED)
    return false;
}

// W (M, K) -> the packed format of sparse_kernels.h with BH x BW blocks (blocks of all zeros left out).
at::Tensor sparse_pack(const at::Tensor& weight, int64_t block_rows, int64_t block_cols) {
    check_float_cpu(weight, "sparse_pack weight");
    TORCH_CHECK(weight.dim() == 2, "sparse_pack: weight must be 2-D (M, K)");
    TORCH_CHECK(supported(block_rows, block_cols), "sparse_pack: no kernel for ", block_rows, "x", block_cols,
                " blocks");
    const at::Tensor w = weight.contiguous();
    const int64_t m = w.size(0), k = w.size(1);
    TORCH_CHECK(m % block_rows == 0 && k % block_cols == 0, "sparse_pack: a ", m, "x", k, " matrix is no whole ",
                "number of ", block_rows, "x", block_cols, " blocks");
    TORCH_CHECK(k <= 65536 && m < (int64_t{1} << 30), "sparse_pack: at most 65536 columns (uint16 indices)");
    const float* data = w.data_ptr<float>();
    const int64_t rows = m / block_rows, cols = k / block_cols, size = block_rows * block_cols;
    std::vector<int32_t> ptr(rows + 1, 0);
    std::vector<uint16_t> index;
    std::vector<float> values;
    for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < cols; ++c) {
            bool any = false;
            for (int64_t i = 0; i < block_rows && !any; ++i)
                for (int64_t j = 0; j < block_cols && !any; ++j)
                    any = data[(r * block_rows + i) * k + c * block_cols + j] != 0.0f;
            if (!any) continue;
            index.push_back(static_cast<uint16_t>(c * block_cols));
            for (int64_t i = 0; i < block_rows; ++i)
                for (int64_t j = 0; j < block_cols; ++j)
                    values.push_back(data[(r * block_rows + i) * k + c * block_cols + j]);
        }
        ptr[r + 1] = static_cast<int32_t>(index.size());
    }
    const int64_t blocks = static_cast<int64_t>(index.size());
    TORCH_CHECK(blocks * size < (int64_t{1} << 30), "sparse_pack: too many stored values");
    const int64_t ptr_at = kHeader, index_at = ptr_at + aligned(rows + 1);
    const int64_t value_at = index_at + aligned((blocks + 1) / 2), total = value_at + aligned(blocks * size);
    at::Tensor packed = at::zeros({total}, w.options().dtype(at::kInt));
    int32_t* out = packed.data_ptr<int32_t>();
    const int64_t header[] = {kSparseMagic, kVersion, m, k, block_rows, block_cols, blocks, ptr_at, index_at,
                              value_at};
    for (int s = 0; s < 10; ++s) out[s] = static_cast<int32_t>(header[s]);
    std::memcpy(out + ptr_at, ptr.data(), sizeof(int32_t) * ptr.size());
    if (blocks) {
        std::memcpy(out + index_at, index.data(), sizeof(uint16_t) * index.size());
        std::memcpy(out + value_at, values.data(), sizeof(float) * values.size());
    }
    return packed;
}

// W^T (K, N) -> its transpose into rows of length ld (the transposes of the batched product).
void transpose(const float* __restrict src, int64_t rows, int64_t cols, int64_t ld_src, float* __restrict dst,
               int64_t ld_dst) {
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) dst[c * ld_dst + r] = src[r * ld_src + c];
}

// The recurrence on a sparse W_hh: gates_t = x_gates_t + W_hh h_{t-1} (x_gates = W_ih x_t + bias for every
// frame, computed beforehand), gate order i, f, g, o. Batches up to gemv_rows run row after row (matrix-vector
// products); larger ones all rows together per step (the transposed batch product).
std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_lstm_forward(const at::Tensor& x_gates,
                                                                   const at::Tensor& w_hh, const at::Tensor& h0,
                                                                   const at::Tensor& c0, int64_t gemv_rows) {
    for (const at::Tensor* t : {&x_gates, &h0, &c0}) check_float_cpu(*t, "sparse_lstm_forward");
    const SparseView w = view_of(w_hh);
    TORCH_CHECK(x_gates.dim() == 3, "x_gates must be (B, T, 4H)");
    const int64_t batch = x_gates.size(0), steps = x_gates.size(1), width = x_gates.size(2);
    const int64_t hidden = w.cols;
    TORCH_CHECK(w.rows == 4 * hidden && width == 4 * hidden, "W_hh must be (4H, H) and x_gates (B, T, 4H)");
    Recurrence r = start_recurrence(x_gates, hidden, h0, c0);
    const at::Tensor xg = x_gates.contiguous();
    const float* xg_data = xg.data_ptr<float>();
    if (batch <= gemv_rows) {
        at::Tensor buffer = at::empty({width}, x_gates.options());
        run_rows(r, buffer.data_ptr<float>(), [&](int64_t b, int64_t t, const float* h_prev, float* gates) {
            std::memcpy(gates, xg_data + (b * steps + t) * width, sizeof(float) * width);
            gemv(w, h_prev, gates);
        });
    } else {
        at::Tensor buffers = at::empty({hidden * batch + 2 * width * batch}, x_gates.options());
        float* ht = buffers.data_ptr<float>();  // (H, B)
        float* gt = ht + hidden * batch;          // (4H, B)
        run_batched(r, gt + width * batch, width, [&](int64_t t, const float* h_prev, int64_t ld_prev, float* gates) {
            transpose(h_prev, batch, hidden, ld_prev, ht, batch);
            transpose(xg_data + t * width, batch, width, steps * width, gt, batch);
            gemm_t(w, ht, batch, gt);
            transpose(gt, width, batch, batch, gates, width);  // (B, 4H)
        });
    }
    return {r.out, r.h, r.c};
}

at::Tensor sparse_linear_op(const at::Tensor& x, const at::Tensor& packed, const std::optional<at::Tensor>& bias) {
    return shrinkml::sparse_linear(x, packed, bias);
}

}  // namespace

namespace shrinkml {

bool is_sparse_packed(const at::Tensor& t) {
    return t.defined() && t.device().is_cpu() && t.scalar_type() == at::kInt && t.dim() == 1 && t.numel() >= kHeader &&
           t.is_contiguous() && t.data_ptr<int32_t>()[kMagic] == kSparseMagic;
}

SparseView sparse_view(const at::Tensor& packed) { return view_of(packed); }

void sparse_gemv(const SparseView& w, const float* x, float* y) { gemv(w, x, y); }

void sparse_gemm_t(const SparseView& w, const float* xt, int64_t n, float* yt) { gemm_t(w, xt, n, yt); }

void transpose_into(const float* src, int64_t rows, int64_t cols, int64_t ld_src, float* dst, int64_t ld_dst) {
    transpose(src, rows, cols, ld_src, dst, ld_dst);
}

at::Tensor sparse_linear(const at::Tensor& x, const at::Tensor& packed, const std::optional<at::Tensor>& bias) {
    check_float_cpu(x, "sparse_linear x");
    const SparseView w = view_of(packed);
    TORCH_CHECK(x.dim() == 2 && x.size(1) == w.cols, "sparse_linear: x must be (N, ", w.cols, ")");
    const bool has_bias = bias.has_value() && bias->defined();
    at::Tensor b_c;
    if (has_bias) {
        check_float_cpu(*bias, "sparse_linear bias");
        TORCH_CHECK(bias->numel() == w.rows, "sparse_linear: bias must be (", w.rows, ",)");
        b_c = bias->contiguous();
    }
    const int64_t n = x.size(0), m = w.rows;
    const at::Tensor xc = x.contiguous();
    at::Tensor y = at::empty({n, m}, x.options());
    float* y_data = y.data_ptr<float>();
    const float* b_data = has_bias ? b_c.data_ptr<float>() : nullptr;
    if (n == 1) {
        if (has_bias) {
            std::memcpy(y_data, b_data, sizeof(float) * m);
        } else {
            std::memset(y_data, 0, sizeof(float) * m);
        }
        gemv(w, xc.data_ptr<float>(), y_data);
        return y;
    }
    if (n == 0) return y;
    at::Tensor buffers = at::empty({w.cols * n + m * n}, x.options());
    float* xt = buffers.data_ptr<float>();
    float* yt = xt + w.cols * n;
    transpose(xc.data_ptr<float>(), n, w.cols, w.cols, xt, n);
    for (int64_t r = 0; r < m; ++r) {
        const float value = has_bias ? b_data[r] : 0.0f;
        for (int64_t q = 0; q < n; ++q) yt[r * n + q] = value;
    }
    gemm_t(w, xt, n, yt);
    transpose(yt, m, n, n, y_data, m);
    return y;
}

}  // namespace shrinkml

TORCH_LIBRARY_FRAGMENT(shrinkml_lowrank, m) {
    m.def("sparse_pack(Tensor weight, int block_rows, int block_cols) -> Tensor");
    m.def("sparse_linear(Tensor x, Tensor packed, Tensor? bias) -> Tensor");
    m.def("sparse_lstm_forward(Tensor x_gates, Tensor w_hh, Tensor h0, Tensor c0, int gemv_rows)"
          " -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(shrinkml_lowrank, CPU, m) {
    m.impl("sparse_pack", &sparse_pack);
    m.impl("sparse_linear", &sparse_linear_op);
    m.impl("sparse_lstm_forward", &sparse_lstm_forward);
}
