// autograd/checkpoint.cpp — see checkpoint.h.
#include "autograd/checkpoint.h"

#include <memory>

namespace ladnn {
namespace {

thread_local bool g_recomputing = false;

struct RecomputeScope {
  bool previous = g_recomputing;
  RecomputeScope() { g_recomputing = true; }
  ~RecomputeScope() { g_recomputing = previous; }
};

}  // namespace

bool recomputing() {
  return g_recomputing;
}

Variable checkpoint(const CheckpointFn& fn, const std::vector<Variable>& inputs) {
  bool any = false;
  for (const Variable& v : inputs) any = any || v.requires_grad();
  if (!grad_enabled() || !any) return fn(inputs);

  std::vector<Tensor> saved;
  saved.reserve(inputs.size());
  for (const Variable& v : inputs) saved.push_back(v.tensor());
  Tensor y;
  {
    NoGradGuard no_grad;
    std::vector<Variable> plain;
    plain.reserve(saved.size());
    for (const Tensor& t : saved) plain.emplace_back(t, false);
    y = fn(plain).tensor();
  }
  return Variable::from_op(
      std::move(y), inputs,
      [fn, saved](const Tensor& grad_y, const std::vector<bool>& needs) {
        std::vector<Variable> leaves;
        leaves.reserve(saved.size());
        for (std::size_t i = 0; i < saved.size(); ++i) leaves.emplace_back(saved[i], bool(needs[i]));
        Variable again;
        {
          EnableGradGuard grad_on;  // the engine may run under NoGradGuard
          RecomputeScope recompute;
          again = fn(leaves);
        }
        check(again.shape() == grad_y.shape(), "checkpoint: the re-run gave shape " + shape_str(again.shape()) +
                                                   ", the first run " + shape_str(grad_y.shape()));
        std::vector<Tensor> grads(saved.size());
        if (again.requires_grad()) {
          again.backward(grad_y);
          for (std::size_t i = 0; i < saved.size(); ++i)
            if (needs[i] && leaves[i].has_grad()) grads[i] = leaves[i].grad();
        }
        for (std::size_t i = 0; i < saved.size(); ++i)  // an input fn did not use: zero gradient
          if (needs[i] && !grads[i].defined())
            grads[i] = Tensor::zeros(saved[i].shape(), saved[i].dtype(), saved[i].device());
        return grads;
      },
      "checkpoint");
}

}  // namespace ladnn
