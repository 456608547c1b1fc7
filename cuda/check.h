// cuda/check.h — throwing status checks for every CUDA, cuDNN and cuBLAS call (STYLE.md habit 4).
//
//   CUDA_CHECK(cudaMemcpyAsync(...));   // throws ladnn::cuda::Error("cudaMemcpyAsync(...) failed at
//                                       //   cuda/runtime.cu:42: invalid argument")
//   kernel<<<grid, block, 0, stream>>>(...); CUDA_CHECK_LAUNCH();
#pragma once

#include <stdexcept>
#include <string>

#include <cuda_runtime.h>

namespace ladnn::cuda {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline std::string failure(const char* expr, const char* file, int line, const char* what) {
  return std::string(expr) + " failed at " + file + ":" + std::to_string(line) + ": " + what;
}

}  // namespace ladnn::cuda

#define CUDA_CHECK(expr)                                                                         \
  do {                                                                                           \
    cudaError_t ladnn_status_ = (expr);                                                          \
    if (ladnn_status_ != cudaSuccess)                                                            \
      throw ::ladnn::cuda::Error(                                                                \
          ::ladnn::cuda::failure(#expr, __FILE__, __LINE__, cudaGetErrorString(ladnn_status_))); \
  } while (0)

/// After every <<<>>> launch: catches bad launch configurations at the launch site.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
