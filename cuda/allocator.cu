// cuda/allocator.cu — the caching device allocator (cuda/allocator.h explains the policy).
//
// The book-keeping of which ranges are free, split and merged is cuda/block_cache.h (host code, tested
// without a GPU); this file adds the device: cudaMalloc when the cache has nothing that fits, cudaFree
// of whole free segments on release or an out-of-memory retry, the memory limit, the statistics, the NaN
// fill, all under one mutex.
//
// Private pools (CUDA graphs, cuda/graph.h): while a pool is active (begin_pool), every allocation
// is served from and tagged with that pool, and a tagged block goes back to its pool's free blocks
// whenever it is freed, during the capture or after it. A captured graph bakes in the addresses it
// used, so those blocks must never be handed to anyone else while the graph may replay; the pool's
// own allocations may reuse them (in stream order, which is the graph's order). release_pool() (the
// graph is gone) turns the pool's blocks into ordinary ones.
//
// Planned pools (cuda/memory_plan.h): a recorded pool notes its allocation sequence; a planned pool
// takes one ordinary block (the arena) and serves its allocations at the planned offsets inside it
// (PlannedArena), so the cache never sees them. The arena goes back to the cache when its pool is
// released and none of its blocks is in use any more.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "cuda/allocator.h"
#include "cuda/block_cache.h"
#include "cuda/check.h"
#include "cuda/context.h"
#include "cuda/memory_plan.h"
#include "cuda/runtime.h"

namespace ladnn::cuda {
namespace {

class CachingAllocator {
 public:
  CachingAllocator() {
    const char* env = std::getenv("LADNN_ALLOC_NAN");
    fill_ = env && std::strcmp(env, "1") == 0;
  }

  void* allocate(std::size_t nbytes, cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mu_);
    if (planning_) {
      if (void* p = planning_->take(nbytes)) {
        ++stats_.allocations;
        if (fill_) CUDA_CHECK(cudaMemsetAsync(p, 0xFF, nbytes, stream));
        return p;
      }
      // The run left the recorded sequence: the pool serves the rest; the capture will be discarded.
    }
    void* p = allocate_locked(nbytes, stream);
    if (recorder_) recorder_->allocated(p, nbytes);
    return p;
  }

  void* allocate_locked(std::size_t nbytes, cudaStream_t stream) {
    const std::size_t size = round_size(nbytes);
    ++stats_.allocations;
    void* p = cache_.take(size, nbytes, stream, active_pool_);
    if (p) {
      ++stats_.cache_hits;
    } else {
      void* base = device_malloc(size, nbytes);
      p = cache_.add_segment(base, size, size, nbytes, stream, active_pool_);
    }
    stats_.requested_bytes += nbytes;
    sync_stats();
    // Queued on the block's stream, so it lands after any earlier use and before the new owner's.
    if (fill_) CUDA_CHECK(cudaMemsetAsync(p, 0xFF, size, stream));
    return p;
  }

  void deallocate(void* p) noexcept {
    if (!p) return;
    try {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto it = arenas_.begin(); it != arenas_.end(); ++it)
        if (it->arena->put_back(p)) {
          if (it->released && it->arena->live_blocks() == 0) free_arena(it);
          return;
        }
      if (recorder_) recorder_->freed(p);
      const BlockCache::Freed f = cache_.put_back(p);
      if (f.size == 0) {
        // A pointer we never gave out, or a double free: a bug in the caller. Destructors call us, so
        // report and carry on rather than throw.
        std::fprintf(stderr, "ladnn: cuda::deallocate(%p): %s\n", p,
                     f.double_free ? "block freed twice" : "not a block of the caching allocator");
        return;
      }
      stats_.requested_bytes -= f.requested;
      sync_stats();
    } catch (...) {
      // Only bad_alloc from the free set can land here; the block is then simply not reused.
    }
  }

  AllocatorStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

  void reset_peak() {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.peak_allocated_bytes = stats_.allocated_bytes;
    stats_.peak_reserved_bytes = stats_.reserved_bytes;
  }

  void release_cached() {
    std::lock_guard<std::mutex> lock(mu_);
    release_cached_locked();
  }

