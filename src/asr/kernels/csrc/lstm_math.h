// The LSTM gate math shared by the kernels of the library (factorized_lstm.cpp, sparse_kernels.cpp,
// decode_step.cpp): exp, sigmoid and tanh without libm calls (vectorizable), one step of gates for one row,
// the two recurrence loops every LSTM kernel runs (row after row, or all rows together step by step) with
// only the gate products left to the kernel, and the dtype/device check of every operator's inputs.
// Gate order i, f, g, o, as in asr.model.lstm.
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

// What an LSTM recurrence over an input (B, T, .) returns: out (B, T, H), every step's h, and the final
// h and c (B, H), which start as copies of h0 and c0 and are updated in place by the loops below.
struct Recurrence {
    at::Tensor out, h, c;
    int64_t batch, steps, hidden;
};

// The outputs of the recurrence over `input` (B, T, .) with `hidden` units; fails unless h0 and c0 are (B, H).
Recurrence start_recurrence(const at::Tensor& input, int64_t hidden, const at::Tensor& h0, const at::Tensor& c0);

// Row after row (each row's weights stay hot): for row b at step t, fill(b, t, h_prev, gates) writes the
// gate pre-activations [i | f | g | o] (4H) into `gates` given the row's h_{t-1} (H floats at h_prev); the gate
// math then updates the row's c and writes h_t into out.
template <class Fill>
void run_rows(Recurrence& r, float* gates, Fill&& fill) {
    if (r.batch == 0 || r.steps == 0) return;
    const int64_t steps = r.steps, hidden = r.hidden;
    float* out = r.out.data_ptr<float>();
    float* h = r.h.data_ptr<float>();
    float* c = r.c.data_ptr<float>();
    for (int64_t b = 0; b < r.batch; ++b) {
        const float* h_prev = h + b * hidden;
        for (int64_t t = 0; t < steps; ++t) {
            fill(b, t, h_prev, gates);
            float* h_t = out + (b * steps + t) * hidden;
            lstm_gates(gates, c + b * hidden, h_t, hidden);
            h_prev = h_t;
        }
        std::memcpy(h + b * hidden, h_prev, sizeof(float) * hidden);
    }
}

// All rows together, step by step (each weight row read once per step for every row): fill(t, h_prev, ld_prev,
// gates) writes the gate pre-activations of every row at step t into `gates` (row b at gates + b * ld_gates)
// given h_{t-1} of every row (row b at h_prev + b * ld_prev); the gate math then runs row by row.
template <class Fill>
void run_batched(Recurrence& r, float* gates, int64_t ld_gates, Fill&& fill) {
    if (r.batch == 0 || r.steps == 0) return;
    const int64_t batch = r.batch, steps = r.steps, hidden = r.hidden;
    float* out = r.out.data_ptr<float>();
    float* h = r.h.data_ptr<float>();
    float* c = r.c.data_ptr<float>();
    const float* h_prev = h;
    int64_t ld_prev = hidden;
    for (int64_t t = 0; t < steps; ++t) {
        fill(t, h_prev, ld_prev, gates);
        for (int64_t b = 0; b < batch; ++b) {
            lstm_gates(gates + b * ld_gates, c + b * hidden, out + (b * steps + t) * hidden, hidden);
        }
        h_prev = out + t * hidden;  // row b of step t at (b * steps + t) * hidden
        ld_prev = steps * hidden;
    }
    for (int64_t b = 0; b < batch; ++b) {
        std::memcpy(h + b * hidden, out + (b * steps + steps - 1) * hidden, sizeof(float) * hidden);
    }
}

}  // namespace shrinkml
