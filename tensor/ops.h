// tensor/ops.h — every raw op, forward and backward, in one place.
//
// Each function checks its arguments with an error that names the op and the shape, then dispatches on
// the device to a CPU kernel (tensor/cpu/) or, with the CUDA backend, to cuda/. Nothing here records a
// graph: autograd/functions.h wraps these into differentiable ops. Results are new contiguous tensors
// unless a comment says otherwise. Float ops accept float32 and float64; Int64 is refused.
//
// Files: elementwise + reductions in tensor/cpu/elementwise.cpp, GEMM/matmul/conv in
// tensor/cpu/{gemm,conv2d}.cpp, normalisation/pooling/losses in tensor/cpu/{batchnorm,pool,loss,...}.cpp.
#pragma once

#include <cstdint>
#include <vector>

#include "tensor/random.h"
#include "tensor/tensor.h"

namespace ladnn::ops {

// ---- elementwise, with NumPy broadcasting -------------------------------------------------------
/// The broadcast shape of a and b (NumPy rules); throws naming `op` and both shapes otherwise.
Shape broadcast_shape(const Shape& a, const Shape& b, const char* op = "broadcast");
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
/// Sums `grad` over the dims that broadcasting expanded, giving `shape` (the backward of broadcast).
Tensor sum_to(const Tensor& grad, const Shape& shape);
/// Copies `a` broadcast to `shape` (the backward of a reduction).
Tensor expand_to(const Tensor& a, const Shape& shape);

Tensor add_scalar(const Tensor& a, double s);
Tensor mul_scalar(const Tensor& a, double s);
Tensor pow_scalar(const Tensor& a, double p);
Tensor neg(const Tensor& a);

Tensor exp(const Tensor& a);
Tensor log(const Tensor& a);
Tensor sqrt(const Tensor& a);
Tensor sigmoid(const Tensor& a);
Tensor relu(const Tensor& a);
/// grad * (x > 0): the backward of relu, given its input (or output; same mask).
Tensor relu_backward(const Tensor& grad, const Tensor& x);
/// grad * y * (1 - y): the backward of sigmoid, given its output y.
Tensor sigmoid_backward(const Tensor& grad, const Tensor& y);

/// a += alpha * b in place (same shape; a in any layout: the CPU updates a strided a through a
/// contiguous copy). The accumulation primitive of autograd, the optimizers and DenseBlock's backward.
void add_(Tensor& a, const Tensor& b, double alpha = 1.0);
/// a *= s in place.
void mul_scalar_(Tensor& a, double s);
/// a += 1 in place, a contiguous Int64 tensor (BatchNorm's num_batches_tracked): on the GPU one kernel,
/// no host round trip, so a training step stays free of synchronisation and capturable as a graph.
void increment_(Tensor& a);
/// increment_ of every tensor of `counters` (all on one device), on the GPU in one kernel per 128
/// tensors: a DenseNet-169 training step's 169 BatchNorm counters were 169 one-thread kernels, the most
/// frequent node of its graph (GPU run 7). Checks every tensor before changing any.
void increment_all_(const std::vector<Tensor>& counters);

// ---- reductions ---------------------------------------------------------------------------------
Tensor sum(const Tensor& a);  // 0-d result
Tensor sum(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim = false);
Tensor mean(const Tensor& a);
Tensor mean(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim = false);
/// Largest |a - b| over all elements (tests, comparisons). Shapes must match.
double max_abs_diff(const Tensor& a, const Tensor& b);

// ---- matrix products ------------------------------------------------------------------------------
/// (M, K) x (K, N) -> (M, N); `trans_a`/`trans_b` read a or b transposed (as BLAS does).
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
/// y = x W^T + b: x (N, in), weight (out, in), bias (out) or undefined -> (N, out).
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias);

