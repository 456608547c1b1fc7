// tests/cuda_context_test.cpp — cuda/context.h: the implementation switches and the TF32 switch (pure host
// logic, always run), and the stream and library handles (skip with the reason when no GPU is usable).
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cuda/context.h"
#include "cuda/graph.h"
#include "cuda/profiler.h"
#include "cuda/runtime.h"
#include "tests/cuda_test_util.h"
#include "tests/test_util.h"

#ifdef LADNN_HAVE_CUDA
#include <cublas_v2.h>
#include <cuda_runtime.h>
#endif

using namespace ladnn;

namespace {

std::string parse_error(cuda::Family f, const std::string& value, const char* where) {
  try {
    cuda::parse_impl(f, value, where);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(CudaContextSwitches, ParseAcceptsTheLibraryNameLibraryAndNative) {
  using cuda::Family;
  using cuda::Impl;
  EXPECT_EQ(cuda::parse_impl(Family::Conv, "cudnn", "LADNN_CONV"), Impl::Library);
  EXPECT_EQ(cuda::parse_impl(Family::Conv, "  cuDNN ", "LADNN_CONV"), Impl::Library);
  EXPECT_EQ(cuda::parse_impl(Family::BatchNorm, "library", "LADNN_BN"), Impl::Library);
  EXPECT_EQ(cuda::parse_impl(Family::Pool, "Native", "LADNN_POOL"), Impl::Native);
  EXPECT_EQ(cuda::parse_impl(Family::Gemm, "cublas", "LADNN_GEMM"), Impl::Library);
  EXPECT_EQ(cuda::parse_impl(Family::Gemm, "native", "LADNN_GEMM"), Impl::Native);
  // Each family knows only its own library's name.
  EXPECT_EQ(parse_error(Family::Conv, "cublas", "LADNN_CONV"),
            "LADNN_CONV=\"cublas\" is not an implementation of conv; use cudnn (the library, the default) or "
            "native (ladnn's own kernel)");
  EXPECT_EQ(
      parse_error(Family::Gemm, "cudnn", "--gemm"),
      "--gemm=\"cudnn\" is not an implementation of gemm; use cublas (the library, the default) or native "
      "(ladnn's own kernel)");
  EXPECT_NE(parse_error(Family::BatchNorm, "", "LADNN_BN").find("LADNN_BN=\"\""), std::string::npos);
  // BatchNorm's default is ours (measured faster, and only it fuses the ReLU): the message says so.
  EXPECT_EQ(parse_error(Family::BatchNorm, "cublas", "LADNN_BN"),
            "LADNN_BN=\"cublas\" is not an implementation of bn; use cudnn (the library) or native (ladnn's own "
            "kernel, the default)");
}

TEST(CudaContextSwitches, DeterministicModeSetsAndRestores) {
  const bool saved = cuda::deterministic();
  cuda::set_deterministic(true);
  EXPECT_TRUE(cuda::deterministic());
  cuda::set_deterministic(false);
  EXPECT_FALSE(cuda::deterministic());
  cuda::set_deterministic(saved);
}

TEST(CudaContextSwitches, DescribeSwitchesNamesEachValueAndVariable) {
  using cuda::Family;
  using cuda::Impl;
  const Impl saved_bn = cuda::impl(Family::BatchNorm);
  const bool saved_tf32 = cuda::tf32_enabled(), saved_det = cuda::deterministic();
  const cuda::Conv1x1 saved_1x1 = cuda::conv1x1();
  cuda::set_impl(Family::BatchNorm, Impl::Library);
  cuda::set_tf32(false);
  cuda::set_deterministic(true);
  cuda::set_conv1x1(cuda::Conv1x1::Cublas);
  const bool saved_plan = cuda::graph_memory_plan();
  cuda::set_graph_memory_plan(true);
  const cuda::FusedConv saved_fused = cuda::fused_conv();
  cuda::set_fused_conv(cuda::FusedConv::On);  // not the default (auto)
  const std::string d = cuda::describe_switches();
  cuda::set_fused_conv(saved_fused);
  cuda::set_graph_memory_plan(saved_plan);
  cuda::set_impl(Family::BatchNorm, saved_bn);
  cuda::set_tf32(saved_tf32);
  cuda::set_deterministic(saved_det);
  cuda::set_conv1x1(saved_1x1);
  EXPECT_NE(d.find("  conv1x1        cublas  (LADNN_CONV1X1; default auto: cuDNN or cuBLAS, timed per shape)\n"),
            std::string::npos)
      << d;
  EXPECT_NE(d.find("  bn             cudnn   (LADNN_BN; default native)\n"), std::string::npos) << d;
  EXPECT_NE(d.find("  tf32           off     (LADNN_TF32; default on)\n"), std::string::npos) << d;
  EXPECT_NE(d.find("  graph-plan     on      (LADNN_GRAPH_PLAN; default off: one planned arena per CUDA graph)\n"),
            std::string::npos)
      << d;
  EXPECT_NE(d.find("  deterministic  on      (LADNN_DETERMINISTIC; default off)\n"), std::string::npos) << d;
  EXPECT_NE(d.find("  fused-conv     on      (LADNN_FUSED_CONV; default auto: our conv kernels where they time faster (BatchNorms "
                   "fused in; TF32 backward))\n"),
            std::string::npos)
      << d;
  EXPECT_NE(d.find("  gemm           "), std::string::npos) << d;
  EXPECT_NE(d.find("(LADNN_GEMM; default cublas)"), std::string::npos) << d;
}

TEST(CudaContextSwitches, FusedConvModeNamesAndRoundTrip) {
  EXPECT_STREQ(cuda::fused_conv_name(cuda::FusedConv::Off), "off");
  EXPECT_STREQ(cuda::fused_conv_name(cuda::FusedConv::On), "on");
  EXPECT_STREQ(cuda::fused_conv_name(cuda::FusedConv::Auto), "auto");
  EXPECT_EQ(cuda::parse_fused_conv(" AUTO ", "LADNN_FUSED_CONV"), cuda::FusedConv::Auto);
  EXPECT_EQ(cuda::parse_fused_conv("on", "LADNN_FUSED_CONV"), cuda::FusedConv::On);
  try {
    cuda::parse_fused_conv("yes", "LADNN_FUSED_CONV");
    ADD_FAILURE() << "\"yes\" was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()),
              "LADNN_FUSED_CONV=\"yes\" is not a mode for the fused inference convolution; use off, on (wherever it "
              "applies) or auto (the default: time it against the unfused ops per shape)");
  }
  const cuda::FusedConv saved = cuda::fused_conv();
  cuda::set_fused_conv(cuda::FusedConv::On);
  EXPECT_EQ(cuda::fused_conv(), cuda::FusedConv::On);
  cuda::set_fused_conv(saved);
  EXPECT_EQ(cuda::fused_conv(), saved);
}

TEST(CudaContextSwitches, BnKernelNamesAndRoundTrip) {
  EXPECT_STREQ(cuda::bn_kernel_name(cuda::BnKernel::Auto), "auto");
  EXPECT_STREQ(cuda::bn_kernel_name(cuda::BnKernel::Channel), "channel");
  EXPECT_STREQ(cuda::bn_kernel_name(cuda::BnKernel::Split), "split");
  EXPECT_EQ(cuda::parse_bn_kernel(" Channel ", "LADNN_BN_KERNEL"), cuda::BnKernel::Channel);
  EXPECT_EQ(cuda::parse_bn_kernel("split", "LADNN_BN_KERNEL"), cuda::BnKernel::Split);
  EXPECT_STREQ(cuda::bn_kernel_name(cuda::BnKernel::Cluster), "cluster");
  EXPECT_EQ(cuda::parse_bn_kernel("CLUSTER", "LADNN_BN_KERNEL"), cuda::BnKernel::Cluster);
  try {
    cuda::parse_bn_kernel("fused", "LADNN_BN_KERNEL");
    ADD_FAILURE() << "\"fused\" was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(
        std::string(e.what()),
        "LADNN_BN_KERNEL=\"fused\" is not a layout for the native BatchNorm kernels; use auto (by shape, the "
        "default), channel (one block per channel), split (a channel over several blocks) or cluster (a "
        "channel's values in the registers of a block or a cluster of blocks)");
  }
  const cuda::BnKernel saved = cuda::bn_kernel();
  cuda::set_bn_kernel(cuda::BnKernel::Split);
  EXPECT_EQ(cuda::bn_kernel(), cuda::BnKernel::Split);
  EXPECT_NE(cuda::describe_switches().find(
                "  bn-kernel      split   (LADNN_BN_KERNEL; default auto: native BatchNorm as one kernel per channel "
                "where it fits)\n"),
            std::string::npos)
      << cuda::describe_switches();
  cuda::set_bn_kernel(saved);
  EXPECT_EQ(cuda::bn_kernel(), saved);
}

TEST(CudaContextSwitches, ProgrammaticLaunchRoundTripAndDescription) {
  const bool saved = cuda::programmatic_launch();
  cuda::set_programmatic_launch(true);
  EXPECT_TRUE(cuda::programmatic_launch());
  EXPECT_NE(
      cuda::describe_switches().find(
          "  pdl            on      (LADNN_PDL; default off: programmatic dependent launch of our kernels "
          "(sm_90+))\n"),
      std::string::npos)
      << cuda::describe_switches();
  cuda::set_programmatic_launch(false);
  EXPECT_FALSE(cuda::programmatic_launch());
  cuda::set_programmatic_launch(saved);
  EXPECT_EQ(cuda::programmatic_launch(), saved);
}

bool same_switches(const cuda::SwitchSnapshot& a, const cuda::SwitchSnapshot& b) {
  for (int i = 0; i < 4; ++i)
    if (a.impl[i] != b.impl[i]) return false;
  return a.tf32 == b.tf32 && a.deterministic == b.deterministic && a.conv1x1 == b.conv1x1 &&
         a.graph_plan == b.graph_plan && a.fused_conv == b.fused_conv && a.bn_kernel == b.bn_kernel &&
         a.pdl == b.pdl;
}

// `ladnn bench --variants`' plumbing: a switch set by its variable's name and value as the environment
// would, every switch saved and put back at once, and clear errors for an unknown name or a bad value.
TEST(CudaContextSwitches, SetByNameAndRestoreEverySwitch) {
  const cuda::SwitchSnapshot before = cuda::save_switches();
  cuda::set_switch("LADNN_PDL", "on");
  cuda::set_switch("LADNN_BN_KERNEL", " Cluster ");
  cuda::set_switch("LADNN_BN", "cudnn");
  cuda::set_switch("LADNN_GEMM", "native");
  cuda::set_switch("LADNN_FUSED_CONV", "off");
  cuda::set_switch("LADNN_CONV1X1", "cublas");
  cuda::set_switch("LADNN_TF32", "0");
  cuda::set_switch("LADNN_DETERMINISTIC", "yes");
  cuda::set_switch("LADNN_GRAPH_PLAN", "1");
  EXPECT_TRUE(cuda::programmatic_launch());
  EXPECT_EQ(cuda::bn_kernel(), cuda::BnKernel::Cluster);
  EXPECT_EQ(cuda::impl(cuda::Family::BatchNorm), cuda::Impl::Library);
  EXPECT_EQ(cuda::impl(cuda::Family::Gemm), cuda::Impl::Native);
  EXPECT_EQ(cuda::fused_conv(), cuda::FusedConv::Off);
  EXPECT_EQ(cuda::conv1x1(), cuda::Conv1x1::Cublas);
  EXPECT_FALSE(cuda::tf32_enabled());
  EXPECT_TRUE(cuda::deterministic());
  EXPECT_TRUE(cuda::graph_memory_plan());
  const cuda::SwitchSnapshot changed = cuda::save_switches();
  EXPECT_FALSE(same_switches(changed, before));
  cuda::restore_switches(before);
  EXPECT_TRUE(same_switches(cuda::save_switches(), before));
  EXPECT_EQ(cuda::programmatic_launch(), before.pdl == 1);
  EXPECT_EQ(static_cast<int>(cuda::bn_kernel()), before.bn_kernel);
  EXPECT_EQ(static_cast<int>(cuda::impl(cuda::Family::BatchNorm)), before.impl[1]);
  EXPECT_EQ(cuda::tf32_enabled(), before.tf32 == 1);
  cuda::restore_switches(changed);
  EXPECT_EQ(cuda::bn_kernel(), cuda::BnKernel::Cluster);
  cuda::restore_switches(before);

  try {
    cuda::set_switch("LADNN_PDLL", "1");
    ADD_FAILURE() << "an unknown switch was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("\"LADNN_PDLL\" is not a switch; use LADNN_CONV,"),
              std::string::npos)
        << e.what();
  }
  try {
    cuda::set_switch("LADNN_PDL", "maybe");
    ADD_FAILURE() << "a bad value was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()),
              "LADNN_PDL=\"maybe\" is not a switch; use 1 or 0 (on/off, true/false, yes/no)");
  }
  try {
    cuda::set_switch("LADNN_BN_KERNEL", "fast");
    ADD_FAILURE() << "a bad mode was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()).rfind("LADNN_BN_KERNEL=\"fast\" is not a layout", 0), 0u) << e.what();
  }
  EXPECT_TRUE(same_switches(cuda::save_switches(), before)) << "a failed set_switch changed a switch";
}

