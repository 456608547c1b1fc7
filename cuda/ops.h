// cuda/ops.h — the CUDA side of tensor/ops.h: one function per op, same name and signature.
//
// tensor/ops.h's functions check their arguments (device-agnostic checks, plus "all operands on one
// device"), then call these for CUDA tensors. Inputs here are already checked; float32 only on the
// GPU (float64 raises a clear error). Families with a library twin (conv, bn, pool, gemm) pick cuDNN /
// cuBLAS or the native kernel with cuda/context.h's switches.
//
// Files: cuda/tensor_kernels.cu (strided_copy, fill), cuda/elementwise.cu (elementwise, broadcast,
// scalar, unary, in-place), cuda/reduce.cu (sum, sum_to), cuda/join.cu (cat), cuda/loss.cu, cuda/optim.cu,
// cuda/gemm.cu (matmul, linear), cuda/conv2d.cu, cuda/batchnorm.cu, cuda/pool.cu. Dropout needs no kernel:
// the mask is drawn on the host and copied. Without the CUDA backend, cuda/ops_stub.cpp and
// cuda/bnpool_stub.cpp define them all to throw.
#pragma once

#include <functional>
#include <vector>

#include "tensor/ops.h"

namespace ladnn::cuda {

// ---- tensor plumbing (tensor/tensor.cpp calls these for device tensors) ------------------------------
/// dst (any strides) = src (any strides), same shape, both on the GPU; the dtype is converted (through
/// double, as on the CPU). Overlapping views of one buffer are copied through a temporary.
void strided_copy(Tensor& dst, const Tensor& src);
/// Every element of `t` (any strides, on the GPU) = value.
void fill(Tensor& t, double value);
/// Adds 1 to every element of a contiguous Int64 tensor in place (counters kept on the device).
void increment_(Tensor& t);
/// increment_ of each tensor (contiguous Int64, on the GPU, checked by the caller): one kernel per 128.
void increment_all_(const std::vector<Tensor>& counters);

// ---- elementwise and reductions ------------------------------------------------------------------------
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor sum_to(const Tensor& grad, const Shape& shape);
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
Tensor relu_backward(const Tensor& grad, const Tensor& x);
Tensor sigmoid_backward(const Tensor& grad, const Tensor& y);
void add_(Tensor& a, const Tensor& b, double alpha);
void mul_scalar_(Tensor& a, double s);
Tensor sum(const Tensor& a);
Tensor sum(const Tensor& a, const std::vector<int64_t>& dims, bool keepdim);

// ---- matrix products (cuBLAS | native tiled SGEMM) ----------------------------------------------------------
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b);
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias);

// ---- convolution (cuDNN | native) -----------------------------------------------------------------------------
Tensor conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const ops::Conv2dParams& p);
// out checked by ops::conv2d_forward_into (shape, dtype, device, images as (K, P, Q) blocks, not empty).
void conv2d_forward_into(const Tensor& x, const Tensor& w, const Tensor& bias, const ops::Conv2dParams& p,
                         const Tensor& out);
Tensor conv2d_backward_input(const Tensor& dy, const Tensor& w, const Shape& x_shape, const ops::Conv2dParams& p);
Tensor conv2d_backward_weight(const Tensor& dy, const Tensor& x, const Shape& w_shape, const ops::Conv2dParams& p);
Tensor conv2d_backward_bias(const Tensor& dy);
/// ops::conv2d_bn_eval(_into) on the GPU, when cuda::fused_conv() is not Off: x's images x_img elements
/// apart; `out` a caller's view with images out_img apart (checked by the caller), or undefined: then a
/// new contiguous output is allocated here if, and only if, the result is computed here. Returns true
/// when out holds the result: the fused kernel ran (On, or Auto's choice for this shape). Returns false
/// when the switch is Off, the call is outside what the kernel takes (float32, at most 2,048 input
/// channels) or Auto chose the unfused ops for this shape: the caller then runs them (on the first call
/// of a shape, Auto's timing has run them too, into out or their own output; a caller's out defined
/// before the call stays as it was, a new one is dropped).
/// `then` (optional): what follows the forward and depends on the path it takes, for Auto to time with it
/// — `then(true)` after ours, `then(false)` after the unfused ops. A training forward with a batch-form pre
/// (a folded norm1) passes its weight gradient: our kernel leaves no map, so the gradient applies pre's map
/// again, while the unfused ops leave the map for the plain gradient. Auto picks the faster sum.
bool conv2d_bn_eval_fused(const Tensor& x, int64_t x_img, const ops::BnEval* pre, const Tensor& w,
                          const ops::Conv2dParams& p, const ops::BnEval* post, Tensor& out, int64_t out_img,
                          const std::function<void(const Tensor&)>& unfused_into,
                          const std::function<void(bool ours)>& then = {});
