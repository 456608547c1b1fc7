// cuda/runtime_stub.cpp — cuda/runtime.h for a build without the CUDA backend (LADNN_CUDA=OFF or no
// nvcc): nothing is available, and every device call says so.
#ifndef LADNN_HAVE_CUDA
#include <cstring>
#include <stdexcept>

#include "cuda/runtime.h"

namespace ladnn::cuda {

static const char* kReason = "ladnn was built without the CUDA backend (LADNN_CUDA=OFF or no nvcc)";

bool available() { return false; }
std::string unavailable_reason() { return kReason; }
int device_count() { return 0; }
DeviceInfo device_info(int) { throw std::runtime_error(kReason); }
int sm_count() { throw std::runtime_error(kReason); }
int compute_capability() {
  throw std::runtime_error(kReason);
}
std::string runtime_version() { return ""; }
std::string cudnn_version() { return ""; }
std::string cublas_version() { return ""; }
void* device_alloc(std::size_t, int) { throw std::runtime_error(kReason); }
void device_free(void*, std::size_t, int) noexcept {}
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, std::size_t n) {
  if (dst_device.is_cpu() && src_device.is_cpu()) {
    std::memmove(dst, src, n);
    return;
  }
  throw std::runtime_error(kReason);
}

PinnedBuffer::PinnedBuffer(std::size_t) { throw std::runtime_error(kReason); }
PinnedBuffer::~PinnedBuffer() = default;
PinnedBuffer::PinnedBuffer(PinnedBuffer&& other) noexcept : ptr_(other.ptr_), size_(other.size_) {
  other.ptr_ = nullptr;
  other.size_ = 0;
}
PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& other) noexcept {
  ptr_ = other.ptr_;
  size_ = other.size_;
  other.ptr_ = nullptr;
  other.size_ = 0;
  return *this;
}
StreamEvent::StreamEvent() { throw std::runtime_error(kReason); }
StreamEvent::~StreamEvent() = default;
void StreamEvent::record() { throw std::runtime_error(kReason); }
void StreamEvent::wait() {}
void copy_async(void*, Device, const void*, Device, std::size_t) { throw std::runtime_error(kReason); }

}  // namespace ladnn::cuda
#endif
