// cuda/memory_plan.h — static memory planning for a recorded sequence of allocations: give every block an
// offset in one arena so that blocks alive at the same time never overlap, with the arena as small as we
// can make it. Pure host code (no device), tested on the CPU (tests/memory_plan_test.cpp) and measured on a
// real DenseNet-169 training step's allocations (bench/allocator_bench.cpp).
//
// Why: a CUDA graph replays a fixed sequence of kernels on fixed addresses, so the whole step's allocation
// sequence is known before it runs again — the caching allocator's online best fit (cuda/block_cache.h)
// cannot know what comes next and leaves holes (a captured DenseNet-169 step held 1.5x its live peak).
// Knowing every lifetime in advance, placement is an offline problem (dynamic storage allocation, NP-hard in
// general); the greedy-by-size heuristic used by TFLite and others comes within a few percent of the
// lower bound (the live peak) on neural-network traces: place the largest block first, each block at the
// smallest gap between the already placed blocks whose lifetimes overlap its own.
//
// Recording: PlanRecorder numbers each allocation and free of a run (one event counter for both), which
// gives each block its lifetime [allocated, freed); a block never freed lives to the end.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <unordered_map>
#include <vector>

namespace ladnn::cuda {

struct PlanBlock {
  std::size_t size = 0;
  int64_t start = 0;  // event index of its allocation
  int64_t end = std::numeric_limits<int64_t>::max();  // event index of its free (exclusive); max: never
};

struct MemoryPlan {
  std::vector<std::size_t> offsets;  // one per block, in the recorded order; multiples of `alignment`
  std::size_t arena_bytes = 0;       // the highest offset + size
  std::size_t live_peak_bytes = 0;   // the most bytes (aligned) alive at one event: no plan needs less
};

/// Offsets for `blocks` (greedy by size, best gap), each size rounded up to `alignment` (a power of two).
MemoryPlan plan_memory(const std::vector<PlanBlock>& blocks, std::size_t alignment = 512);

/// True when no two blocks that are alive at the same event overlap in [offset, offset + size), and every
/// block lies inside the arena. O(n^2): for tests.
bool plan_is_valid(const std::vector<PlanBlock>& blocks, const MemoryPlan& plan, std::size_t alignment = 512);

/// Records a run's allocations and frees as PlanBlocks; `id` identifies a live block (its address).
class PlanRecorder {
 public:
  void allocated(const void* id, std::size_t size);
  /// Frees of blocks allocated before recording started are ignored (they are not the run's).
  void freed(const void* id);
  const std::vector<PlanBlock>& blocks() const { return blocks_; }

 private:
  std::vector<PlanBlock> blocks_;
  std::unordered_map<const void*, std::size_t> live_;  // id -> index into blocks_
  int64_t events_ = 0;
};

/// Serves a run that repeats a recorded one from a planned arena: the i-th allocation gets
/// base + offsets[i]. The run must make the same requests in the same order and free each block at the
/// same point; on the first deviation the arena is `broken()` (why() says where) and hands out nothing
/// more — the caller then discards what the run produced (a capture that ran nothing) and runs it again
/// without a plan. Host book-keeping only: cuda/allocator.cu owns the device memory around it.
class PlannedArena {
 public:
  PlannedArena(char* base, std::vector<PlanBlock> blocks, MemoryPlan plan);
  /// The address for the next allocation of `nbytes`; nullptr when broken (now or before).
  void* take(std::size_t nbytes);
  /// True when `p` is a block of this arena in use (it is then freed); false for any other pointer.
  /// A block freed at another point than recorded breaks the arena (still true: it was ours).
  bool put_back(void* p);
  /// Ends the run: fewer allocations than recorded also break the plan. Blocks still in use stay so and
  /// may be freed at any time afterwards.
  void finish();
  bool broken() const { return broken_; }
  const std::string& why() const { return why_; }
  char* base() const { return base_; }
  std::size_t bytes() const { return plan_.arena_bytes; }
  /// Blocks handed out and not yet freed (the run's outputs once it is finished).
  std::size_t live_blocks() const { return live_.size(); }

 private:
  void fail(const std::string& why);
  char* base_;
  std::vector<PlanBlock> blocks_;
  MemoryPlan plan_;
  std::size_t next_ = 0;
  int64_t events_ = 0;
  std::unordered_map<void*, std::size_t> live_;  // address -> block index
  bool broken_ = false, finished_ = false;
  std::string why_;
};

}  // namespace ladnn::cuda
