// tests/cuda_allocator_test.cpp — the caching allocator (cuda/allocator.h): size classes, reuse without
// cudaMalloc, statistics, release, out-of-memory errors, stream awareness, RAII buffers, NaN fill.
// Size classes and byte formatting need no GPU and always run; the rest skips with the reason.
//
// The statistics are process-wide and other tests allocate too, so every check here compares counters
// before and after its own calls (deltas), never absolute values.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "autograd/functions.h"
#include "cuda/allocator.h"
#include "cuda/context.h"
#include "cuda/runtime.h"
#include "optim/adam.h"
#include "tensor/ops.h"
#include "tests/cuda_test_util.h"

#ifdef LADNN_HAVE_CUDA
#include <cuda_runtime.h>
#endif

using namespace ladnn;
using namespace ladnn::cuda_test;

namespace {

constexpr std::size_t KiB = 1024, MiB = 1024 * 1024;

/// Lifts the memory limit when a test ends, even when an assertion returns early.
struct NoLimitOnExit {
  ~NoLimitOnExit() { cuda::set_memory_limit(0); }
};

TEST(CudaAllocatorSizes, RoundUpToTheDocumentedClasses) {
  EXPECT_EQ(cuda::round_size(0), 512u);
  EXPECT_EQ(cuda::round_size(1), 512u);
  EXPECT_EQ(cuda::round_size(512), 512u);
  EXPECT_EQ(cuda::round_size(513), 1024u);
  EXPECT_EQ(cuda::round_size(MiB), MiB);                  // the last 512-byte class
  EXPECT_EQ(cuda::round_size(MiB + 1), MiB + 256 * KiB);  // 2^20 * 1.25
  EXPECT_EQ(cuda::round_size(3 * MiB - 5), 3 * MiB);      // 2^21 * 1.5
  EXPECT_EQ(cuda::round_size(4 * MiB), 4 * MiB);
  EXPECT_EQ(cuda::round_size(4 * MiB + 1), 5 * MiB);  // 2^22 * 1.25
  EXPECT_EQ(cuda::round_size(32 * MiB), 32 * MiB);
  EXPECT_EQ(cuda::round_size(32 * MiB + 1), 34 * MiB);    // beyond: 2 MiB steps
  EXPECT_EQ(cuda::round_size(102760448 + 3), 100 * MiB);  // (32, 256, 56, 56) float32 = 98 MiB + 3 B
}

TEST(CudaAllocatorSizes, ClassesAreMonotonicAndWasteIsBounded) {
  std::size_t previous = 0;
  for (std::size_t n = 0; n < 200 * MiB; n = n < 4096 ? n + 1 : n + n / 61 + 7) {
    const std::size_t r = cuda::round_size(n);
    ASSERT_GE(r, n) << n;
    ASSERT_GE(r, previous) << n;  // a larger request never gets a smaller class
    ASSERT_EQ(r % 512, 0u) << n;
    // Waste: < 512 B up to 1 MiB, < 25% up to 32 MiB, < 2 MiB beyond (the header's table).
    if (n <= MiB)
      ASSERT_LT(r - std::max<std::size_t>(n, 1), 512u) << n;
    else if (n <= 32 * MiB)
      ASSERT_LT(r - n, n / 4) << n;
    else
      ASSERT_LT(r - n, 2 * MiB) << n;
    previous = r;
  }
}

TEST(CudaAllocatorSizes, FormatBytesNamesUnitAndExactCount) {
  EXPECT_EQ(cuda::format_bytes(100), "100 bytes");
  EXPECT_EQ(cuda::format_bytes(1536), "1.50 KiB (1536 bytes)");
  EXPECT_EQ(cuda::format_bytes(3 * 1024 * MiB / 2), "1.50 GiB (1610612736 bytes)");
}

TEST(CudaAllocator, WithoutAGpuAllocationSaysWhy) {
  if (cuda::available()) GTEST_SKIP() << "a GPU is usable; this checks the message without one";
  try {
    cuda::allocate(16);
    ADD_FAILURE() << "allocate succeeded without a GPU";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find(cuda::unavailable_reason()), std::string::npos) << e.what();
  }
  EXPECT_THROW(cuda::Buffer(16), std::runtime_error);
  cuda::release_cached();  // nothing to release: no error
  cuda::Buffer empty;      // an empty buffer needs no device
  EXPECT_EQ(empty.data(), nullptr);
}