/// Forgets LADNN_FUSED_CONV=auto's per-shape choices (they are kept for the process): the next call of
/// each shape times again. For tests, and after changing something the choice depends on that its key
/// does not hold.
void reset_fused_conv_choices();
/// "LADNN_FUSED_CONV=auto's choices (shapes: ours / library): forward 70 / 16; backward data ...\n" —
/// how many shapes of each pass Auto has given to our kernels and to the library so far ("" for none).
std::string describe_fused_conv_choices();
/// How many launch shapes the fused kernel has: cuda/fused_conv.cuh's SIMT kFusedPlans, then
/// cuda/fused_conv_tc.cuh's tensor-core kTcPlans, cuda/fused_conv_mma.cuh's kMmaPlans and
/// cuda/fused_conv_halo.cuh's kHaloPlans (with TF32 on, sm_80+).
int fused_conv_plans();
/// True for the tensor-core plans among them: cuda/fused_conv_tc.cuh's, cuda/fused_conv_mma.cuh's and
/// cuda/fused_conv_halo.cuh's.
bool fused_conv_plan_is_tensor_core(int plan);
/// True for cuda/fused_conv_mma.cuh's plans, which take pointwise convolutions (1x1, stride 1, no
/// padding) and 3x3 and 7x7 windows without a pre BatchNorm; conv2d_bn_eval_fused_plan refuses other
/// calls, and runs a window tap by tap where that fits (mma_tap_major_fits; Auto times both orders).
bool fused_conv_plan_is_mma(int plan);
/// True for cuda/fused_conv_halo.cuh's plans, which take 3x3 windows of stride 1 and padding 1 without a
/// pre BatchNorm, over a multiple of 8 channels, W at most half the plan's pixel slots, W and x_img
/// multiples of the plan's copy width (4 floats; 2 in the "v2" plans, which take only the W that 4 does
/// not divide), x and w aligned to their copies (halo_takes); conv2d_bn_eval_fused_plan refuses other
/// calls.
bool fused_conv_plan_is_halo(int plan);
/// Whether `plan` takes a call of these shapes (x contiguous; pre: a BatchNorm before the convolution):
/// conv2d_bn_eval_fused_plan's refusals by shape (the mma and halo plans take only some windows), for
/// the tests and benches that run each plan where it applies. Throws std::invalid_argument for a plan out
/// of range.
bool fused_conv_plan_takes(int plan, const Shape& x, const Shape& w, const ops::Conv2dParams& p, bool pre);
/// A plan's launch as Auto's log names it: "8x4x2" (SIMT), "tc128x64" (wmma), "mma128x64" (mma.sync),
/// "halo32x128" (the halo-staged 3x3).
/// Throws std::invalid_argument for a plan out of range.
std::string fused_conv_plan_name(int plan);
/// The fused kernel alone in launch shape `plan` (0 <= plan < fused_conv_plans()), whatever the switch
/// says — for tests and benches that check or time every shape Auto may pick. Arguments as
/// conv2d_bn_eval_fused's, out defined; chunks_per_split > 0 (tensor-core plans only) splits the
/// reduction into runs of that many of the plan's chunks (wmma: 32 values; mma: its depth, 16 or 32;
/// halo: 8 channels x 9 taps), added by a second kernel (0: not split). Throws
/// std::invalid_argument when the kernel does not take the call or the plan is out of range.
void conv2d_bn_eval_fused_plan(const Tensor& x, int64_t x_img, const ops::BnEval* pre, const Tensor& w,
                               const ops::Conv2dParams& p, const ops::BnEval* post, const Tensor& out, int64_t out_img,
                               int plan, int chunks_per_split = 0);

