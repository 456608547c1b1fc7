// cuda/bnpool_stub.cpp — the batch-norm and pooling functions of cuda/ops.h for a build without the CUDA
// backend (LADNN_CUDA=OFF or no nvcc). tensor/cpu/{batchnorm,pool}.cpp call them only for CUDA tensors,
// which such a build cannot create, so they are never reached; they exist for the linker and throw the
// same reason as the rest of the runtime if they ever are.
#ifndef LADNN_HAVE_CUDA
#include <stdexcept>
#include <string>

#include "cuda/ops.h"
#include "cuda/runtime.h"

namespace ladnn::cuda {
namespace {
[[noreturn]] void no_backend(const char* op) {
  throw std::runtime_error(std::string(op) + ": " + unavailable_reason());
}
}  // namespace

ops::BatchNormForward batch_norm_forward_train(const Tensor&, const Tensor&, const Tensor&, Tensor&, Tensor&,
                                               double, double, ops::BnAct, const Tensor&, int64_t) {
  no_backend("batch_norm_forward_train");
}
void batch_norm_batch_stats_into(const Tensor&, const Tensor&) {
  no_backend("batch_norm_batch_stats");
}
ops::BatchNormForward batch_norm_record_train(const Tensor&, Tensor&, Tensor&, double, double, ops::BnAct,
                                              const Tensor&, int64_t) {
  no_backend("batch_norm_record_train");
}
Tensor batch_norm_map_saved(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                            ops::BnAct) {
  no_backend("batch_norm_map_saved");
}
bool bn_avg_pool2d_train(const Tensor&, const Tensor&, const Tensor&, Tensor&, Tensor&, double, double,
                         ops::BnAct, const Tensor&, const ops::Pool2dParams&, ops::BatchNormForward&) {
  no_backend("bn_avg_pool2d_train");
}
bool bn_avg_pool2d_backward_train(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                  const Tensor&, ops::BnAct, const ops::Pool2dParams&, ops::BatchNormGrads&) {
  no_backend("bn_avg_pool2d_backward_train");
}
bool bn_max_pool2d_train(const Tensor&, const Tensor&, const Tensor&, Tensor&, Tensor&, double, double,
                         ops::BnAct, const Tensor&, const ops::Pool2dParams&, ops::BnMaxPoolForward&) {
  no_backend("bn_max_pool2d_train");
}
Tensor batch_norm_forward_eval(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, double,
                               ops::BnAct) {
  no_backend("batch_norm_forward_eval");
}
ops::BatchNormGrads batch_norm_backward_train(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                              const Tensor&, const Tensor&, const Tensor&, const ops::BnReluFromX&) {
  no_backend("batch_norm_backward_train");
}
ops::BatchNormGrads batch_norm_backward_eval(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                             double, const Tensor&) {
  no_backend("batch_norm_backward_eval");
}
ops::MaxPoolForward max_pool2d_forward(const Tensor&, const ops::Pool2dParams&, bool) {
  no_backend("max_pool2d_forward");
}
Tensor max_pool2d_backward(const Tensor&, const Tensor&, const Shape&, const ops::Pool2dParams*) { no_backend("max_pool2d_backward"); }
Tensor avg_pool2d_forward(const Tensor&, const ops::Pool2dParams&) { no_backend("avg_pool2d_forward"); }
bool bn_avg_pool2d_eval(const Tensor&, const ops::BnEval&, const ops::Pool2dParams&, Tensor&) {
  no_backend("bn_avg_pool2d_eval");
}
Tensor avg_pool2d_backward(const Tensor&, const Shape&, const ops::Pool2dParams&) { no_backend("avg_pool2d_backward"); }
Tensor adaptive_avg_pool2d_forward(const Tensor&, int64_t, int64_t) { no_backend("adaptive_avg_pool2d_forward"); }
Tensor adaptive_avg_pool2d_backward(const Tensor&, const Shape&) { no_backend("adaptive_avg_pool2d_backward"); }

}  // namespace ladnn::cuda
#endif
