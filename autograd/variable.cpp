// autograd/variable.cpp — Variable and the backward engine.
//
// The engine in four steps (micrograd's, made iterative and memory-aware):
//   1. Depth-first search from the root, with an explicit stack, collecting the nodes that need a
//      gradient in post-order: every node comes after all of its inputs.
//   2. Seed the root's gradient.
//   3. Walk that order backwards: a node's gradient is complete when we reach it (all its consumers
//      came earlier), so run its hooks, keep it if it is a leaf or retains its grad, and call its
//      backward closure, accumulating each input's share into a per-pass table.
//   4. Release each node's closure (and so the tensors it saved) as soon as it has run, unless the
//      caller asked to keep the graph.
#include "autograd/variable.h"

#include <unordered_map>
#include <unordered_set>

#include "tensor/ops.h"

namespace ladnn {

namespace {
const char kLeaf[] = "leaf";
}

struct Variable::Impl {
  Shape shape;  // of the data, for checking gradients (the data itself lives in the Handle)
  Tensor grad;
  bool requires_grad = false;
  bool retain_grad = false;
  const char* op_name = kLeaf;
  bool released = false;  // backward ran without retain_graph: the closure and edges are gone
  // Set for op results only: the op's inputs (the graph's edges) and its backward closure.
  std::vector<std::shared_ptr<Impl>> inputs;
  BackwardFn backward;
  std::vector<Hook> hooks;
  bool is_leaf() const { return op_name == kLeaf; }
};

struct Variable::Handle {
  Tensor data;
  std::shared_ptr<Impl> node;
};

namespace {
thread_local bool g_grad_enabled = true;

void check_grad_shape(const Tensor& g, const Shape& shape, const char* who) {
  check(g.shape() == shape, std::string("backward: gradient of shape ") + shape_str(g.shape()) +
                                " does not match " + who + " of shape " + shape_str(shape));
}

/// acc += g. Out of place on purpose: g may share storage with a tensor an op saved or returned
/// elsewhere, so it is adopted as is and never written through.
void accumulate(Tensor& acc, const Tensor& g) {
  acc = acc.defined() ? ops::add(acc, g) : g;
}
}  // namespace

bool grad_enabled() { return g_grad_enabled; }

bool gradient_is_exclusive(const Tensor& grad_output) {
  return grad_output.defined() && grad_output.is_contiguous() && grad_output.storage().use_count() == 1;
}
NoGradGuard::NoGradGuard() : previous_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = previous_; }
EnableGradGuard::EnableGradGuard() : previous_(g_grad_enabled) { g_grad_enabled = true; }
EnableGradGuard::~EnableGradGuard() { g_grad_enabled = previous_; }

Variable::Variable(Tensor data, bool requires_grad) : handle_(std::make_shared<Handle>()) {
  check(data.defined(), "Variable: data tensor is undefined");
  handle_->node = std::make_shared<Impl>();
  handle_->node->shape = data.shape();
  handle_->node->requires_grad = requires_grad;
  handle_->data = std::move(data);
}

Variable::Impl* Variable::node() const {
  return handle_->node.get();
}

Variable Variable::from_op(Tensor result, std::vector<Variable> inputs, BackwardFn backward,
                           const char* op_name) {
  Variable out(std::move(result), false);
  if (!g_grad_enabled) return out;
  bool any = false;
  for (const Variable& v : inputs) any = any || (v.defined() && v.requires_grad());
  if (!any) return out;
  Impl* n = out.node();
  n->requires_grad = true;
  n->op_name = op_name;
  n->inputs.reserve(inputs.size());
  for (const Variable& v : inputs) n->inputs.push_back(v.defined() ? v.handle_->node : nullptr);
  n->backward = std::move(backward);
  return out;
}

