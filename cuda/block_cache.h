// cuda/block_cache.h — the book-keeping of the caching allocator (cuda/allocator.h), with no device in
// it: which address ranges are in use, which are free, which cudaMalloc segment each belongs to. The
// allocator asks it first and calls cudaMalloc only when it has nothing that fits; tests drive it with
// made-up addresses (it never touches the memory), so its policy is checked on any machine.
//
// Policy:
//   - Small blocks (size class <= kSmallLimit, 1 MiB) are served whole: a cached block is reused only for
//     a request of exactly its size class, and their segments are never split. Small requests are many
//     and short-lived; keeping them apart keeps them from fragmenting the large segments.
//   - Large blocks are served best fit: the smallest free large block of the same stream and pool that
//     holds the request, split so the remainder stays cached as a block of its own. When a block is
//     freed it merges with free neighbours of its segment, so the memory of a freed 200 MiB activation
//     can serve a 150 MiB one and then a 50 MiB one — with exact classes only (the first version) each
//     distinct size needed its own cudaMalloc, and a DenseNet training step, whose activations come in
//     hundreds of sizes, held far more than it used (worst inside a CUDA graph's pool, which keeps every
//     block: 14.65 GiB for a step whose live tensors peaked at 4.24 GiB, H200 run 4).
//   - Blocks are reused only on the stream they were freed on (stream-ordered frees, cuda/allocator.h)
//     and only within their private pool (CUDA graphs); a split never crosses either.
//   - Segments go back to the device only whole: drop_free_segments() returns those with nothing in use.
#pragma once

#include <cstddef>
#include <cstdint>
#include <set>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ladnn::cuda {

class BlockCache {
 public:
  using Stream = const void*;
  static constexpr std::size_t kSmallLimit = std::size_t{1} << 20;

  /// Which blocks are split to serve smaller requests (and merge back when freed).
  enum class Policy {
    ExactClasses,  // none: every block reused only by its exact class (the first version)
    SplitLarge,    // large blocks (the default, above)
    SplitAll,      // small blocks too, within small segments (the caller makes those, e.g. 2 MiB each)
  };
  explicit BlockCache(Policy policy = Policy::SplitLarge) : policy_(policy) {}
  BlockCache(const BlockCache&) = delete;
  BlockCache& operator=(const BlockCache&) = delete;
  ~BlockCache();

  /// A cached block of `size` bytes (a size class, cuda::round_size) for `stream` in `pool` (0 = none),
  /// now in use, with `requested` recorded; nullptr when nothing cached fits (the caller then makes a
  /// segment).
  void* take(std::size_t size, std::size_t requested, Stream stream, uint64_t pool);
  /// Records a new segment [base, base + segment_size) from the device, its first `size` bytes in use as
  /// one block (the rest, if any, cached). Returns base.
  void* add_segment(void* base, std::size_t segment_size, std::size_t size, std::size_t requested,
                    Stream stream, uint64_t pool);

  struct Freed {
    std::size_t size = 0;  // 0: `p` was not a block in use
    std::size_t requested = 0;
    bool double_free = false;  // `p` is a block, but free already (else: not ours at all)
  };
  /// Returns an in-use block to the cache; it merges with free neighbours of its segment.
  Freed put_back(void* p);

  /// Removes every segment with nothing in use and outside any pool; returns (base, size) of each, for
  /// the caller to hand back to the device.
  std::vector<std::pair<void*, std::size_t>> drop_free_segments();
  /// Every block of `pool` becomes an ordinary one (its graph is gone): free ones are cached for anyone,
  /// live ones will be when freed.
  void release_pool(uint64_t pool);

  std::size_t allocated_bytes() const { return allocated_; }  // in blocks in use
  std::size_t cached_bytes() const { return cached_; }        // in free blocks, pools' included
  std::size_t pool_cached_bytes() const { return pool_cached_; }
  std::size_t reserved_bytes() const { return allocated_ + cached_; }  // = the segments' sizes
  std::size_t segments() const { return segments_; }
  /// The free blocks (address, size), in address order: for tests and for debugging fragmentation.
  std::vector<std::pair<void*, std::size_t>> free_blocks() const;

 private:
  struct Block {
    char* ptr = nullptr;
    std::size_t size = 0;
    std::size_t requested = 0;
    Stream stream = nullptr;
    uint64_t pool = 0;
    bool small = false;  // made for a small class (<= kSmallLimit): served whole unless Policy::SplitAll
    bool in_use = false;
    uint64_t freed_seq = 0;  // when it was last cached (the most recent is reused first)
    Block* prev = nullptr;   // neighbours inside the same segment (nullptr at its ends)
    Block* next = nullptr;
  };
  // Free blocks ordered so that lower_bound finds the best fit: same kind, pool and stream, then the
  // smallest size, then the most recently freed.
  struct Order {
    bool operator()(const Block* a, const Block* b) const;
  };

  void insert_free(Block* b);
  void erase_free(Block* b);
  Block* split(Block* b, std::size_t size);  // b keeps `size` bytes; the rest becomes a new free block
  void absorb_next(Block* b);                // b grows over b->next (free, in no free set), which goes away

  std::unordered_map<const void*, Block*> blocks_;  // every block, by its address
  std::set<Block*, Order> free_;
  std::size_t allocated_ = 0, cached_ = 0, pool_cached_ = 0, segments_ = 0;
  uint64_t seq_ = 0;
  Policy policy_ = Policy::SplitLarge;
  bool splits(bool small) const {
    return small ? policy_ == Policy::SplitAll : policy_ != Policy::ExactClasses;
  }
};

}  // namespace ladnn::cuda
