// cuda/context.h — the framework's CUDA state: one stream, library handles created once, the
// per-op-family implementation switches and the TF32 switch.
//
// Every kernel and library call goes on `stream()`; nothing synchronises the host inside a training
// step except reading a value back (DESIGN.md), which keeps a step capturable as a CUDA graph.
//
// Implementation switches (llm.c's "kernel versions", STYLE.md habit 2): each op family with a library
// twin runs either the library (cuDNN/cuBLAS) or our native kernel. The environment picks
// (LADNN_CONV, LADNN_BN, LADNN_POOL = cudnn|native; LADNN_GEMM = cublas|native), set_impl() changes it
// later; unset, each family takes default_impl(): the library, except BatchNorm (native, measured). LADNN_TF32=0 turns TF32 tensor-core math off for cuDNN convolutions and cuBLAS.
#pragma once

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "tensor/tensor.h"

// Only the CUDA backend's own files see the runtime types; the declarations below need none.
struct CUstream_st;
struct cudnnContext;
struct cublasContext;

namespace ladnn::cuda {

enum class Family { Conv, BatchNorm, Pool, Gemm };
enum class Impl { Library, Native };

/// "conv", "bn", "pool", "gemm" and "cudnn"/"cublas"/"native" — for tables and error messages.
const char* family_name(Family f);
const char* impl_name(Family f, Impl impl);

/// What a family runs when its variable is unset: Impl::Library, but Impl::Native for BatchNorm.
Impl default_impl(Family f);
/// The implementation an op family runs now (from the environment at first use, then set_impl).
Impl impl(Family f);
void set_impl(Family f, Impl impl);
/// Parses "cudnn"/"cublas"/"library"/"native"; throws naming the variable and value otherwise.
Impl parse_impl(Family f, const std::string& value, const char* where);

bool tf32_enabled();
void set_tf32(bool on);

/// How a pointwise convolution (1x1 kernel, stride 1, no padding: DenseNet's bottlenecks and
/// transitions) runs when the conv family is the library (LADNN_CONV1X1=auto|cudnn|cublas):
///   Auto    (default) the first call of each shape and pass times cuDNN's best algorithm against one
///           cuBLAS strided batched GEMM on the NCHW planes (cuda/pointwise_gemm.h) and keeps the faster
///           — forward and backward input; backward weight is cuDNN's;
///   Cudnn   cuDNN only;
///   Cublas  cuBLAS whenever it applies (tests, comparisons).
/// The profiler shows which ran: the op's implementation reads "cublas" for the GEMM.
enum class Conv1x1 { Auto, Cudnn, Cublas };
Conv1x1 conv1x1();
void set_conv1x1(Conv1x1 mode);
const char* conv1x1_name(Conv1x1 mode);
/// Parses "auto"/"cudnn"/"cublas" (any case, blanks around); throws naming `where` and the value otherwise.
Conv1x1 parse_conv1x1(const std::string& value, const char* where);

/// The fused inference convolution (cuda/fused_conv.cuh: ops::conv2d_bn_eval's eval BatchNorm(-ReLU)
/// before and after a convolution in one kernel, built for batch-1 latency; cuda/fused_conv_tc.cuh: its
/// tensor-core form), LADNN_FUSED_CONV=off|on|auto. Where it runs: inference's dense layers and stem,
/// and — as plain convolutions, no BatchNorm — the training dense blocks' forward convolutions. With
/// TF32 on (sm_80+), On and Auto also cover every library convolution's backward passes: the data pass
/// of a stride-1 convolution on the tensor-core kernel with the weight read rotated and transposed, the
/// weight gradient on cuda/conv_wgrad_tc.cuh (On: always; Auto: where it times faster than the library).
///   Off   the unfused ops: BatchNorm kernel, library conv, BatchNorm;
///   On    the SIMT kernel wherever it applies (float32, at most 2,048 input channels), in the launch
///         shape cuda/fused_conv.cuh's plan_fused picks from the output's size (for experiments: at
///         training batch sizes the library is faster);
///   Auto  (the default since GPU run 7 on an H200: graphed inference 3.07 -> 1.90 ms at batch 1 and
///         9.49 -> 7.30 ms at batch 32, graphed training 30.16 -> 29.52 ms at batch 32; the first 50
///         Adam steps within 8.3e-4 of PyTorch's losses) the first call of each shape times the kernel in each of its launch shapes — with TF32 on,
///         also in the tensor-core form (cuda/fused_conv_tc.cuh) — and the
///         unfused ops, each as a graph replay, and keeps the fastest (like LADNN_CONV1X1=auto; never
///         inside a graph capture).
/// The profiler shows which ran: the fused kernel is op "conv2d_bn_eval", implementation "native" (SIMT)
/// or "native-tc" (tensor cores); the backward passes keep their ops' names, implementation "native-tc".
enum class FusedConv { Off, On, Auto };
FusedConv fused_conv();
void set_fused_conv(FusedConv mode);
const char* fused_conv_name(FusedConv mode);
/// Parses "off"/"on"/"auto" (any case, blanks around); throws naming `where` and the value otherwise.
FusedConv parse_fused_conv(const std::string& value, const char* where);

/// How the native BatchNorm kernels (LADNN_BN=native, cuda/batchnorm.cu) cover a training forward or a
/// backward, LADNN_BN_KERNEL=auto|channel|split:
///   Split    a channel's values split over several blocks: partial statistics (or gradient sums), a
///            kernel that merges them per channel, then an elementwise map: three kernels, any shape;
///   Channel  one block per channel: its statistics, then its map, in one kernel (the map re-reads the
///            channel's values while they are in L2); one kernel instead of three;
///   Auto     (default) Channel where the channels alone fill the GPU and a channel holds at most
///            cuda/bnpool_math.h's kBnChannelMaxValues values (math::bn_channel_fits), else Split.
///            GPU run 7 (H200), graphed training against Split: 10.01 -> 8.70 ms at batch 1, 29.97 ->
///            28.17 ms at batch 32, 46.03 -> 44.34 ms at batch 64 (2459 -> 1808 graph nodes at 32);
///   The maps without a reduction (eval, and training given the batch statistics) take a block per
///   channel under Channel, a block per (n, c) plane under Split, and under Auto and Cluster a block per
///   channel for small planes (math::bn_planes_by_channel), else per plane. The same bits either way.
///   Cluster  (sm_90+, not yet measured, so not Auto's) the training forward and every backward hold the
///            channel's values in registers: one block, or a cluster of up to 8 blocks that merge their
///            partial statistics (or sums) through distributed shared memory, reads each value once
///            instead of twice, up to 131,072 values a channel (math::bn_cluster_shape); the other
///            kernels and larger channels as Auto. Up to 8,192 values, the same bits as Channel.
enum class BnKernel { Auto, Channel, Split, Cluster };
BnKernel bn_kernel();
void set_bn_kernel(BnKernel mode);
const char* bn_kernel_name(BnKernel mode);
/// Parses "auto"/"channel"/"split" (any case, blanks around); throws naming `where` and the value otherwise.
BnKernel parse_bn_kernel(const std::string& value, const char* where);

/// Programmatic dependent launch (LADNN_PDL=1; off by default until a GPU run has measured it): our
/// kernels go out with cudaLaunchAttributeProgrammaticStreamSerialization on devices of compute
/// capability 9.0 and up, so the blocks of a kernel may be scheduled while the kernel before it drains,
/// and wait at their first statement (cuda/launch.h) instead of after a full launch. Library kernels
/// (cuDNN, cuBLAS) launch as they do. On older devices the attribute is never set.
bool programmatic_launch();
void set_programmatic_launch(bool on);

/// A training dense layer's norm1-ReLU folded into its conv1 (LADNN_NORM1_FOLD=1; off by default until a
/// GPU run has measured it): the norm1 records its statistics only (ops::batch_norm_record_train), and
/// conv1's forward and weight gradient take the map as a pre BatchNorm (ops::conv2d_bn_eval,
/// ops::conv2d_backward_weight with a batch-form BnEval) — on the GPU, where Auto picks our kernels, the
/// normalised prefix is never written. The same values on the CPU, bit for bit; a model-level switch
/// (models/densenet.cpp reads it), here beside the others so that --variants can set it.
bool fold_norm1();
void set_fold_norm1(bool on);

/// LADNN_CUDNN_LOG=1 (read once): print each choice made by timing — cuDNN's algorithm search, the
/// cuBLAS/cuDNN pointwise choice, LADNN_FUSED_CONV=auto's — to stderr.
bool log_choices();
void set_log_choices(bool on);  // (tests: the log is how Auto's reasons are seen)

/// Every switch's value at once (from the environment where a switch was not read yet), to restore later:
/// what `ladnn bench --variants` changes for a row and puts back.
struct SwitchSnapshot {
  int impl[4], tf32, deterministic, conv1x1, graph_plan, fused_conv, bn_kernel, pdl, fold;
};
SwitchSnapshot save_switches();
void restore_switches(const SwitchSnapshot& s);
/// Sets one switch by its environment variable's name, from a value written as in the environment
/// ("LADNN_PDL", "1"; "LADNN_BN_KERNEL", "cluster"): as if the process had started with it. Throws
/// std::invalid_argument naming the variable (and the names there are) or the value, as the environment's
/// parsing does.
void set_switch(const std::string& name, const std::string& value);
/// A set of switches by their environment names and values, and its label as written ("A=1,B=x").
struct SwitchSet {
  std::vector<std::pair<std::string, std::string>> switches;
  std::string label;
};
/// "A=1,B=x;C=0" (';' between sets, ',' within one; empty parts skipped) as sets, each checked by setting
/// it and putting every switch back: a bad item, name or value throws std::invalid_argument, prefixed by
/// `where` ("--variants: ..."), with nothing changed. What `ladnn bench --variants` takes.
std::vector<SwitchSet> parse_switch_sets(const std::string& spec, const std::string& where);
/// set_switch for each of the set's switches, in order.
void apply_switch_set(const SwitchSet& set);

/// One line per switch, as `ladnn info` prints them: "conv  cudnn  (LADNN_CONV; default cudnn)", ...,
/// "conv1x1  auto  (LADNN_CONV1X1; ...)", "tf32  on  (LADNN_TF32)", "deterministic  off  (LADNN_DETERMINISTIC)". A switch whose environment
/// value is invalid says so instead of throwing.
std::string describe_switches();

/// Deterministic mode (LADNN_DETERMINISTIC=1, off by default, as PyTorch's
/// torch.backends.cudnn.deterministic): cuDNN convolutions use only algorithms that give the same bits on
/// every run (some backward algorithms add partial sums with atomics, in any order). Our own kernels are
/// deterministic in either mode. For comparing two runs of a computation that amplifies rounding — within
/// one process: choices made by timing (cuDNN's search, LADNN_CONV1X1=auto, LADNN_FUSED_CONV=auto) may
/// differ between processes, and with them the bits.
bool deterministic();
void set_deterministic(bool on);

/// The framework stream (created on first use, on cuda:0). Throws cuda::Error without a usable GPU.
CUstream_st* stream();
/// Handles bound to stream(), created once.
cudnnContext* cudnn();
cublasContext* cublas();

/// Waits for all work on the framework stream (tests, timing, reading results). Does nothing when no
/// stream was ever created (no GPU work queued), so it is safe to call without a GPU.
void synchronize();

}  // namespace ladnn::cuda
