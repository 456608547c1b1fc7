// autograd/gradcheck.cpp — central differences against backward (see gradcheck.h).
#include "autograd/gradcheck.h"

#include <cmath>
#include <sstream>

#include "tensor/ops.h"
#include "tensor/random.h"

namespace ladnn {

namespace {
/// sum(v * f(inputs)) evaluated without recording a graph.
double projected(const std::function<Variable(const std::vector<Variable>&)>& fn,
                 const std::vector<Variable>& inputs, const Tensor& v) {
  NoGradGuard guard;
  Tensor out = fn(inputs).tensor();
  return ops::sum(ops::mul(out, v)).item();
}
}  // namespace

GradcheckResult gradcheck(const std::function<Variable(const std::vector<Variable>&)>& fn,
                          const std::vector<Variable>& inputs, const GradcheckOptions& options) {
  bool any = false;
  for (size_t i = 0; i < inputs.size(); ++i) {
    check(inputs[i].dtype() == DType::Float64,
          "gradcheck: input " + std::to_string(i) + " is " + dtype_name(inputs[i].dtype()) +
              "; central differences need float64");
    check(inputs[i].tensor().is_contiguous(), "gradcheck: input " + std::to_string(i) + " must be contiguous");
    any = any || inputs[i].requires_grad();
  }
  check(any, "gradcheck: no input requires a gradient, so there is nothing to check");

  GradcheckResult result;
  std::ostringstream msg;
  int reported = 0;
  Generator gen(options.seed);
  for (int proj = 0; proj < options.projections; ++proj) {
    // Analytic: one backward with a random projection of the output.
    for (Variable in : inputs) in.zero_grad();  // handles share the node
    Variable out = fn(inputs);
    check(out.requires_grad(), "gradcheck: the function's output does not require a gradient");
    Tensor v = Tensor::normal(out.shape(), 0.0, 1.0, gen, DType::Float64);
    out.backward(v);

    for (size_t i = 0; i < inputs.size(); ++i) {
      if (!inputs[i].requires_grad()) continue;
      Variable handle = inputs[i];
      Tensor x = handle.mutable_tensor();  // shares storage: perturbing x perturbs the input
      double* px = x.data<double>();
      std::vector<double> analytic = inputs[i].has_grad()
                                         ? inputs[i].grad().to_vector()
                                         : std::vector<double>(x.numel(), 0.0);  // no path: zero
      for (int64_t e = 0; e < x.numel(); ++e) {
        const double saved = px[e];
        px[e] = saved + options.eps;
        double plus = projected(fn, inputs, v);
        px[e] = saved - options.eps;
        double minus = projected(fn, inputs, v);
        px[e] = saved;
        double numeric = (plus - minus) / (2.0 * options.eps);
        double err = std::fabs(analytic[e] - numeric);
        result.max_abs_error = std::max(result.max_abs_error, err);
        if (!(err <= options.atol + options.rtol * std::fabs(numeric))) {  // also catches NaN
          result.ok = false;
          if (reported++ < 5)
            msg << "input " << i << " element " << e << ": analytic " << analytic[e] << ", numeric "
                << numeric << " (projection " << proj << ")\n";
        }
      }
    }
  }
  for (Variable in : inputs) in.zero_grad();  // handles share the node
  if (!result.ok) {
    msg << "worst |analytic - numeric| = " << result.max_abs_error;
    result.message = msg.str();
  }
  return result;
}

}  // namespace ladnn
