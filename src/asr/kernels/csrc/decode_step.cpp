// One greedy/beam step of the attention decoder with hard monotonic (MoChA) attention, for inference
// (asr.model.fast_decode). It uses the gate math of lstm_math.h and adds its operators to the library
// shrinkml_lowrank that factorized_lstm.cpp defines. Mirrors asr.model.decoder.AttentionDecoder.step exactly
// (up to float rounding): every PyTorch operation of that step becomes one C++ call or loop here, which
// removes the per-operation overhead that dominates a batch-1 step of a small (or compressed) decoder.
//
// A "linear chain" is a list of weights [W_1 (k_1, n), W_2 (k_2, k_1), ...] and an optional bias:
// y = x W_1^T W_2^T ... + b. A dense nn.Linear is [W]; a rank-k factorized one is [V* (k, n), U' (m, k)].
#include "lstm_math.h"
#include "sparse_kernels.h"

#include <ATen/ops/addmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/tanh.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

namespace {

using shrinkml::check_float_cpu;
using shrinkml::lstm_gates;
using shrinkml::tanh_approx;

constexpr int kAcc = 16;  // independent partial sums: lets the compiler vectorize a dot product exactly

// Nanoseconds spent in the attention part of decode_step (query projections, hard monotonic scan, chunk
// softmax and context) since the last read: the benchmark's encoder / attention / decoder split (Fig. 6).
std::atomic<int64_t> attention_nanoseconds{0};

// sum_a v[a] tanh(k[a] + q[a]): one attention energy (before gain, bias and sigmoid).
SHRINKML_CLONES
float tanh_dot(const float* __restrict k, const float* __restrict q, const float* __restrict v, int64_t n) {
    float acc[kAcc] = {0.0f};
    int64_t a = 0;
    for (; a + kAcc <= n; a += kAcc) {
        for (int l = 0; l < kAcc; ++l) acc[l] += v[a + l] * tanh_approx(k[a + l] + q[a + l]);
    }
    float total = 0.0f;
    for (int l = 0; l < kAcc; ++l) total += acc[l];
    for (; a < n; ++a) total += v[a] * tanh_approx(k[a] + q[a]);
    return total;
}

at::Tensor linear_chain(const at::Tensor& x, const std::vector<at::Tensor>& weights,
                        const std::optional<at::Tensor>& bias) {
    TORCH_CHECK(!weights.empty(), "a linear chain needs at least one weight");
    at::Tensor y = x;
    for (size_t i = 0; i < weights.size(); ++i) {
        const bool last = i + 1 == weights.size();
        if (shrinkml::is_sparse_packed(weights[i])) {  // a pruned weight packed by sparse_pack (sparse_kernels.h)
            y = shrinkml::sparse_linear(y, weights[i], last ? bias : std::nullopt);
            continue;
        }
        y = last && bias.has_value() && bias->defined() ? at::addmm(*bias, y, weights[i].t())
                                                         : at::mm(y, weights[i].t());
    }
    return y.contiguous();
}

// Returns (log_probs (B, V), h (B, H), c (B, H), context (B, D), boundary (B,), weights (B, T)).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> decode_step(
        const at::Tensor& tokens, const at::Tensor& h, const at::Tensor& c, const at::Tensor& context,
        const at::Tensor& boundary, const at::Tensor& memory, const at::Tensor& mono_keys,
        const at::Tensor& chunk_keys, const at::Tensor& mask, const at::Tensor& embedding,
        std::vector<at::Tensor> cell, const at::Tensor& cell_bias, std::vector<at::Tensor> mono_query,
        const at::Tensor& mono_v, double mono_r, std::vector<at::Tensor> chunk_query, const at::Tensor& chunk_v,
        std::vector<at::Tensor> pre_output, const std::optional<at::Tensor>& pre_bias,
        std::vector<at::Tensor> output, const std::optional<at::Tensor>& out_bias, int64_t chunk_size,
        bool fallback, int64_t pad_id, int64_t bos_id) {
    for (const at::Tensor* t : {&h, &c, &context, &memory, &mono_keys, &chunk_keys, &embedding, &cell_bias,
                                &mono_v, &chunk_v}) {
        check_float_cpu(*t, "decode_step");
    }
    TORCH_CHECK(memory.dim() == 3 && mono_keys.dim() == 3 && chunk_keys.dim() == 3 && mask.dim() == 2,
                "memory and keys must be (B, T, .), mask (B, T)");
    TORCH_CHECK(memory.stride(2) == 1 && mono_keys.stride(2) == 1 && chunk_keys.stride(2) == 1,
                "memory and keys must be contiguous in their last dimension");
    TORCH_CHECK(mask.scalar_type() == at::kBool && tokens.scalar_type() == at::kLong &&
                boundary.scalar_type() == at::kLong, "mask bool, tokens and boundary int64");
    const at::Tensor boundary_in = boundary.contiguous();
    const int64_t batch = h.size(0), hidden = h.size(1), frames = memory.size(1), width = mono_keys.size(2);
    TORCH_CHECK(chunk_size >= 1, "chunk_size must be >= 1");

    // s_i = LSTM([E y_{i-1} ; c_{i-1}], s_{i-1})
    const at::Tensor inputs = at::cat({at::index_select(embedding, 0, tokens), context, h}, 1);
    const at::Tensor gates = linear_chain(inputs, cell, cell_bias);  // (B, 4H)
    TORCH_CHECK(gates.size(1) == 4 * hidden, "the cell's weights do not match its state size");
    at::Tensor c_new = c.clone(at::MemoryFormat::Contiguous);
    at::Tensor h_new = at::empty({batch, hidden}, h.options());
    for (int64_t b = 0; b < batch; ++b) {
        lstm_gates(gates.data_ptr<float>() + b * 4 * hidden, c_new.data_ptr<float>() + b * hidden,
                   h_new.data_ptr<float>() + b * hidden, hidden);
    }

    // hard monotonic attention: first frame j >= boundary with p_ij >= 0.5, then a softmax over its chunk
    const auto attention_start = std::chrono::steady_clock::now();
    const at::Tensor q_mono = linear_chain(h_new, mono_query, std::nullopt);  // (B, A)
    const at::Tensor q_chunk = linear_chain(h_new, chunk_query, std::nullopt);  // (B, A)
    TORCH_CHECK(q_mono.size(1) == width && q_chunk.size(1) == chunk_keys.size(2), "attention sizes do not match");
    at::Tensor weights = at::zeros({batch, frames}, h.options());
    at::Tensor context_new = at::zeros({batch, memory.size(2)}, h.options());
    at::Tensor boundary_new = at::empty({batch}, boundary.options());
    const bool* mask_data = mask.data_ptr<bool>();
    const at::Tensor mono_v_c = mono_v.contiguous(), chunk_v_c = chunk_v.contiguous();  // held: pointers below
    const float* v = mono_v_c.data_ptr<float>();
    const float* cv = chunk_v_c.data_ptr<float>();
    const float r = static_cast<float>(mono_r);
    const int64_t dim = memory.size(2);
    std::vector<float> chunk_energy(chunk_size);
    std::vector<int64_t> chunk_index(chunk_size);
    for (int64_t b = 0; b < batch; ++b) {
        const int64_t from = boundary_in.data_ptr<int64_t>()[b];
        const float* keys_b = mono_keys.data_ptr<float>() + b * mono_keys.stride(0);
        const float* q = q_mono.data_ptr<float>() + b * width;
        const bool* mask_b = mask_data + b * mask.stride(0);
        int64_t chosen = frames, best = -1;
        float best_p = -1.0f;
        for (int64_t j = std::max<int64_t>(from, 0); j < frames; ++j) {
            if (!mask_b[j * mask.stride(1)]) continue;
            const float e = tanh_dot(keys_b + j * mono_keys.stride(1), q, v, width) + r;
            const float p = 1.0f / (1.0f + std::exp(-e));
            if (p >= 0.5f) {
                chosen = j;
                break;
            }
            if (j > from && p > best_p) {  // strictly ahead of the boundary: the fallback's candidates
                best_p = p;
                best = j;
            }
        }
        if (chosen == frames && fallback && best >= 0) chosen = best;
        boundary_new.data_ptr<int64_t>()[b] = chosen;
        if (chosen == frames) continue;  // ran off the end: zero weights, zero context
        const float* ck_b = chunk_keys.data_ptr<float>() + b * chunk_keys.stride(0);
        const float* qc = q_chunk.data_ptr<float>() + b * chunk_keys.size(2);
        float top = -std::numeric_limits<float>::infinity();
        int64_t count = 0;
        for (int64_t i = chosen - chunk_size + 1; i <= chosen; ++i) {
            if (i < 0 || !mask_b[i * mask.stride(1)]) continue;
            const float u = tanh_dot(ck_b + i * chunk_keys.stride(1), qc, cv, chunk_keys.size(2));
            chunk_energy[count] = u;
            chunk_index[count++] = i;
            top = std::max(top, u);
        }
        float total = 0.0f;
        for (int64_t n = 0; n < count; ++n) {
            chunk_energy[n] = std::exp(chunk_energy[n] - top);
            total += chunk_energy[n];
        }
        float* w_b = weights.data_ptr<float>() + b * frames;
        float* ctx = context_new.data_ptr<float>() + b * dim;
        const float* mem_b = memory.data_ptr<float>() + b * memory.stride(0);
        for (int64_t n = 0; n < count; ++n) {
            const float share = chunk_energy[n] / total;
            w_b[chunk_index[n]] = share;
            const float* row = mem_b + chunk_index[n] * memory.stride(1);
            for (int64_t d = 0; d < dim; ++d) ctx[d] += share * row[d];
        }
    }

    attention_nanoseconds += std::chrono::duration_cast<std::chrono::nanoseconds>(
        std::chrono::steady_clock::now() - attention_start).count();

    // logits_i = W_out tanh(W_pre [s_i ; c_i]); padding and start ids are never outputs
    const at::Tensor pre = at::tanh(linear_chain(at::cat({h_new, context_new}, 1), pre_output, pre_bias));
    at::Tensor logits = linear_chain(pre, output, out_bias);
    const float minus_inf = -std::numeric_limits<float>::infinity();
    for (int64_t b = 0; b < batch; ++b) {
        float* row = logits.data_ptr<float>() + b * logits.size(1);
        row[pad_id] = minus_inf;
        row[bos_id] = minus_inf;
    }
    return {at::log_softmax(logits, 1), h_new, c_new, context_new, boundary_new, weights};
}

