// Sparse (pruned) weight matrices for inference: a block-compressed-row format held in ONE int32 tensor
// (a "packed sparse matrix"), so that it travels through the operators' Tensor and Tensor[] arguments
// wherever a dense weight does (decode_step.cpp's linear chains take either). Defined in sparse_kernels.cpp; the
// products on a packed matrix (sparse_view, sparse_gemv, sparse_gemm_t) serve the other kernels' loops too
// (sparse_factorized_lstm.cpp).
//
// Layout of the int32 tensor (sections start at multiples of 16 int32 = 64 bytes):
//   header[16]: magic, version, rows M, cols K, block rows BH, block cols BW, stored blocks NB,
//               offset of row pointers, offset of column indices, offset of values (in int32 units)
//   row pointers: M / BH + 1 int32, blocks of block-row R are [ptr[R], ptr[R + 1])
//   column indices: NB uint16 (two per int32), the first column of each block (so K <= 65536)
//   values: NB * BH * BW float32, block by block, each block row-major
// BH = BW = 1 is plain CSR. A stored block may hold zeros; blocks of all zeros are not stored.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace shrinkml {

constexpr int32_t kSparseMagic = 0x53505253;  // "SPRS"

// Whether t is a packed sparse matrix (an int32 tensor starting with the magic number).
bool is_sparse_packed(const at::Tensor& t);

// y (N, M) = x (N, K) @ W^T (+ bias (M,)) for a packed sparse W (M, K); x CPU float32.
at::Tensor sparse_linear(const at::Tensor& x, const at::Tensor& packed, const std::optional<at::Tensor>& bias);

// A packed sparse matrix read in place: M = rows, K = cols, BH x BW blocks, the sections of the layout above.
// Valid while the packed tensor lives.
struct SparseView {
    int64_t rows, cols, bh, bw, blocks;
    const int32_t* ptr;
    const uint16_t* index;
    const float* values;
};

// The view of a packed sparse matrix (fails, naming the cause, on anything else or another format version).
SparseView sparse_view(const at::Tensor& packed);

// y (M) += W x (K): the batch-1 product (per block row, independent partial sums; one clone per instruction set).
void sparse_gemv(const SparseView& w, const float* x, float* y);

// yt (M, n) += W xt (K, n): the batched product on transposed operands (n contiguous values per input row).
void sparse_gemm_t(const SparseView& w, const float* xt, int64_t n, float* yt);

// dst (cols, rows; rows ld_dst apart) = src (rows, cols; rows ld_src apart) transposed.
void transpose_into(const float* src, int64_t rows, int64_t cols, int64_t ld_src, float* dst, int64_t ld_dst);

}  // namespace shrinkml
