// tests/golden_util.h — the comparison every golden test uses (ladnn vs PyTorch), with its metric:
//     err_i = |a_i - b_i| / max(|b_i|, rms(b))        rms(b) = sqrt(mean(b^2)) over the whole tensor
// A tensor passes when max_i err_i <= tol. Large elements are held to a relative error; an element much
// smaller than the tensor's typical size (a near-cancelling sum) to an absolute error of tol * rms(b),
// since float32 rounding in a sum scales with its terms, not with its result. A NaN fails.
// The failure message names the worst element, both values and how many elements are over.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace ladnn {

inline std::string index_str(int64_t flat, const Shape& shape) {
  std::vector<int64_t> idx(shape.size());
  for (std::size_t d = shape.size(); d-- > 0;) {
    idx[d] = flat % shape[d];
    flat /= shape[d];
  }
  std::string s = "[";
  for (std::size_t d = 0; d < idx.size(); ++d) s += (d ? ", " : "") + std::to_string(idx[d]);
  return s + "]";
}

/// `actual` (ladnn) against `expected` (PyTorch) under the metric above.
inline ::testing::AssertionResult close_to(const std::string& what, const Tensor& actual, const Tensor& expected,
                                 double tol) {
  if (!actual.defined()) return ::testing::AssertionFailure() << what << ": ladnn produced no tensor";
  if (actual.shape() != expected.shape())
    return ::testing::AssertionFailure() << what << ": shape " << shape_str(actual.shape()) << ", PyTorch has "
                                         << shape_str(expected.shape());
  if (actual.dtype() != expected.dtype())
    return ::testing::AssertionFailure() << what << ": dtype " << dtype_name(actual.dtype()) << ", PyTorch has "
                                         << dtype_name(expected.dtype());
  const std::vector<double> a = actual.to_vector(), b = expected.to_vector();
  double sumsq = 0.0;
  for (double v : b) sumsq += v * v;
  const double rms = b.empty() ? 0.0 : std::sqrt(sumsq / static_cast<double>(b.size()));
  double worst = 0.0;
  int64_t worst_i = -1, over = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double diff = std::fabs(a[i] - b[i]);
    double err = diff == 0.0 ? 0.0 : diff / std::max(std::fabs(b[i]), rms);
    if (std::isnan(err)) err = INFINITY;
    if (err > tol) ++over;
    if (worst_i < 0 || err > worst) {
      worst = err;
      worst_i = static_cast<int64_t>(i);
    }
  }
  if (over == 0) return ::testing::AssertionSuccess();
  const std::size_t w = static_cast<std::size_t>(worst_i);
  return ::testing::AssertionFailure()
         << what << ": " << over << " of " << a.size() << " elements off by more than " << tol
         << "; worst at " << index_str(worst_i, expected.shape()) << ": ladnn " << a[w] << ", PyTorch " << b[w]
         << ", |diff| " << std::fabs(a[w] - b[w]) << ", error " << worst << " (rms of PyTorch's tensor " << rms
         << ")";
}

}  // namespace ladnn