// ---- convolution (im2col + GEMM on the CPU) -------------------------------------------------------
struct Conv2dParams {
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
};
/// Output spatial size: (in + 2*pad - kernel) / stride + 1.
Shape conv2d_output_shape(const Shape& x, const Shape& w, const Conv2dParams& p);
/// x (N, C, H, W), w (K, C, R, S), bias (K) or undefined -> (N, K, P, Q).
Tensor conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p);
/// The same written into `out` instead of a new tensor: out has the output's shape, x's dtype and device,
/// and holds each image as one contiguous (K, P, Q) block, images any distance apart — a channel slice
/// of a wider NCHW tensor (DenseNet's inference block buffer: each layer's new channels land in place,
/// no copy). Elements of the wider tensor outside the slice are untouched; out must not overlap x, w, bias.
void conv2d_forward_into(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p,
                         const Tensor& out);
Tensor conv2d_backward_input(const Tensor& dy, const Tensor& w, const Shape& x_shape,
                             const Conv2dParams& p);
Tensor conv2d_backward_weight(const Tensor& dy, const Tensor& x, const Shape& w_shape,
                              const Conv2dParams& p);
struct BnEval;  // (below: a BatchNorm as part of a fused convolution)
/// The weight gradient of conv2d(pre(x)): conv2d_backward_weight(dy, pre's map of x), pre a BnEval (x's
/// channels; the batch form for a folded norm1). The map is applied as x is read where the GPU's pointwise
/// kernel takes the call and LADNN_FUSED_CONV picks it; elsewhere it runs as its own pass into a
/// temporary (the CPU always), then the plain weight gradient.
Tensor conv2d_backward_weight(const Tensor& dy, const Tensor& x, const Shape& w_shape, const Conv2dParams& p,
                              const BnEval& pre);
/// Sum of dy over N, P, Q -> (K).
Tensor conv2d_backward_bias(const Tensor& dy);

// ---- batch normalisation (per channel of NCHW) ----------------------------------------------------
/// What follows the normalisation in the same pass. DenseNet runs every BatchNorm but norm5 straight
/// into a ReLU: fused, the normalised map is written once (already rectified) instead of written, read
/// back and written again, and the backward masks the gradient on the fly instead of materialising it.
enum class BnAct { None, Relu };
struct BatchNormForward {
  Tensor y;
  Tensor save_mean;    // (C) batch mean
  Tensor save_invstd;  // (C) 1 / sqrt(biased batch var + eps)
  /// Training with the ReLU fused: y's zeros can be recomputed from x, save_mean, save_invstd, gamma and
  /// beta by the arithmetic that made y (the CPU's and the native GPU kernels'; not cuDNN's), so the
  /// backward may take BnReluFromX instead of reading y.
  bool relu_from_x = false;
};
/// For batch_norm_backward_train: the fused ReLU's mask recomputed from x (BatchNormForward::relu_from_x
/// must have been true) with the forward's beta, instead of read from its output — the backward then
/// reads no y. The same bits as passing relu_y = y.
struct BnReluFromX {
  bool on = false;
  Tensor beta;  // the forward's beta (undefined: 0)
};
/// The mask arguments of a fused forward's backward (relu_y, relu_from_x): recomputed from x where
/// `f` says that is exact, else read from its y. `beta`: the forward's.
struct BnReluMask {
  Tensor relu_y;
  BnReluFromX from_x;
};
inline BnReluMask relu_mask_of(const BatchNormForward& f, const Tensor& beta) {
  return f.relu_from_x ? BnReluMask{Tensor(), {true, beta}} : BnReluMask{f.y, {}};
}
/// Training: normalises with batch statistics and updates running stats in place as PyTorch:
/// running = (1 - momentum) * running + momentum * stat, with the *unbiased* variance (n / (n - 1)).
/// With act = Relu, y = max(normalised, 0) (NaN -> 0, as ops::relu); the statistics are unchanged.
///
/// `batch_stats` (optional): x's batch statistics as batch_norm_batch_stats computed them, used instead
/// of reducing x again — the caller's promise that they are the statistics of these very values (they
/// cannot be checked without the pass they save). The results are those of the call without them, with
/// the statistics batch_norm_batch_stats found: on the CPU the same bits; on the GPU the same up to the
/// order of the sums (its partition of a channel is its own), and always one native pass, under
/// LADNN_BN=cudnn too.
/// `fresh` (> 0, with batch_stats contiguous): the statistics of x's last `fresh` channels are not in
/// batch_stats yet; the call computes them (as batch_norm_batch_stats would) into its last `fresh` rows
/// first. A dense layer's norm1 finds the previous layer's new channels so, and on the GPU, where its map
/// takes a block per channel (small planes), one kernel reduces those channels and maps them all.
BatchNormForward batch_norm_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                          Tensor& running_mean, Tensor& running_var, double momentum,
                                          double eps, BnAct act = BnAct::None,
                                          const Tensor& batch_stats = Tensor(), int64_t fresh = 0);