// `ladnn bench --variants`' sets: split and labelled as written, empty parts skipped, each checked without
// changing a switch; a malformed item, an unknown name or a bad value named, with the option's prefix.
TEST(CudaContextSwitches, SwitchSetsParseAndCheckEverySet) {
  const cuda::SwitchSnapshot before = cuda::save_switches();
  const std::vector<cuda::SwitchSet> sets =
      cuda::parse_switch_sets("LADNN_PDL=1;;LADNN_BN_KERNEL=cluster,LADNN_PDL=0;", "--variants");
  ASSERT_EQ(sets.size(), 2u);
  EXPECT_EQ(sets[0].label, "LADNN_PDL=1");
  EXPECT_EQ(sets[1].label, "LADNN_BN_KERNEL=cluster,LADNN_PDL=0");
  ASSERT_EQ(sets[1].switches.size(), 2u);
  EXPECT_EQ(sets[1].switches[0], (std::pair<std::string, std::string>{"LADNN_BN_KERNEL", "cluster"}));
  EXPECT_TRUE(same_switches(cuda::save_switches(), before)) << "parsing changed a switch";
  EXPECT_TRUE(cuda::parse_switch_sets("", "--variants").empty());
  cuda::apply_switch_set(sets[1]);
  EXPECT_EQ(cuda::bn_kernel(), cuda::BnKernel::Cluster);
  EXPECT_FALSE(cuda::programmatic_launch());
  cuda::restore_switches(before);
  EXPECT_THROW_WITH(cuda::parse_switch_sets("LADNN_PDL=1;PDL", "--variants"),
                    "--variants: \"PDL\" is not NAME=VALUE");
  EXPECT_THROW_WITH(cuda::parse_switch_sets("=1", "--variants"), "\"=1\" is not NAME=VALUE");
  EXPECT_THROW_WITH(cuda::parse_switch_sets("LADNN_BN_KERNEL=cluster,LADNN_PDL=2", "--variants"),
                    "--variants: LADNN_PDL=\"2\" is not a switch");
  EXPECT_THROW_WITH(cuda::parse_switch_sets("LADNN_NOPE=1", "--variants"), "--variants: \"LADNN_NOPE\"");
  EXPECT_TRUE(same_switches(cuda::save_switches(), before)) << "a failed set left a switch changed";
}

