// Sparse (pruned) weight matrices for inference: a block-compressed-row format held in ONE int32 tensor
// (a "packed sparse matrix"), so that it travels through the operators' Tensor and Tensor[] arguments
// wherever a dense weight does (decode_step.cpp's linear chains take either). Defined in sparse_kernels.cpp.
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

#include <optional>

namespace shrinkml {

constexpr int32_t kSparseMagic = 0x53505253;  // "SPRS"

// Whether t is a packed sparse matrix (an int32 tensor starting with the magic number).
bool is_sparse_packed(const at::Tensor& t);

// y (N, M) = x (N, K) @ W^T (+ bias (M,)) for a packed sparse W (M, K); x CPU float32.
at::Tensor sparse_linear(const at::Tensor& x, const at::Tensor& packed, const std::optional<at::Tensor>& bias);

}  // namespace shrinkml
