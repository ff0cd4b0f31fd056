// The LSTM gate math shared by the kernels of the library (factorized_lstm.cpp, decode_step.cpp):
// exp, sigmoid and tanh without libm calls (vectorizable), one step of gates for one row, and the
// dtype/device check of every operator's inputs. Gate order i, f, g, o, as in asr.model.lstm.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <cstring>

// One copy of each hot loop per instruction set, picked when the library loads (GCC on x86-64).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SHRINKML_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SHRINKML_CLONES
#endif

// always_inline: the vectorized loops that call these are target clones, and GCC stopped inlining the
// helpers into them once they had several callers (a scalar call per element, ~10x slower gate math).
#define SHRINKML_INLINE __attribute__((always_inline)) inline

namespace shrinkml {

// exp(x) for x in [-87, 88]: 2^n * p(r), n = round(x / ln 2), r = x - n ln 2 (two-part ln 2),
// p the degree-7 Taylor polynomial (relative error ~5e-9 on |r| <= ln(2) / 2). The rounding uses
// the 1.5 * 2^23 trick so that n is also read from the float's bits: no libm call, vectorizable.
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
// A target clone (SHRINKML_CLONES), defined in lstm_math.cpp.
void lstm_gates(const float* __restrict gates, float* __restrict c, float* __restrict h, int64_t hidden);

// Fails (a Python RuntimeError naming `name`) unless t is a CPU float32 tensor.
void check_float_cpu(const at::Tensor& t, const char* name);

}  // namespace shrinkml