TEST(CudaAllocator, TheSecondIdenticalAllocationReusesTheCachedBlock) {
  LADNN_REQUIRE_GPU();
  const std::size_t n = 777777;  // an unusual size class: no other test's block can serve it
  void* p1 = cuda::allocate(n);
  const cuda::AllocatorStats s1 = cuda::allocator_stats();
  cuda::deallocate(p1);
  const cuda::AllocatorStats s2 = cuda::allocator_stats();
  EXPECT_EQ(s2.cached_bytes, s1.cached_bytes + cuda::round_size(n));
  EXPECT_EQ(s2.allocated_bytes, s1.allocated_bytes - cuda::round_size(n));
  ASSERT_EQ(cuda::round_size(n - 10), cuda::round_size(n));
  void* p2 = cuda::allocate(n - 10);  // same class
  const cuda::AllocatorStats s3 = cuda::allocator_stats();
  EXPECT_EQ(p2, p1) << "the cached block was not reused";
  EXPECT_EQ(s3.device_mallocs, s2.device_mallocs) << "a cudaMalloc happened for a cached size";
  EXPECT_EQ(s3.cache_hits, s2.cache_hits + 1);
  EXPECT_EQ(s3.allocations, s2.allocations + 1);
  EXPECT_EQ(s3.requested_bytes, s2.requested_bytes + (n - 10));
  // A request of another class does not take it.
  void* p3 = cuda::allocate(2 * n);
  EXPECT_NE(p3, p1);
  cuda::deallocate(p2);
  cuda::deallocate(p3);
  cuda::deallocate(nullptr);  // ignored
}

TEST(CudaAllocator, StatisticsTrackInUsePeakAndCached) {
  LADNN_REQUIRE_GPU();
  cuda::reset_peak_stats();
  const cuda::AllocatorStats s0 = cuda::allocator_stats();
  EXPECT_EQ(s0.peak_allocated_bytes, s0.allocated_bytes);
  EXPECT_EQ(s0.reserved_bytes, s0.allocated_bytes + s0.cached_bytes);
  {
    cuda::Buffer a(3 * MiB + 11), b(700 * KiB);
    const cuda::AllocatorStats s1 = cuda::allocator_stats();
    const std::size_t both = cuda::round_size(3 * MiB + 11) + cuda::round_size(700 * KiB);
    EXPECT_EQ(s1.allocated_bytes, s0.allocated_bytes + both);
    EXPECT_EQ(s1.requested_bytes, s0.requested_bytes + 3 * MiB + 11 + 700 * KiB);
    EXPECT_EQ(s1.peak_allocated_bytes, s1.allocated_bytes);
    EXPECT_EQ(s1.reserved_bytes, s1.allocated_bytes + s1.cached_bytes);
    EXPECT_GE(s1.peak_reserved_bytes, s1.reserved_bytes);
  }
  const cuda::AllocatorStats s2 = cuda::allocator_stats();
  EXPECT_EQ(s2.allocated_bytes, s0.allocated_bytes);
  EXPECT_EQ(s2.peak_allocated_bytes,
            s0.allocated_bytes + cuda::round_size(3 * MiB + 11) + cuda::round_size(700 * KiB));
  EXPECT_EQ(s2.reserved_bytes, s2.allocated_bytes + s2.cached_bytes);
  cuda::reset_peak_stats();
  EXPECT_EQ(cuda::allocator_stats().peak_allocated_bytes, s2.allocated_bytes);
}