/// conv2d_backward_input / conv2d_backward_weight on the tensor cores (cuda/fused_conv.cu), when
/// cuda::fused_conv() is not Off and TF32 is on (sm_80+): dy (N, K, P, Q) with each image one packed
/// (K, P, Q) block, the images any distance apart (packed, or a channel slice read in place); w contiguous
/// (K, C, R, S); dx a new contiguous (N, C, H, W); x's images x_img elements apart; dw a new contiguous
/// (K, C, R, S). `library` computes the same result with the library (Auto times it against our
/// kernel's tile shapes the first time a shape is seen). Returns true when dx / dw holds the result from
/// our kernel; false, having run nothing after the first call, when the switch, TF32, the stride (the
/// data pass takes stride 1 only), the sizes or Auto's choice leave the pass to the library: the caller
/// then runs it.
bool conv2d_backward_input_fused(const Tensor& dy, const Tensor& w, const ops::Conv2dParams& p, const Tensor& dx,
                                 const std::function<void()>& library);
bool conv2d_backward_weight_fused(const Tensor& dy, const Tensor& x, int64_t x_img, const ops::Conv2dParams& p,
                                  const Tensor& dw, const std::function<void()>& library);
/// conv2d_backward_weight_fused's form for a pre BatchNorm (x's, applied as the kernel reads it): the
/// pointwise kernel only (cuda/conv_wgrad_pw.cuh), behind LADNN_HALO_UNCHECKED=1 as its plain form or
/// LADNN_NORM1_FOLD=1 (its caller's opt-in);
/// `library` runs the map's pass and the plain weight gradient into dw. The same contract.
bool conv2d_backward_weight_pre_fused(const Tensor& dy, const Tensor& x, int64_t x_img,
                                      const ops::Conv2dParams& p, const ops::BnEval& pre, const Tensor& dw,
                                      const std::function<void()>& library);
/// ops::conv2d_backward_weight with a pre BatchNorm (checked by the caller): the pointwise kernel applying
/// pre's map as it reads x (cuda/conv_wgrad_pw.cuh with a prologue) where it takes the call and the switch
/// (Auto: timed against `unfused`) picks it; else `unfused` — the caller's map as its own pass, then the
/// plain weight gradient — which returns dW.
Tensor conv2d_backward_weight_pre(const Tensor& dy, const Tensor& x, const Shape& w_shape,
                                  const ops::Conv2dParams& p, const ops::BnEval& pre,
                                  const std::function<Tensor()>& unfused);
/// True when the tensor-core forms can run here: TF32 on (cuda::tf32_enabled()), an sm_80+ GPU, and this
/// build's kernels compiled for one.
bool fused_conv_tensor_cores();
/// How many tile shapes those kernels have: the weight gradient's (cuda/conv_wgrad_tc.cuh kWgradPlans)
/// when `weight`, else the data pass's (cuda/fused_conv_tc.cuh kTcPlans).
int conv_backward_plans(bool weight);
/// Our kernel alone in tile shape `plan` (0 <= plan < conv_backward_plans(...)), whatever the switch says
/// — for tests and benches; the weight gradient's pixels split for `waves` blocks per SM, the data pass's
/// reduction into runs of chunks_per_split chunks (0: not split). Arguments as
/// above. Throws std::invalid_argument when the kernel does not take the call (TF32 off or below sm_80,
/// a data pass with stride over 1, sizes past int) or the plan is out of range.
void conv2d_backward_input_fused_plan(const Tensor& dy, const Tensor& w, const ops::Conv2dParams& p, const Tensor& dx,
                                      int plan, int chunks_per_split = 0);
void conv2d_backward_weight_fused_plan(const Tensor& dy, const Tensor& x, int64_t x_img, const ops::Conv2dParams& p,
                                       const Tensor& dw, int plan, int waves);
