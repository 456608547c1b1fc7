// autograd/variable.h — define-by-run automatic differentiation.
//
// A Variable is a Tensor plus what reverse mode needs: whether it requires a gradient, its gradient,
// and — when an op produced it — the op's inputs and a backward closure. Ops (autograd/functions.h)
// compute their result with tensor/ops.h and attach a closure that captures only what backward reads.
// `backward()` sorts the graph topologically (iteratively: DenseNet-169's graph has thousands of
// nodes), walks it in reverse, and accumulates gradients: a feature map used by many layers receives
// the sum of all their contributions.
//
// Two objects per variable: the handle's data (the Tensor), shared by the copies of one Variable, and
// its node in the graph (requires_grad, grad, the op's inputs and backward closure). Graph edges point
// at nodes only, so an intermediate result is freed as soon as no Variable refers to it and no
// backward closure saved it — the graph alone never keeps activations alive. (The first version kept
// the data in the node: every BatchNorm output of a DenseNet stayed alive until backward, 1.5x
// PyTorch's peak memory on the H200.)
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace ladnn {

class Variable {
 public:
  /// The backward of an op: given d(output) and which inputs need a gradient, returns one gradient per
  /// input (undefined where not needed). Shapes must equal the inputs' shapes.
  /// Gradients are read-only values: a backward may return a view of grad_output or of a saved tensor
  /// (cat returns slices), the engine accumulates out of place, and a backward may receive a strided
  /// grad_output. Nothing writes through a gradient, except that a backward may take a grad_output that
  /// nothing else can see (gradient_is_exclusive) as its own scratch.
  using BackwardFn =
      std::function<std::vector<Tensor>(const Tensor& grad_output, const std::vector<bool>& needs_grad)>;
  /// Called with the gradient flowing into a variable during backward; may return a replacement
  /// (same shape) or an undefined Tensor to keep it.
  using Hook = std::function<Tensor(const Tensor& grad)>;

  Variable() = default;
  /// A leaf: user data or a parameter.
  explicit Variable(Tensor data, bool requires_grad = false);

  /// The result of an op. Records `inputs` and `backward` only when grad mode is on and an input
  /// requires a gradient; otherwise the result is a plain leaf without grad.
  static Variable from_op(Tensor result, std::vector<Variable> inputs, BackwardFn backward,
                          const char* op_name);

  bool defined() const { return handle_ != nullptr; }
  const Tensor& tensor() const;
  /// The data, for in-place updates (optimizers, initialisation). Do not resize.
  Tensor& mutable_tensor();

  // Shape forwarding, for brevity.
  const Shape& shape() const { return tensor().shape(); }
  int64_t size(int64_t d) const { return tensor().size(d); }
  int64_t dim() const { return tensor().dim(); }
  int64_t numel() const { return tensor().numel(); }
  DType dtype() const { return tensor().dtype(); }

  bool requires_grad() const;
  /// Leaves only (parameters, inputs): an op result's requirement follows its inputs.
  void set_requires_grad(bool on);
  bool is_leaf() const;
  /// The op that made this variable ("conv2d", …) or "leaf".
  const char* op_name() const;

  /// The accumulated gradient (undefined until a backward reaches it).
  const Tensor& grad() const;
  bool has_grad() const;
  /// Clears the gradient (the next backward starts from zero).
  void zero_grad();
  /// Keeps the gradient of a non-leaf after backward (leaves always keep theirs).
  void retain_grad();
  void register_hook(Hook hook);

  /// The same data as a new leaf with no history (requires_grad false).
  Variable detach() const;

  /// Backward from a one-element variable, seeded with 1.
  void backward(bool retain_graph = false);
  /// Backward seeded with `grad_output` (same shape as this variable). Unless `retain_graph`, the
  /// graph behind this variable is released as it is walked.
  void backward(const Tensor& grad_output, bool retain_graph = false);

  /// Identity of the underlying variable (two handles of the same variable compare equal).
  bool same(const Variable& other) const { return handle_ == other.handle_; }

  struct Impl;    // the graph node
  struct Handle;  // data + node

 private:
  Impl* node() const;
  std::shared_ptr<Handle> handle_;
};

/// Whether ops record graphs. Off inside a NoGradGuard (evaluation, optimizer steps).
bool grad_enabled();

/// True when `grad_output`, as a backward receives it, is contiguous and its handle is the only one to
/// its storage: the engine hands over a gradient it computed and no longer holds (no retain_grad, no
/// hook kept it, not the caller's seed, no view of it alive). A backward that would clone it to
/// accumulate into (DenseBlock's) may then write into it instead: no one can observe the difference.
bool gradient_is_exclusive(const Tensor& grad_output);

/// Disables graph recording for its lifetime (RAII; nests).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

/// Enables graph recording for its lifetime, whatever the surrounding mode (RAII; nests).
/// For re-running a piece of the network during backward (autograd/checkpoint.h).
class EnableGradGuard {
 public:
  EnableGradGuard();
  ~EnableGradGuard();
  EnableGradGuard(const EnableGradGuard&) = delete;
  EnableGradGuard& operator=(const EnableGradGuard&) = delete;

 private:
  bool previous_;
};

}  // namespace ladnn
