// autograd/checkpoint.h — trade compute for memory: run a piece of the network without keeping its
// intermediate results, and run it again during backward to get them back (torch.utils.checkpoint).
//
//   Variable y = checkpoint([&](const std::vector<Variable>& in) { return conv(relu(bn(cat(in, 1)))); },
//                           {a, b, c});
//
// Forward runs `fn` once under NoGradGuard: only y is kept (plus the inputs, which the caller holds
// anyway). Backward runs `fn` again on the saved input tensors with gradients on, back-propagates y's
// gradient through that fresh graph — parameters used inside `fn` accumulate their gradients as usual —
// and returns the inputs' gradients. While it re-runs, `recomputing()` is true, and BatchNorm2d uses
// the batch statistics without updating its running statistics a second time (torch's checkpoint
// updates them twice). `fn` must compute the same function both times: no dropout inside.
//
// DenseNet's memory-efficient mode (Pleiss et al. 2017, torchvision's memory_efficient=True) wraps
// each layer's concatenation-BN-ReLU-1x1 conv in one checkpoint: the concatenation and the BN-ReLU
// output, the two tensors that grow with the layer's depth, are never stored.
#pragma once

#include <functional>
#include <vector>

#include "autograd/variable.h"

namespace ladnn {

using CheckpointFn = std::function<Variable(const std::vector<Variable>& inputs)>;

/// y = fn(inputs), keeping only y; fn is re-run in backward. When grad mode is off or no input
/// requires a gradient, simply fn(inputs).
Variable checkpoint(const CheckpointFn& fn, const std::vector<Variable>& inputs);

/// True while a checkpoint's backward re-runs its function (on this thread).
bool recomputing();

}  // namespace ladnn
