// cuda/runtime.h — the bottom floor's view of the GPU: discovery, memory, copies.
//
// Compiled with nvcc when the CUDA backend is built (cuda/runtime.cu); without it, cuda/runtime_stub.cpp
// provides the same functions, which report that no device is usable. Either way the library loads and
// `available()` says whether a GPU can be used, and `unavailable_reason()` why not.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace ladnn::cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  std::size_t total_memory = 0;  // bytes
  int major = 0, minor = 0;      // compute capability
  int multiprocessors = 0;
};

/// True when the library was built with CUDA and at least one device answers.
bool available();
/// Why `available()` is false ("built without CUDA", "no CUDA driver: …"); empty when available.
std::string unavailable_reason();
int device_count();
DeviceInfo device_info(int index);
/// Streaming multiprocessors of the current device, read once — what the kernels' launchers size their
/// grids by (split-K, grid-stride loops).
int sm_count();
/// Compute capability of the current device as major * 10 + minor (90 for an H100), read once.
int compute_capability();
/// Versions of the CUDA runtime, cuDNN and cuBLAS this binary uses ("" without CUDA).
std::string runtime_version();
std::string cudnn_version();
std::string cublas_version();

/// Device memory for Storage, from the caching allocator (cuda/allocator.h): device_free returns the
/// block to the cache, stream-ordered. Throws on failure (OutOfMemory says how much); device_free never throws.
void* device_alloc(std::size_t nbytes, int device);
void device_free(void* ptr, std::size_t nbytes, int device) noexcept;
/// Copies nbytes between any two of host and device memory, queued on the framework stream. Returns
/// once the bytes are in place when dst is the host; otherwise the copy may still be in flight (the
/// source may be reused at once: a host source has been staged by then).
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, std::size_t nbytes);

/// Page-locked host memory (cudaHostAlloc): the GPU copies from and into it directly, so a copy can be
/// queued (copy_async) and the host go on. Move-only; freed by the destructor. Throws without a GPU.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(std::size_t nbytes);
  ~PinnedBuffer();
  PinnedBuffer(PinnedBuffer&& other) noexcept;
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  void* data() const { return ptr_; }
  std::size_t size() const { return size_; }

 private:
  void* ptr_ = nullptr;
  std::size_t size_ = 0;
};

/// A point in the framework stream's work: record() marks everything queued so far; wait() blocks the
/// host until that work is done (at once when never recorded). Throws without a GPU.
class StreamEvent {
 public:
  StreamEvent();
  ~StreamEvent();
  StreamEvent(const StreamEvent&) = delete;
  StreamEvent& operator=(const StreamEvent&) = delete;
  void record();
  void wait();

 private:
  void* event_ = nullptr;  // cudaEvent_t, opaque here
  bool recorded_ = false;
};

/// Queues a copy between pinned host memory (a PinnedBuffer's) and the device on the framework stream
/// and returns at once: the host must not touch the pinned bytes until a StreamEvent recorded after it
/// has been waited for. Throws when the host side is not pinned (a pageable copy cannot be queued; use
/// copy_bytes), or inside a graph capture.
void copy_async(void* dst, Device dst_device, const void* src, Device src_device, std::size_t nbytes);

}  // namespace ladnn::cuda
