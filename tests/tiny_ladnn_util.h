// tests/tiny_ladnn_util.h — a tiny LA-DNN, a random labelled batch for it and one SGD step on it, for the
// tests that train one on the GPU (tests/cuda_graph_test.cpp, tests/cuda_fused_conv_test.cpp,
// tests/cuda_conv_backward_tc_test.cpp).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "autograd/variable.h"
#include "cuda/graph.h"
#include "models/ladnn.h"
#include "optim/sgd.h"
#include "tensor/random.h"
#include "tensor/tensor.h"
#include "tests/cuda_test_util.h"

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

/// n labelled images (random_ladnn_batch) on the CPU, and a copy of them on the GPU.
struct LadnnBatches {
  LadnnBatch cpu, gpu;
};
inline LadnnBatches random_ladnn_batches(int64_t n, Generator& gen) {
  LadnnBatches b;
  b.cpu = random_ladnn_batch(n, gen, Device::cpu());
  b.gpu = {b.cpu.images.to(Device::cuda()), b.cpu.covid.to(Device::cuda()), b.cpu.lesions.to(Device::cuda()),
           b.cpu.mask.to(Device::cuda())};
  return b;
}

/// Three eager SGD steps on one tiny LA-DNN from `seed` against one eager step, a capture of the next and
/// two replays of it on another from the same seed (neither sees a shape for the first time inside the
/// capture), on the GPU: their parameters agree (the tolerance of
/// CudaGraphTest.MemoryEfficientStepsEqualPlainSteps, which also covers a plain model against a
/// memory-efficient one). `what` names the case in the failures.
inline void expect_replayed_steps_match_eager(uint64_t seed, bool eager_memory_efficient,
                                              bool graphed_memory_efficient, const LadnnBatch& gpu_batch,
                                              const std::string& what) {
  auto eager = tiny_ladnn(seed, eager_memory_efficient, Device::cuda()),
       graphed = tiny_ladnn(seed, graphed_memory_efficient, Device::cuda());
  SGD opt_e(eager->parameters(), 0.05, 0.9), opt_r(graphed->parameters(), 0.05, 0.9);
  for (int i = 0; i < 3; ++i) sgd_step(*eager, opt_e, gpu_batch);
  sgd_step(*graphed, opt_r, gpu_batch);
  cuda::Graph g;
  g.capture([&] { sgd_step(*graphed, opt_r, gpu_batch); });
  ASSERT_TRUE(g.captured()) << what;
  g.replay();
  g.replay();
  cuda::synchronize();
  const auto pe = eager->named_parameters(), pr = graphed->named_parameters();
  for (std::size_t i = 0; i < pe.size(); ++i)
    EXPECT_TRUE(cuda_test::gpu_matches(what + " replayed " + pe[i].first, pr[i].second.tensor(),
                                       cuda_test::to_cpu(pe[i].second.tensor()), cuda_test::Tol{2e-6, 1e-5}));
}

}  // namespace ladnn::test