/// The data pass on forward plan `plan` (0 <= plan < fused_conv_plans(), an mma or halo plan): those
/// kernels read w in the forward's order only, so a kernel first writes w rotated and transposed into a
/// (C, K, R, S) copy, then the forward kernel convolves dy with it (padding R-1-ph) into dx — as Auto runs
/// them for conv2d_backward_input with LADNN_HALO_UNCHECKED=1. chunks_per_split as
/// conv2d_bn_eval_fused_plan's. Throws std::invalid_argument naming the plan and the call's shape when
/// the kernel does not take it. For tests and benches.
void conv2d_backward_input_forward_plan(const Tensor& dy, const Tensor& w, const ops::Conv2dParams& p,
                                        const Tensor& dx, int plan, int chunks_per_split = 0);
/// How many launch shapes cuda/conv_wgrad_halo.cuh's weight gradient has (kWgradHaloPlans), and that kernel
/// alone in shape `plan`, its bands split for `waves` blocks per SM — for tests and benches (Auto times it
/// only with LADNN_HALO_UNCHECKED=1 until a device check has passed). It takes 3x3 windows of stride 1 and
/// padding 1 whose input channels come in blocks of 32; throws std::invalid_argument, naming the plan and
/// the call, for any other, or when the tensor-core kernels cannot run.
int conv_wgrad_halo_plans();
/// cuda/conv_wgrad_pw.cuh's pointwise weight gradient alone (the same gate and use): 1x1 windows of stride
/// 1 without padding; throws std::invalid_argument naming the call for any other.
/// `pre` (optional): x's BatchNorm, applied as the kernel reads x (the prologue form).
void conv2d_backward_weight_pw_plan(const Tensor& dy, const Tensor& x, int64_t x_img,
                                    const ops::Conv2dParams& p, const Tensor& dw, int waves,
                                    const ops::BnEval* pre = nullptr);
/// Whether plan `plan` takes a call of these shapes (packed x and dy, aligned), as the hook would.
bool conv_wgrad_halo_plan_takes(int plan, const Shape& x, const Shape& w, const ops::Conv2dParams& p);
void conv2d_backward_weight_halo_plan(const Tensor& dy, const Tensor& x, int64_t x_img,
                                      const ops::Conv2dParams& p, const Tensor& dw, int plan, int waves);

// ---- batch normalisation (cuDNN | native) ---------------------------------------------------------------------
// act / relu_y: the fused BatchNorm-ReLU (tensor/ops.h). Native: the ReLU and the gradient mask live
// inside the BN kernels. cuDNN: its BN, then a ReLU in place on y; backward relu_backward, then its BN.
ops::BatchNormForward batch_norm_forward_train(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                               Tensor& running_mean, Tensor& running_var, double momentum,
                                               double eps, ops::BnAct act,
                                               const Tensor& batch_stats = Tensor(), int64_t fresh = 0);
/// Native always (one kernel): x's per-channel [mean, biased variance] into out, (C, 2) float64 packed.
void batch_norm_batch_stats_into(const Tensor& x, const Tensor& out);
/// ops::batch_norm_record_train: native always — the fresh channels' statistics (as
/// batch_norm_batch_stats_into), then one thread per channel records save_mean, save_invstd and the
/// running update as the given-statistics forward's kernels do (the same bits); y undefined.
ops::BatchNormForward batch_norm_record_train(const Tensor& x, Tensor& running_mean, Tensor& running_var,
                                              double momentum, double eps, ops::BnAct act,
                                              const Tensor& batch_stats, int64_t fresh);
/// ops::batch_norm_map_saved: native always, a block per (n, c) plane (per channel for small planes, as the
/// given-statistics forward's map), the coefficients as the training
/// forward's kernels derive them from the saved statistics (mean, math::bn_train_scale, beta).
Tensor batch_norm_map_saved(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& save_mean,
                            const Tensor& save_invstd, ops::BnAct act);
