// cuda/runtime.cu — device discovery, memory and copies (cuda/runtime.h) with the CUDA runtime.
//
// Storage's memory comes from the caching allocator (cuda/allocator.h); copies are queued on the
// framework stream (cuda/context.h), and only a copy *to the host* waits for it, since the host reads
// those bytes next. A host-to-device copy from ordinary (pageable) memory returns once the driver has
// staged the source, so the caller may free or change it right away.
#include <cublas_v2.h>
#include <cudnn.h>

#include <cstring>

#include "cuda/allocator.h"
#include "cuda/check.h"
#include "cuda/context.h"
#include "cuda/launch.h"
#include "cuda/runtime.h"

namespace ladnn::cuda {

namespace {
/// Never launched: its attributes say which architecture the kernels' code was compiled for.
__global__ void pdl_probe_kernel() {
  pdl_enter();
}
}  // namespace

bool kernels_wait_for_pdl() {
  static const bool wait = [] {
    cudaFuncAttributes attr{};
    CUDA_CHECK(cudaFuncGetAttributes(&attr, pdl_probe_kernel));
    return attr.ptxVersion >= 90;
  }();
  return wait;
}

static std::string probe_reason() {
  int n = 0;
  cudaError_t st = cudaGetDeviceCount(&n);
  if (st != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls start clean
    return std::string("no usable CUDA device: cudaGetDeviceCount says \"") + cudaGetErrorString(st) + "\"";
  }
  if (n == 0) return "no CUDA device found";
  return "";
}

std::string unavailable_reason() {
  static const std::string reason = probe_reason();
  return reason;
}

bool available() { return unavailable_reason().empty(); }

int device_count() {
  if (!available()) return 0;
  int n = 0;
  CUDA_CHECK(cudaGetDeviceCount(&n));
  return n;
}

DeviceInfo device_info(int index) {
  if (!available()) throw Error(unavailable_reason());
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, index));
  DeviceInfo info;
  info.index = index;
  info.name = prop.name;
  info.total_memory = prop.totalGlobalMem;
  info.major = prop.major;
  info.minor = prop.minor;
  info.multiprocessors = prop.multiProcessorCount;
  return info;
}

int compute_capability() {
  static const int cc = [] {
    int dev = 0, major = 0, minor = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
    return major * 10 + minor;
  }();
  return cc;
}

int sm_count() {
  static const int n = [] {
    int dev = 0, v = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
    return v > 0 ? v : 1;
  }();
  return n;
}

static std::string dotted(int v, int major_div, int minor_div, int minor_mod) {
  return std::to_string(v / major_div) + "." + std::to_string((v / minor_div) % minor_mod);
}

std::string runtime_version() {
  int v = 0;
  if (cudaRuntimeGetVersion(&v) != cudaSuccess) return "unknown";
  return dotted(v, 1000, 10, 100);
}

std::string cudnn_version() {
  // cudnnGetVersion needs no device: major*10000 + minor*100 + patch in cuDNN 9.
  size_t v = cudnnGetVersion();
  return std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." + std::to_string(v % 100);
}

std::string cublas_version() {
  int major = 0, minor = 0, patch = 0;
  if (cublasGetProperty(MAJOR_VERSION, &major) != CUBLAS_STATUS_SUCCESS) return "unknown";
  cublasGetProperty(MINOR_VERSION, &minor);
  cublasGetProperty(PATCH_LEVEL, &patch);
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
}

void* device_alloc(std::size_t nbytes, int device) {
  if (!available()) throw Error(unavailable_reason());
  // One stream and one allocator, both on cuda:0 (pick the GPU with CUDA_VISIBLE_DEVICES).
  if (device != 0)
    throw Error("ladnn runs on one GPU, cuda:0; memory on cuda:" + std::to_string(device) +
                " was asked (choose the GPU with CUDA_VISIBLE_DEVICES)");
  return allocate(nbytes);
}

