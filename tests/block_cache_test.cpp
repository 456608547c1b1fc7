// tests/block_cache_test.cpp — the caching allocator's book-keeping (cuda/block_cache.h) on made-up
// addresses: no GPU needed, the cache never touches the memory it tracks. The device side
// (cudaMalloc/cudaFree, limits, statistics) is tests/cuda_allocator_test.cpp.
#include "cuda/block_cache.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <random>
#include <utility>
#include <vector>

#include "cuda/allocator.h"

using ladnn::cuda::BlockCache;

namespace {

constexpr std::size_t KiB = 1024, MiB = 1024 * 1024;

/// Fake device: hands out disjoint address ranges, far apart, and remembers what it gave.
struct FakeDevice {
  uintptr_t next = 0x10000000;
  std::map<uintptr_t, std::size_t> segments;
  void* malloc(std::size_t size) {
    const uintptr_t p = next;
    next += size + 64 * MiB;  // a gap: blocks of different segments are never adjacent
    segments[p] = size;
    return reinterpret_cast<void*>(p);
  }
};

/// What the allocator does: the cache first, a new segment of exactly the class otherwise.
void* alloc(BlockCache& c, FakeDevice& d, std::size_t size, BlockCache::Stream s = nullptr,
            uint64_t pool = 0) {
  if (void* p = c.take(size, size, s, pool)) return p;
  return c.add_segment(d.malloc(size), size, size, size, s, pool);
}

char* at(void* p, std::size_t off) {
  return static_cast<char*>(p) + off;
}

void expect_consistent(const BlockCache& c) {
  std::size_t free_sum = 0;
  for (const auto& [p, n] : c.free_blocks()) free_sum += n;
  EXPECT_EQ(free_sum, c.cached_bytes());
  EXPECT_EQ(c.reserved_bytes(), c.allocated_bytes() + c.cached_bytes());
}

TEST(BlockCache, ALargeRequestSplitsTheSmallestFreeBlockThatHoldsIt) {
  BlockCache c;
  FakeDevice d;
  void* big = alloc(c, d, 100 * MiB);
  void* mid = alloc(c, d, 40 * MiB);
  c.put_back(big);
  c.put_back(mid);
  EXPECT_EQ(c.cached_bytes(), 140 * MiB);
  // 30 MiB fits both: best fit takes the 40 MiB block and leaves 10 MiB of it cached.
  void* a = c.take(30 * MiB, 30 * MiB, nullptr, 0);
  EXPECT_EQ(a, mid);
  EXPECT_EQ(c.allocated_bytes(), 30 * MiB);
  EXPECT_EQ(c.cached_bytes(), 110 * MiB);
  // 60 MiB fits only the 100 MiB block; 20 MiB then comes from its remainder (40 MiB), not from the
  // 10 MiB left of the other segment.
  void* b = c.take(60 * MiB, 60 * MiB, nullptr, 0);
  EXPECT_EQ(b, big);
  void* e = c.take(20 * MiB, 20 * MiB, nullptr, 0);
  EXPECT_EQ(e, at(big, 60 * MiB));
  EXPECT_EQ(c.take(50 * MiB, 50 * MiB, nullptr, 0), nullptr) << "no free block holds 50 MiB";
  EXPECT_EQ(c.segments(), 2u);
  EXPECT_EQ(d.segments.size(), 2u);
  expect_consistent(c);
}

TEST(BlockCache, FreedNeighboursMergeBackIntoOneBlock) {
  BlockCache c;
  FakeDevice d;
  void* seg = alloc(c, d, 90 * MiB);
  c.put_back(seg);
  void* x = c.take(30 * MiB, 1, nullptr, 0);
  void* y = c.take(30 * MiB, 1, nullptr, 0);
  void* z = c.take(30 * MiB, 1, nullptr, 0);
  EXPECT_EQ(x, seg);
  EXPECT_EQ(y, at(seg, 30 * MiB));
  EXPECT_EQ(z, at(seg, 60 * MiB));
  EXPECT_EQ(c.cached_bytes(), 0u);
  // Free the outer two: not adjacent, two free blocks. Then the middle: all three become one.
  c.put_back(x);
  c.put_back(z);
  EXPECT_EQ(c.free_blocks().size(), 2u);
  c.put_back(y);
  ASSERT_EQ(c.free_blocks().size(), 1u);
  EXPECT_EQ(c.free_blocks()[0], std::make_pair(seg, 90 * MiB));
  // Merged, the segment serves a request larger than any of its parts.
  EXPECT_EQ(c.take(80 * MiB, 1, nullptr, 0), seg);
  expect_consistent(c);
}

TEST(BlockCache, SmallBlocksAreReusedOnlyByExactClassAndNeverSplit) {
  BlockCache c;
  FakeDevice d;
  void* s = alloc(c, d, 512 * KiB);
  c.put_back(s);
  EXPECT_EQ(c.take(256 * KiB, 1, nullptr, 0), nullptr) << "a small block was split";
  EXPECT_EQ(c.take(2 * MiB, 1, nullptr, 0), nullptr);
  EXPECT_EQ(c.take(512 * KiB, 1, nullptr, 0), s);
  // And a small request never carves a large block.
  void* big = alloc(c, d, 8 * MiB);
  c.put_back(big);
  EXPECT_EQ(c.take(4 * KiB, 1, nullptr, 0), nullptr);
  expect_consistent(c);
}

TEST(BlockCache, WithoutSplittingLargeBlocksServeOnlyTheirExactClass) {
  BlockCache c(BlockCache::Policy::ExactClasses);
  FakeDevice d;
  void* big = alloc(c, d, 100 * MiB);
  c.put_back(big);
  EXPECT_EQ(c.take(30 * MiB, 1, nullptr, 0), nullptr) << "the first version's policy never splits";
  EXPECT_EQ(c.take(100 * MiB, 1, nullptr, 0), big);
  expect_consistent(c);
}

TEST(BlockCache, SplitAllCarvesSmallRequestsFromSmallSegmentsOnly) {
  BlockCache c(BlockCache::Policy::SplitAll);
  FakeDevice d;
  // A 2 MiB segment made for a 4 KiB request: the rest serves the next small requests.
  void* a = c.add_segment(d.malloc(2 * MiB), 2 * MiB, 4 * KiB, 1, nullptr, 0);
  void* b = c.take(8 * KiB, 1, nullptr, 0);
  EXPECT_EQ(b, at(a, 4 * KiB));
  EXPECT_EQ(c.cached_bytes(), 2 * MiB - 12 * KiB);
  // Large requests never carve a small segment, even one with room.
  EXPECT_EQ(c.take(1 * MiB + 512 * KiB, 1, nullptr, 0), nullptr);
  c.put_back(a);
  c.put_back(b);
  ASSERT_EQ(c.free_blocks().size(), 1u);
  EXPECT_EQ(c.free_blocks()[0], std::make_pair(a, 2 * MiB));
  expect_consistent(c);
}

TEST(BlockCache, TheMostRecentlyFreedBlockOfASizeComesFirst) {
  BlockCache c;
  FakeDevice d;
  void* a = alloc(c, d, 4 * KiB);
  void* b = alloc(c, d, 4 * KiB);
  c.put_back(a);
  c.put_back(b);
  EXPECT_EQ(c.take(4 * KiB, 1, nullptr, 0), b);
  EXPECT_EQ(c.take(4 * KiB, 1, nullptr, 0), a);
}

TEST(BlockCache, BlocksStayOnTheirStreamAndInTheirPool) {
  BlockCache c;
  FakeDevice d;
  int s1 = 0, s2 = 0;  // two stream identities
  void* p = alloc(c, d, 10 * MiB, &s1);
  c.put_back(p);
  EXPECT_EQ(c.take(10 * MiB, 1, &s2, 0), nullptr) << "a block crossed streams";
  EXPECT_EQ(c.take(10 * MiB, 1, &s1, 7), nullptr) << "a common block went into a graph's pool";
  // A pool's block: only the pool gets it, during the capture or after, until release_pool.
  void* q = alloc(c, d, 10 * MiB, &s1, 7);
  c.put_back(q);
  EXPECT_EQ(c.pool_cached_bytes(), 10 * MiB);
  void* r = c.take(10 * MiB, 1, &s1, 0);
  EXPECT_EQ(r, p) << "the common block, not the pool's";
  EXPECT_EQ(c.take(10 * MiB, 1, &s1, 0), nullptr) << "a pool's block was handed out";
  EXPECT_EQ(c.take(4 * MiB, 1, &s1, 7), q) << "the pool reuses its own block, split";
  EXPECT_EQ(c.pool_cached_bytes(), 6 * MiB);
  // Freed segments are not returned to the device while a pool holds them.
  c.put_back(r);
  std::vector<std::pair<void*, std::size_t>> dropped = c.drop_free_segments();
  ASSERT_EQ(dropped.size(), 1u);
  EXPECT_EQ(dropped[0].first, p);
  c.release_pool(7);
  EXPECT_EQ(c.pool_cached_bytes(), 0u);
  // After release the live part returns as an ordinary block, merging with its now-ordinary rest.
  c.put_back(q);
  ASSERT_EQ(c.free_blocks().size(), 1u);
  EXPECT_EQ(c.take(10 * MiB, 1, &s1, 0), q);
  expect_consistent(c);
}

TEST(BlockCache, OnlyWhollyFreeSegmentsAreDropped) {
  BlockCache c;
  FakeDevice d;
  void* seg = alloc(c, d, 64 * MiB);
  c.put_back(seg);
  void* part = c.take(16 * MiB, 1, nullptr, 0);  // the segment is now partly in use
  void* other = alloc(c, d, 512 * KiB);          // small: a segment of its own (a large one would be carved)
  c.put_back(other);
  std::vector<std::pair<void*, std::size_t>> dropped = c.drop_free_segments();
  ASSERT_EQ(dropped.size(), 1u);
  EXPECT_EQ(dropped[0], std::make_pair(other, 512 * KiB));
  EXPECT_EQ(c.cached_bytes(), 48 * MiB) << "the free rest of a segment in use stays cached";
  EXPECT_EQ(c.segments(), 1u);
  c.put_back(part);
  dropped = c.drop_free_segments();
  ASSERT_EQ(dropped.size(), 1u);
  EXPECT_EQ(dropped[0], std::make_pair(seg, 64 * MiB));
  EXPECT_EQ(c.reserved_bytes(), 0u);
  EXPECT_EQ(c.segments(), 0u);
}

TEST(BlockCache, PutBackTellsUnknownPointersFromDoubleFrees) {
  BlockCache c;
  FakeDevice d;
  void* p = alloc(c, d, 5 * MiB);
  int not_ours = 0;
  EXPECT_EQ(c.put_back(&not_ours).size, 0u);
  EXPECT_FALSE(c.put_back(&not_ours).double_free);
  BlockCache::Freed f = c.put_back(p);
  EXPECT_EQ(f.size, 5 * MiB);
  EXPECT_EQ(f.requested, 5 * MiB);
  f = c.put_back(p);
  EXPECT_EQ(f.size, 0u);
  EXPECT_TRUE(f.double_free);
  expect_consistent(c);
}

// Random traffic in size classes: no two live blocks overlap, every live block lies inside a segment the
// fake device gave, and the counters agree with the blocks after every step.
TEST(BlockCache, RandomTrafficNeverOverlapsAndKeepsCountersExact) {
  BlockCache c;
  FakeDevice d;
  std::mt19937 rng(5);
  std::map<uintptr_t, std::size_t> live;
  std::size_t live_bytes = 0;
  for (int step = 0; step < 4000; ++step) {
    const bool free_one = !live.empty() && (rng() % 100 < 45);
    if (free_one) {
      auto it = live.begin();
      std::advance(it, rng() % live.size());
      EXPECT_EQ(c.put_back(reinterpret_cast<void*>(it->first)).size, it->second);
      live_bytes -= it->second;
      live.erase(it);
    } else {
      const std::size_t n = (rng() % 4 == 0) ? 1 + rng() % MiB : 1 + rng() % (96 * MiB);
      const std::size_t size = ladnn::cuda::round_size(n);
      const uintptr_t p = reinterpret_cast<uintptr_t>(alloc(c, d, size, nullptr, rng() % 5 == 0 ? 3 : 0));
      // Inside a segment of the device.
      auto seg = d.segments.upper_bound(p);
      ASSERT_NE(seg, d.segments.begin());
      --seg;
      ASSERT_LE(p + size, seg->first + seg->second);
      // No overlap with its live neighbours.
      auto after = live.lower_bound(p);
      if (after != live.end()) ASSERT_LE(p + size, after->first);
      if (after != live.begin()) {
        auto before = std::prev(after);
        ASSERT_LE(before->first + before->second, p);
      }
      live[p] = size;
      live_bytes += size;
    }
    ASSERT_EQ(c.allocated_bytes(), live_bytes);
    ASSERT_EQ(c.reserved_bytes(), c.allocated_bytes() + c.cached_bytes());
  }
  std::size_t device_bytes = 0;
  for (const auto& [p, n] : d.segments) device_bytes += n;
  EXPECT_EQ(c.reserved_bytes(), device_bytes);
  for (const auto& [p, n] : live) c.put_back(reinterpret_cast<void*>(p));
  c.release_pool(3);
  std::size_t dropped = 0;
  for (const auto& [p, n] : c.drop_free_segments()) dropped += n;
  EXPECT_EQ(dropped, device_bytes) << "after everything is freed, every segment is whole again";
  EXPECT_EQ(c.segments(), 0u);
  EXPECT_EQ(c.reserved_bytes(), 0u);
}

}  // namespace
