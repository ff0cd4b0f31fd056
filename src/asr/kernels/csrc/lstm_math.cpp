// The shared gate math of lstm_math.h.
#include "lstm_math.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

namespace shrinkml {

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

void check_float_cpu(const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, name, ": CPU float32 tensors only");
}

Recurrence start_recurrence(const at::Tensor& input, int64_t hidden, const at::Tensor& h0, const at::Tensor& c0) {
    const int64_t batch = input.size(0), steps = input.size(1);
    TORCH_CHECK(h0.dim() == 2 && h0.size(0) == batch && h0.size(1) == hidden && c0.sizes() == h0.sizes(),
                "h0 and c0 must be (B, H)");
    return {at::empty({batch, steps, hidden}, input.options()), h0.clone(at::MemoryFormat::Contiguous),
            c0.clone(at::MemoryFormat::Contiguous), batch, steps, hidden};
}

}  // namespace shrinkml
