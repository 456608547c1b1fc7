// optim/optimizer.cpp — the shared part of every optimizer: the parameter list and zero_grad.
#include "optim/optimizer.h"

#include <string>

namespace ladnn {

Optimizer::Optimizer(std::vector<Variable> params, double lr) : params_(std::move(params)), lr_(lr) {
  check(!params_.empty(), "Optimizer: got an empty parameter list");
  check(lr >= 0.0, "Optimizer: invalid learning rate " + std::to_string(lr) + " (must be >= 0)");
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const Variable& p = params_[i];
    const std::string which = "Optimizer: parameter " + std::to_string(i);
    check(p.defined(), which + " is undefined");
    check(p.is_leaf(), which + " is not a leaf (an op result); optimize leaves only");
    check(p.requires_grad(), which + " does not require a gradient");
    check(p.dtype() != DType::Int64, which + " is int64; parameters must be floating");
    // A parameter listed twice would be updated twice per step.
    for (std::size_t j = 0; j < i; ++j)
      check(!params_[j].same(p), which + " is the same Variable as parameter " + std::to_string(j));
  }
}

void Optimizer::zero_grad() {
  for (Variable& p : params_) p.zero_grad();
}

}  // namespace ladnn