// Greedy decoding of a whole batch, every step decode_step from the zero state and the start id: the loop of
// asr.model.decoder.AttentionDecoder.greedy without a Python round trip per step. Steps until every row has
// output the end id or max_len steps ran. Returns (tokens (B, S) int64, scores (B, S)): each row's argmax id at
// every step run (torch.argmax's: the first highest) and its log-probability; a row's hypothesis is its ids before
// its first end id.
std::tuple<at::Tensor, at::Tensor> greedy_decode(
        const at::Tensor& memory, const at::Tensor& mono_keys, const at::Tensor& chunk_keys, const at::Tensor& mask,
        const at::Tensor& embedding, std::vector<at::Tensor> cell, const at::Tensor& cell_bias,
        std::vector<at::Tensor> mono_query, const at::Tensor& mono_v, double mono_r, std::vector<at::Tensor> chunk_query,
        const at::Tensor& chunk_v, std::vector<at::Tensor> pre_output, const std::optional<at::Tensor>& pre_bias,
        std::vector<at::Tensor> output, const std::optional<at::Tensor>& out_bias, int64_t chunk_size, bool fallback,
        int64_t max_len, int64_t pad_id, int64_t bos_id, int64_t eos_id) {
    check_float_cpu(memory, "greedy_decode");
    check_float_cpu(cell_bias, "greedy_decode");
    TORCH_CHECK(memory.dim() == 3 && cell_bias.dim() == 1 && cell_bias.size(0) % 4 == 0,
                "greedy_decode: memory (B, T, D) and a cell bias (4H,)");
    TORCH_CHECK(max_len >= 1, "greedy_decode: max_len must be >= 1");
    const int64_t batch = memory.size(0), hidden = cell_bias.size(0) / 4;
    const auto float_options = memory.options();
    const auto long_options = float_options.dtype(at::kLong);
    at::Tensor h = at::zeros({batch, hidden}, float_options), c = at::zeros({batch, hidden}, float_options);
    at::Tensor context = at::zeros({batch, memory.size(2)}, float_options);
    at::Tensor boundary = at::zeros({batch}, long_options);
    at::Tensor tokens = at::full({batch}, bos_id, long_options);
    at::Tensor out_tokens = at::empty({batch, max_len}, long_options);
    at::Tensor out_scores = at::empty({batch, max_len}, float_options);
    std::vector<bool> finished(batch, false);
    int64_t steps = 0;
    while (steps < max_len) {
        auto [log_probs, h_new, c_new, context_new, boundary_new, weights] = decode_step(
            tokens, h, c, context, boundary, memory, mono_keys, chunk_keys, mask, embedding, cell, cell_bias,
            mono_query, mono_v, mono_r, chunk_query, chunk_v, pre_output, pre_bias, output, out_bias, chunk_size,
            fallback, pad_id, bos_id);
        h = h_new;
        c = c_new;
        context = context_new;
        boundary = boundary_new;
        const int64_t vocab = log_probs.size(1);
        const float* lp = log_probs.data_ptr<float>();
        int64_t* token_data = tokens.data_ptr<int64_t>();
        bool all_finished = true;
        for (int64_t b = 0; b < batch; ++b) {
            const float* row = lp + b * vocab;
            int64_t best = 0;
            for (int64_t v = 1; v < vocab; ++v) {  // torch.argmax: the first highest, NaN above all
                if (std::isnan(row[best])) break;
                if (row[v] > row[best] || std::isnan(row[v])) best = v;
            }
            token_data[b] = best;
            out_tokens.data_ptr<int64_t>()[b * max_len + steps] = best;
            out_scores.data_ptr<float>()[b * max_len + steps] = row[best];
            if (best == eos_id) finished[b] = true;
            all_finished = all_finished && finished[b];
        }
        ++steps;
        if (all_finished) break;
    }
    return {out_tokens.narrow(1, 0, steps), out_scores.narrow(1, 0, steps)};
}

