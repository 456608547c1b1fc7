// autograd/functions.h — differentiable ops: each computes its result with tensor/ops.h and attaches
// a backward closure that captures only what backward reads (flashlight's pattern).
//
// Files: autograd/functions.cpp (elementwise, reductions, views, matmul/linear),
// autograd/functions_conv.cpp (conv2d), autograd/functions_nn.cpp (batch_norm2d, pools, cat/split,
// dropout, losses).
#pragma once

#include <vector>

#include "autograd/variable.h"
#include "tensor/ops.h"

namespace ladnn {

// ---- elementwise (NumPy broadcasting; gradients are summed back to each input's shape) ----------------
Variable add(const Variable& a, const Variable& b);
Variable sub(const Variable& a, const Variable& b);
Variable mul(const Variable& a, const Variable& b);
Variable div(const Variable& a, const Variable& b);
Variable add_scalar(const Variable& a, double s);
Variable mul_scalar(const Variable& a, double s);
Variable pow_scalar(const Variable& a, double p);
Variable neg(const Variable& a);
Variable exp(const Variable& a);
Variable log(const Variable& a);
Variable sigmoid(const Variable& a);
Variable relu(const Variable& a);

inline Variable operator+(const Variable& a, const Variable& b) { return add(a, b); }
inline Variable operator-(const Variable& a, const Variable& b) { return sub(a, b); }
inline Variable operator*(const Variable& a, const Variable& b) { return mul(a, b); }
inline Variable operator/(const Variable& a, const Variable& b) { return div(a, b); }
inline Variable operator-(const Variable& a) { return neg(a); }

// ---- reductions ----------------------------------------------------------------------------------------
Variable sum(const Variable& a);
Variable sum(const Variable& a, const std::vector<int64_t>& dims, bool keepdim = false);
Variable mean(const Variable& a);
Variable mean(const Variable& a, const std::vector<int64_t>& dims, bool keepdim = false);

// ---- views ---------------------------------------------------------------------------------------------
Variable reshape(const Variable& a, const Shape& shape);
Variable flatten(const Variable& a, int64_t start = 1, int64_t end = -1);

// ---- matrix products -----------------------------------------------------------------------------------
Variable matmul(const Variable& a, const Variable& b);
/// y = x W^T + b; `bias` may be undefined.
Variable linear(const Variable& x, const Variable& weight, const Variable& bias);

// ---- convolution, normalisation, pooling -------------------------------------------------------------
/// `bias` may be undefined.
Variable conv2d(const Variable& x, const Variable& weight, const Variable& bias,
                const ops::Conv2dParams& p);
/// Training mode uses batch statistics and updates `running_mean`/`running_var` in place; eval mode
/// uses them. Gradients flow to x, gamma and beta in both modes.
Variable batch_norm2d(const Variable& x, const Variable& gamma, const Variable& beta,
                      Tensor& running_mean, Tensor& running_var, bool training,
                      double momentum = 0.1, double eps = 1e-5);
/// relu(batch_norm2d(...)) as one op (ops::BnAct::Relu): the same values and gradients, one pass and
/// one stored map fewer. DenseNet's norm-relu pairs run through it.
Variable batch_norm_relu2d(const Variable& x, const Variable& gamma, const Variable& beta,
                           Tensor& running_mean, Tensor& running_var, bool training,
                           double momentum = 0.1, double eps = 1e-5);
/// Training: avg_pool2d(batch_norm_relu2d(x, ...), p) as one op (ops::bn_avg_pool2d_train), a DenseNet
/// transition's norm-relu-pool: the same values and gradients; the normalised map is not kept for the
/// backward (which recomputes the ReLU's mask from x), and on the GPU not written at all. `batch_stats`:
/// x's statistics from ops::batch_norm_batch_stats (a dense block's table), or undefined.
Variable batch_norm_relu_avg_pool2d(const Variable& x, const Variable& gamma, const Variable& beta,
                                    Tensor& running_mean, Tensor& running_var, double momentum, double eps,
                                    const ops::Pool2dParams& p, const Tensor& batch_stats = Tensor());
/// The same with a max pool (ops::bn_max_pool2d_train): DenseNet's stem norm0-relu0-pool0 in training.
Variable batch_norm_relu_max_pool2d(const Variable& x, const Variable& gamma, const Variable& beta,
                                    Tensor& running_mean, Tensor& running_var, double momentum, double eps,
                                    const ops::Pool2dParams& p, const Tensor& batch_stats = Tensor());
Variable max_pool2d(const Variable& x, const ops::Pool2dParams& p);
Variable avg_pool2d(const Variable& x, const ops::Pool2dParams& p);
Variable adaptive_avg_pool2d(const Variable& x, int64_t out_h, int64_t out_w);

// ---- joining, splitting, dropout, losses -----------------------------------------------------------------
Variable cat(const std::vector<Variable>& parts, int64_t dim);
std::vector<Variable> split(const Variable& a, const std::vector<int64_t>& sizes, int64_t dim);
/// Identity when !training or p == 0; otherwise x * mask with a mask drawn from `gen`.
Variable dropout(const Variable& x, double p, bool training, Generator& gen);
/// `weight` may be undefined (1 everywhere); it is a constant (no gradient flows to it or to y).
Variable bce_with_logits(const Variable& x, const Tensor& y, const Tensor& weight,
                         ops::Reduction reduction = ops::Reduction::Mean);

}  // namespace ladnn