/// batch_norm_forward_train given `batch_stats` (and `fresh`, filled in first as there) without its map:
/// the statistics recorded — save_mean, save_invstd and the running update, the bits of that op's — and
/// y left undefined (relu_from_x set for act = Relu; gamma and beta play no part). For a BatchNorm whose
/// map the next op applies as it reads x: a dense layer's norm1 folded into its conv1 (DenseBlock under
/// LADNN_NORM1_FOLD=1, with conv2d_bn_eval and conv2d_backward_weight given a batch-form BnEval).
/// x's values are read only for the `fresh` channels.
BatchNormForward batch_norm_record_train(const Tensor& x, Tensor& running_mean, Tensor& running_var,
                                         double momentum, double eps, BnAct act, const Tensor& batch_stats,
                                         int64_t fresh = 0);
/// Training's map from the statistics a training forward saved: act((x - save_mean) * gamma * save_invstd
/// + beta) in batch_norm_forward_train's own arithmetic — the bits of its y (the CPU's, or the native GPU
/// kernels'). x may be a channel prefix (samples contiguous), read in place.
Tensor batch_norm_map_saved(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& save_mean,
                            const Tensor& save_invstd, BnAct act);
/// A training BatchNorm's batch statistics, computed once for several forwards: per channel of x
/// (N, C, H, W, float32 or float64), its mean and biased variance over the N*H*W values, in double, as
/// a (C, 2) float64 tensor on x's device, rows [mean, variance]. A dense block's norm1s normalise every
/// earlier channel again, layer after layer, with the same batch statistics (the values do not change
/// once written), so DenseBlock computes each channel's once, when its layer writes it, and hands them to
/// every later norm1: each norm1 then reads its input once instead of twice.
/// x may be a sample-contiguous view (a channel slice of the block buffer), read in place.
Tensor batch_norm_batch_stats(const Tensor& x);
/// The same into `out`: (C, 2) float64, contiguous, on x's device (e.g. rows of a block's table).
void batch_norm_batch_stats_into(const Tensor& x, const Tensor& out);
/// Evaluation: normalises with the running statistics. x may be any view whose samples are each
/// contiguous (sample_contiguous): a dense block's channel prefix is read in place, not copied.
Tensor batch_norm_forward_eval(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                               const Tensor& running_mean, const Tensor& running_var, double eps,
                               BnAct act = BnAct::None);
struct BatchNormGrads {
  Tensor dx, dgamma, dbeta;
};
/// True when x (N, C, H, W) stores each sample's C*H*W values contiguously, whatever the stride from one
/// sample to the next: contiguous tensors, and channel prefixes of a larger NCHW buffer.
bool sample_contiguous(const Tensor& x);
/// `relu_y`: undefined for a plain BatchNorm; for a fused BatchNorm-ReLU, its output y. The gradient
/// then passes only where y > 0 (relu_backward's rule), applied inside the kernels: the results equal
/// batch_norm_backward_*(relu_backward(dy, y), ...).
///
/// `dx_into` (training only), when defined: the input gradient is *added* into it instead of returned
/// (grads.dx stays undefined) — a view of x's shape and dtype whose samples are each contiguous, e.g. a
/// channel prefix of a dense block's gradient buffer, sharing no memory with dy, x or relu_y. The sums
/// are the same bits as ops::add_(dx_into, batch_norm_backward_train(...).dx) with the same kernels (on
/// the GPU: the native ones, which adding in always uses), without the dx tensor written and read back.
BatchNormGrads batch_norm_backward_train(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                                         const Tensor& save_mean, const Tensor& save_invstd,
                                         const Tensor& relu_y = Tensor(), const Tensor& dx_into = Tensor(),
                                         const BnReluFromX& relu_from_x = {});
