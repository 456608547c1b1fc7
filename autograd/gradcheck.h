// autograd/gradcheck.h — checks an op's backward against central differences, in float64.
//
// For a function f of several inputs, gradcheck draws a random vector v shaped like f's output and
// compares, for every element x_i of every input that requires a gradient,
//   analytic:  d(sum(v * f)) / dx_i   from backward(v)
//   numeric:   (sum(v * f(x + eps e_i)) - sum(v * f(x - eps e_i))) / (2 eps)
// A wrong backward (a missing term, a transposed index) shows up for almost every v; several
// projections make a miss vanishingly unlikely. Tolerances follow torch.autograd.gradcheck.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "autograd/variable.h"

namespace ladnn {

struct GradcheckOptions {
  double eps = 1e-6;    // finite-difference step (float64)
  double atol = 1e-5;   // |analytic - numeric| <= atol + rtol * |numeric|
  double rtol = 1e-3;
  int projections = 2;  // random output projections tried
  uint64_t seed = 1234;
};

struct GradcheckResult {
  bool ok = true;
  double max_abs_error = 0.0;
  /// Empty when ok; otherwise the first mismatches ("input 1 element 7: analytic 0.5, numeric 0.25").
  std::string message;
};

/// `fn` must be deterministic (reseed any generator inside it). Every input must be float64; those
/// with requires_grad are checked.
GradcheckResult gradcheck(const std::function<Variable(const std::vector<Variable>&)>& fn,
                          const std::vector<Variable>& inputs, const GradcheckOptions& options = {});

}  // namespace ladnn
