// tensor/cpu/dropout.cpp — the dropout mask.
//
// Each element is 0 with probability p and 1 / (1 - p) otherwise (inverted dropout: the expectation of
// x * mask is x, so evaluation is the identity). p == 1 gives all zeros, as PyTorch allows. The draws
// are sequential from one generator, so a seed fixes the mask.
#include <cmath>
#include <string>
#include <type_traits>

#include "tensor/ops.h"

namespace ladnn::ops {

Tensor dropout_mask(const Shape& shape, double p, Generator& gen, DType dtype) {
  check(p >= 0.0 && p <= 1.0, "dropout_mask: probability p must be in [0, 1], got " + std::to_string(p) +
                                  " (mask shape " + shape_str(shape) + ")");
  check(dtype == DType::Float32 || dtype == DType::Float64,
        std::string("dropout_mask: dtype must be float32 or float64, got ") + dtype_name(dtype));
  for (int64_t s : shape) check(s >= 0, "dropout_mask: shape " + shape_str(shape) + " has a negative size");
  Tensor mask = Tensor::empty(shape, dtype);
  const int64_t n = mask.numel();
  const double keep = p < 1.0 ? 1.0 / (1.0 - p) : 0.0;
  auto fill = [&](auto* m) {
    using T = std::remove_pointer_t<decltype(m)>;
    // A draw u in [0, 1) drops the element when u < p: probability exactly p (p = 0 keeps all).
    for (int64_t i = 0; i < n; ++i) m[i] = gen.uniform01() < p ? T(0) : static_cast<T>(keep);
  };
  if (dtype == DType::Float32)
    fill(mask.data<float>());
  else
    fill(mask.data<double>());
  return mask;
}

}  // namespace ladnn::ops