  void begin_pool(uint64_t pool) {
    std::lock_guard<std::mutex> lock(mu_);
    if (active_pool_ != 0) throw Error("cuda::begin_pool: a private pool is already active (nested capture)");
    active_pool_ = pool;
  }
  void end_pool() {
    std::lock_guard<std::mutex> lock(mu_);
    active_pool_ = 0;
  }
  void release_pool(uint64_t pool) {
    std::lock_guard<std::mutex> lock(mu_);
    cache_.release_pool(pool);  // a pool with no blocks (or released before) has nothing to retag
    for (auto it = arenas_.begin(); it != arenas_.end();) {
      if (it->pool != pool) {
        ++it;
        continue;
      }
      it->released = true;
      if (it->arena->live_blocks() == 0)
        it = free_arena(it);
      else
        ++it;  // blocks made during the capture are still in use: the arena goes when they do
    }
    sync_stats();
  }

  void begin_recording(uint64_t pool) {
    std::lock_guard<std::mutex> lock(mu_);
    if (active_pool_ != 0) throw Error("cuda::begin_pool_recording: a private pool is already active");
    active_pool_ = pool;
    recorder_ = std::make_unique<PlanRecorder>();
  }
  std::vector<PlanBlock> end_recording() {
    std::lock_guard<std::mutex> lock(mu_);
    active_pool_ = 0;
    std::vector<PlanBlock> blocks = recorder_ ? recorder_->blocks() : std::vector<PlanBlock>{};
    recorder_.reset();
    return blocks;
  }
  void begin_planned(uint64_t pool, std::vector<PlanBlock> blocks, MemoryPlan plan) {
    std::lock_guard<std::mutex> lock(mu_);
    if (active_pool_ != 0) throw Error("cuda::begin_planned_pool: a private pool is already active");
    // The arena: one ordinary block, outside every pool, owned here until the pool is released.
    char* base = static_cast<char*>(allocate_locked(std::max<std::size_t>(plan.arena_bytes, 1), stream()));
    arenas_.push_back({std::make_unique<PlannedArena>(base, std::move(blocks), std::move(plan)), pool, false});
    planning_ = arenas_.back().arena.get();
    active_pool_ = pool;  // a deviation falls back to the pool
  }
  std::string end_planned() {
    std::lock_guard<std::mutex> lock(mu_);
    active_pool_ = 0;
    if (!planning_) return "no planned pool was active";
    planning_->finish();
    const std::string why = planning_->broken() ? planning_->why() : "";
    planning_ = nullptr;
    return why;
  }

  bool overlaps_arena(const void* p, std::size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    const uintptr_t lo = reinterpret_cast<uintptr_t>(p), hi = lo + bytes;
    for (const Arena& a : arenas_) {
      const uintptr_t base = reinterpret_cast<uintptr_t>(a.arena->base());
      if (lo < base + a.arena->bytes() && base < hi) return true;
    }
    return false;
  }

  void set_limit(std::size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    limit_ = bytes;
  }
  std::size_t limit() {
    std::lock_guard<std::mutex> lock(mu_);
    return limit_;
  }
  void set_fill(bool on) {
    std::lock_guard<std::mutex> lock(mu_);
    fill_ = on;
  }
  bool fill() {
    std::lock_guard<std::mutex> lock(mu_);
    return fill_;
  }

 private:
  // The byte counts come from the cache; the peaks follow them.
  void sync_stats() {
    stats_.allocated_bytes = cache_.allocated_bytes();
    stats_.cached_bytes = cache_.cached_bytes();
    stats_.pool_cached_bytes = cache_.pool_cached_bytes();
    stats_.reserved_bytes = cache_.reserved_bytes();
    stats_.peak_allocated_bytes = std::max(stats_.peak_allocated_bytes, stats_.allocated_bytes);
    stats_.peak_reserved_bytes = std::max(stats_.peak_reserved_bytes, stats_.reserved_bytes);
  }

  // cudaFree of every segment with nothing in use (outside the graphs' pools). Frees are stream-ordered
  // (a cached block may still be read by a queued kernel), so wait for the device first.
  void release_cached_locked() {
    if (cache_.cached_bytes() == cache_.pool_cached_bytes()) return;
    CUDA_CHECK(cudaDeviceSynchronize());
    for (const auto& [base, size] : cache_.drop_free_segments()) {
      CUDA_CHECK(cudaFree(base));
      ++stats_.device_frees;
    }
    sync_stats();
  }

  // One cudaMalloc of `size` bytes; the memory limit counts as the device's capacity.
  cudaError_t try_malloc(void** p, std::size_t size) {
    if (limit_ != 0 && cache_.reserved_bytes() + size > limit_) return cudaErrorMemoryAllocation;
    cudaError_t st = cudaMalloc(p, size);
    // A failed cudaMalloc leaves its error to be returned by the next cudaGetLastError, which would
    // make the next CUDA_CHECK_LAUNCH blame an innocent kernel: clear it here.
    if (st != cudaSuccess) cudaGetLastError();
    return st;
  }

