// layers/linear.cpp — Linear: PyTorch's initialisation and a shape-checked call of linear.
#include "layers/linear.h"

#include <cmath>
#include <string>

#include "autograd/functions.h"

namespace ladnn {

Linear::Linear(int64_t in_features, int64_t out_features, bool bias, Generator& gen)
    : Module("Linear"), in_features_(in_features), out_features_(out_features) {
  check(in_features > 0 && out_features > 0, "Linear: feature counts must be positive, got in_features " +
                                                 std::to_string(in_features) + " and out_features " +
                                                 std::to_string(out_features));
  // torch.nn.Linear.reset_parameters: kaiming_uniform_(weight, a=sqrt(5)), then the bias.
  weight_ = register_parameter("weight", kaiming_uniform({out_features, in_features}, std::sqrt(5.0), gen));
  if (bias) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
    bias_ = register_parameter("bias", Tensor::uniform({out_features}, -bound, bound, gen));
  }
}

Variable Linear::forward(const Variable& x) {
  check(x.dim() == 2 && x.size(1) == in_features_,
        "Linear: expected input (N, " + std::to_string(in_features_) + "), got " + shape_str(x.shape()));
  return linear(x, weight_, bias_);
}

}  // namespace ladnn
