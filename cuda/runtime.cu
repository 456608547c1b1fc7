// cuda/runtime.cu — device discovery, memory and copies (cuda/runtime.h) with the CUDA runtime.
//
// Memory here is plain cudaMalloc/cudaFree; the caching allocator of the CUDA issue replaces it.
#include <cublas_v2.h>
#include <cudnn.h>

#include "cuda/check.h"
#include "cuda/runtime.h"

namespace ladnn::cuda {

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
  CUDA_CHECK(cudaSetDevice(device));
  void* p = nullptr;
  CUDA_CHECK(cudaMalloc(&p, nbytes == 0 ? 1 : nbytes));
  return p;
}

void device_free(void* ptr, std::size_t, int) noexcept {
  if (ptr) cudaFree(ptr);  // a destructor never throws; a failed free is reported by the next call
}

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, std::size_t n) {
  cudaMemcpyKind kind = dst_device.is_cpu() ? (src_device.is_cpu() ? cudaMemcpyHostToHost
                                                                   : cudaMemcpyDeviceToHost)
                                            : (src_device.is_cpu() ? cudaMemcpyHostToDevice
                                                                   : cudaMemcpyDeviceToDevice);
  CUDA_CHECK(cudaMemcpy(dst, src, n, kind));
}

}  // namespace ladnn::cuda
