// The shared gate math of lstm_math.h.
#include "lstm_math.h"

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

}  // namespace shrinkml
