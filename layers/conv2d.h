// layers/conv2d.h — 2-D convolution, as torch.nn.Conv2d (square kernel, groups = 1, dilation = 1).
#pragma once

#include <cstdint>

#include "layers/module.h"
#include "tensor/ops.h"
#include "tensor/random.h"

namespace ladnn {

/// y = conv2d(x, weight, bias): x (N, in, H, W) -> (N, out, P, Q).
/// Parameters "weight" (out, in, k, k) and, when `bias`, "bias" (out). Initialised as PyTorch:
/// weight kaiming_uniform(a = sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with
/// fan_in = in * k * k, and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn from `gen` in that order.
class Conv2d : public Module {
 public:
  Conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t stride = 1,
         int64_t padding = 0, bool bias = true, Generator& gen = default_generator());

  Variable forward(const Variable& x) override;
  /// Inference only (gradients off): the same values written into `out`, a (N, out, P, Q) tensor or a
  /// channel slice of a wider one (ops::conv2d_forward_into) — no new tensor, no autograd record.
  void forward_into(const Tensor& x, const Tensor& out);

  int64_t in_channels() const { return in_channels_; }
  int64_t out_channels() const { return out_channels_; }
  int64_t kernel_size() const { return kernel_size_; }
  const ops::Conv2dParams& params() const { return params_; }
  const Variable& weight() const { return weight_; }
  /// Undefined when constructed with bias = false.
  const Variable& bias() const { return bias_; }

 private:
  int64_t in_channels_, out_channels_, kernel_size_;
  ops::Conv2dParams params_;
  Variable weight_;  // (out, in, k, k)
  Variable bias_;    // (out) or undefined
};

}  // namespace ladnn