TEST(CudaContextSwitches, Conv1x1ModeNamesAndRoundTrip) {
  EXPECT_STREQ(cuda::conv1x1_name(cuda::Conv1x1::Auto), "auto");
  EXPECT_STREQ(cuda::conv1x1_name(cuda::Conv1x1::Cudnn), "cudnn");
  EXPECT_STREQ(cuda::conv1x1_name(cuda::Conv1x1::Cublas), "cublas");
  EXPECT_EQ(cuda::parse_conv1x1(" cuBLAS ", "LADNN_CONV1X1"), cuda::Conv1x1::Cublas);
  EXPECT_EQ(cuda::parse_conv1x1("auto", "LADNN_CONV1X1"), cuda::Conv1x1::Auto);
  try {
    cuda::parse_conv1x1("gemm", "LADNN_CONV1X1");
    ADD_FAILURE() << "\"gemm\" was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()),
              "LADNN_CONV1X1=\"gemm\" is not a mode for pointwise convolutions; use auto (time both per shape, the "
              "default), cudnn or cublas");
  }
  const cuda::Conv1x1 saved = cuda::conv1x1();
  for (cuda::Conv1x1 m : {cuda::Conv1x1::Cublas, cuda::Conv1x1::Cudnn, cuda::Conv1x1::Auto}) {
    cuda::set_conv1x1(m);
    EXPECT_EQ(cuda::conv1x1(), m);
  }
  cuda::set_conv1x1(saved);
}