TEST(CudaAllocator, ReleaseCachedFreesOnlyUnusedBlocks) {
  LADNN_REQUIRE_GPU();
  Tensor kept = Tensor::full({1000}, 2.5, DType::Float32, Device::cuda());
  { Tensor dropped = Tensor::ones({123457}, DType::Float32, Device::cuda()); }
  const cuda::AllocatorStats before = cuda::allocator_stats();
  ASSERT_GT(before.cached_bytes, 0u);
  cuda::release_cached();
  const cuda::AllocatorStats after = cuda::allocator_stats();
  EXPECT_EQ(after.cached_bytes, 0u);
  EXPECT_EQ(after.allocated_bytes, before.allocated_bytes);
  EXPECT_EQ(after.reserved_bytes, before.reserved_bytes - before.cached_bytes);
  EXPECT_GT(after.device_frees, before.device_frees);
  EXPECT_EQ(kept.to_vector(), std::vector<double>(1000, 2.5));  // blocks in use are untouched
}

TEST(CudaAllocator, OutOfMemorySaysWhatWasAskedInUseAndCached) {
  LADNN_REQUIRE_GPU();
  NoLimitOnExit no_limit_on_exit;
  cuda::release_cached();
  // Cap the reserve at what is held now plus 8 MiB; 64 MiB then cannot fit.
  const cuda::AllocatorStats s = cuda::allocator_stats();
  cuda::set_memory_limit(s.reserved_bytes + 8 * MiB);
  std::string message;
  try {
    cuda::Buffer big(64 * MiB);
  } catch (const cuda::OutOfMemory& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("CUDA out of memory: tried to allocate 64.00 MiB (67108864 bytes) on cuda:0"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("in use"), std::string::npos) << message;
  EXPECT_NE(message.find("cached"), std::string::npos) << message;
  EXPECT_NE(message.find("set_memory_limit"), std::string::npos) << message;
  // A failed allocation leaves no CUDA error behind for the next launch check to trip on.
  EXPECT_EQ(ops::add_scalar(Tensor::zeros({4}, DType::Float32, Device::cuda()), 1.0).to_vector(),
            std::vector<double>(4, 1.0));

  // With cached blocks of another class in the way, the allocator releases them and retries.
  { cuda::Buffer fill(6 * MiB); }  // cached now: 6 MiB of the 8 MiB headroom
  const cuda::AllocatorStats before = cuda::allocator_stats();
  ASSERT_GE(before.cached_bytes, 6 * MiB);
  {
    cuda::Buffer fits(7 * MiB);  // fits only once the 6 MiB block is released
    const cuda::AllocatorStats after = cuda::allocator_stats();
    EXPECT_EQ(after.oom_retries, before.oom_retries + 1);
    EXPECT_EQ(after.cached_bytes, 0u);
  }
  cuda::set_memory_limit(0);
  EXPECT_EQ(cuda::memory_limit(), 0u);
}

TEST(CudaAllocator, BuffersAreRaiiAndMovable) {
  LADNN_REQUIRE_GPU();
  const std::size_t base = cuda::allocator_stats().allocated_bytes;
  {
    cuda::Buffer a = cuda::workspace(5000);
    EXPECT_NE(a.data(), nullptr);
    EXPECT_EQ(a.size(), 5000u);
    EXPECT_EQ(cuda::allocator_stats().allocated_bytes, base + cuda::round_size(5000));
    cuda::Buffer b = std::move(a);
    EXPECT_EQ(a.data(), nullptr);
    EXPECT_EQ(b.size(), 5000u);
    cuda::Buffer c(100);
    c = std::move(b);  // c's own block goes back to the cache
    EXPECT_EQ(cuda::allocator_stats().allocated_bytes, base + cuda::round_size(5000));
    EXPECT_EQ(cuda::workspace(0).data(), nullptr);
  }
  EXPECT_EQ(cuda::allocator_stats().allocated_bytes, base);
}

TEST(CudaAllocator, FillOnAllocateMakesUnwrittenElementsNaN) {
  LADNN_REQUIRE_GPU();
  {
    FillNanScope nan_fill;
    EXPECT_TRUE(cuda::fill_on_allocate());
    Tensor f = Tensor::empty({37}, DType::Float32, Device::cuda());
    for (double v : f.to_vector()) EXPECT_TRUE(std::isnan(v));
    Tensor i = Tensor::empty({5}, DType::Int64, Device::cuda());
    EXPECT_EQ(i.to_vector(), std::vector<double>(5, -1.0));
  }
  EXPECT_FALSE(cuda::fill_on_allocate());
}

TEST(CudaAllocator, ASteadyTrainingStepMakesNoCudaMalloc) {
  LADNN_REQUIRE_GPU();
  Generator gen(3);
  Variable w(randn({64, 32}, gen).to(Device::cuda()), true);
  Variable b(randn({32}, gen).to(Device::cuda()), true);
  const Tensor x = randn({16, 64, 32}, gen).to(Device::cuda());
  const Tensor y = randu({16, 32}, gen, 0, 1).to(Device::cuda());
  Adam adam({w, b}, 1e-3);
  auto step = [&] {
    // A small graph of the native ops: broadcasting, unary, reduction, loss, backward, fused update.
    Variable h = ladnn::relu(ladnn::add(ladnn::mul(Variable(x), ladnn::sigmoid(w)), b));
    Variable logits = ladnn::sum(h, {1});
    Variable loss = ladnn::bce_with_logits(logits, y, Tensor(), ops::Reduction::Mean);
    loss.backward(Tensor::ones({}, DType::Float32, Device::cuda()));
    adam.step();
    adam.zero_grad();
  };
  step();  // the first step fills the cache (and creates Adam's state)
  step();
  cuda::synchronize();
  const cuda::AllocatorStats before = cuda::allocator_stats();
  for (int i = 0; i < 3; ++i) step();
  cuda::synchronize();
  const cuda::AllocatorStats after = cuda::allocator_stats();
  EXPECT_EQ(after.device_mallocs, before.device_mallocs) << "a steady step called cudaMalloc";
  EXPECT_EQ(after.device_frees, before.device_frees) << "a steady step called cudaFree";
  EXPECT_GT(after.allocations, before.allocations);
  EXPECT_EQ(after.cache_hits - before.cache_hits, after.allocations - before.allocations);
}

#ifdef LADNN_HAVE_CUDA
TEST(CudaAllocator, BlocksAreReusedOnlyOnTheirOwnStream) {
  LADNN_REQUIRE_GPU();
  cudaStream_t other = nullptr;
  ASSERT_EQ(cudaStreamCreate(&other), cudaSuccess);
  const std::size_t n = 654321;  // a class no other test uses
  void* p = cuda::allocate(n);   // framework stream
  cuda::deallocate(p);
  const uint64_t mallocs = cuda::allocator_stats().device_mallocs;
  void* q = cuda::allocate(n, other);
  EXPECT_NE(q, p) << "a block freed on one stream was handed to another";
  EXPECT_EQ(cuda::allocator_stats().device_mallocs, mallocs + 1);
  cuda::deallocate(q);
  void* r = cuda::allocate(n, other);
  EXPECT_EQ(r, q) << "a block freed on a stream was not reused on that stream";
  cuda::deallocate(r);
  void* s = cuda::allocate(n);
  EXPECT_EQ(s, p);
  cuda::deallocate(s);
  ASSERT_EQ(cudaStreamSynchronize(other), cudaSuccess);
  cuda::release_cached();  // before the stream goes: its blocks are keyed by it
  ASSERT_EQ(cudaStreamDestroy(other), cudaSuccess);
}
#endif

}  // namespace
