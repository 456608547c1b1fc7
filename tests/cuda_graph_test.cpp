// tests/cuda_graph_test.cpp — CUDA graphs (cuda/graph.h): a captured LA-DNN training step replayed
// gives the parameters of the same number of eager steps; a captured forward follows new inputs copied
// into its input tensor; what would silently replay wrong (host copies) fails the capture with a
// clear error and leaves the stream usable; the graph's memory is never handed to anyone else.
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "cuda/graph.h"
#include "cuda/profiler.h"
#include "tests/cuda_test_util.h"
#include "tests/tiny_ladnn_util.h"
#include "models/graphed_step.h"
#include "models/ladnn.h"
#include "autograd/functions.h"
#include "layers/linear.h"
#include "optim/adam.h"
#include "optim/sgd.h"
#include "tensor/ops.h"

namespace ladnn {
namespace {

using namespace cuda_test;

const Device kGpu = Device::cuda();

using Data = test::LadnnBatch;
using test::tiny_ladnn;

/// n random images and labels on the GPU.
Data make_data(int64_t n, Generator& gen) {
  return test::random_ladnn_batch(n, gen, kGpu);
}

class CudaGraphTest : public ::testing::TestWithParam<cuda::Impl> {
 protected:
  void SetUp() override {
    LADNN_REQUIRE_GPU();
    scope_.emplace(GetParam(), /*tf32=*/false);
  }
  void TearDown() override { scope_.reset(); }