// Graph kernel summaries and tables show kernels by a short name: demangled, no parameters, no "void".
TEST(CudaProfilerNames, KernelNamesAreDemangledAndShortened) {
  using cuda::profiler::kernel_display_name;
  // void ladnn::cuda::(anonymous namespace)::bias_grad_kernel(float const*, int, int, int, float*)
  EXPECT_EQ(kernel_display_name("_ZN5ladnn4cuda12_GLOBAL__N_116bias_grad_kernelEPKfiiiPf"),
            "ladnn::cuda::(anonymous namespace)::bias_grad_kernel");
  // void foo<float, 4>(float*)
  EXPECT_EQ(kernel_display_name("_Z3fooIfLi4EEvPf"), "foo<float, 4>");
  // A C name (as cuDNN's generated kernels often have) stays as it is.
  EXPECT_EQ(kernel_display_name("sm90_xmma_fprop_implicit_gemm_tf32f32"), "sm90_xmma_fprop_implicit_gemm_tf32f32");
  EXPECT_EQ(kernel_display_name(nullptr), "(unnamed)");
}

TEST(CudaContextSwitches, DefaultsAreTheLibrariesExceptBatchNorm) {
  using cuda::Family;
  using cuda::Impl;
  EXPECT_EQ(cuda::default_impl(Family::Conv), Impl::Library);
  EXPECT_EQ(cuda::default_impl(Family::BatchNorm), Impl::Native);
  EXPECT_EQ(cuda::default_impl(Family::Pool), Impl::Library);
  EXPECT_EQ(cuda::default_impl(Family::Gemm), Impl::Library);
}