void device_free(void* ptr, std::size_t, int) noexcept {
  deallocate(ptr);  // back to the cache, stream-ordered; never throws
}

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, std::size_t n) {
  if (n == 0) return;
  if (dst_device.is_cpu() && src_device.is_cpu()) {
    std::memmove(dst, src, n);
    return;
  }
  cudaMemcpyKind kind = dst_device.is_cpu() ? cudaMemcpyDeviceToHost
                                            : (src_device.is_cpu() ? cudaMemcpyHostToDevice
                                                                   : cudaMemcpyDeviceToDevice);
  cudaStream_t st = stream();
  if (kind != cudaMemcpyDeviceToDevice) {
    // Captured, a host copy would replay from (or into) host memory that is long gone or stale.
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    CUDA_CHECK(cudaStreamIsCapturing(st, &status));
    if (status != cudaStreamCaptureStatusNone)
      throw Error(std::string("a ") + (dst_device.is_cpu() ? "device-to-host" : "host-to-device") + " copy of " +
                  std::to_string(n) + " bytes while a CUDA graph is being captured (cuda/graph.h): read results "
                  "after replay(), and feed inputs by copying into the captured tensors before it");
  }
  CUDA_CHECK(cudaMemcpyAsync(dst, src, n, kind, st));
  if (dst_device.is_cpu()) CUDA_CHECK(cudaStreamSynchronize(st));  // the host reads dst next
}


// ---- pinned memory, events, queued copies --------------------------------------------------------

PinnedBuffer::PinnedBuffer(std::size_t nbytes) : size_(nbytes) {
  if (!available()) throw Error(unavailable_reason());
  if (nbytes > 0) CUDA_CHECK(cudaHostAlloc(&ptr_, nbytes, cudaHostAllocDefault));
}

PinnedBuffer::~PinnedBuffer() {
  // Whoever queued copies from or into the buffer waits for them first (a StreamEvent); the status of
  // cudaFreeHost has nowhere to go from a destructor.
  if (ptr_) cudaFreeHost(ptr_);
}

PinnedBuffer::PinnedBuffer(PinnedBuffer&& other) noexcept : ptr_(other.ptr_), size_(other.size_) {
  other.ptr_ = nullptr;
  other.size_ = 0;
}

PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& other) noexcept {
  if (this != &other) {
    if (ptr_) cudaFreeHost(ptr_);
    ptr_ = other.ptr_;
    size_ = other.size_;
    other.ptr_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

StreamEvent::StreamEvent() {
  if (!available()) throw Error(unavailable_reason());
  cudaEvent_t e = nullptr;
  CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  event_ = e;
}

StreamEvent::~StreamEvent() {
  if (event_) cudaEventDestroy(static_cast<cudaEvent_t>(event_));
}

void StreamEvent::record() {
  CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(event_), stream()));
  recorded_ = true;
}

void StreamEvent::wait() {
  if (recorded_) CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(event_)));
}

void copy_async(void* dst, Device dst_device, const void* src, Device src_device, std::size_t n) {
  if (n == 0) return;
  if (dst_device.is_cpu() == src_device.is_cpu())
    throw Error("copy_async copies between pinned host memory and the device, got " + src_device.str() + " -> " +
                dst_device.str());
  const void* host = dst_device.is_cpu() ? dst : src;
  cudaPointerAttributes attr{};
  CUDA_CHECK(cudaPointerGetAttributes(&attr, host));
  if (attr.type != cudaMemoryTypeHost)
    throw Error("copy_async: the host side of a " + std::to_string(n) +
                "-byte copy is not pinned memory (a PinnedBuffer's); pageable memory is copied with copy_bytes");
  cudaStream_t st = stream();
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  CUDA_CHECK(cudaStreamIsCapturing(st, &status));
  if (status != cudaStreamCaptureStatusNone)
    throw Error("copy_async of " + std::to_string(n) + " bytes while a CUDA graph is being captured (cuda/graph.h)");
  CUDA_CHECK(cudaMemcpyAsync(dst, src, n, dst_device.is_cpu() ? cudaMemcpyDeviceToHost : cudaMemcpyHostToDevice,
                             st));
}

}  // namespace ladnn::cuda
