// tests/tiny_ladnn_util.h — a tiny LA-DNN, a random labelled batch for it and one SGD step on it, for the
// tests that train one on the GPU (tests/cuda_graph_test.cpp, tests/cuda_fused_conv_test.cpp,
// tests/cuda_conv_backward_tc_test.cpp).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "autograd/variable.h"
#include "models/ladnn.h"
#include "optim/sgd.h"
#include "tensor/random.h"
#include "tensor/tensor.h"

namespace ladnn::test {

/// What one LA-DNN training step reads: images (N, 3, 64, 64) and the loss's labels.
struct LadnnBatch {
  Tensor images, covid, lesions, mask;
};

/// n images of N(0, 1) values and random 0/1 labels, drawn from `gen` in that order, on `device`.
inline LadnnBatch random_ladnn_batch(int64_t n, Generator& gen, Device device) {
  LadnnBatch b;
  b.images = Tensor::normal({n, 3, 64, 64}, 0.0, 1.0, gen, DType::Float32).to(device);
  std::vector<double> c(n), l(n * 5), m(n);
  for (auto& v : c) v = double(gen.below(2));
  for (auto& v : l) v = double(gen.below(2));
  for (auto& v : m) v = double(gen.below(2));
  b.covid = Tensor::from_vector(c, {n, 1}).to(device);
  b.lesions = Tensor::from_vector(l, {n, 5}).to(device);
  b.mask = Tensor::from_vector(m, {n, 1}).to(device);
  return b;
}

/// DenseNetConfig::tiny() as an LA-DNN from `seed`, on `device`, in training mode.
inline std::shared_ptr<LaDnn> tiny_ladnn(uint64_t seed, bool memory_efficient = false,
                                         Device device = Device::cuda()) {
  Generator gen(seed);
  DenseNetConfig cfg = DenseNetConfig::tiny();
  cfg.memory_efficient = memory_efficient;
  auto m = std::make_shared<LaDnn>(cfg, gen);
  m->to(device);
  m->train();
  return m;
}

/// One training step on `d`: the lesion-attention loss, its backward, an SGD update.
inline void sgd_step(LaDnn& net, SGD& opt, const LadnnBatch& d) {
  Variable loss = lesion_attention_loss(net.forward_heads(Variable(d.images)), d.covid, d.lesions, d.mask);
  opt.zero_grad();
  loss.backward();
  opt.step();
}

}  // namespace ladnn::test
