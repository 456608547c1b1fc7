// bench/allocator_bench.cpp — what the GPU caching allocator's policy costs in memory on a real training
// step, measured without a GPU: one LA-DNN training step runs on the CPU while every tensor storage it
// makes and frees is replayed through the allocator's book-keeping (cuda/block_cache.h, the very code
// cuda/allocator.cu runs) on made-up addresses. The second step is replayed inside a private pool, as a
// CUDA-graph capture is (cuda/graph.h): everything it allocates stays reserved for the replays.
//
// Counters (GiB): live_peak = the most bytes (size classes) alive at once during the step — what the
// eager step needs; reserved = what the allocator would hold from the device afterwards (segments with
// nothing in use released, as `ladnn bench` does for graph rows) — the graph's footprint, split into
// live_after (in use after the step), pool_free (the pool's free blocks, kept for the replays) and
// other_free (free rests of segments partly in use). The gap between reserved and live_peak is the
// policy's cost. Policies (cuda::BlockCache::Policy): 0 = every block reused only by its exact size class
// (the first version), 1 = large blocks best fit, split and merged (what cuda/allocator.cu runs),
// 2 = small blocks too, from 2 MiB segments (PyTorch's way); 3 = the capture's blocks recorded and
// placed in one planned arena (cuda/memory_plan.h), the rest as 1.
//
// Measured (2026-11-27, this repository's 2-core CPU machine): memory-efficient batch 64, live peak
// 4.19 GiB; policy 0 reserves 11.40 GiB, policy 1 5.10 (the H200 measured 14.65 and 5.77-5.81 GiB for
// the same step with its GPU-only scratch on top, and 4.24-4.31 GiB live). At batch 8 policy 2 cuts the
// segments from ~1,850 to ~160 but not the bytes; segments of at least 64 or 256 MiB for large requests,
// and address-ordered first fit instead of best fit (1.26x the live peak against 1.22x), were no better
// (all tried, removed). What is left (reserved 1.22x the live peak, nothing held outside the pool but
// live tensors) is the pool's own fragmentation; our guess, not measured, is that a cure needs segments
// that grow in place (cuMemMap-backed, as PyTorch's expandable segments).
// After the memory-efficient dense layer stopped keeping its bottleneck and that map's BN-ReLU output
// (DenseLayer::forward_recomputed, 2026-11-27, same machine): live peak 4.19 -> 1.90 GiB, policy 1
// reserves 5.10 -> 2.84 GiB (1.49x the live peak: the pool's fragmentation is a larger share now).
// Policy 3 plans the captured step's memory instead (cuda/memory_plan.h, what LADNN_GRAPH_PLAN=1 does on
// the GPU): memory-efficient batch 64 reserves 2.15 GiB (arena 1.87 GiB for the step's own 1.76 GiB live
// peak), against policy 1's 2.84; the plain step 9.39 GiB (arena 9.29 = its live peak) against 10.50.
// With training's dense blocks as one op over one buffer (DenseBlock::forward_training; no stored
// concatenations) and BatchNorm reading the channel prefixes in place: plain live peak 6.79 GiB,
// policy 1 reserves 7.86, policy 3 6.56; memory-efficient 1.92 / 2.41 / 1.95 (PyTorch eager on the
// H200: 9.69).
//
// Caveats: CPU ops make the same tensors as the GPU's, not the same scratch (cuDNN workspaces and our
// kernels' partial sums are GPU-only, im2col buffers CPU-only); and a step of DenseNet-169 at 224x224
// takes seconds (batch 8) to a minute (batch 64) here. Arguments: batch, memory-efficient (0/1), policy.
//   build/allocator_bench --benchmark_filter='densenet169/8/'
#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "cuda/allocator.h"
#include "cuda/block_cache.h"
#include "cuda/memory_plan.h"
#include "models/ladnn.h"
#include "optim/adam.h"
#include "tensor/random.h"

