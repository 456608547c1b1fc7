// tests/memory_plan_test.cpp — static memory planning (cuda/memory_plan.h): offsets never overlap for
// blocks alive together, the arena reaches the live peak where an optimal placement is easy to see, and
// the recorder turns allocations and frees into lifetimes. No GPU: plans are numbers.
#include "cuda/memory_plan.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <random>
#include <vector>

namespace ladnn::cuda {
namespace {

constexpr int64_t kNever = std::numeric_limits<int64_t>::max();

TEST(MemoryPlan, DisjointLifetimesShareTheSameBytes) {
  // a chain: each block dies as the next is made (a layer-by-layer forward without storage)
  std::vector<PlanBlock> blocks;
  for (int64_t i = 0; i < 10; ++i) blocks.push_back({4096, 2 * i, 2 * i + 1});
  const MemoryPlan plan = plan_memory(blocks);
  EXPECT_TRUE(plan_is_valid(blocks, plan));
  EXPECT_EQ(plan.arena_bytes, 4096u);
  EXPECT_EQ(plan.live_peak_bytes, 4096u);
  for (std::size_t off : plan.offsets) EXPECT_EQ(off, 0u);
}

TEST(MemoryPlan, OverlappingLifetimesGetDisjointRanges) {
  const std::vector<PlanBlock> blocks{{1000, 0, kNever}, {3000, 1, 5}, {2000, 2, 4}, {512, 3, 6}};
  const MemoryPlan plan = plan_memory(blocks);
  EXPECT_TRUE(plan_is_valid(blocks, plan));
  // Sizes round up to 512: 1024 + 3072 + 2048 + 512 are all alive at event 3.
  EXPECT_EQ(plan.live_peak_bytes, 1024u + 3072u + 2048u + 512u);
  EXPECT_EQ(plan.arena_bytes, plan.live_peak_bytes);
  for (std::size_t off : plan.offsets) EXPECT_EQ(off % 512, 0u);
}

TEST(MemoryPlan, AFreedLargeBlockServesSmallerOnesInItsPlace) {
  // A 1 MiB block dies; two 512 KiB blocks made after it fit in its bytes next to a survivor.
  const std::size_t MiB = 1 << 20;
  const std::vector<PlanBlock> blocks{{MiB, 0, 2}, {MiB, 1, kNever}, {MiB / 2, 3, kNever}, {MiB / 2, 4, kNever}};
  const MemoryPlan plan = plan_memory(blocks);
  EXPECT_TRUE(plan_is_valid(blocks, plan));
  EXPECT_EQ(plan.arena_bytes, 2 * MiB);
}

TEST(MemoryPlan, BlocksMadeLaterFillTheGapsOfBlocksThatDied) {
  // Two long-lived blocks; two short ones die and two made later (one of each size) must land in their
  // bytes: the arena is the live peak, not more.
  const std::vector<PlanBlock> blocks{
      {2048, 0, 3},      // short: [0, 2048) at first
      {4096, 0, kNever}, // long
      {1024, 0, 3},      // short
      {4096, 0, kNever}, // long
      {1024, 4, kNever}, // made after the short ones died
      {2048, 5, kNever},
  };
  const MemoryPlan plan = plan_memory(blocks);
  EXPECT_TRUE(plan_is_valid(blocks, plan));
  EXPECT_EQ(plan.arena_bytes, 4096u + 4096u + 2048u + 1024u);
}

TEST(MemoryPlan, RandomTracesAreValidAndNearTheLivePeak) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    // A stack-like trace (as a forward then backward): allocations, frees mostly of recent blocks.
    PlanRecorder rec;
    std::vector<int> live;
    int next = 1;
    for (int step = 0; step < 400; ++step) {
      if (live.empty() || rng() % 3 != 0) {
        const std::size_t size = 512u << (rng() % 12);
        rec.allocated(reinterpret_cast<const void*>(static_cast<uintptr_t>(next) * 64), size);
        live.push_back(next++);
      } else {
        const std::size_t k = live.size() - 1 - rng() % std::min<std::size_t>(live.size(), 4);
        rec.freed(reinterpret_cast<const void*>(static_cast<uintptr_t>(live[k]) * 64));
        live.erase(live.begin() + static_cast<long>(k));
      }
    }
    const MemoryPlan plan = plan_memory(rec.blocks());
    ASSERT_TRUE(plan_is_valid(rec.blocks(), plan)) << "trial " << trial;
    EXPECT_GE(plan.arena_bytes, plan.live_peak_bytes);
    EXPECT_LE(double(plan.arena_bytes), 1.25 * double(plan.live_peak_bytes)) << "trial " << trial;
  }
}

