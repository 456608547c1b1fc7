// layers/batchnorm2d.h — batch normalisation over the channels of NCHW, as torch.nn.BatchNorm2d.
#pragma once

#include <cstdint>
#include <functional>

#include "layers/module.h"
#include "tensor/ops.h"

namespace ladnn {

/// Parameters "weight" (C) = 1 and "bias" (C) = 0; buffers "running_mean" (C) = 0, "running_var"
/// (C) = 1 and "num_batches_tracked" (0-d Int64) = 0, registered in PyTorch's order. In training mode
/// the batch statistics normalise and update the running ones (momentum as PyTorch: running =
/// (1 - momentum) * running + momentum * batch, unbiased variance) and num_batches_tracked grows by one
/// per forward; in eval mode the running statistics normalise.
class BatchNorm2d : public Module {
 public:
  explicit BatchNorm2d(int64_t num_features, double eps = 1e-5, double momentum = 0.1);

  Variable forward(const Variable& x) override;
  /// relu(forward(x)) in one fused op (batch_norm_relu2d): same values, gradients and statistics.
  Variable forward_relu(const Variable& x);
  /// The training forward on plain tensors, no autograd record, with this layer's bookkeeping (running
  /// statistics and num_batches_tracked updated, but not again while a checkpoint re-runs it), for code
  /// that writes its own backward (DenseNet's memory-efficient layer). Needs training mode.
  /// `batch_stats`: x's statistics from ops::batch_norm_batch_stats, if the caller has them; `fresh`: how
  /// many of x's last channels are not in them yet (computed into them first, ops::batch_norm_forward_train).
  ops::BatchNormForward forward_train(const Tensor& x, ops::BnAct act, const Tensor& batch_stats = Tensor(),
                                      int64_t fresh = 0);
  /// forward_train given `batch_stats` without the map (ops::batch_norm_record_train): the same
  /// bookkeeping and saved statistics, y undefined — for a caller that applies the map inside its next
  /// op, a pre BatchNorm (pre_of), as DenseNet's folded norm1 does.
  ops::BatchNormForward record_train(const Tensor& x, ops::BnAct act, const Tensor& batch_stats,
                                     int64_t fresh = 0);

  /// Training: avg_pool2d(forward_relu(x), p) as one op (batch_norm_relu_avg_pool2d), with this layer's
  /// bookkeeping; `batch_stats` as there. Needs training mode.
  Variable forward_relu_avg_pool(const Variable& x, const ops::Pool2dParams& p,
                                 const Tensor& batch_stats = Tensor());
  /// The same with a max pool (batch_norm_relu_max_pool2d: DenseNet's stem).
  Variable forward_relu_max_pool(const Variable& x, const ops::Pool2dParams& p);

  /// This layer in eval mode followed by `act`, for a fused op (ops::conv2d_bn_eval).
  ops::BnEval eval_params(ops::BnAct act);

  int64_t num_features() const { return num_features_; }
  double eps() const { return eps_; }
  double momentum() const { return momentum_; }
  const Variable& weight() const { return weight_; }
  const Variable& bias() const { return bias_; }
  Tensor& running_mean() { return buffer("running_mean"); }
  Tensor& running_var() { return buffer("running_var"); }
  /// The count as an integer (the buffer is a 0-d Int64 tensor).
  int64_t num_batches_tracked() const;
  /// Whether this layer's training forwards leave num_batches_tracked to the model that owns it, which
  /// adds 1 to all its BatchNorms' counters in one op per training forward (ops::increment_all_:
  /// DenseNet, one GPU kernel instead of one per layer). Off by default: the layer counts itself.
  void set_counted_by_owner(bool on) { counted_by_owner_ = on; }
  bool counted_by_owner() const { return counted_by_owner_; }

 private:
  /// Throws unless x is (N, num_features, H, W).
  void check_input(const Shape& x) const;
  Variable run(const Variable& x, bool relu);
  /// The fused BatchNorm-ReLU-pools' bookkeeping around `op` (given the running statistics to update).
  Variable run_pool(const Variable& x,
                    const std::function<Variable(Tensor& running_mean, Tensor& running_var)>& op);

  int64_t num_features_;
  double eps_, momentum_;
  Variable weight_, bias_;  // (C) each
  bool counted_by_owner_ = false;
};

}  // namespace ladnn