/// ops::bn_avg_pool2d_train in one kernel (BatchNorm given `stats`, (C, 2) float64, the native arithmetic;
/// the pool's window in the same pass) when LADNN_POOL is native: returns true with `out` filled (y the
/// pooled map); false (nothing done) otherwise, and the caller composes the two ops.
bool bn_avg_pool2d_train(const Tensor& x, const Tensor& gamma, const Tensor& beta, Tensor& running_mean,
                         Tensor& running_var, double momentum, double eps, ops::BnAct act,
                         const Tensor& stats, const ops::Pool2dParams& p, ops::BatchNormForward& out);
/// ops::bn_avg_pool2d_backward_train from the pooled gradient (the full-size one never written) when the
/// windows tile the input (math::avg_pool_tiles: a transition's 2x2/2): returns true with `out` filled;
/// false (nothing done) otherwise. The BatchNorm's native arithmetic, the ReLU's mask from x.
bool bn_avg_pool2d_backward_train(const Tensor& dy, const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                  const Tensor& save_mean, const Tensor& save_invstd, ops::BnAct act,
                                  const ops::Pool2dParams& p, ops::BatchNormGrads& out);
/// ops::bn_max_pool2d_train in one kernel, likewise (the argmax indices as the max pool's).
bool bn_max_pool2d_train(const Tensor& x, const Tensor& gamma, const Tensor& beta, Tensor& running_mean,
                         Tensor& running_var, double momentum, double eps, ops::BnAct act,
                         const Tensor& stats, const ops::Pool2dParams& p, ops::BnMaxPoolForward& out);
Tensor batch_norm_forward_eval(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                               const Tensor& running_mean, const Tensor& running_var, double eps, ops::BnAct act);
ops::BatchNormGrads batch_norm_backward_train(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                                              const Tensor& save_mean, const Tensor& save_invstd,
                                              const Tensor& relu_y, const Tensor& dx_into,
                                              const ops::BnReluFromX& relu_from_x);
ops::BatchNormGrads batch_norm_backward_eval(const Tensor& dy, const Tensor& x, const Tensor& gamma,
                                             const Tensor& running_mean, const Tensor& running_var, double eps,
                                             const Tensor& relu_y);

// ---- pooling (cuDNN | native) -----------------------------------------------------------------------------------
ops::MaxPoolForward max_pool2d_forward(const Tensor& x, const ops::Pool2dParams& p, bool with_indices = true);
/// With the pooling parameters (`window`), a gather (deterministic); without, a scatter with atomicAdd.
Tensor max_pool2d_backward(const Tensor& dy, const Tensor& indices, const Shape& x_shape,
                           const ops::Pool2dParams* window = nullptr);
Tensor avg_pool2d_forward(const Tensor& x, const ops::Pool2dParams& p);
/// ops::bn_avg_pool2d_eval as one kernel into a new y, when LADNN_BN and LADNN_POOL are both native (the
/// same bits as their two kernels in sequence); false otherwise (the caller composes the two ops).
bool bn_avg_pool2d_eval(const Tensor& x, const ops::BnEval& bn, const ops::Pool2dParams& p, Tensor& y);
Tensor avg_pool2d_backward(const Tensor& dy, const Shape& x_shape, const ops::Pool2dParams& p);
Tensor adaptive_avg_pool2d_forward(const Tensor& x, int64_t out_h, int64_t out_w);
Tensor adaptive_avg_pool2d_backward(const Tensor& dy, const Shape& x_shape);

// ---- joining, losses (dropout masks are drawn on the host and copied: the same seed gives the same
// mask on every device) ------------------------------------------------------------------------------------
Tensor cat(const std::vector<Tensor>& parts, int64_t dim);
Tensor bce_with_logits(const Tensor& x, const Tensor& y, const Tensor& weight, ops::Reduction reduction);
Tensor bce_with_logits_backward(const Tensor& dout, const Tensor& x, const Tensor& y, const Tensor& weight,
                                ops::Reduction reduction);

// ---- fused optimizer updates ----------------------------------------------------------------------------------------
void adam_update_(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const ops::AdamStep& s);
void adam_update_multi_(const std::vector<ops::AdamTensors>& params, const ops::AdamStep& s);
void sgd_update_(Tensor& param, const Tensor& grad, Tensor& momentum_buffer, const ops::SgdStep& s);

}  // namespace ladnn::cuda