// An encoder layer's LayerNorm (when w is given) and max-pool over whole groups of `pool` frames, for inference
// (asr.model.encoder.Encoder.norm_pool): x (B, T, H) -> (B, T / pool, H). Per frame the mean, then the variance of
// the centered values (kAcc partial sums each: vectorized, and as exact as ATen's float moments to rounding), then
// y = (x - mean) / sqrt(var + eps) w + b, each pooled frame the largest y of its group.
SHRINKML_INLINE float sum_of(const float* __restrict x, float shift, bool square, int64_t n) {
    float acc[kAcc] = {0.0f};
    int64_t d = 0;
    for (; d + kAcc <= n; d += kAcc) {
        for (int l = 0; l < kAcc; ++l) {
            const float v = x[d + l] - shift;
            acc[l] += square ? v * v : v;
        }
    }
    float total = 0.0f;
    for (int l = 0; l < kAcc; ++l) total += acc[l];
    for (; d < n; ++d) {
        const float v = x[d] - shift;
        total += square ? v * v : v;
    }
    return total;
}

SHRINKML_CLONES
void norm_pool_rows(const float* __restrict x, float* __restrict out, const float* __restrict w,
                    const float* __restrict bias, int64_t frames, int64_t hidden, int64_t pool, double eps) {
    for (int64_t t = 0; t < frames; ++t) {
        float* __restrict o = out + t * hidden;
        for (int64_t k = 0; k < pool; ++k) {
            const float* __restrict in = x + (t * pool + k) * hidden;
            if (w == nullptr) {
                for (int64_t d = 0; d < hidden; ++d) o[d] = k == 0 || in[d] > o[d] ? in[d] : o[d];
                continue;
            }
            const float mean = sum_of(in, 0.0f, false, hidden) / static_cast<float>(hidden);
            const float var = sum_of(in, mean, true, hidden) / static_cast<float>(hidden);
            const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(var) + eps));
            for (int64_t d = 0; d < hidden; ++d) {
                const float y = (in[d] - mean) * scale * w[d] + bias[d];
                o[d] = k == 0 || y > o[d] ? y : o[d];
            }
        }
    }
}

