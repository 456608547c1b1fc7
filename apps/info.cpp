// apps/info.cpp — `ladnn info`: what this binary was built with and what it can run on.
#include <omp.h>

#include <iostream>

#include "apps/apps.h"
#include "cuda/context.h"
#include "cuda/runtime.h"
#include "tensor/cpu/gemm.h"

namespace ladnn::apps {

static void print_info() {
  std::cout << "ladnn " << LADNN_VERSION << " (" << LADNN_BUILD_TYPE << " build)\n\n";
  std::cout << "devices\n";
  std::cout << "  cpu      " << omp_get_num_procs() << " cores, " << omp_get_max_threads()
            << " OpenMP threads\n";
  if (cuda::available()) {
    for (int i = 0; i < cuda::device_count(); ++i) {
      cuda::DeviceInfo d = cuda::device_info(i);
      std::cout << "  cuda:" << i << "   " << d.name << ", " << (d.total_memory >> 20) << " MiB, compute "
                << d.major << "." << d.minor << ", " << d.multiprocessors << " SMs\n";
    }
  } else {
    std::cout << "  cuda     unavailable: " << cuda::unavailable_reason() << "\n";
  }
  std::cout << "\nbuild\n";
#ifdef LADNN_HAVE_CUDA
  std::cout << "  CUDA backend   on (architectures " << LADNN_CUDA_ARCHS << ")\n";
#else
  std::cout << "  CUDA backend   off\n";
#endif
  std::cout << "  CPU GEMM       " << (cpu::have_blas() ? cpu::blas_name() : "built-in blocked GEMM") << "\n";
  std::cout << "\nlibraries\n";
#ifdef LADNN_HAVE_CUDA
  std::cout << "  CUDA runtime   " << cuda::runtime_version() << "\n";
  std::cout << "  cuDNN          " << cuda::cudnn_version() << "\n";
  std::cout << "  cuBLAS         " << cuda::cublas_version() << "\n";
#endif
  std::cout << "  compiler       g++ " << __VERSION__ << ", C++" << __cplusplus / 100 % 100 << "\n";
#ifdef LADNN_HAVE_CUDA
  std::cout << "\nGPU switches (environment, cuda/context.h)\n" << cuda::describe_switches();
#endif
}

static void add_info(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("info", "Print devices, build options and library versions");
  cmd->callback(print_info);
}

static const Registration kInfo{"info", 100, add_info};

}  // namespace ladnn::apps
