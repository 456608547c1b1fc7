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

}  // namespace ladnn::cuda
