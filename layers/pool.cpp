// layers/pool.cpp — pooling modules: parameter checks and calls of the differentiable ops.
#include "layers/pool.h"

#include <string>

#include "autograd/functions.h"

namespace ladnn {
namespace {

ops::Pool2dParams make_params(const char* layer, int64_t kernel, int64_t stride, int64_t padding,
                              bool ceil_mode, bool count_include_pad) {
  const std::string name(layer);
  check(kernel > 0, name + ": kernel_size must be positive, got " + std::to_string(kernel));
  check(stride >= 0,
        name + ": stride must be positive (or 0 for kernel_size), got " + std::to_string(stride));
  // PyTorch: "pad should be at most half of effective kernel size".
  check(padding >= 0 && 2 * padding <= kernel,
        name + ": padding must be in [0, kernel_size / 2], got padding " + std::to_string(padding) +
            " for kernel_size " + std::to_string(kernel));
  ops::Pool2dParams p;
  p.kernel_h = p.kernel_w = kernel;
  p.stride_h = p.stride_w = stride == 0 ? kernel : stride;
  p.pad_h = p.pad_w = padding;
  p.ceil_mode = ceil_mode;
  p.count_include_pad = count_include_pad;
  return p;
}

void check_input(const char* layer, const Variable& x) {
  check(x.dim() == 4,
        std::string(layer) + ": expected a 4-D input (N, C, H, W), got " + shape_str(x.shape()));
}

}  // namespace

MaxPool2d::MaxPool2d(int64_t kernel_size, int64_t stride, int64_t padding, bool ceil_mode)
    : Module("MaxPool2d"), params_(make_params("MaxPool2d", kernel_size, stride, padding, ceil_mode, true)) {}

Variable MaxPool2d::forward(const Variable& x) {
  check_input("MaxPool2d", x);
  return max_pool2d(x, params_);
}

AvgPool2d::AvgPool2d(int64_t kernel_size, int64_t stride, int64_t padding, bool ceil_mode,
                     bool count_include_pad)
    : Module("AvgPool2d"),
      params_(make_params("AvgPool2d", kernel_size, stride, padding, ceil_mode, count_include_pad)) {}

Variable AvgPool2d::forward(const Variable& x) {
  check_input("AvgPool2d", x);
  return avg_pool2d(x, params_);
}

AdaptiveAvgPool2d::AdaptiveAvgPool2d(int64_t out_h, int64_t out_w)
    : Module("AdaptiveAvgPool2d"), out_h_(out_h), out_w_(out_w) {
  check(out_h > 0 && out_w > 0, "AdaptiveAvgPool2d: output size must be positive, got (" +
                                    std::to_string(out_h) + ", " + std::to_string(out_w) + ")");
}

Variable AdaptiveAvgPool2d::forward(const Variable& x) {
  check_input("AdaptiveAvgPool2d", x);
  return adaptive_avg_pool2d(x, out_h_, out_w_);
}

}  // namespace ladnn