at::Tensor norm_pool(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                     const std::optional<at::Tensor>& bias, double eps, int64_t pool) {
    check_float_cpu(x, "norm_pool");
    TORCH_CHECK(x.dim() == 3 && pool >= 1, "norm_pool: x (B, T, H) and pool >= 1");
    const bool normalize = weight.has_value() && weight->defined();
    TORCH_CHECK(normalize == (bias.has_value() && bias->defined()), "norm_pool: weight and bias together");
    const int64_t batch = x.size(0), frames = x.size(1) / pool, hidden = x.size(2);
    const at::Tensor input = x.contiguous();
    at::Tensor w, b;
    if (normalize) {
        check_float_cpu(*weight, "norm_pool");
        check_float_cpu(*bias, "norm_pool");
        TORCH_CHECK(weight->numel() == hidden && bias->numel() == hidden, "norm_pool: weight and bias of size H");
        w = weight->contiguous();
        b = bias->contiguous();
    }
    at::Tensor out = at::empty({batch, frames, hidden}, x.options());
    for (int64_t n = 0; n < batch; ++n) {
        norm_pool_rows(input.data_ptr<float>() + n * x.size(1) * hidden, out.data_ptr<float>() + n * frames * hidden,
                       normalize ? w.data_ptr<float>() : nullptr, normalize ? b.data_ptr<float>() : nullptr, frames,
                       hidden, pool, eps);
    }
    return out;
}