TEST(CudaContextSwitches, NamesAndSetImplRoundTrip) {
  using cuda::Family;
  using cuda::Impl;
  EXPECT_STREQ(cuda::family_name(Family::Conv), "conv");
  EXPECT_STREQ(cuda::family_name(Family::BatchNorm), "bn");
  EXPECT_STREQ(cuda::family_name(Family::Pool), "pool");
  EXPECT_STREQ(cuda::family_name(Family::Gemm), "gemm");
  EXPECT_STREQ(cuda::impl_name(Family::Conv, Impl::Library), "cudnn");
  EXPECT_STREQ(cuda::impl_name(Family::Gemm, Impl::Library), "cublas");
  EXPECT_STREQ(cuda::impl_name(Family::Pool, Impl::Native), "native");
  for (Family f : {Family::Conv, Family::BatchNorm, Family::Pool, Family::Gemm}) {
    const Impl before = cuda::impl(f);
    cuda::set_impl(f, Impl::Native);
    EXPECT_EQ(cuda::impl(f), Impl::Native);
    cuda::set_impl(f, Impl::Library);
    EXPECT_EQ(cuda::impl(f), Impl::Library);
    cuda::set_impl(f, before);
  }
  const bool tf32 = cuda::tf32_enabled();
  cuda::set_tf32(false);
  EXPECT_FALSE(cuda::tf32_enabled());
  cuda::set_tf32(true);
  EXPECT_TRUE(cuda::tf32_enabled());
  cuda::set_tf32(tf32);
}

TEST(CudaContext, WithoutAGpuTheStreamSaysWhyAndSynchronizeIsANoOp) {
  if (cuda::available()) GTEST_SKIP() << "a GPU is usable; this checks the behaviour without one";
  EXPECT_NO_THROW(cuda::synchronize());
  try {
    cuda::stream();
    ADD_FAILURE() << "stream() succeeded without a GPU";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find(cuda::unavailable_reason()), std::string::npos) << e.what();
  }
  EXPECT_THROW(cuda::cublas(), std::runtime_error);
  EXPECT_THROW(cuda::cudnn(), std::runtime_error);
}

TEST(CudaContext, StreamAndHandlesAreCreatedOnce) {
  LADNN_REQUIRE_GPU();
  CUstream_st* s = cuda::stream();
  EXPECT_NE(s, nullptr);  // our own stream, not the legacy default one
  EXPECT_EQ(cuda::stream(), s);
  cudnnContext* dnn = cuda::cudnn();
  EXPECT_NE(dnn, nullptr);
  EXPECT_EQ(cuda::cudnn(), dnn);
  cublasContext* blas = cuda::cublas();
  EXPECT_NE(blas, nullptr);
  EXPECT_EQ(cuda::cublas(), blas);
  EXPECT_NO_THROW(cuda::synchronize());
}

#ifdef LADNN_HAVE_CUDA
TEST(CudaContext, CublasIsBoundToTheStreamAndFollowsTheTf32Switch) {
  LADNN_REQUIRE_GPU();
  cublasHandle_t h = cuda::cublas();
  cudaStream_t bound = nullptr;
  ASSERT_EQ(cublasGetStream(h, &bound), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(bound, cuda::stream());
  const bool tf32 = cuda::tf32_enabled();
  cublasMath_t mode{};
  cuda::set_tf32(false);
  ASSERT_EQ(cublasGetMathMode(cuda::cublas(), &mode), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(mode, CUBLAS_DEFAULT_MATH);
  cuda::set_tf32(true);
  ASSERT_EQ(cublasGetMathMode(cuda::cublas(), &mode), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(mode, CUBLAS_TF32_TENSOR_OP_MATH);
  cuda::set_tf32(tf32);
  cuda::cublas();  // re-applies the saved setting
}
#endif

}  // namespace
