// cuda/ops_stub.cpp — cuda/ops.h (all but batch norm and pooling, whose stubs are in
// cuda/bnpool_stub.cpp), cuda/context.h and cuda/allocator.h for a build without the CUDA
// backend (LADNN_CUDA=OFF or no nvcc), so such a build links. No CUDA tensor can exist there
// (Storage's device_alloc throws first, cuda/runtime_stub.cpp), so none of these is reached by a correct
// program; each throws the same clear error. Queries that have a truthful answer without a GPU give it
// (allocator statistics are all zero; synchronize and release_cached have nothing to do).
// The implementation switches (cuda/context_switches.cpp) are pure host code and built everywhere.
#ifndef LADNN_HAVE_CUDA
#include <stdexcept>
#include <string>

#include "cuda/allocator.h"
#include "cuda/context.h"
#include "cuda/graph.h"
#include "cuda/ops.h"

namespace ladnn::cuda {
namespace {

[[noreturn]] void no_backend(const char* what) {
  throw std::runtime_error(std::string("cuda::") + what +
                           ": ladnn was built without the CUDA backend (LADNN_CUDA=OFF or no nvcc); "
                           "rebuild with nvcc available to use a GPU");
}

std::size_t g_limit = 0;

}  // namespace

// ---- cuda/context.h (the switches are in context_switches.cpp) --------------------------------------------
CUstream_st* stream() {
  no_backend("stream");
}
cudnnContext* cudnn() {
  no_backend("cudnn");
}
cublasContext* cublas() {
  no_backend("cublas");
}
void synchronize() {}

// ---- cuda/allocator.h (round_size, format_bytes, Buffer are in allocator_common.cpp)
// ------------------------
void* allocate(std::size_t) {
  no_backend("allocate");
}
void* allocate(std::size_t, CUstream_st*) {
  no_backend("allocate");
}
void deallocate(void*) noexcept {}
AllocatorStats allocator_stats() {
  return {};
}
void reset_peak_stats() {}
bool capturing() {
  return false;
}
Graph::~Graph() = default;
void Graph::reset() {}
void Graph::capture(const std::function<void()>&) {
  no_backend("Graph::capture");
}
void Graph::capture(const std::function<void()>&, bool) {
  no_backend("Graph::capture");
}
void Graph::replay() {
  no_backend("Graph::replay");
}
double time_replayed_ms(const std::function<void()>&) {
  no_backend("time_replayed_ms");
}
void release_cached() {}
void begin_pool(uint64_t) {}
void end_pool() {}
void release_pool(uint64_t) {}
void begin_pool_recording(uint64_t) {}
std::vector<PlanBlock> end_pool_recording() {
  return {};
}
void begin_planned_pool(uint64_t, std::vector<PlanBlock>, MemoryPlan) {}
std::string end_planned_pool() {
  return "";
}
bool overlaps_planned_arena(const void*, std::size_t) {
  return false;
}
void set_memory_limit(std::size_t bytes) {
  g_limit = bytes;
}
std::size_t memory_limit() {
  return g_limit;
}
void set_fill_on_allocate(bool) {}
bool fill_on_allocate() {
  return false;
}

// ---- cuda/ops.h
// ---------------------------------------------------------------------------------------------------
void strided_copy(Tensor&, const Tensor&) {
  no_backend("strided_copy");
}
void fill(Tensor&, double) {
  no_backend("fill");
}
void increment_(Tensor&) {
  no_backend("increment_");
}
void increment_all_(const std::vector<Tensor>&) {
  no_backend("increment_all_");
}

Tensor add(const Tensor&, const Tensor&) {
  no_backend("add");
}
Tensor sub(const Tensor&, const Tensor&) {
  no_backend("sub");
}
Tensor mul(const Tensor&, const Tensor&) {
  no_backend("mul");
}
Tensor div(const Tensor&, const Tensor&) {
  no_backend("div");
}
Tensor sum_to(const Tensor&, const Shape&) {
  no_backend("sum_to");
}
Tensor expand_to(const Tensor&, const Shape&) {
  no_backend("expand_to");
}
Tensor add_scalar(const Tensor&, double) {
  no_backend("add_scalar");
}
Tensor mul_scalar(const Tensor&, double) {
  no_backend("mul_scalar");
}
Tensor pow_scalar(const Tensor&, double) {
  no_backend("pow_scalar");
}
Tensor neg(const Tensor&) {
  no_backend("neg");
}
Tensor exp(const Tensor&) {
  no_backend("exp");
}
Tensor log(const Tensor&) {
  no_backend("log");
}
Tensor sqrt(const Tensor&) {
  no_backend("sqrt");
}
Tensor sigmoid(const Tensor&) {
  no_backend("sigmoid");
}
Tensor relu(const Tensor&) {
  no_backend("relu");
}
Tensor relu_backward(const Tensor&, const Tensor&) {
  no_backend("relu_backward");
}
Tensor sigmoid_backward(const Tensor&, const Tensor&) {
  no_backend("sigmoid_backward");
}
void add_(Tensor&, const Tensor&, double) {
  no_backend("add_");
}
void mul_scalar_(Tensor&, double) {
  no_backend("mul_scalar_");
}
Tensor sum(const Tensor&) {
  no_backend("sum");
}
Tensor sum(const Tensor&, const std::vector<int64_t>&, bool) {
  no_backend("sum");
}

Tensor matmul(const Tensor&, const Tensor&, bool, bool) {
  no_backend("matmul");
}
Tensor linear(const Tensor&, const Tensor&, const Tensor&) {
  no_backend("linear");
}

Tensor conv2d_forward(const Tensor&, const Tensor&, const Tensor&, const ops::Conv2dParams&) {
  no_backend("conv2d_forward");
}
void conv2d_forward_into(const Tensor&, const Tensor&, const Tensor&, const ops::Conv2dParams&, const Tensor&) {
  no_backend("conv2d_forward_into");
}
Tensor conv2d_backward_input(const Tensor&, const Tensor&, const Shape&, const ops::Conv2dParams&) {
  no_backend("conv2d_backward_input");
}
Tensor conv2d_backward_weight(const Tensor&, const Tensor&, const Shape&, const ops::Conv2dParams&) {
  no_backend("conv2d_backward_weight");
}
Tensor conv2d_backward_bias(const Tensor&) {
  no_backend("conv2d_backward_bias");
}
bool conv2d_bn_eval_fused(const Tensor&, int64_t, const ops::BnEval*, const Tensor&, const ops::Conv2dParams&,
                          const ops::BnEval*, Tensor&, int64_t, const std::function<void(const Tensor&)>&,
                          const std::function<void(bool)>&) {
  no_backend("conv2d_bn_eval");
}
void reset_fused_conv_choices() {}
std::string describe_fused_conv_choices() {
  return "";
}
int fused_conv_plans() {
  return 0;
}
bool fused_conv_plan_is_tensor_core(int) {
  return false;
}
bool fused_conv_plan_is_mma(int) {
  return false;
}
bool fused_conv_plan_is_halo(int) {
  return false;
}
bool fused_conv_plan_takes(int, const Shape&, const Shape&, const ops::Conv2dParams&, bool) {
  no_backend("fused_conv_plan_takes");
}
std::string fused_conv_plan_name(int) {
  no_backend("fused_conv_plan_name");
}
void conv2d_bn_eval_fused_plan(const Tensor&, int64_t, const ops::BnEval*, const Tensor&, const ops::Conv2dParams&,
                               const ops::BnEval*, const Tensor&, int64_t, int, int) {
  no_backend("conv2d_bn_eval_fused_plan");
}
bool conv2d_backward_input_fused(const Tensor&, const Tensor&, const ops::Conv2dParams&, const Tensor&,
                                 const std::function<void()>&) {
  no_backend("conv2d_backward_input");
}
bool conv2d_backward_weight_fused(const Tensor&, const Tensor&, int64_t, const ops::Conv2dParams&, const Tensor&,
                                  const std::function<void()>&) {
  no_backend("conv2d_backward_weight");
}
bool conv2d_backward_weight_pre_fused(const Tensor&, const Tensor&, int64_t, const ops::Conv2dParams&,
                                      const ops::BnEval&, const Tensor&, const std::function<void()>&) {
  no_backend("conv2d_backward_weight");
}
Tensor conv2d_backward_weight_pre(const Tensor&, const Tensor&, const Shape&, const ops::Conv2dParams&,
                                  const ops::BnEval&, const std::function<Tensor()>&) {
  no_backend("conv2d_backward_weight");
}
bool fused_conv_tensor_cores() {
  return false;
}
int conv_backward_plans(bool) {
  return 0;
}
void conv2d_backward_input_fused_plan(const Tensor&, const Tensor&, const ops::Conv2dParams&, const Tensor&, int,
                                      int) {
  no_backend("conv2d_backward_input_fused_plan");
}
void conv2d_backward_input_forward_plan(const Tensor&, const Tensor&, const ops::Conv2dParams&, const Tensor&, int,
                                        int) {
  no_backend("conv2d_backward_input_forward_plan");
}
void conv2d_backward_weight_fused_plan(const Tensor&, const Tensor&, int64_t, const ops::Conv2dParams&, const Tensor&,
                                       int, int) {
  no_backend("conv2d_backward_weight_fused_plan");
}
void conv2d_backward_weight_pw_plan(const Tensor&, const Tensor&, int64_t, const ops::Conv2dParams&,
                                    const Tensor&, int, const ops::BnEval*) {
  no_backend("conv2d_backward_weight_pw_plan");
}
int conv_wgrad_halo_plans() {
  return 0;
}
bool conv_wgrad_halo_plan_takes(int, const Shape&, const Shape&, const ops::Conv2dParams&) {
  return false;
}
void conv2d_backward_weight_halo_plan(const Tensor&, const Tensor&, int64_t, const ops::Conv2dParams&,
                                      const Tensor&, int, int) {
  no_backend("conv2d_backward_weight_halo_plan");
}

// batch norm and pooling: C3's cuda/bnpool_stub.cpp.

Tensor cat(const std::vector<Tensor>&, int64_t) {
  no_backend("cat");
}
Tensor bce_with_logits(const Tensor&, const Tensor&, const Tensor&, ops::Reduction) {
  no_backend("bce_with_logits");
}
Tensor bce_with_logits_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, ops::Reduction) {
  no_backend("bce_with_logits_backward");
}

void adam_update_(Tensor&, const Tensor&, Tensor&, Tensor&, const ops::AdamStep&) {
  no_backend("adam_update_");
}
void adam_update_multi_(const std::vector<ops::AdamTensors>&, const ops::AdamStep&) {
  no_backend("adam_update_multi_");
}
void sgd_update_(Tensor&, const Tensor&, Tensor&, const ops::SgdStep&) {
  no_backend("sgd_update_");
}

}  // namespace ladnn::cuda
#endif