const Tensor& Variable::tensor() const {
  check(defined(), "Variable: undefined variable");
  return handle_->data;
}
Tensor& Variable::mutable_tensor() {
  check(defined(), "Variable: undefined variable");
  return handle_->data;
}
bool Variable::requires_grad() const { return defined() && node()->requires_grad; }
void Variable::set_requires_grad(bool on) {
  check(defined() && is_leaf(), std::string("set_requires_grad: only leaves can change; this is the "
                                            "result of ") + op_name());
  node()->requires_grad = on;
}
bool Variable::is_leaf() const { return node()->is_leaf(); }
const char* Variable::op_name() const { return defined() ? node()->op_name : "undefined"; }
const Tensor& Variable::grad() const {
  check(defined(), "Variable::grad: undefined variable");
  return node()->grad;
}
bool Variable::has_grad() const { return defined() && node()->grad.defined(); }
void Variable::zero_grad() {
  if (defined()) node()->grad = Tensor();
}
void Variable::retain_grad() {
  check(defined(), "retain_grad: undefined variable");
  node()->retain_grad = true;
}
void Variable::register_hook(Hook hook) {
  check(defined() && requires_grad(), "register_hook: the variable does not require a gradient");
  node()->hooks.push_back(std::move(hook));
}
Variable Variable::detach() const { return Variable(tensor(), false); }

void Variable::backward(bool retain_graph) {
  check(numel() == 1, "backward: implicit gradient needs a one-element output, got shape " +
                          shape_str(shape()) + "; pass a gradient tensor");
  backward(Tensor::ones(shape(), dtype(), tensor().device()), retain_graph);
}

void Variable::backward(const Tensor& grad_output, bool retain_graph) {
  check(requires_grad(), "backward: the output does not require a gradient (no input requires one, "
                         "or it was computed under NoGradGuard)");
  check_grad_shape(grad_output, shape(), "the output");
  check(grad_output.dtype() == dtype(), std::string("backward: gradient dtype ") +
                                            dtype_name(grad_output.dtype()) + " differs from output " +
                                            dtype_name(dtype()));

  // 1. Post-order DFS with an explicit stack: (node, next input to visit).
  // `order` owns its nodes: releasing a node's edges below may drop the last other reference to an
  // intermediate result that is still to be processed.
  std::vector<std::shared_ptr<Impl>> order;
  std::unordered_set<Impl*> seen;
  std::vector<std::pair<std::shared_ptr<Impl>, size_t>> stack;
  stack.emplace_back(handle_->node, 0);
  seen.insert(node());
  while (!stack.empty()) {
    Impl* node = stack.back().first.get();
    size_t& next = stack.back().second;
    if (next < node->inputs.size()) {
      const std::shared_ptr<Impl>& child = node->inputs[next++];
      if (child && child->requires_grad && seen.insert(child.get()).second) stack.emplace_back(child, 0);
    } else {
      order.push_back(std::move(stack.back().first));
      stack.pop_back();
    }
  }

  // 2-4. Reverse walk with a per-pass gradient table.
  std::unordered_map<Impl*, Tensor> pending;
  pending[node()] = grad_output;
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    std::shared_ptr<Impl> node = std::move(*it);  // dropped at the end of this iteration
    auto found = pending.find(node.get());
    if (found == pending.end()) continue;  // no path carried a gradient here
    Tensor g = std::move(found->second);
    pending.erase(found);
    for (const Hook& hook : node->hooks) {
      Tensor replaced = hook(g);
      if (replaced.defined()) {
        check_grad_shape(replaced, node->shape, "the hooked variable");
        g = replaced;
      }
    }
    if (node->is_leaf() || node->retain_grad) accumulate(node->grad, g);
    if (node->is_leaf()) continue;
    check(!node->released, std::string("backward: the graph through ") + node->op_name +
                               " was already released by an earlier backward; pass retain_graph=true "
                               "to the first call to walk it twice");

    std::vector<bool> needs(node->inputs.size());
    for (size_t i = 0; i < needs.size(); ++i) needs[i] = node->inputs[i] && node->inputs[i]->requires_grad;
    std::vector<Tensor> grads = node->backward(g, needs);
    check(grads.size() == node->inputs.size(),
          std::string("backward of ") + node->op_name + " returned " + std::to_string(grads.size()) +
              " gradients for " + std::to_string(node->inputs.size()) + " inputs");
    for (size_t i = 0; i < grads.size(); ++i) {
      if (!needs[i] || !grads[i].defined()) continue;
      Impl* in = node->inputs[i].get();
      check(grads[i].shape() == in->shape,
            std::string("backward of ") + node->op_name + ": gradient for input " + std::to_string(i) +
                " has shape " + shape_str(grads[i].shape()) + ", input has " + shape_str(in->shape));
      accumulate(pending[in], grads[i]);
    }
    if (!retain_graph) {
      node->backward = nullptr;
      node->inputs.clear();
      node->released = true;
    }
  }
}

}  // namespace ladnn