namespace {

using namespace ladnn;

/// The replay: real CPU pointers mapped to the fake device addresses the cache handed out.
struct Replay {
  std::unique_ptr<cuda::BlockCache> cache;
  std::unordered_map<const void*, void*> fake;  // CPU storage -> device address
  uintptr_t next_segment = 0x100000000;
  uint64_t pool = 0;
  std::size_t small_segment = 0;  // small requests get segments of this many bytes (0: their class)
  std::size_t live = 0, live_peak = 0;
  // Policy 3 (planned): the capture's allocations are recorded instead (cuda/memory_plan.h).
  std::unique_ptr<cuda::PlanRecorder> recorder;
  std::unordered_map<const void*, std::size_t> recorded_size;
};
Replay* g_replay = nullptr;

void observe(const void* ptr, std::size_t nbytes, bool allocated) {
  Replay& r = *g_replay;
  if (r.recorder) {  // planned capture: the step's own blocks go to the plan, earlier ones to the cache
    if (allocated) {
      r.recorder->allocated(ptr, nbytes);
      r.recorded_size[ptr] = nbytes;
      r.live += nbytes;
      r.live_peak = std::max(r.live, r.live_peak);
      return;
    }
    auto it = r.recorded_size.find(ptr);
    if (it != r.recorded_size.end()) {
      r.recorder->freed(ptr);
      r.live -= it->second;
      r.recorded_size.erase(it);
      return;
    }
  }
  if (allocated) {
    const std::size_t size = cuda::round_size(nbytes);
    void* p = r.cache->take(size, nbytes, nullptr, r.pool);
    if (!p) {
      p = reinterpret_cast<void*>(r.next_segment);
      const std::size_t segment =
          size <= cuda::BlockCache::kSmallLimit && r.small_segment ? r.small_segment : size;
      r.next_segment += (segment + 4095) / 4096 * 4096 + (std::size_t{1} << 30);  // far apart: never adjacent
      r.cache->add_segment(p, segment, size, nbytes, nullptr, r.pool);
    }
    r.fake[ptr] = p;
    r.live += size;
    r.live_peak = std::max(r.live_peak, r.live);
  } else {
    auto it = r.fake.find(ptr);
    if (it == r.fake.end()) return;  // made before the replay started
    r.live -= r.cache->put_back(it->second).size;
    r.fake.erase(it);
  }
}

void BM_TrainingStepReplay(benchmark::State& state) {
  const int64_t batch = state.range(0);
  const bool memory_efficient = state.range(1) != 0;
  const bool planned = state.range(2) == 3;
  const auto policy = planned ? cuda::BlockCache::Policy::SplitLarge : static_cast<cuda::BlockCache::Policy>(state.range(2));
  double plan_gib = 0, plan_lower_gib = 0;
  double live_peak_gib = 0, reserved_gib = 0, segments = 0, live_end = 0, pool_cached = 0, common_cached = 0;
  for (auto _ : state) {
    Generator gen(0);
    DenseNetConfig config = DenseNetConfig::densenet169();
    config.memory_efficient = memory_efficient;
    LaDnn model(config, gen);
    model.train();
    Adam opt(model.parameters(), 1e-4);
    const Tensor images = Tensor::normal({batch, 3, 224, 224}, 0.0, 1.0, gen);
    const Tensor covid = Tensor::zeros({batch, 1}), lesions = Tensor::zeros({batch, 5});
    const Tensor mask = Tensor::ones({batch, 1});
    auto step = [&] {
      Variable l = lesion_attention_loss(model.forward_heads(Variable(images)), covid, lesions, mask);
      opt.zero_grad();
      l.backward();
      opt.step();
    };
    Replay replay;
    replay.cache = std::make_unique<cuda::BlockCache>(policy);
    if (policy == cuda::BlockCache::Policy::SplitAll) replay.small_segment = std::size_t{2} << 20;
    g_replay = &replay;
    set_cpu_storage_observer(observe);
    step();  // eager: Adam's state and the gradients appear, outside any pool
    replay.cache->drop_free_segments();
    replay.live_peak = replay.live;
    replay.pool = 1;  // "capture"
    if (planned) replay.recorder = std::make_unique<cuda::PlanRecorder>();
    step();
    replay.pool = 0;
    replay.cache->drop_free_segments();
    if (planned) {
      const cuda::MemoryPlan plan = cuda::plan_memory(replay.recorder->blocks());
      plan_gib = double(plan.arena_bytes) / (1 << 30);
      plan_lower_gib = double(plan.live_peak_bytes) / (1 << 30);
      replay.recorder.reset();
    }
    set_cpu_storage_observer(nullptr);
    g_replay = nullptr;
    live_peak_gib = double(replay.live_peak) / (1 << 30);
    reserved_gib = double(replay.cache->reserved_bytes()) / (1 << 30) + plan_gib;
    segments = double(replay.cache->segments());
    live_end = double(replay.cache->allocated_bytes()) / (1 << 30);
    pool_cached = double(replay.cache->pool_cached_bytes()) / (1 << 30);
    common_cached = double(replay.cache->cached_bytes() - replay.cache->pool_cached_bytes()) / (1 << 30);
  }
  state.counters["live_peak_GiB"] = live_peak_gib;
  state.counters["reserved_GiB"] = reserved_gib;
  state.counters["reserved/live_peak"] = reserved_gib / live_peak_gib;
  state.counters["segments"] = segments;
  state.counters["live_after_GiB"] = live_end;       // in use after the step (pool's and others')
  state.counters["pool_free_GiB"] = pool_cached;     // the pool's free blocks
  state.counters["other_free_GiB"] = common_cached;  // free rests of segments still in use
  if (planned) {
    state.counters["arena_GiB"] = plan_gib;               // the planned pool (included in reserved)
    state.counters["arena_live_peak_GiB"] = plan_lower_gib;  // the step's own blocks at their peak
  }
  state.SetLabel(
      std::string("densenet169 b") + std::to_string(batch) + (memory_efficient ? " memory-efficient" : "") +
      (planned ? ", capture planned (one arena, greedy by size)"
       : policy == cuda::BlockCache::Policy::ExactClasses ? ", exact classes"
       : policy == cuda::BlockCache::Policy::SplitLarge   ? ", large blocks split"
                                                          : ", all blocks split (2 MiB small segments)"));
}

// densenet169/<batch>/<memory-efficient>/<policy: 0 exact classes, 1 split large (the allocator's), 2 split
// all, 3 the capture planned as one arena (cuda/memory_plan.h)>
BENCHMARK(BM_TrainingStepReplay)
    ->Name("densenet169")
    ->ArgsProduct({{8, 64}, {0, 1}, {0, 1, 2, 3}})
    ->Iterations(1)
    ->Unit(benchmark::kSecond);

}  // namespace