BatchNormGrads batch_norm_backward_eval(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                                        const Tensor& running_mean, const Tensor& running_var,
                                        double eps, const Tensor& relu_y = Tensor());

// ---- convolution with its BatchNorms (inference) --------------------------------------------------
/// An eval-mode BatchNorm (running statistics) and what follows it, as a part of a fused op:
/// act((x - running_mean) / sqrt(running_var + eps) * gamma + beta), batch_norm_forward_eval's values.
/// gamma / beta may be undefined (1 / 0).
///
/// The batch form (save_invstd defined): a training BatchNorm given the statistics its forward recorded
/// (batch_norm_record_train's save_mean and save_invstd, running_mean and running_var undefined, eps
/// unused), mapped as batch_norm_map_saved does — a dense layer's norm1 folded into its conv1.
struct BnEval {
  Tensor gamma, beta, running_mean, running_var;
  double eps = 1e-5;
  BnAct act = BnAct::None;
  Tensor save_mean, save_invstd;  // the batch form's statistics
  bool batch() const { return save_invstd.defined(); }
};
/// Inference: post(conv2d(pre(x), w)) with no bias, where `pre` (x's C channels) and `post` (the
/// output's K channels) are eval BatchNorms or null for none — a DenseNet layer is
/// conv2d_bn_eval(prefix, &norm1-ReLU, conv1, &norm2-ReLU) then conv2d_bn_eval_into(h, -, conv2, -, slice).
/// The values of batch_norm_forward_eval, conv2d_forward and batch_norm_forward_eval in sequence — which
/// is what runs on the CPU and, on the GPU, unless cuda::fused_conv() picks the fused kernel
/// (cuda/fused_conv.cuh): one launch that normalises x as it loads it and the sums before it stores them,
/// in float32 (no TF32) with its own order of additions. x may be a channel prefix (samples contiguous).
///
/// `pre_y` (optional): where the op ran pre's map as a pass of its own (the CPU; on the GPU, the unfused
/// ops), that map — act(bn(x)), what a backward may keep instead of recomputing it; undefined where a
/// fused kernel applied it as it read x (or there is no pre).
Tensor conv2d_bn_eval(const Tensor& x, const BnEval* pre, const Tensor& w, const Conv2dParams& p,
                      const BnEval* post, Tensor* pre_y = nullptr);
/// The same written into `out`, with conv2d_forward_into's rules for out (a channel slice of a wider
/// NCHW tensor is written in place; out must not overlap x or w — the fused kernel reads x while other
/// blocks write out).
void conv2d_bn_eval_into(const Tensor& x, const BnEval* pre, const Tensor& w, const Conv2dParams& p,
                         const BnEval* post, const Tensor& out);

// ---- pooling ----------------------------------------------------------------------------------------
struct Pool2dParams {
  int64_t kernel_h = 2, kernel_w = 2;
  int64_t stride_h = 2, stride_w = 2;
  int64_t pad_h = 0, pad_w = 0;
  bool ceil_mode = false;
  bool count_include_pad = true;  // avg pool only (PyTorch's default)
};
Shape pool2d_output_shape(const Shape& x, const Pool2dParams& p);
struct MaxPoolForward {
  Tensor y;
  Tensor indices;  // Int64, same shape as y: flat index h * W + w into the input plane (as PyTorch)
};
/// Padding counts as -inf (never selected). Ties keep the first maximum in scan order. with_indices =
/// false (inference: no backward will read them) leaves indices undefined and skips writing them — at
/// DenseNet-169's stem pool at batch 32, 51 MB of int64s.
MaxPoolForward max_pool2d_forward(const Tensor& x, const Pool2dParams& p, bool with_indices = true);
Tensor max_pool2d_backward(const Tensor& dy, const Tensor& indices, const Shape& x_shape);
/// The same, told the window: dy must be the output shape of `p` on x_shape. On the GPU this gathers
/// (deterministic to the bit, the CPU's sum order) instead of scattering with atomicAdd; autograd uses it.
Tensor max_pool2d_backward(const Tensor& dy, const Tensor& indices, const Shape& x_shape, const Pool2dParams& p);
Tensor avg_pool2d_forward(const Tensor& x, const Pool2dParams& p);
/// Checks a fused op's eval BatchNorm (conv2d_bn_eval's pre and post, bn_avg_pool2d_eval's): gamma and
/// beta undefined or, like running_mean and running_var, (channels) vectors in x's dtype on x's device;
/// eps >= 0. Throws naming op, `where` ("pre", "bn", ...) and the vector.
void check_bn_eval(const std::string& op, const char* where, const BnEval& bn, int64_t channels,
                   const Tensor& x);
