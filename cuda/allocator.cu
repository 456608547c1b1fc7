// cuda/allocator.cu — the caching device allocator (cuda/allocator.h explains the policy).
//
// Book-keeping, all under one mutex:
//   blocks_  every block cudaMalloc gave us, by pointer: size class, bytes asked, stream, in use or not
//   free_    the free blocks, by (stream, size class): a LIFO stack each, so the most recently freed
//            block (likeliest still in L2) is handed out first
// A request takes a free block of exactly its size class on its stream, or cudaMallocs a new one.
// Nothing is ever returned to the driver except by release_cached() or an out-of-memory retry.
//
// Private pools (CUDA graphs, cuda/graph.h): while a pool is active (begin_pool), every allocation
// is served from and tagged with that pool, and a tagged block goes back to its pool's free lists
// whenever it is freed, during the capture or after it. A captured graph bakes in the addresses it
// used, so those blocks must never be handed to anyone else while the graph may replay; the pool's
// own allocations may reuse them (in stream order, which is the graph's order). release_pool() (the
// graph is gone) turns the pool's blocks into ordinary ones.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cuda/allocator.h"
#include "cuda/check.h"
#include "cuda/context.h"
#include "cuda/runtime.h"

namespace ladnn::cuda {
namespace {

struct Block {
  std::size_t size = 0;       // size class: what cudaMalloc gave
  std::size_t requested = 0;  // what the current owner asked for
  cudaStream_t stream = nullptr;
  bool in_use = false;
  uint64_t pool = 0;  // private pool (CUDA graph) the block belongs to, 0 for none
};

class CachingAllocator {
 public:
  CachingAllocator() {
    const char* env = std::getenv("LADNN_ALLOC_NAN");
    fill_ = env && std::strcmp(env, "1") == 0;
  }

  void* allocate(std::size_t nbytes, cudaStream_t stream) {
    const std::size_t size = round_size(nbytes);
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.allocations;
    void* p = nullptr;
    auto& lists = active_pool_ ? pool_free_[active_pool_] : free_;
    auto it = lists.find({stream, size});
    if (it != lists.end() && !it->second.empty()) {
      p = it->second.back();
      it->second.pop_back();
      stats_.cached_bytes -= size;
      if (active_pool_) stats_.pool_cached_bytes -= size;
      ++stats_.cache_hits;
    } else {
      p = device_malloc(size, nbytes);
      blocks_[p] = Block{size, 0, stream, false, active_pool_};
      stats_.reserved_bytes += size;
      stats_.peak_reserved_bytes = std::max(stats_.peak_reserved_bytes, stats_.reserved_bytes);
    }
    Block& b = blocks_.at(p);
    b.in_use = true;
    b.requested = nbytes;
    stats_.allocated_bytes += size;
    stats_.requested_bytes += nbytes;
    stats_.peak_allocated_bytes = std::max(stats_.peak_allocated_bytes, stats_.allocated_bytes);
    // Queued on the block's stream, so it lands after any earlier use and before the new owner's.
    if (fill_) CUDA_CHECK(cudaMemsetAsync(p, 0xFF, size, stream));
    return p;
  }

  void deallocate(void* p) noexcept {
    if (!p) return;
    try {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = blocks_.find(p);
      if (it == blocks_.end() || !it->second.in_use) {
        // A pointer we never gave out, or a double free: a bug in the caller. Destructors call us, so
        // report and carry on rather than throw.
        std::fprintf(stderr, "ladnn: cuda::deallocate(%p): %s\n", p,
                     it == blocks_.end() ? "not a block of the caching allocator" : "block freed twice");
        return;
      }
      Block& b = it->second;
      b.in_use = false;
      stats_.allocated_bytes -= b.size;
      stats_.requested_bytes -= b.requested;
      b.requested = 0;
      stats_.cached_bytes += b.size;
      if (b.pool != 0 && pool_free_.count(b.pool) == 0) b.pool = 0;  // its graph is gone
      (b.pool ? pool_free_[b.pool] : free_)[{b.stream, b.size}].push_back(p);
      if (b.pool) stats_.pool_cached_bytes += b.size;
    } catch (...) {
      // Only bad_alloc from growing a free list can land here; the block is then simply not reused.
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
    pool_free_[pool];  // the pool exists from now on, even before its first block
  }
  void end_pool() {
    std::lock_guard<std::mutex> lock(mu_);
    active_pool_ = 0;
  }
  void release_pool(uint64_t pool) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = pool_free_.find(pool);
    if (it == pool_free_.end()) return;
    for (auto& [key, ptrs] : it->second)
      for (void* q : ptrs) {
        blocks_.at(q).pool = 0;
        free_[key].push_back(q);
        stats_.pool_cached_bytes -= key.second;
      }
    pool_free_.erase(it);
    for (auto& [q, b] : blocks_)  // live blocks of the pool come back as ordinary ones when freed
      if (b.pool == pool) b.pool = 0;
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
  // cudaFree of every free block. Frees are stream-ordered (a cached block may still be read by a
  // queued kernel), so wait for the device first.
  void release_cached_locked() {
    if (stats_.cached_bytes == 0) return;
    CUDA_CHECK(cudaDeviceSynchronize());
    for (auto& entry : free_) {
      for (void* p : entry.second) {
        CUDA_CHECK(cudaFree(p));
        ++stats_.device_frees;
        stats_.cached_bytes -= entry.first.second;
        stats_.reserved_bytes -= entry.first.second;
        blocks_.erase(p);
      }
    }
    free_.clear();
  }

  // One cudaMalloc of `size` bytes; the memory limit counts as the device's capacity.
  cudaError_t try_malloc(void** p, std::size_t size) {
    if (limit_ != 0 && stats_.reserved_bytes + size > limit_) return cudaErrorMemoryAllocation;
    cudaError_t st = cudaMalloc(p, size);
    // A failed cudaMalloc leaves its error to be returned by the next cudaGetLastError, which would
    // make the next CUDA_CHECK_LAUNCH blame an innocent kernel: clear it here.
    if (st != cudaSuccess) cudaGetLastError();
    return st;
  }

  void* device_malloc(std::size_t size, std::size_t nbytes) {
    void* p = nullptr;
    cudaError_t st = try_malloc(&p, size);
    const std::size_t cached_before = stats_.cached_bytes;
    if (st == cudaErrorMemoryAllocation && cached_before > 0) {
      release_cached_locked();  // blocks of other size classes may make room
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
    msg += "; ladnn has " + format_bytes(stats_.allocated_bytes) + " in use and had " +
           format_bytes(cached_before) + " cached" + (cached_before > 0 ? " (released, then retried)" : "");
    std::size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess)
      msg += "; the device has " + format_bytes(free_b) + " free of " + format_bytes(total_b);
    else
      cudaGetLastError();
    if (limit_ != 0) msg += "; the limit set with cuda::set_memory_limit is " + format_bytes(limit_);
    throw OutOfMemory(msg);
  }

  std::mutex mu_;
  std::unordered_map<void*, Block> blocks_;
  using FreeLists = std::map<std::pair<cudaStream_t, std::size_t>, std::vector<void*>>;
  FreeLists free_;
  std::unordered_map<uint64_t, FreeLists> pool_free_;  // private pools' free blocks (never released)
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
