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
//                batch of fewer rows (an epoch's last) runs eagerly and the graph stays; a batch of any
//                other layout (more rows, another image size or dtype) drops the graph and runs
//                eagerly (searching its shapes' algorithms), and the next batch like it is captured.
//
// Same updates as the eager loop: the replay runs the captured kernels on the same parameters,
// optimizer moments and BatchNorm buffers (fixed addresses); only what a graph freezes is watched
// (the learning rate: a schedule changes it between epochs, and the next step recaptures).
// Pipelined: submit() queues a replayed step and returns without waiting for the GPU; next_result()
// hands results back in order, one step late, so the host reads step k's loss while the GPU runs
// step k+1 and the GPU never waits on the host between steps. A batch goes host -> pinned memory (two
// slots, used in turn) -> the graph's input tensors by a queued copy; the loss and COVID logits come
// back the same way. step() is submit() then the wait for that step (the synchronous form). With the
// profiler on (ladnn train --profile) the replays' ops are timed too (cuda/profiler.h capture timing),
// each replay waited for: profiled runs are not pipelined.
// Memory: the graph keeps its own pool of the caching allocator for its intermediates, so an eager
// step in between (the short last batch) needs its memory on top.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>

#include "cuda/runtime.h"
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
    Tensor covid;        // (N, 1), on the host: the labels the step was given
    bool replayed = false;
  };
  /// Queues one training step (forward, loss, backward, optimizer step) on a batch; host or device
  /// tensors: images (N, 3, H, W), covid (N, 1), lesions (N, 5), lesion_mask (N, 1). A replay returns
  /// once it is queued; an eager step or a capture (see above) runs there and then.
  void submit(const Tensor& images, const Tensor& covid, const Tensor& lesions, const Tensor& lesion_mask);
  /// The oldest submitted step's result, in submission order. With `wait` false: only while a newer step
  /// is queued behind it or it is already known (so the GPU keeps working while the host reads);
  /// with `wait` true: any step still owed (waits for it). False when there is none to give.
  bool next_result(Result& out, bool wait);
  /// submit() and the wait for that step's result (the steps before it must have been read).
  Result step(const Tensor& images, const Tensor& covid, const Tensor& lesions, const Tensor& lesion_mask);
  /// Steps submitted whose results have not been read.
  int64_t owed() const { return static_cast<int64_t>(owed_.size()); }

  int64_t captures() const { return captures_; }
  int64_t replays() const { return replays_; }
  int64_t eager_steps() const { return eager_steps_; }

 private:
  // One step whose result is owed: in flight in a pinned slot (slot >= 0), or already known.
  struct Owed {
    int slot = -1;
    Result result;
  };
  // Pinned host memory for one step's way in (the four batch tensors, packed) and out (loss, logits),
  // and the event after its last queued copy: the slot is free again once the event has passed.
  struct Slot {
    cuda::PinnedBuffer in, out;
    std::unique_ptr<cuda::StreamEvent> done;
  };

  Result eager(const Tensor& images, const Tensor& covid, const Tensor& lesions, const Tensor& lesion_mask);
  void capture();
  /// Waits for every step in flight and reads its result (they stay owed, in order).
  void settle();
  /// Reads the result of `o` out of its slot (waits for the slot's event).
  void settle(Owed& o);
  /// The graph's fixed inputs, outputs and slots for a batch of these shapes.
  void allocate(const Tensor& images, const Tensor& covid, const Tensor& lesions, const Tensor& lesion_mask);

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
  Slot slots_[2];
  int next_slot_ = 0;
  std::deque<Owed> owed_;
  int64_t captures_ = 0, replays_ = 0, eager_steps_ = 0;
  bool timed_ = false;  // the graph was captured with the profiler's capture timing
};

}  // namespace ladnn
