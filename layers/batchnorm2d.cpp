// layers/batchnorm2d.cpp — BatchNorm2d: buffers, mode switch, and the num_batches_tracked counter.
#include "layers/batchnorm2d.h"

#include "autograd/checkpoint.h"
#include "autograd/functions.h"
#include "tensor/ops.h"

namespace ladnn {

BatchNorm2d::BatchNorm2d(int64_t num_features, double eps, double momentum)
    : Module("BatchNorm2d"), num_features_(num_features), eps_(eps), momentum_(momentum) {
  check(num_features > 0, "BatchNorm2d: num_features must be positive, got " + std::to_string(num_features));
  check(eps > 0, "BatchNorm2d: eps must be positive, got " + std::to_string(eps));
  check(momentum >= 0 && momentum <= 1,
        "BatchNorm2d: momentum must be in [0, 1], got " + std::to_string(momentum));
  weight_ = register_parameter("weight", Tensor::ones({num_features}));
  bias_ = register_parameter("bias", Tensor::zeros({num_features}));
  register_buffer("running_mean", Tensor::zeros({num_features}));
  register_buffer("running_var", Tensor::ones({num_features}));
  register_buffer("num_batches_tracked", Tensor::zeros({}, DType::Int64));
}

int64_t BatchNorm2d::num_batches_tracked() const {
  return static_cast<int64_t>(buffer("num_batches_tracked").item());
}

void BatchNorm2d::check_input(const Shape& x) const {
  check(x.size() == 4 && x[1] == num_features_,
        "BatchNorm2d: expected input (N, " + std::to_string(num_features_) + ", H, W), got " + shape_str(x));
}

Variable BatchNorm2d::forward(const Variable& x) { return run(x, false); }
Variable BatchNorm2d::forward_relu(const Variable& x) { return run(x, true); }

ops::BnEval BatchNorm2d::eval_params(ops::BnAct act) {
  return {weight_.tensor(), bias_.tensor(), buffer("running_mean"), buffer("running_var"), eps_, act,
          Tensor(),         Tensor()};
}

ops::BatchNormForward BatchNorm2d::forward_train(const Tensor& x, ops::BnAct act, const Tensor& batch_stats,
                                                 int64_t fresh) {
  check(is_training(), "BatchNorm2d::forward_train: the layer is in eval mode");
  check_input(x.shape());
  if (recomputing()) {  // as run(): the statistics were updated by the first run
    Tensor no_mean, no_var;
    return ops::batch_norm_forward_train(x, weight_.tensor(), bias_.tensor(), no_mean, no_var, momentum_,
                                         eps_, act, batch_stats, fresh);
  }
  if (!counted_by_owner_) ops::increment_(buffer("num_batches_tracked"));
  return ops::batch_norm_forward_train(x, weight_.tensor(), bias_.tensor(), buffer("running_mean"),
                                       buffer("running_var"), momentum_, eps_, act, batch_stats, fresh);
}

ops::BatchNormForward BatchNorm2d::record_train(const Tensor& x, ops::BnAct act, const Tensor& batch_stats,
                                                int64_t fresh) {
  check(is_training(), "BatchNorm2d::record_train: the layer is in eval mode");
  check_input(x.shape());
  if (recomputing()) {  // as forward_train
    Tensor no_mean, no_var;
    return ops::batch_norm_record_train(x, no_mean, no_var, momentum_, eps_, act, batch_stats, fresh);
  }
  if (!counted_by_owner_) ops::increment_(buffer("num_batches_tracked"));
  return ops::batch_norm_record_train(x, buffer("running_mean"), buffer("running_var"), momentum_, eps_, act,
                                      batch_stats, fresh);
}

Variable BatchNorm2d::forward_relu_avg_pool(const Variable& x, const ops::Pool2dParams& p,
                                            const Tensor& batch_stats) {
  return run_pool(x, [&](Tensor& running_mean, Tensor& running_var) {
    return batch_norm_relu_avg_pool2d(x, weight_, bias_, running_mean, running_var, momentum_, eps_, p,
                                      batch_stats);
  });
}

Variable BatchNorm2d::forward_relu_max_pool(const Variable& x, const ops::Pool2dParams& p) {
  return run_pool(x, [&](Tensor& running_mean, Tensor& running_var) {
    return batch_norm_relu_max_pool2d(x, weight_, bias_, running_mean, running_var, momentum_, eps_, p);
  });
}

Variable BatchNorm2d::run_pool(const Variable& x,
                               const std::function<Variable(Tensor& running_mean, Tensor& running_var)>& op) {
  check(is_training(), "BatchNorm2d: a fused BatchNorm-ReLU-pool is for training; the layer is in eval mode");
  check_input(x.shape());
  if (recomputing()) {  // as run(): the statistics were updated by the first run
    Tensor no_mean, no_var;
    return op(no_mean, no_var);
  }
  if (!counted_by_owner_) ops::increment_(buffer("num_batches_tracked"));
  return op(buffer("running_mean"), buffer("running_var"));
}

Variable BatchNorm2d::run(const Variable& x, bool relu) {
  const auto op = relu ? batch_norm_relu2d : batch_norm2d;
  check_input(x.shape());
  if (is_training() && recomputing()) {
    // A checkpoint's backward re-runs this layer (autograd/checkpoint.h): the same batch statistics,
    // but the running statistics and the counter were already updated by the first run.
    Tensor no_mean, no_var;
    return op(x, weight_, bias_, no_mean, no_var, true, momentum_, eps_);
  }
  if (is_training()) {
    // As PyTorch: counted on every training forward (the momentum is fixed, so it is bookkeeping
    // that makes state dicts match torchvision's).
    // On the GPU this is a kernel, not a read-modify-write through the host: the first GPU runs
    // showed that round trip (a synchronisation per BatchNorm layer, 168 per DenseNet-169 step)
    // stalling the training step. An owner may count all its layers in one op (set_counted_by_owner).
    if (!counted_by_owner_) ops::increment_(buffer("num_batches_tracked"));
  }
  return op(x, weight_, bias_, buffer("running_mean"), buffer("running_var"), is_training(), momentum_, eps_);
}

}  // namespace ladnn