 private:
  std::optional<ImplScope> scope_;
};

// Four SGD steps on the same batch: eagerly, and as one eager step + a capture + three replays. Same
// kernels in the same order. Deterministic mode (cuDNN's deterministic algorithms; the max-pool
// backward gathers since 2026-11-27) keeps rounding noise out of the comparison; before it, the
// max-pool's atomicAdd and cuDNN's summation order made the runs differ in the last bits. SGD, because
// Adam turns such noise in a near-zero gradient into a full +-lr step (the first H200 run saw 5e-5
// differences in the stem's BatchNorm weights after four Adam steps, graph or not); Adam under replay
// is checked exactly below. A replay that skipped the BatchNorm counter or read stale inputs or weights
// would be off by far more.
/// Sets cuda::set_graph_memory_plan for a scope, restoring the previous value.
struct GraphPlanScope {
  explicit GraphPlanScope(bool on) : saved(cuda::graph_memory_plan()) { cuda::set_graph_memory_plan(on); }
  ~GraphPlanScope() { cuda::set_graph_memory_plan(saved); }
  bool saved;
};

void check_replayed_steps(bool plan_memory) {
  DeterministicScope deterministic;
  Generator gen(31);
  const Data d = make_data(4, gen);
  auto eager = tiny_ladnn(7), graphed = tiny_ladnn(7);
  SGD opt_e(eager->parameters(), 0.05, 0.9), opt_g(graphed->parameters(), 0.05, 0.9);
  auto step = [&](LaDnn& m, SGD& opt) { test::sgd_step(m, opt, d); };
  for (int i = 0; i < 4; ++i) step(*eager, opt_e);

  step(*graphed, opt_g);
  cuda::Graph g;
  g.capture([&] { step(*graphed, opt_g); }, plan_memory);
  ASSERT_TRUE(g.captured());
  EXPECT_EQ(g.plan_failure(), "");
  EXPECT_EQ(g.arena_bytes() > 0, plan_memory);
  const uint64_t mallocs = cuda::allocator_stats().device_mallocs;
  for (int i = 0; i < 3; ++i) g.replay();
  cuda::synchronize();
  EXPECT_EQ(cuda::allocator_stats().device_mallocs, mallocs) << "a replay allocated device memory";
  for (int i = 0; i < 3; ++i) opt_g.replayed_step();
  EXPECT_EQ(opt_g.state_dict().scalars.at("step"), 4.0) << "captures counted as steps, or replays not";

  const auto pe = eager->named_parameters(), pg = graphed->named_parameters();
  ASSERT_EQ(pe.size(), pg.size());
  for (size_t i = 0; i < pe.size(); ++i)
    EXPECT_TRUE(gpu_matches("parameter " + pe[i].first + " after 4 steps", pg[i].second.tensor(),
                            to_cpu(pe[i].second.tensor()), Tol{2e-6, 1e-5}));
  const auto be = eager->named_buffers(), bg = graphed->named_buffers();
  for (size_t i = 0; i < be.size(); ++i) {
    if (be[i].second.dtype() == DType::Int64) {
      EXPECT_EQ(to_cpu(bg[i].second).item(), 4.0) << bg[i].first << ": the counter advanced at every replay";
      continue;
    }
    EXPECT_TRUE(gpu_matches("buffer " + be[i].first + " after 4 steps", bg[i].second, to_cpu(be[i].second),
                            Tol{2e-6, 1e-5}));
  }
}

TEST_P(CudaGraphTest, ReplayedTrainingStepsEqualEagerSteps) {
  check_replayed_steps(false);
}

// The same with the graph's memory planned (cuda/memory_plan.h): every intermediate at a planned offset
// of one arena; a wrong plan (two live blocks overlapping) would corrupt the replayed steps.
TEST_P(CudaGraphTest, PlannedReplayedTrainingStepsEqualEagerSteps) {
  check_replayed_steps(true);
}

// Programmatic dependent launch (LADNN_PDL, cuda/launch.h) changes when our kernels' blocks are
// scheduled, never what they compute: four SGD steps with it on give the bits of four steps with it off,
// eagerly; and one eager step, a capture and three replays with it on give what the plain replays give
// (within check_replayed_steps' bound). A kernel that read or wrote before its pdl_enter() would race
// with the kernel before it and, some of the time, differ here. Below sm_90 launch_kernel never sets
// the attribute, and this checks only that the switch changes nothing.
TEST_P(CudaGraphTest, ProgrammaticLaunchGivesTheBitsOfOrdinaryLaunches) {
  DeterministicScope deterministic;
  Generator gen(37);
  const Data d = make_data(4, gen);
  auto off = tiny_ladnn(13), on = tiny_ladnn(13), graphed = tiny_ladnn(13);
  SGD opt_off(off->parameters(), 0.05, 0.9), opt_on(on->parameters(), 0.05, 0.9),
      opt_g(graphed->parameters(), 0.05, 0.9);
  auto step = [&](LaDnn& m, SGD& opt) { test::sgd_step(m, opt, d); };
  {
    PdlScope pdl(false);
    for (int i = 0; i < 4; ++i) step(*off, opt_off);  // (the first also makes every timed choice)
  }
  {
    PdlScope pdl(true);
    for (int i = 0; i < 4; ++i) step(*on, opt_on);
    step(*graphed, opt_g);
    cuda::Graph g;
    g.capture([&] { step(*graphed, opt_g); });
    ASSERT_TRUE(g.captured());
    for (int i = 0; i < 3; ++i) g.replay();
  }
  const auto p_off = off->named_parameters(), p_on = on->named_parameters(),
             p_g = graphed->named_parameters();
  ASSERT_EQ(p_off.size(), p_on.size());
  for (size_t i = 0; i < p_off.size(); ++i) {
    const Tensor want = to_cpu(p_off[i].second.tensor());
    EXPECT_TRUE(gpu_matches("PDL on, eager: " + p_off[i].first, p_on[i].second.tensor(), want, Tol{0, 0}));
    EXPECT_TRUE(
        gpu_matches("PDL on, replayed: " + p_off[i].first, p_g[i].second.tensor(), want, Tol{2e-6, 1e-5}));
  }
}

// The memory-efficient dense layer (DenseLayer::forward_recomputed: nothing kept, everything recomputed
// in backward) on the GPU: three SGD steps equal the plain network's, eagerly and as a replayed graph with
// planned memory.
TEST_P(CudaGraphTest, MemoryEfficientStepsEqualPlainSteps) {
  DeterministicScope deterministic;
  Generator gen(35);
  const Data d = make_data(4, gen);
  auto plain = tiny_ladnn(11), efficient = tiny_ladnn(11, true), graphed = tiny_ladnn(11, true);
  SGD opt_p(plain->parameters(), 0.05, 0.9), opt_e(efficient->parameters(), 0.05, 0.9),
      opt_g(graphed->parameters(), 0.05, 0.9);
  auto step = [&](LaDnn& m, SGD& opt) { test::sgd_step(m, opt, d); };
  for (int i = 0; i < 3; ++i) {
    step(*plain, opt_p);
    step(*efficient, opt_e);
  }
  step(*graphed, opt_g);
  cuda::Graph g;
  g.capture([&] { step(*graphed, opt_g); }, /*plan_memory=*/true);
  EXPECT_EQ(g.plan_failure(), "");
  g.replay();
  g.replay();
  cuda::synchronize();
  const auto pp = plain->named_parameters(), pe = efficient->named_parameters(), pg = graphed->named_parameters();
  for (size_t i = 0; i < pp.size(); ++i) {
    const Tensor ref = to_cpu(pp[i].second.tensor());
    EXPECT_TRUE(gpu_matches("memory-efficient " + pp[i].first, pe[i].second.tensor(), ref, Tol{2e-6, 1e-5}));
    EXPECT_TRUE(gpu_matches("memory-efficient graph " + pp[i].first, pg[i].second.tensor(), ref, Tol{2e-6, 1e-5}));
  }
}

// The training forms of the dense blocks (one op over one buffer; memory-efficient recomputing) on the
// GPU against the same step on the CPU: one SGD step of a tiny LA-DNN, every parameter within 1e-4
// (the CUDA issue's bound for a GPU step against the CPU's), and the loss.
TEST_P(CudaGraphTest, DenseBlockTrainingStepMatchesTheCpu) {
  Generator gen(36);
  const Data d = make_data(3, gen);
  for (bool efficient : {false, true}) {
    SCOPED_TRACE(efficient ? "memory-efficient" : "plain");
    auto cpu = tiny_ladnn(12, efficient, Device::cpu()), gpu = tiny_ladnn(12, efficient);
    SGD opt_c(cpu->parameters(), 0.05, 0.9), opt_g(gpu->parameters(), 0.05, 0.9);
    Variable lc = lesion_attention_loss(cpu->forward_heads(Variable(to_cpu(d.images))), to_cpu(d.covid),
                                        to_cpu(d.lesions), to_cpu(d.mask));
    Variable lg = lesion_attention_loss(gpu->forward_heads(Variable(d.images)), d.covid, d.lesions, d.mask);
    EXPECT_NEAR(to_cpu(lg.tensor()).item(), lc.tensor().item(), 1e-5);
    for (auto* pair : {&opt_c, &opt_g}) pair->zero_grad();
    lc.backward();
    lg.backward();
    opt_c.step();
    opt_g.step();
    const auto pc = cpu->named_parameters(), pg = gpu->named_parameters();
    for (size_t i = 0; i < pc.size(); ++i)
      EXPECT_TRUE(gpu_matches("parameter " + pc[i].first, pg[i].second.tensor(), pc[i].second.tensor(),
                              Tol{1e-4, 0}));
  }
}

// Inference: the captured forward reads whatever was copied into its input and writes the same output
// tensor at every replay; each replay equals an eager forward of that input.
TEST_P(CudaGraphTest, ReplayedForwardFollowsNewInputs) {
  Generator gen(32);
  auto m = tiny_ladnn(8);
  m->eval();
  Tensor x = to_gpu(randn({2, 3, 64, 64}, gen));
  NoGradGuard no_grad;
  m->forward(Variable(x));  // warm-up (algorithm search)
  Tensor y;
  cuda::Graph g;
  g.capture([&] { y = m->forward(Variable(x)).tensor(); });
  EXPECT_GT(g.nodes(), 20u) << "a DenseNet forward is dozens of kernels";
  for (int round = 0; round < 3; ++round) {
    const Tensor next = randn({2, 3, 64, 64}, gen);
    x.copy_(to_gpu(next));
    g.replay();
    const Tensor want = m->forward(Variable(to_gpu(next))).tensor();
    EXPECT_TRUE(gpu_matches("replayed forward, input " + std::to_string(round), y, to_cpu(want), Tol{1e-6, 1e-6}));
  }
}

// Adam's bias corrections depend on t, which a graph would freeze if it were a kernel argument: five
// replayed steps of a linear model (deterministic kernels: GEMM, elementwise, tree reductions) equal
// five eager ones. Only the device's pow (vs the host's) may move a rounding of lr / (1 - b1^t).
TEST_P(CudaGraphTest, ReplayedAdamStepsAdvanceTheStepCount) {
  Generator gen(33);
  auto make = [] {
    Generator g(5);
    auto m = std::make_shared<Linear>(16, 3, true, g);
    m->to(kGpu);
    return m;
  };
  auto eager = make(), graphed = make();
  const Tensor x = to_gpu(randn({8, 16}, gen)), y = to_gpu(randu({8, 3}, gen, 0, 1));
  Adam opt_e(eager->parameters(), 1e-2), opt_g(graphed->parameters(), 1e-2);
  auto step = [&](Linear& m, Adam& opt) {
    Variable l = bce_with_logits(m(Variable(x)), y, Tensor());
    opt.zero_grad();
    l.backward();
    opt.step();
  };
  for (int i = 0; i < 6; ++i) step(*eager, opt_e);
  step(*graphed, opt_g);
  cuda::Graph g;
  g.capture([&] { step(*graphed, opt_g); });
  for (int i = 0; i < 5; ++i) g.replay();
  const auto pe = eager->named_parameters(), pg = graphed->named_parameters();
  for (size_t i = 0; i < pe.size(); ++i)
    EXPECT_TRUE(gpu_matches("parameter " + pe[i].first + " after 6 Adam steps", pg[i].second.tensor(),
                            to_cpu(pe[i].second.tensor()), Tol{1e-7, 4 * kEps32}));
  // And they moved as six steps do, not as one step repeated: compare with a model that took only
  // the first two steps (t = 1, 2) — it must differ.
  auto two = make();
  Adam opt_2(two->parameters(), 1e-2);
  for (int i = 0; i < 2; ++i) step(*two, opt_2);
  EXPECT_GT(ops::max_abs_diff(to_cpu(two->named_parameters()[0].second.tensor()),
                              to_cpu(pg[0].second.tensor())),
            1e-3);
}

// The trainer's graphed step (models/graphed_step.h) against the plain eager loop over the same batches:
// six steps, the fourth a short batch (eager), the learning rate lowered before it (the fifth must
// recapture); step by step and pipelined (submit, results one step late). SGD with momentum for the
// parameter check (see the first test for why not Adam), Adam for the host-side step counts, which
// must count replays exactly.
// Deterministic mode: the two runs must do the same arithmetic. With atomics in the max-pool backward
// (before it gathered) or in cuDNN's backward algorithms, last-bit noise flipped a ReLU mask for an
// input near zero in one run and not the other, and the losses then split by 6e-5 at the short batch —
// in either direction (H200, run 5): the noise, not the graph, decided.
TEST_P(CudaGraphTest, GraphedTrainStepMatchesTheEagerLoop) {
  DeterministicScope deterministic;
  Generator gen(34);
  const int64_t sizes[] = {4, 4, 4, 2, 4, 4};
  std::vector<Data> batches;
  for (int64_t n : sizes) batches.push_back(make_data(n, gen));
  // pipelined: submit() every batch and read the results one step late (next_result), as the trainer
  // does; the labels that come back with each result must be its batch's.
  auto run = [&](auto make_opt, bool graphed, std::vector<double>* losses, bool pipelined = false) {
    auto m = tiny_ladnn(9);
    auto opt = make_opt(*m);
    std::unique_ptr<GraphedTrainStep> gs;
    if (graphed) gs = std::make_unique<GraphedTrainStep>(*m, *opt, LossConfig{});
    size_t read = 0;
    auto take = [&](bool wait) {
      GraphedTrainStep::Result r;
      while (gs->next_result(r, wait)) {
        EXPECT_EQ(r.covid.to_vector(), to_cpu(batches[read].covid).to_vector()) << "result " << read;
        EXPECT_EQ(r.covid_logit.shape(), (Shape{sizes[read], 1})) << "result " << read;
        if (losses) losses->push_back(r.loss);
        ++read;
      }
    };
    for (size_t i = 0; i < batches.size(); ++i) {
      if (i == 3) opt->set_lr(opt->lr() / 2);
      const Data& d = batches[i];
      if (gs && pipelined) {
        gs->submit(to_cpu(d.images), to_cpu(d.covid), to_cpu(d.lesions), to_cpu(d.mask));
        take(false);
        EXPECT_LE(gs->owed(), 1) << "at most the step just queued is owed";
      } else if (gs) {
        // Host tensors, as the loader gives them.
        const double l = gs->step(to_cpu(d.images), to_cpu(d.covid), to_cpu(d.lesions), to_cpu(d.mask)).loss;
        if (losses) losses->push_back(l);
      } else {
        Variable loss = lesion_attention_loss(m->forward_heads(Variable(d.images)), d.covid, d.lesions, d.mask);
        opt->zero_grad();
        loss.backward();
        opt->step();
        if (losses) losses->push_back(loss.tensor().item());
      }
    }
    if (gs && pipelined) {
      EXPECT_EQ(gs->owed(), 1) << "the last replay is still owed";
      EXPECT_THROW(gs->step(to_cpu(batches[0].images), to_cpu(batches[0].covid), to_cpu(batches[0].lesions),
                            to_cpu(batches[0].mask)),
                   std::invalid_argument)
          << "step() while a result is owed";
      take(true);
      EXPECT_EQ(read, batches.size());
      EXPECT_EQ(gs->owed(), 0);
    }
    if (gs) {
      EXPECT_EQ(gs->eager_steps(), 2);  // the first step and the short batch
      EXPECT_EQ(gs->captures(), 2);     // the first full batch, and again after the learning-rate change
      EXPECT_EQ(gs->replays(), 4);
    }
    return std::make_pair(m, std::move(opt));
  };
  auto sgd = [](LaDnn& m) { return std::make_unique<SGD>(m.parameters(), 0.05, 0.9); };
  std::vector<double> loss_e, loss_g;
  auto [me, oe] = run(sgd, false, &loss_e);
  auto [mg, og] = run(sgd, true, &loss_g);
  ASSERT_EQ(loss_e.size(), loss_g.size());
  for (size_t i = 0; i < loss_e.size(); ++i) EXPECT_NEAR(loss_g[i], loss_e[i], 1e-5) << "step " << i + 1;
  const auto pe = me->named_parameters(), pg = mg->named_parameters();
  for (size_t i = 0; i < pe.size(); ++i)
    EXPECT_TRUE(gpu_matches("parameter " + pe[i].first + " after 6 steps", pg[i].second.tensor(),
                            to_cpu(pe[i].second.tensor()), Tol{2e-6, 1e-5}));
  for (const auto& [name, t] : mg->named_buffers())
    if (t.dtype() == DType::Int64) EXPECT_EQ(to_cpu(t).item(), 6.0) << name;

  // Pipelined: the same losses and parameters.
  std::vector<double> loss_q;
  auto [mq, oq] = run(sgd, true, &loss_q, /*pipelined=*/true);
  ASSERT_EQ(loss_q.size(), loss_e.size());
  for (size_t i = 0; i < loss_e.size(); ++i) EXPECT_NEAR(loss_q[i], loss_e[i], 1e-5) << "pipelined, step " << i + 1;
  const auto pq = mq->named_parameters();
  for (size_t i = 0; i < pe.size(); ++i)
    EXPECT_TRUE(gpu_matches("pipelined: parameter " + pe[i].first + " after 6 steps", pq[i].second.tensor(),
                            to_cpu(pe[i].second.tensor()), Tol{2e-6, 1e-5}));

  auto adam = [](LaDnn& m) { return std::make_unique<Adam>(m.parameters(), 1e-3); };
  auto [ma, oa] = run(adam, true, nullptr);
  const OptimizerState st = oa->state_dict();
  EXPECT_EQ(st.scalars.at("step"), 6.0);
  EXPECT_EQ(st.scalars.at("0.step"), 6.0);

  // With planned graph memory (LADNN_GRAPH_PLAN=1): the same losses and parameters as the eager loop.
  GraphPlanScope plan(true);
  std::vector<double> loss_p;
  auto [mp, op] = run(sgd, true, &loss_p);
  for (size_t i = 0; i < loss_e.size(); ++i) EXPECT_NEAR(loss_p[i], loss_e[i], 1e-5) << "planned, step " << i + 1;
  const auto pp = mp->named_parameters();
  for (size_t i = 0; i < pe.size(); ++i)
    EXPECT_TRUE(gpu_matches("planned: parameter " + pe[i].first + " after 6 steps", pp[i].second.tensor(),
                            to_cpu(pe[i].second.tensor()), Tol{2e-6, 1e-5}));
}

// A batch with more rows than the graph's (or another layout) drops the graph and runs eagerly — its
// shapes' cuDNN algorithms are searched there, which a capture cannot do — and the next batch like it
// is captured; the losses stay those of the eager loop.
TEST_P(CudaGraphTest, GraphedTrainStepTakesABiggerBatchEagerlyThenCapturesIt) {
  DeterministicScope deterministic;
  Generator gen(35);
  const int64_t sizes[] = {2, 2, 4, 4, 4};
  std::vector<Data> batches;
  for (int64_t n : sizes) batches.push_back(make_data(n, gen));
  std::vector<double> loss_e, loss_g;
  for (bool graphed : {false, true}) {
    auto m = tiny_ladnn(12);
    SGD opt(m->parameters(), 0.05, 0.9);
    std::unique_ptr<GraphedTrainStep> gs;
    if (graphed) gs = std::make_unique<GraphedTrainStep>(*m, opt, LossConfig{});
    for (const Data& d : batches) {
      if (gs) {
        loss_g.push_back(gs->step(to_cpu(d.images), to_cpu(d.covid), to_cpu(d.lesions), to_cpu(d.mask)).loss);
      } else {
        Variable loss = lesion_attention_loss(m->forward_heads(Variable(d.images)), d.covid, d.lesions, d.mask);
        opt.zero_grad();
        loss.backward();
        opt.step();
        loss_e.push_back(loss.tensor().item());
      }
    }
    if (gs) {
      EXPECT_EQ(gs->eager_steps(), 2);  // the first step, and the first batch of 4
      EXPECT_EQ(gs->captures(), 2);     // on the second batch of 2 and the second of 4
      EXPECT_EQ(gs->replays(), 3);
    }
  }
  ASSERT_EQ(loss_g.size(), loss_e.size());
  for (size_t i = 0; i < loss_e.size(); ++i) EXPECT_NEAR(loss_g[i], loss_e[i], 1e-5) << "step " << i + 1;
}

// ladnn train --cuda-graph --profile: with the profiler on, the graphed step's replays are timed per op
// (capture timing), so the table covers the replayed steps, not only the eager first one.
TEST(CudaGraph, AProfiledGraphedTrainStepTimesItsReplays) {
  LADNN_REQUIRE_GPU();
  Generator gen(36);
  std::vector<Data> batches;
  for (int i = 0; i < 4; ++i) batches.push_back(make_data(4, gen));
  auto m = tiny_ladnn(13);
  SGD opt(m->parameters(), 0.05, 0.9);
  struct Restore {
    ~Restore() {
      cuda::profiler::set_enabled(false);
      cuda::profiler::reset();
    }
  } restore;
  cuda::profiler::reset();
  cuda::profiler::set_enabled(true);
  GraphedTrainStep gs(*m, opt, LossConfig{});
  for (const Data& d : batches) gs.step(to_cpu(d.images), to_cpu(d.covid), to_cpu(d.lesions), to_cpu(d.mask));
  ASSERT_EQ(gs.replays(), 3);  // the first step eager, then a capture and three replays
  EXPECT_FALSE(cuda::profiler::capture_timing()) << "switched off again after the capture";
  // conv2d_forward runs in every step: eagerly once, then in each of the 3 replays.
  const std::vector<cuda::profiler::OpStat> rows = cuda::profiler::stats();
  int64_t conv_calls = 0, eager_conv_calls = 0;
  for (const auto& r : rows)
    if (r.op == "conv2d_forward") conv_calls += r.calls;
  {
    auto m2 = tiny_ladnn(13);
    SGD opt2(m2->parameters(), 0.05, 0.9);
    cuda::profiler::reset();
    const Data& d = batches[0];
    Variable loss = lesion_attention_loss(m2->forward_heads(Variable(d.images)), d.covid, d.lesions, d.mask);
    opt2.zero_grad();
    loss.backward();
    opt2.step();
    for (const auto& r : cuda::profiler::stats())
      if (r.op == "conv2d_forward") eager_conv_calls += r.calls;
  }
  ASSERT_GT(eager_conv_calls, 0);
  EXPECT_EQ(conv_calls, 4 * eager_conv_calls) << "one eager step and three timed replays";
}

INSTANTIATE_TEST_SUITE_P(CudaImpls, CudaGraphTest, ::testing::Values(cuda::Impl::Library, cuda::Impl::Native),
                         [](const ::testing::TestParamInfo<cuda::Impl>& info) {
                           return std::string(info.param == cuda::Impl::Library ? "library" : "native");
                         });

TEST(CudaGraph, AdamMustTakeOneEagerStepBeforeACapture) {
  LADNN_REQUIRE_GPU();
  Variable w(to_gpu(Tensor::ones({4})), true);
  Adam opt({w}, 1e-2);
  cuda::Graph g;
  try {
    g.capture([&] {
      Variable l = sum(mul(w, w));
      opt.zero_grad();
      l.backward();
      opt.step();
    });
    FAIL() << "a capture allocated Adam's state";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("eager step"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(g.captured());
  // After load_state_dict the device's step count is stale until an eager step refills it.
  auto step = [&] {
    Variable l = sum(mul(w, w));
    opt.zero_grad();
    l.backward();
    opt.step();
  };
  step();
  opt.load_state_dict(opt.state_dict());
  EXPECT_THROW(g.capture(step), std::exception);
  step();
  g.capture(step);
  EXPECT_TRUE(g.captured());
  g.replay();
  opt.replayed_step();
  EXPECT_EQ(opt.state_dict().scalars.at("step"), 3.0);  // two eager steps and one replay
}

TEST(CudaGraph, HostCopiesFailTheCaptureClearlyAndTheStreamStaysUsable) {
  LADNN_REQUIRE_GPU();
  Tensor a = to_gpu(Tensor::ones({16}));
  cuda::Graph g;
  try {
    g.capture([&] { Tensor b = Tensor::ones({16}).to(kGpu); });
    FAIL() << "a host-to-device copy was captured";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("host-to-device copy"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("captured"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(g.captured());
  EXPECT_FALSE(cuda::capturing());
  try {
    g.capture([&] { (void)ops::sum(a).item(); });
    FAIL() << "a device-to-host read was captured";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("device-to-host copy"), std::string::npos) << e.what();
  }
  // The stream works as before.
  EXPECT_EQ(ops::sum(ops::mul_scalar(a, 2.0)).item(), 32.0);
  EXPECT_THROW(g.replay(), std::runtime_error);
}

// The autograd graph points at nodes, not data: an intermediate result no Variable refers to and no
// backward saved is freed at once (before, every op's output lived until backward).
TEST(CudaAutograd, TheGraphKeepsOnlyWhatBackwardSaved) {
  LADNN_REQUIRE_GPU();
  const int64_t n = 1 << 20;  // 4 MiB per tensor
  Generator gen(34);
  Variable x(to_gpu(randn({n}, gen)), true);
  const std::size_t base = cuda::allocator_stats().allocated_bytes;
  Variable l;
  {
    Variable h = mul_scalar(x, 2.0);  // its backward saves nothing
    Variable r = relu(h);             // saves its output r
    l = sum(r);
  }
  const std::size_t live = cuda::allocator_stats().allocated_bytes - base;
  EXPECT_GE(live, std::size_t(n) * 4) << "relu's saved output must stay";
  EXPECT_LT(live, std::size_t(n) * 4 * 2) << "mul_scalar's output is still alive: the graph holds data";
  l.backward();
  EXPECT_TRUE(x.has_grad());
}

TEST(CudaGraph, ItsMemoryIsNotHandedOutWhileItLivesAndIsAfter) {
  LADNN_REQUIRE_GPU();
  const std::size_t n = 123457 * 4;  // its own size class
  const Tensor a = to_gpu(Tensor::ones({123457}));
  void* inside = nullptr;
  {
    cuda::Graph g;
    g.capture([&] {
      Tensor t = ops::mul_scalar(a, 3.0);  // allocated in the graph's pool, freed at once
      inside = t.raw_data();
    });
    ASSERT_NE(inside, nullptr);
    Tensor outside = Tensor::empty({123457}, DType::Float32, kGpu);  // same size class
    EXPECT_NE(outside.raw_data(), inside) << "a block of a live graph was handed out";
    g.replay();
    cuda::synchronize();
  }
  // The graph is gone: its block is an ordinary cached block again.
  bool reused = false;
  std::vector<Tensor> keep;
  for (int i = 0; i < 4 && !reused; ++i) {
    keep.push_back(Tensor::empty({123457}, DType::Float32, kGpu));
    reused = keep.back().raw_data() == inside;
  }
  EXPECT_TRUE(reused) << "the released pool's block never came back (size " << n << ")";
}

// cuDNN's algorithm search cannot run inside a capture: a convolution shape first seen there fails the
// capture with a message naming the shape, instead of a cryptic capture error.
TEST(CudaGraph, AConvolutionFirstSeenInACaptureIsNamed) {
  LADNN_REQUIRE_GPU();
  ImplScope scope(cuda::Impl::Library, /*tf32=*/false);
  const Tensor x = to_gpu(Tensor::ones({1, 5, 11, 13})), w = to_gpu(Tensor::ones({3, 5, 3, 3}));
  cuda::Graph g;
  std::string what = "<no error>";
  try {
    g.capture([&] { ops::conv2d_forward(x, w, Tensor(), ops::Conv2dParams{}); });
  } catch (const std::exception& e) {
    what = e.what();
  }
  EXPECT_NE(what.find("conv2d_forward: x (1, 5, 11, 13) with weight (3, 5, 3, 3) was first seen inside a CUDA "
                      "graph capture"),
            std::string::npos)
      << what;
  EXPECT_FALSE(g.captured());
  ops::conv2d_forward(x, w, Tensor(), ops::Conv2dParams{});  // the stream is usable; eagerly it runs
  cuda::synchronize();
}

// time_replayed_ms (the timing LADNN_FUSED_CONV=auto chooses by): GPU time of a replayed capture of the
// work, after an eager warm-up; refused inside a capture; the stream is usable afterwards.
TEST(CudaGraph, TimeReplayedMsTimesACaptureOfTheWork) {
  LADNN_REQUIRE_GPU();
  Generator gen(43);
  const Tensor a = to_gpu(Tensor::normal({512, 512}, 0, 1, gen)), b = to_gpu(Tensor::normal({512, 512}, 0, 1, gen));
  int runs = 0;
  Tensor out;
  const double ms = cuda::time_replayed_ms([&] {
    ++runs;  // host side: once eagerly, once while captured; never during the replays
    out = ops::matmul(a, b);
  });
  EXPECT_GT(ms, 0.0);
  EXPECT_LT(ms, 1000.0);
  EXPECT_EQ(runs, 2);
  cuda::Graph g;
  std::string what = "<no error>";
  try {
    g.capture([&] { cuda::time_replayed_ms([&] { ops::matmul(a, b); }); });
  } catch (const std::exception& e) {
    what = e.what();
  }
  EXPECT_NE(what.find("time_replayed_ms: called inside a CUDA graph capture"), std::string::npos) << what;
  EXPECT_FALSE(g.captured());
  const Tensor again = ops::matmul(a, b);  // the stream is usable
  EXPECT_TRUE(gpu_equals("matmul after", again, to_cpu(ops::matmul(a, b))));
}

// The per-op profile of a replay (cuda/profiler.h capture timing): with it on, the ops captured become
// timed ranges inside the graph, and each collect after a replay adds one call per range; without it a
// capture times nothing. The graph computes the same either way.
TEST(CudaGraph, CaptureTimingProfilesEachReplayedOp) {
  LADNN_REQUIRE_GPU();
  Generator gen(41);
  const Tensor a = to_gpu(Tensor::normal({64, 96}, 0, 1, gen)), b = to_gpu(Tensor::normal({96, 32}, 0, 1, gen));
  Tensor out;
  auto body = [&] { out = ops::matmul(ops::matmul(a, b), b, false, true); };  // two timed ops
  body();  // eager first (cuBLAS handles, workspaces)
  const Tensor expected = to_cpu(out);
  struct Restore {
    ~Restore() {
      cuda::profiler::set_capture_timing(false);
      cuda::profiler::set_enabled(false);
      cuda::profiler::reset();
    }
  } restore;
  cuda::profiler::reset();
  cuda::profiler::set_enabled(true);
  {
    // A timed capture whose ranges nobody collected, as a profiled trainer or an earlier test leaves
    // behind: a later capture must not read them (on the H200 this test once read 117 such ranges).
    cuda::profiler::set_capture_timing(true);
    cuda::Graph earlier;
    earlier.capture(body);
    earlier.replay();
    cuda::profiler::set_capture_timing(false);
  }
  {
    cuda::Graph plain;  // capture timing off: nothing inside the graph is timed
    plain.capture(body);
    plain.replay();
    EXPECT_EQ(cuda::profiler::collect_captured(), 0u);
    EXPECT_TRUE(cuda::profiler::stats().empty());
  }
  cuda::profiler::set_capture_timing(true);
  cuda::Graph g;
  g.capture(body);
  for (int i = 0; i < 2; ++i) {
    g.replay();
    EXPECT_EQ(cuda::profiler::collect_captured(), 2u) << "the two GEMMs";
  }
  EXPECT_TRUE(gpu_matches("the timed graph's output", out, expected.to(DType::Float64), Tol{1e-4, 1e-4}));
  const std::vector<cuda::profiler::OpStat> rows = cuda::profiler::stats();
  ASSERT_EQ(rows.size(), 1u) << cuda::profiler::table();
  EXPECT_EQ(rows[0].op, "matmul");
  EXPECT_EQ(rows[0].calls, 4) << "two ranges, two replays";
  EXPECT_GT(rows[0].total_ms, 0.0);
  EXPECT_GT(rows[0].outermost_ms, 0.0);
}

// A planned graph's arena is never handed out while the graph or a block made in it lives; afterwards it
// is an ordinary cached block again.
TEST(CudaGraph, ThePlannedArenaIsNotHandedOutWhileItLivesAndIsAfter) {
  LADNN_REQUIRE_GPU();
  const Tensor a = to_gpu(Tensor::ones({1 << 20}));
  void* inside = nullptr;
  std::size_t arena = 0;
  Tensor kept;
  {
    cuda::Graph g;
    g.capture(
        [&] {
          Tensor t = ops::mul_scalar(a, 3.0);  // freed at once
          kept = ops::add_scalar(t, 1.0);      // kept after the capture
          inside = kept.raw_data();
        },
        /*plan_memory=*/true);
    ASSERT_TRUE(g.captured());
    EXPECT_EQ(g.plan_failure(), "");
    arena = g.arena_bytes();
    EXPECT_GE(arena, 2u * (4u << 20));  // both 4 MiB maps live at once while add_scalar runs
    EXPECT_TRUE(cuda::overlaps_planned_arena(inside, 4u << 20)) << "the kept output lies in the arena";
    // Ordinary blocks may sit right beside the arena (the arena is one block of a cached segment), never
    // in it. (The first version of this test bounded the arena by [inside - arena, inside + arena) and
    // failed on the H200 when an ordinary block was carved just past the arena's end.)
    for (int i = 0; i < 4; ++i) {
      Tensor outside = Tensor::empty({1 << 20}, DType::Float32, kGpu);
      EXPECT_FALSE(cuda::overlaps_planned_arena(outside.raw_data(), 4u << 20))
          << "block " << i << " handed out inside the arena";
    }
    g.replay();
    cuda::synchronize();
    EXPECT_TRUE(gpu_matches("replayed output", kept, Tensor::full({1 << 20}, 4.0, DType::Float64), Tol{0, 0}));
  }
  // The graph is gone but `kept` still lives in the arena: it keeps its values.
  cuda::synchronize();
  EXPECT_TRUE(gpu_matches("output after the graph", kept, Tensor::full({1 << 20}, 4.0, DType::Float64), Tol{0, 0}));
  const std::size_t before = cuda::allocator_stats().allocated_bytes;
  kept = Tensor();  // the arena's last block: the arena goes back to the cache
  EXPECT_GE(before - cuda::allocator_stats().allocated_bytes, arena);
}

// A function that allocates differently the second time cannot use the plan of the first: the capture
// falls back to an ordinary pool, says why, and the graph still replays correctly.
TEST(CudaGraph, APlanTheSecondRunBreaksFallsBackToAPlainCapture) {
  LADNN_REQUIRE_GPU();
  const Tensor a = to_gpu(Tensor::ones({4096}));
  int calls = 0;
  Tensor y;
  cuda::Graph g;
  g.capture(
      [&] {
        ++calls;
        // The second run makes a block of another size.
        Tensor t = ops::mul_scalar(calls == 2 ? a.narrow(0, 0, 8) : a, 2.0);
        y = ops::add_scalar(a, 5.0);
      },
      /*plan_memory=*/true);
  EXPECT_EQ(calls, 3);  // record, planned (broken), plain
  ASSERT_TRUE(g.captured());
  EXPECT_NE(g.plan_failure(), "");
  EXPECT_EQ(g.arena_bytes(), 0u);
  g.replay();
  cuda::synchronize();
  EXPECT_TRUE(gpu_matches("replayed output", y, Tensor::full({4096}, 6.0, DType::Float64), Tol{0, 0}));
}

}  // namespace
}  // namespace ladnn
