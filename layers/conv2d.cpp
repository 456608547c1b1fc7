// layers/conv2d.cpp — Conv2d: PyTorch's initialisation and a shape-checked call of conv2d.
#include "layers/conv2d.h"

#include <cmath>

#include "autograd/functions.h"

namespace ladnn {

Conv2d::Conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t stride,
               int64_t padding, bool bias, Generator& gen)
    : Module("Conv2d"), in_channels_(in_channels), out_channels_(out_channels), kernel_size_(kernel_size) {
  check(in_channels > 0 && out_channels > 0, "Conv2d: channel counts must be positive, got in_channels " +
                                                 std::to_string(in_channels) + " and out_channels " +
                                                 std::to_string(out_channels));
  check(kernel_size > 0, "Conv2d: kernel_size must be positive, got " + std::to_string(kernel_size));
  check(stride > 0, "Conv2d: stride must be positive, got " + std::to_string(stride));
  check(padding >= 0, "Conv2d: padding must be non-negative, got " + std::to_string(padding));
  params_.stride_h = params_.stride_w = stride;
  params_.pad_h = params_.pad_w = padding;

  // torch.nn.Conv2d.reset_parameters: kaiming_uniform_(weight, a=sqrt(5)), then the bias from
  // U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  Shape wshape{out_channels, in_channels, kernel_size, kernel_size};
  weight_ = register_parameter("weight", kaiming_uniform(wshape, std::sqrt(5.0), gen));
  if (bias) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(compute_fans(wshape).fan_in));
    bias_ = register_parameter("bias", Tensor::uniform({out_channels}, -bound, bound, gen));
  }
}

Variable Conv2d::forward(const Variable& x) {
  check(
      x.dim() == 4 && x.size(1) == in_channels_,
      "Conv2d: expected input (N, " + std::to_string(in_channels_) + ", H, W), got " + shape_str(x.shape()));
  return conv2d(x, weight_, bias_, params_);
}

void Conv2d::forward_into(const Tensor& x, const Tensor& out) {
  check(!grad_enabled(), "Conv2d::forward_into: records no gradient; call it with gradients off (NoGradGuard)");
  check(
      x.dim() == 4 && x.size(1) == in_channels_,
      "Conv2d: expected input (N, " + std::to_string(in_channels_) + ", H, W), got " + shape_str(x.shape()));
  ops::conv2d_forward_into(x, weight_.tensor(), bias_.defined() ? bias_.tensor() : Tensor(), params_, out);
}

}  // namespace ladnn