  void* device_malloc(std::size_t size, std::size_t nbytes) {
    void* p = nullptr;
    cudaError_t st = try_malloc(&p, size);
    const std::size_t cached_before = cache_.cached_bytes();
    if (st == cudaErrorMemoryAllocation && cached_before > cache_.pool_cached_bytes()) {
      release_cached_locked();  // free segments of other sizes may make room
      ++stats_.oom_retries;
      st = try_malloc(&p, size);
    }
    if (st == cudaSuccess) {
      ++stats_.device_mallocs;
      return p;
    }
    if (st != cudaErrorMemoryAllocation)
      throw Error(failure("cudaMalloc(&p, size)", __FILE__, __LINE__, cudaGetErrorString(st)));
    std::string msg = "CUDA out of memory: tried to allocate " + format_bytes(nbytes) + " on cuda:0";
    if (size != nbytes) msg += " (size class " + format_bytes(size) + ")";
    msg += "; ladnn has " + format_bytes(cache_.allocated_bytes()) + " in use and had " +
           format_bytes(cached_before) + " cached" +
           (cached_before > 0 ? " (free segments released, then retried)" : "");
    std::size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess)
      msg += "; the device has " + format_bytes(free_b) + " free of " + format_bytes(total_b);
    else
      cudaGetLastError();
    if (limit_ != 0) msg += "; the limit set with cuda::set_memory_limit is " + format_bytes(limit_);
    throw OutOfMemory(msg);
  }

  struct Arena {
    std::unique_ptr<PlannedArena> arena;
    uint64_t pool = 0;
    bool released = false;  // its pool (graph) is gone
  };
  std::vector<Arena>::iterator free_arena(std::vector<Arena>::iterator it) {
    const BlockCache::Freed f = cache_.put_back(it->arena->base());  // ordinary: back to the cache
    stats_.requested_bytes -= f.requested;
    sync_stats();
    return arenas_.erase(it);
  }

  std::mutex mu_;
  std::vector<Arena> arenas_;               // planned pools' arenas, live until released and empty
  PlannedArena* planning_ = nullptr;        // the arena serving a capture now
  std::unique_ptr<PlanRecorder> recorder_;  // recording a pool's allocations now
  BlockCache cache_;
  uint64_t active_pool_ = 0;
  AllocatorStats stats_;
  std::size_t limit_ = 0;
  bool fill_ = false;
};

// Never destroyed: tensors in static storage may free their blocks after main returns, and the CUDA
// runtime may already be shutting down then; the driver reclaims everything at process exit.
CachingAllocator& the_allocator() {
  static CachingAllocator* a = new CachingAllocator();
  return *a;
}

}  // namespace

void* allocate(std::size_t nbytes) {
  return allocate(nbytes, stream());
}

void* allocate(std::size_t nbytes, CUstream_st* s) {
  if (!available()) throw Error("cuda::allocate: " + unavailable_reason());
  return the_allocator().allocate(nbytes, s);
}

void deallocate(void* ptr) noexcept {
  the_allocator().deallocate(ptr);
}
AllocatorStats allocator_stats() {
  return the_allocator().stats();
}
void reset_peak_stats() {
  the_allocator().reset_peak();
}
void release_cached() {
  if (available()) the_allocator().release_cached();
}
void begin_pool(uint64_t pool) {
  the_allocator().begin_pool(pool);
}
void end_pool() {
  the_allocator().end_pool();
}
void release_pool(uint64_t pool) {
  the_allocator().release_pool(pool);
}
void begin_pool_recording(uint64_t pool) {
  the_allocator().begin_recording(pool);
}
std::vector<PlanBlock> end_pool_recording() {
  return the_allocator().end_recording();
}
void begin_planned_pool(uint64_t pool, std::vector<PlanBlock> blocks, MemoryPlan plan) {
  the_allocator().begin_planned(pool, std::move(blocks), std::move(plan));
}
std::string end_planned_pool() {
  return the_allocator().end_planned();
}
bool overlaps_planned_arena(const void* p, std::size_t bytes) {
  return the_allocator().overlaps_arena(p, bytes);
}
void set_memory_limit(std::size_t bytes) {
  the_allocator().set_limit(bytes);
}
std::size_t memory_limit() {
  return the_allocator().limit();
}
void set_fill_on_allocate(bool on) {
  the_allocator().set_fill(on);
}
bool fill_on_allocate() {
  return the_allocator().fill();
}

}  // namespace ladnn::cuda
