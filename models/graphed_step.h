// models/graphed_step.h — the LA-DNN training step replayed as a CUDA graph (ladnn train --cuda-graph).
//
// Why: launched one kernel at a time, a DenseNet-169 step keeps the GPU waiting on the host (H200,
// batch 32: 102.6 ms eager, 52.9 ms as a replayed graph; bench/RESULTS-gpu.md). cuda/graph.h captures
// and replays; this class makes that safe for a training loop, where batches, the learning rate and
// the last batch's size change:
//
//   step(batch)  a batch of the captured shape, at the captured learning rate: copy it into the
//                graph's input tensors, replay, report the replay to the optimizer
//                (Optimizer::replayed_step keeps its host-side step counts true), read the loss.
//                Otherwise: the first step ever runs eagerly (it creates the optimizer state and
//                searches the cuDNN algorithms, which a capture must not do); a full-size batch after
//                that (re)captures the step with its data in the input tensors and replays it once; a
//                batch of another shape (an epoch's last, smaller one) runs eagerly.
//
// Same updates as the eager loop: the replay runs the captured kernels on the same parameters,
// optimizer moments and BatchNorm buffers (fixed addresses); only what a graph freezes is watched
// (the learning rate: a schedule changes it between epochs, and the next step recaptures).
// Memory: the graph keeps its own pool of the caching allocator for its intermediates, so an eager
// step in between (the short last batch) needs its memory on top.
#pragma once

#include <cstdint>
#include <memory>

#include "models/ladnn.h"
#include "optim/optimizer.h"

namespace ladnn {

namespace cuda {
class Graph;
}

class GraphedTrainStep {
 public:
  /// `model` on the GPU in training mode; `opt` updates its parameters. Throws when the model is not on
  /// a GPU (graphs are CUDA only).
  GraphedTrainStep(LaDnn& model, Optimizer& opt, LossConfig loss);
  ~GraphedTrainStep();

  struct Result {
    double loss = 0;     // the batch's loss
    Tensor covid_logit;  // (N, 1), on the host
    bool replayed = false;
  };
  /// One training step (forward, loss, backward, optimizer step) on a batch; host or device tensors:
  /// images (N, 3, H, W), covid (N, 1), lesions (N, 5), lesion_mask (N, 1).
  Result step(const Tensor& images, const Tensor& covid, const Tensor& lesions, const Tensor& lesion_mask);

  int64_t captures() const { return captures_; }
  int64_t replays() const { return replays_; }
  int64_t eager_steps() const { return eager_steps_; }

 private:
  Result eager(const Tensor& images, const Tensor& covid, const Tensor& lesions, const Tensor& lesion_mask);
  void capture();

  LaDnn& model_;
  Optimizer& opt_;
  LossConfig loss_;
  Device device_;
  std::unique_ptr<cuda::Graph> graph_;
  double graph_lr_ = 0;  // the learning rate frozen into graph_
  // The graph's inputs (fixed device tensors the batches are copied into) and outputs (written by
  // every replay).
  Tensor images_, covid_, lesions_, mask_;
  Tensor loss_out_, logit_out_;
  int64_t captures_ = 0, replays_ = 0, eager_steps_ = 0;
};

}  // namespace ladnn