/// Inference: avg_pool2d_forward(batch_norm_forward_eval(x, bn...), p) — an eval BatchNorm (and its act)
/// then an average pool, a DenseNet transition's norm-relu-pool. The CPU (and the GPU with LADNN_BN or
/// LADNN_POOL on cuDNN) runs the two ops; the GPU with both native runs one kernel with the same bits,
/// which never writes the normalised map.
Tensor bn_avg_pool2d_eval(const Tensor& x, const BnEval& bn, const Pool2dParams& p);
/// Training: avg_pool2d_forward(batch_norm_forward_train(x, ..., act, stats).y, p), a DenseNet
/// transition's norm-relu-pool, with the statistics, saved statistics and running-statistics update of
/// batch_norm_forward_train; `y` is the pooled map. The normalised map (as large as the dense block's
/// output) is neither kept for the backward nor, on the GPU with LADNN_POOL native, written at all: one
/// kernel normalises each cell of a window as it sums it (the same bits as the two native ops).
/// `batch_stats`: x's statistics from batch_norm_batch_stats (a dense block's table), or undefined to
/// compute them here. The BatchNorm arithmetic is always the native one (LADNN_BN=cudnn included), so
/// relu_from_x holds and the backward recomputes the ReLU's mask from x.
BatchNormForward bn_avg_pool2d_train(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                     Tensor& running_mean, Tensor& running_var, double momentum, double eps,
                                     BnAct act, const Pool2dParams& p, const Tensor& batch_stats = Tensor());
/// The same with a max pool after the BatchNorm (DenseNet's stem: norm0, relu0, pool0): bn.y is the
/// pooled map, `indices` its argmax indices as max_pool2d_forward's — the same bits as the two ops (the
/// window's maximum of the normalised values, ties and NaN by max_pool2d's rules).
struct BnMaxPoolForward {
  BatchNormForward bn;
  Tensor indices;
};
BnMaxPoolForward bn_max_pool2d_train(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                     Tensor& running_mean, Tensor& running_var, double momentum, double eps,
                                     BnAct act, const Pool2dParams& p, const Tensor& batch_stats = Tensor());
/// Its backward: batch_norm_backward_train(max_pool2d_backward(dy, indices, x's shape, p), x, ...) with
/// the ReLU's mask recomputed from x.
BatchNormGrads bn_max_pool2d_backward_train(const Tensor& dy, const Tensor& indices, const Tensor& x,
                                            const Tensor& gamma, const Tensor& beta, const Tensor& save_mean,
                                            const Tensor& save_invstd, BnAct act, const Pool2dParams& p);
/// Its backward from dy, the pooled map's gradient: batch_norm_backward_train(avg_pool2d_backward(dy,
/// x's shape, p), x, ...) with the ReLU's mask recomputed from x and beta (BnReluFromX). On the CPU the
/// same bits as the two backward ops with the mask read from the forward's normalised map. On the GPU,
/// when the windows tile the input (2x2/2), the BatchNorm's passes read each value's gradient through
/// the pool from dy and the full-size gradient is never written (the same values, summed in another
/// order); otherwise the two ops.
BatchNormGrads bn_avg_pool2d_backward_train(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                                            const Tensor& beta, const Tensor& save_mean,
                                            const Tensor& save_invstd, BnAct act, const Pool2dParams& p);
