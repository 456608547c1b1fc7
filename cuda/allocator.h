// cuda/allocator.h — the caching device allocator: every byte of GPU memory ladnn uses comes from here.
//
// Why: cudaMalloc and cudaFree are slow (cudaFree synchronises the whole device), and a training step
// allocates and frees thousands of activations. So freed blocks are kept in a cache and handed out
// again; after the first step a steady training step makes no cudaMalloc/cudaFree at all (DESIGN.md),
// which is also what lets a step be captured as a CUDA graph later.
//
// Size classes (round_size): a request is rounded up so that similar requests share cached blocks:
//   n <= 1 MiB        -> a multiple of 512 B               (waste < 512 B)
//   1 MiB < n <= 32 MiB -> 4 steps per power of two: 2^k * {1, 1.25, 1.5, 1.75}   (waste < 25%)
//   n > 32 MiB        -> a multiple of 2 MiB                (waste < 6.25%)
// Reuse (cuda/block_cache.h has the details): a small block (class <= 1 MiB) is reused only for a request
// of exactly its class on the same stream. A large request takes the smallest cached large block of its
// stream that holds it, split so the rest stays cached; a freed block merges with free neighbours of its
// cudaMalloc segment. (The first version reused large blocks by exact class too: a DenseNet step, whose
// activations come in hundreds of sizes, then held several times the memory it used.)
//
// Stream-ordered frees: deallocate() returns a block to the cache at once, although kernels already
// queued on its stream may still read or write it. That is safe because the block is handed out again
// only for work on the *same* stream, which runs after those kernels. Memory used on another stream
// must not be freed while that stream still uses it (ladnn uses one stream, cuda/context.h).
//
// Out of memory: when cudaMalloc fails, the cache is released (cudaFree of every segment with nothing in
// use) and the allocation retried once; if it still fails, OutOfMemory is thrown with what was asked, what is in use
// and what was cached.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/memory_plan.h"

// No CUDA header here: this file is included by code built without the CUDA backend too.
struct CUstream_st;

namespace ladnn::cuda {

/// Thrown when the device (or the limit set with set_memory_limit) cannot hold a new block.
struct OutOfMemory : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Byte counts are of size classes (what the cache really holds), except `requested_bytes`.
struct AllocatorStats {
  std::size_t allocated_bytes = 0;       // in blocks handed out now
  std::size_t requested_bytes = 0;       // asked for by the live blocks (before rounding)
  std::size_t peak_allocated_bytes = 0;  // max of allocated_bytes since start / reset_peak_stats()
  std::size_t cached_bytes = 0;          // in free blocks kept for reuse (private pools' included)
  std::size_t pool_cached_bytes = 0;     // the part of cached_bytes held by private pools (CUDA graphs)
  std::size_t reserved_bytes = 0;        // allocated + cached: what cudaMalloc gave us
  std::size_t peak_reserved_bytes = 0;
  uint64_t allocations = 0;     // calls of allocate()
  uint64_t cache_hits = 0;      // allocations served from the cache
  uint64_t device_mallocs = 0;  // cudaMalloc calls (a steady training step adds none)
  uint64_t device_frees = 0;    // cudaFree calls (release_cached, out-of-memory retries)
  uint64_t oom_retries = 0;     // times the cache was released to retry a failed cudaMalloc
};

/// The size class a request of `nbytes` is rounded up to (see the table above); >= 512 for any n.
std::size_t round_size(std::size_t nbytes);

/// A block of at least `nbytes` for work on `stream` (default: the framework stream, cuda/context.h).
/// Never null (0 bytes gets the smallest class). Throws OutOfMemory, or Error without a usable GPU.
void* allocate(std::size_t nbytes);
void* allocate(std::size_t nbytes, CUstream_st* stream);
/// Returns a block to the cache (stream-ordered, see above). Null is ignored. Never throws.
void deallocate(void* ptr) noexcept;

AllocatorStats allocator_stats();
/// Peaks restart from the current values.
void reset_peak_stats();
/// Frees every cudaMalloc segment with nothing in use, after waiting for the device. Blocks in use stay,
/// and so do the free parts of a segment that is partly in use (they are still cached_bytes).
void release_cached();
/// Private pools for CUDA graphs (cuda/graph.h; ids from 1): between begin_pool(id) and end_pool()
/// every allocation comes from, and stays in, pool `id` — freed blocks return to that pool, never to
/// the common cache — until release_pool(id), called once nothing can replay the graph any more.
/// release_cached() leaves pools alone.
void begin_pool(uint64_t pool);
void end_pool();
void release_pool(uint64_t pool);

/// Memory planning for graphs (cuda/memory_plan.h; cuda::Graph::capture uses these). A pool can record
/// its allocation sequence (begin_pool_recording ... end_pool_recording returns it); a later pool can be
/// served from one arena planned for that sequence (begin_planned_pool ... end_planned_pool), which
/// holds about the step's live peak instead of what best fit left behind. end_planned_pool returns ""
/// when the run followed the recorded sequence, else why not; the run's graph must then be discarded (its
/// addresses may overlap), and the arena is freed with the pool (release_pool), once no block in it is in
/// use. Allocations after a deviation come from the ordinary pool.
void begin_pool_recording(uint64_t pool);
std::vector<PlanBlock> end_pool_recording();
void begin_planned_pool(uint64_t pool, std::vector<PlanBlock> blocks, MemoryPlan plan);
std::string end_planned_pool();
/// Whether [p, p + bytes) overlaps a live planned arena (one whose graph or blocks still live): an
/// ordinary allocation never should.
bool overlaps_planned_arena(const void* p, std::size_t bytes);

/// Caps reserved_bytes (0 = no cap, the default): an allocation that would exceed it releases the cache
/// and then throws OutOfMemory, as a full device would. For tests and for sharing a GPU.
void set_memory_limit(std::size_t bytes);
std::size_t memory_limit();

/// Debugging aid for tests: while on, every block handed out is first filled with 0xFF bytes — NaN in
/// every float32/float64 element, -1 in every int64 — so an output element a kernel forgot to write
/// shows up in the comparison. Costs one cudaMemsetAsync per allocation. Off by default; LADNN_ALLOC_NAN=1
/// in the environment turns it on from the start.
void set_fill_on_allocate(bool on);
bool fill_on_allocate();

/// "1.50 GiB (1610612736 bytes)" — the form the out-of-memory message uses.
std::string format_bytes(std::size_t bytes);

/// Device memory owned by one object, returned to the cache (stream-ordered) when it goes away.
/// For scratch space: cuDNN workspaces, partial sums, temporary index arrays.
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(std::size_t nbytes);  // on the framework stream; 0 bytes gives an empty Buffer
  ~Buffer() { deallocate(ptr_); }
  Buffer(Buffer&& o) noexcept : ptr_(o.ptr_), size_(o.size_) {
    o.ptr_ = nullptr;
    o.size_ = 0;
  }
  Buffer& operator=(Buffer&& o) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  std::size_t size() const { return size_; }  // bytes asked for

 private:
  void* ptr_ = nullptr;
  std::size_t size_ = 0;
};

/// Scratch space for one library call, e.g.
///   Buffer ws = workspace(bytes);  cudnnConvolutionForward(..., ws.data(), ws.size(), ...);
/// Freed when `ws` goes out of scope; since the free is stream-ordered, the queued call still owns it.
/// In a steady step the same sizes come back every iteration, so this is a cache hit, never a cudaMalloc.
inline Buffer workspace(std::size_t nbytes) {
  return Buffer(nbytes);
}

}  // namespace ladnn::cuda