int64_t take_attention_nanoseconds() { return attention_nanoseconds.exchange(0); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(shrinkml_lowrank, m) {
    m.def("decode_step(Tensor tokens, Tensor h, Tensor c, Tensor context, Tensor boundary, Tensor memory,"
          " Tensor mono_keys, Tensor chunk_keys, Tensor mask, Tensor embedding, Tensor[] cell, Tensor cell_bias,"
          " Tensor[] mono_query, Tensor mono_v, float mono_r, Tensor[] chunk_query, Tensor chunk_v,"
          " Tensor[] pre_output, Tensor? pre_bias, Tensor[] output, Tensor? out_bias, int chunk_size,"
          " bool fallback, int pad_id, int bos_id) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
    m.def("greedy_decode(Tensor memory, Tensor mono_keys, Tensor chunk_keys, Tensor mask, Tensor embedding,"
          " Tensor[] cell, Tensor cell_bias, Tensor[] mono_query, Tensor mono_v, float mono_r, Tensor[] chunk_query,"
          " Tensor chunk_v, Tensor[] pre_output, Tensor? pre_bias, Tensor[] output, Tensor? out_bias, int chunk_size,"
          " bool fallback, int max_len, int pad_id, int bos_id, int eos_id) -> (Tensor, Tensor)");
    m.def("norm_pool(Tensor x, Tensor? weight, Tensor? bias, float eps, int pool) -> Tensor");
    m.def("take_attention_nanoseconds() -> int", &take_attention_nanoseconds);  // no tensors: one kernel for all
}

TORCH_LIBRARY_IMPL(shrinkml_lowrank, CPU, m) {
    m.impl("decode_step", &decode_step);
    m.impl("greedy_decode", &greedy_decode);
    m.impl("norm_pool", &norm_pool);
}
