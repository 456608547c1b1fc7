// layers/pool.h — pooling modules: MaxPool2d, AvgPool2d, AdaptiveAvgPool2d (as torch.nn).
#pragma once

#include <cstdint>

#include "layers/module.h"
#include "tensor/ops.h"

namespace ladnn {

/// Max over k x k windows. `stride` 0 means "equal to kernel_size" (PyTorch's stride=None);
/// padding counts as -inf.
class MaxPool2d : public Module {
 public:
  explicit MaxPool2d(int64_t kernel_size, int64_t stride = 0, int64_t padding = 0, bool ceil_mode = false);
  Variable forward(const Variable& x) override;
  const ops::Pool2dParams& params() const { return params_; }

 private:
  ops::Pool2dParams params_;
};

/// Mean over k x k windows. `stride` 0 means "equal to kernel_size"; `count_include_pad` as PyTorch
/// (default true: padded zeros count in the divisor).
class AvgPool2d : public Module {
 public:
  explicit AvgPool2d(int64_t kernel_size, int64_t stride = 0, int64_t padding = 0, bool ceil_mode = false,
                     bool count_include_pad = true);
  Variable forward(const Variable& x) override;
  const ops::Pool2dParams& params() const { return params_; }

 private:
  ops::Pool2dParams params_;
};

/// Averages (N, C, H, W) into (N, C, out_h, out_w) with torch's adaptive windows;
/// AdaptiveAvgPool2d(1) is global average pooling.
class AdaptiveAvgPool2d : public Module {
 public:
  explicit AdaptiveAvgPool2d(int64_t output_size) : AdaptiveAvgPool2d(output_size, output_size) {}
  AdaptiveAvgPool2d(int64_t out_h, int64_t out_w);
  Variable forward(const Variable& x) override;
  int64_t out_h() const { return out_h_; }
  int64_t out_w() const { return out_w_; }

 private:
  int64_t out_h_, out_w_;
};

}  // namespace ladnn