Tensor avg_pool2d_backward(const Tensor& dy, const Shape& x_shape, const Pool2dParams& p);
/// torch's adaptive average pool: output cell (i, j) averages rows floor(i*H/oh)..ceil((i+1)*H/oh).
Tensor adaptive_avg_pool2d_forward(const Tensor& x, int64_t out_h, int64_t out_w);
Tensor adaptive_avg_pool2d_backward(const Tensor& dy, const Shape& x_shape);

// ---- joining and splitting ----------------------------------------------------------------------------
/// Concatenates along `dim` (all other sizes equal). DenseNet joins feature maps with cat(…, 1).
Tensor cat(const std::vector<Tensor>& parts, int64_t dim);
/// Views of consecutive pieces of `sizes` along `dim` (sizes must add up to size(dim)).
std::vector<Tensor> split(const Tensor& a, const std::vector<int64_t>& sizes, int64_t dim);

// ---- dropout -----------------------------------------------------------------------------------------
/// A mask of 0 (probability p) and 1 / (1 - p), drawn from `gen`. out = x * mask.
Tensor dropout_mask(const Shape& shape, double p, Generator& gen, DType dtype = DType::Float32);

// ---- losses --------------------------------------------------------------------------------------------
enum class Reduction { None, Mean, Sum };
/// Binary cross-entropy on logits, stable for any x: max(x, 0) - x*y + log(1 + exp(-|x|)), times
/// `weight` (undefined = 1; broadcast to x). Mean divides by the element count (as PyTorch, the mask
/// zeros still count). x, y same shape.
Tensor bce_with_logits(const Tensor& x, const Tensor& y, const Tensor& weight, Reduction reduction);
/// d loss / d x = (sigmoid(x) - y) * weight * dout (/ numel for Mean). dout is 0-d for Mean/Sum.
Tensor bce_with_logits_backward(const Tensor& dout, const Tensor& x, const Tensor& y,
                                const Tensor& weight, Reduction reduction);

// ---- fused optimizer updates (one pass over a parameter; optim/ calls these) -------------------------------
/// One step of torch.optim.Adam (decoupled = false: L2 added to the gradient) or AdamW (decoupled =
/// true: p *= 1 - lr * weight_decay first), in place:
///   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  p -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)
struct AdamStep {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
  bool decoupled = false;
  int64_t step = 1;  // t, counted from 1
  /// CUDA only: when defined, an Int64 scalar on the parameter's device holding t, read by the kernel
  /// (bias corrections computed there in double, as the host does) instead of `step`. This is what lets
  /// a captured CUDA graph replay successive Adam steps: a host value would be frozen into the graph.
  Tensor device_step;
};
void adam_update_(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamStep& s);
/// One parameter's tensors for adam_update_multi_.
struct AdamTensors {
  Tensor* param;
  const Tensor* grad;
  Tensor* exp_avg;
  Tensor* exp_avg_sq;
};
/// adam_update_ on many parameters with one AdamStep (so one step count): element for element the result
/// of one call per parameter, but on the GPU one launch per batch of up to 32 tensors instead of one per
/// tensor (DenseNet-169 with the LA-DNN heads has 510 parameter tensors; PyTorch's "foreach" idea).
/// Every parameter is checked as adam_update_ checks it; all must share the device.
void adam_update_multi_(const std::vector<AdamTensors>& params, const AdamStep& s);
/// One step of torch.optim.SGD, in place: d = g + wd p; buf = first ? d : momentum buf + (1 - dampening) d;
/// d = nesterov ? d + momentum buf : buf (when momentum != 0); p -= lr d.
struct SgdStep {
  double lr = 1e-2, momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false;
  bool first = true;  // the momentum buffer is initialised from d on the first step
};
void sgd_update_(Tensor& param, const Tensor& grad, Tensor& momentum_buffer, const SgdStep& s);

}  // namespace ladnn::ops