TEST(MemoryPlan, ValidityCheckCatchesAnOverlap) {
  const std::vector<PlanBlock> blocks{{1024, 0, 5}, {1024, 1, 4}};
  MemoryPlan plan = plan_memory(blocks);
  ASSERT_TRUE(plan_is_valid(blocks, plan));
  plan.offsets[1] = plan.offsets[0] + 512;  // half over the first block while both live
  plan.arena_bytes = std::max(plan.arena_bytes, plan.offsets[1] + 1024);
  EXPECT_FALSE(plan_is_valid(blocks, plan));
}

TEST(MemoryPlan, RecorderGivesLifetimesAndIgnoresForeignFrees) {
  PlanRecorder rec;
  int a = 0, b = 0, foreign = 0;
  rec.freed(&foreign);  // allocated before recording: ignored, no event
  rec.allocated(&a, 100);
  rec.allocated(&b, 200);
  rec.freed(&a);
  rec.allocated(&a, 300);  // the same address again: a new block
  ASSERT_EQ(rec.blocks().size(), 3u);
  EXPECT_EQ(rec.blocks()[0].start, 0);
  EXPECT_EQ(rec.blocks()[0].end, 2);
  EXPECT_EQ(rec.blocks()[1].start, 1);
  EXPECT_EQ(rec.blocks()[1].end, kNever);
  EXPECT_EQ(rec.blocks()[2].start, 3);
  EXPECT_EQ(rec.blocks()[2].size, 300u);
}

// A recorded run, then the same run served from its planned arena: the same requests get the planned
// addresses; deviations (another size, another free point, fewer or more allocations) break the arena.
struct Recorded {
  std::vector<PlanBlock> blocks;
  MemoryPlan plan;
};
Recorded record_run() {
  PlanRecorder rec;
  int a = 0, b = 0, c = 0;
  rec.allocated(&a, 3000);
  rec.allocated(&b, 1000);
  rec.freed(&a);
  rec.allocated(&c, 2000);  // fits where a was
  rec.freed(&b);
  return {rec.blocks(), plan_memory(rec.blocks())};
}

TEST(PlannedArena, TheSameRunGetsThePlannedAddresses) {
  const Recorded r = record_run();
  std::vector<char> memory(r.plan.arena_bytes);
  PlannedArena arena(memory.data(), r.blocks, r.plan);
  void* a = arena.take(3000);
  void* b = arena.take(1000);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(a, memory.data() + r.plan.offsets[0]);
  EXPECT_TRUE(arena.put_back(a));
  void* c = arena.take(2000);
  EXPECT_EQ(c, memory.data() + r.plan.offsets[2]);
  EXPECT_TRUE(arena.put_back(b));
  int other = 0;
  EXPECT_FALSE(arena.put_back(&other));  // not the arena's
  arena.finish();
  EXPECT_FALSE(arena.broken()) << arena.why();
  EXPECT_EQ(arena.live_blocks(), 1u);  // c: the run's output, kept
  EXPECT_TRUE(arena.put_back(c));      // freed later, after the run: fine
  EXPECT_EQ(arena.live_blocks(), 0u);
  EXPECT_FALSE(arena.broken()) << arena.why();
}

TEST(PlannedArena, DeviationsBreakThePlan) {
  const Recorded r = record_run();
  std::vector<char> memory(r.plan.arena_bytes);
  {  // another size
    PlannedArena arena(memory.data(), r.blocks, r.plan);
    arena.take(3000);
    EXPECT_EQ(arena.take(1024), nullptr);
    EXPECT_TRUE(arena.broken());
    EXPECT_NE(arena.why().find("allocation #2 asks for 1024 bytes; the recorded run asked for 1000"), std::string::npos)
        << arena.why();
    EXPECT_EQ(arena.take(2000), nullptr);  // nothing more once broken
  }
  {  // a block freed later than recorded: the next block would overlap it
    PlannedArena arena(memory.data(), r.blocks, r.plan);
    void* a = arena.take(3000);
    arena.take(1000);
    arena.take(2000);  // recorded after a's free
    EXPECT_TRUE(arena.broken());
    EXPECT_TRUE(arena.put_back(a));
  }
  {  // fewer allocations
    PlannedArena arena(memory.data(), r.blocks, r.plan);
    void* a = arena.take(3000);
    void* b = arena.take(1000);
    arena.put_back(a);
    arena.put_back(b);
    arena.finish();
    EXPECT_TRUE(arena.broken());
  }
  {  // more allocations
    PlannedArena arena(memory.data(), r.blocks, r.plan);
    void* a = arena.take(3000);
    void* b = arena.take(1000);
    arena.put_back(a);
    arena.take(2000);
    arena.put_back(b);
    EXPECT_EQ(arena.take(512), nullptr);
    EXPECT_TRUE(arena.broken());
  }
}

TEST(MemoryPlan, RejectsAnAlignmentThatIsNotAPowerOfTwo) {
  EXPECT_THROW(plan_memory({{10, 0, 1}}, 3), std::invalid_argument);
}

}  // namespace
}  // namespace ladnn::cuda
