// autograd/functions_conv.cpp — the differentiable conv2d.
//
// y = conv2d(x, weight) + bias. Its backward needs weight for dx, x for dweight, and only shapes for
// dbias, so the closure keeps x only when weight wants a gradient and weight only when x does: in
// DenseNet inference-with-Grad-CAM or a frozen backbone that halves what a conv pins in memory.
#include <stdexcept>

#include "autograd/functions.h"

namespace ladnn {

Variable conv2d(const Variable& x, const Variable& weight, const Variable& bias, const ops::Conv2dParams& p) {
  const bool has_bias = bias.defined();
  Tensor y = ops::conv2d_forward(x.tensor(), weight.tensor(), has_bias ? bias.tensor() : Tensor(), p);

  std::vector<Variable> inputs{x, weight};
  if (has_bias) inputs.push_back(bias);
  // What backward reads: weight for dx, x for dweight (each only if that gradient can be asked for).
  const Tensor saved_weight = x.requires_grad() ? weight.tensor() : Tensor();
  const Tensor saved_x = weight.requires_grad() ? x.tensor() : Tensor();
  const Shape x_shape = x.shape(), w_shape = weight.shape();

  return Variable::from_op(
      std::move(y), std::move(inputs),
      [saved_weight, saved_x, x_shape, w_shape, has_bias, p](const Tensor& dy,
                                                             const std::vector<bool>& needs) {
        std::vector<Tensor> grads(has_bias ? 3 : 2);
        if (needs[0]) {
          if (!saved_weight.defined())
            throw std::logic_error(
                "conv2d backward: the input did not require a gradient when the op ran, so its "
                "weight was not saved");
          grads[0] = ops::conv2d_backward_input(dy, saved_weight, x_shape, p);
        }
        if (needs[1]) {
          if (!saved_x.defined())
            throw std::logic_error(
                "conv2d backward: the weight did not require a gradient when the op ran, so the "
                "input was not saved");
          grads[1] = ops::conv2d_backward_weight(dy, saved_x, w_shape, p);
        }
        if (has_bias && needs[2]) grads[2] = ops::conv2d_backward_bias(dy);
        return grads;
      },
      "conv2d");
}

}  // namespace ladnn
