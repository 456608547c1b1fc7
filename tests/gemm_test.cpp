// tests/gemm_test.cpp — both GEMM versions (OpenBLAS and the blocked fallback, also with A packed
// ahead by pack_a and B given by row pointers) and the dispatching gemm against a naive triple loop
// in double: every transpose combination, odd sizes that straddle the blocking (MR 6/8, NR 8/16,
// MC 120, NT 256, KC 256, the AVX-512 transposed packing's 16/8 blocks), alpha/beta, leading
// dimensions larger than the rows, and the error paths.
#include "tensor/cpu/gemm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace ladnn;

namespace {

enum class Version { Blas, Blocked, Packed, Rows, PackedRows, Dispatch };

const char* version_name(Version v) {
  switch (v) {
    case Version::Blas:
      return "blas";
    case Version::Blocked:
      return "blocked";
    case Version::Packed:
      return "packed";
    case Version::Rows:
      return "rows";
    case Version::PackedRows:
      return "packed_rows";
    default:
      return "dispatch";
  }
}

template <typename T>
void run_gemm(Version v, bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
              const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  switch (v) {
    case Version::Blas:
      cpu::gemm_blas(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
      break;
    case Version::Blocked:
      cpu::gemm_blocked(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
      break;
    case Version::Packed: {  // A packed once (as a conv packs its weights), then the product
      const cpu::PackedA<T> packed = cpu::pack_a(ta, M, K, A, lda);
      cpu::gemm_packed(packed, tb, N, alpha, B, ldb, beta, C, ldc);
      cpu::gemm_packed(packed, tb, N, T(0), B, ldb, T(1), C, ldc);  // reusable; alpha 0 is a no-op
      break;
    }
    case Version::Rows:
    case Version::PackedRows: {  // B by row pointers: the stored rows of B (K of them, N if tb)
      std::vector<const T*> rows(static_cast<size_t>(tb ? N : K));
      for (size_t r = 0; r < rows.size(); ++r) rows[r] = B + static_cast<int64_t>(r) * ldb;
      if (v == Version::Rows) {
        cpu::gemm_blocked_rows(ta, M, N, K, alpha, A, lda, tb, rows.data(), beta, C, ldc);
      } else {
        const cpu::PackedA<T> packed = cpu::pack_a(ta, M, K, A, lda);
        cpu::gemm_packed_rows(packed, tb, N, alpha, rows.data(), beta, C, ldc);
      }
      break;
    }
    case Version::Dispatch:
      cpu::gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
      break;
  }
}

/// A rows x cols row-major matrix with leading dimension ld: values U(-1, 1) in the matrix and NaN in
/// the padding columns, so a kernel that reads past a row's end poisons its result.
template <typename T>
std::vector<T> random_matrix(int64_t rows, int64_t cols, int64_t ld, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  std::vector<T> m(static_cast<size_t>(std::max<int64_t>(rows * ld, 1)), std::numeric_limits<T>::quiet_NaN());
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) m[i * ld + j] = static_cast<T>(u(rng));
  return m;
}

/// One case: C = alpha op(A) op(B) + beta C checked element by element against a double triple loop.
/// Tolerance: a K-term float sum has error at most about K * eps * sum_k |a_ik b_kj| (the standard
/// dot-product bound), plus the rounding of alpha/beta scaling; we allow 2x that bound. A wrong index
/// or a missed block gives an O(1) error, far above it.
template <typename T>
void check_case(Version v, bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, double beta,
                int64_t pad, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int64_t a_rows = ta ? K : M, a_cols = ta ? M : K;
  const int64_t b_rows = tb ? N : K, b_cols = tb ? K : N;
  const int64_t lda = std::max<int64_t>(1, a_cols) + pad, ldb = std::max<int64_t>(1, b_cols) + pad;
  const int64_t ldc = std::max<int64_t>(1, N) + pad;
  std::vector<T> A = random_matrix<T>(a_rows, a_cols, lda, rng);
  std::vector<T> B = random_matrix<T>(b_rows, b_cols, ldb, rng);
  std::vector<T> C = random_matrix<T>(M, N, ldc, rng);
  // beta == 0 must not read C: start it as NaN.
  if (beta == 0.0)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = std::numeric_limits<T>::quiet_NaN();
  const std::vector<T> C0 = C;

  run_gemm<T>(v, ta, tb, M, N, K, static_cast<T>(alpha), A.data(), lda, B.data(), ldb, static_cast<T>(beta),
              C.data(), ldc);

  const double eps = std::numeric_limits<T>::epsilon();
  int reported = 0;
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      double dot = 0.0, abs_dot = 0.0;
      for (int64_t p = 0; p < K; ++p) {
        const double a = ta ? A[p * lda + i] : A[i * lda + p];
        const double b = tb ? B[j * ldb + p] : B[p * ldb + j];
        dot += a * b;
        abs_dot += std::abs(a * b);
      }
      const double c0 = beta == 0.0 ? 0.0 : static_cast<double>(C0[i * ldc + j]);
      const double ref = alpha * dot + beta * c0;
      const double tol = 2.0 * eps * ((K + 2) * std::abs(alpha) * abs_dot + 2 * std::abs(beta * c0)) + 1e-300;
      const double got = C[i * ldc + j];
      if (!(std::abs(got - ref) <= tol) && reported++ < 5) {
        ADD_FAILURE() << version_name(v) << (sizeof(T) == 4 ? " float32" : " float64") << " ta=" << ta
                      << " tb=" << tb << " M=" << M << " N=" << N << " K=" << K << " alpha=" << alpha
                      << " beta=" << beta << " pad=" << pad << ": C(" << i << ", " << j << ") = " << got
                      << ", expected " << ref << " (tol " << tol << ")";
      }
    }
  }
  // The padding of C is never written.
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = N; j < ldc; ++j)
      if (!std::isnan(C[i * ldc + j]) && reported++ < 5)
        ADD_FAILURE() << version_name(v) << ": wrote C(" << i << ", " << j << ") past the row end";
}

struct Size {
  int64_t M, N, K;
};

// Odd sizes, single rows/columns, exact multiples of the register tile, and sizes that cross the
// cache blocks (MC = 120 rows, NT = 256 columns, KC = 256 depth) by one.
const std::vector<Size> kSizes = {{1, 1, 1},    {1, 7, 33},   {7, 1, 65},     {33, 65, 7},
                                  {65, 33, 1},  {6, 16, 256}, {7, 17, 257},   {12, 32, 513},
                                  {121, 9, 30}, {5, 257, 40}, {130, 300, 300}};

class GemmVersions : public ::testing::TestWithParam<Version> {
 protected:
  void SetUp() override {
    if (GetParam() == Version::Blas && !cpu::have_blas())
      GTEST_SKIP() << "built without OpenBLAS; gemm_blas is not available";
  }
};

template <typename T>
void check_all_sizes(Version v) {
  uint64_t seed = 1;
  for (const Size& s : kSizes)
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb) check_case<T>(v, ta, tb, s.M, s.N, s.K, 0.75, -0.5, /*pad=*/3, seed++);
}

}  // namespace

TEST_P(GemmVersions, Float32AllTransposesAndOddSizes) {
  check_all_sizes<float>(GetParam());
}

TEST_P(GemmVersions, Float64AllTransposesAndOddSizes) {
  check_all_sizes<double>(GetParam());
}

TEST_P(GemmVersions, AlphaBetaCombinations) {
  const std::vector<std::pair<double, double>> ab = {{1.0, 0.0},  {1.0, 1.0}, {-2.0, 0.5},
                                                     {0.5, -1.0}, {0.0, 0.3}, {0.0, 0.0}};
  uint64_t seed = 100;
  for (auto [alpha, beta] : ab) {
    for (int t = 0; t < 4; ++t) {
      check_case<float>(GetParam(), t & 1, t & 2, 37, 41, 29, alpha, beta, 0, seed++);
      check_case<double>(GetParam(), t & 1, t & 2, 37, 41, 29, alpha, beta, 5, seed++);
    }
  }
}

TEST_P(GemmVersions, LeadingDimensionsLargerThanRows) {
  // Sub-matrices of a larger buffer, as matmul passes a column slice: pads of 1 and 17 columns.
  uint64_t seed = 200;
  for (int64_t pad : {1, 17})
    for (int t = 0; t < 4; ++t) {
      check_case<float>(GetParam(), t & 1, t & 2, 19, 23, 300, 1.0, 0.0, pad, seed++);
      check_case<double>(GetParam(), t & 1, t & 2, 130, 9, 11, 1.0, 1.0, pad, seed++);
    }
}

TEST_P(GemmVersions, EmptyDimensions) {
  // K == 0: C = beta * C (and beta == 0 clears even NaN); M or N == 0: nothing to do.
  for (double beta : {0.0, 2.0}) {
    check_case<float>(GetParam(), false, false, 4, 5, 0, 1.0, beta, 0, 300);
    check_case<double>(GetParam(), true, true, 3, 2, 0, 1.5, beta, 2, 301);
  }
  check_case<float>(GetParam(), false, true, 0, 5, 7, 1.0, 0.0, 0, 302);
  check_case<double>(GetParam(), true, false, 6, 0, 7, 1.0, 0.0, 0, 303);
}

TEST_P(GemmVersions, RejectsLeadingDimensionsShorterThanRows) {
  std::vector<float> a(64, 1.0f), b(64, 1.0f), c(64, 0.0f);
  auto expect_error = [&](const std::function<void()>& fn, const std::string& needle) {
    try {
      fn();
      ADD_FAILURE() << "expected an error mentioning '" << needle << "'";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const Version v = GetParam();
  // A is 4 x 5 (not transposed) so lda must be >= 5.
  expect_error(
      [&] { run_gemm<float>(v, false, false, 4, 3, 5, 1, a.data(), 4, b.data(), 3, 0, c.data(), 3); },
      "lda 4 is smaller than the row length of A (stored 4 x 5)");
  // Transposed A is stored 5 x 4: lda >= 4 is enough, 3 is not.
  expect_error([&] { run_gemm<float>(v, true, false, 4, 3, 5, 1, a.data(), 3, b.data(), 3, 0, c.data(), 3); },
               "lda 3 is smaller than the row length of A (stored 5 x 4)");
  if (v != Version::Rows && v != Version::PackedRows)  // rows of B come as pointers: no ldb
    expect_error(
        [&] { run_gemm<float>(v, false, true, 4, 3, 5, 1, a.data(), 5, b.data(), 4, 0, c.data(), 3); },
        "ldb 4 is smaller than the row length of B (stored 3 x 5)");
  expect_error(
      [&] { run_gemm<float>(v, false, false, 4, 3, 5, 1, a.data(), 5, b.data(), 3, 0, c.data(), 2); },
      "ldc 2 is smaller than the row length of C (4 x 3)");
  expect_error(
      [&] { run_gemm<float>(v, false, false, -1, 3, 5, 1, a.data(), 5, b.data(), 3, 0, c.data(), 3); },
      "sizes must be non-negative, got M=-1");
}

INSTANTIATE_TEST_SUITE_P(Gemm, GemmVersions,
                         ::testing::Values(Version::Blas, Version::Blocked, Version::Packed, Version::Rows,
                                           Version::PackedRows, Version::Dispatch),
                         [](const ::testing::TestParamInfo<Version>& info) {
                           return std::string(version_name(info.param));
                         });

TEST(Gemm, BlockedIsSafeFromSeveralThreads) {
  // The packing buffers are per calling thread: two threads multiplying at once must not mix them.
  auto work = [](uint64_t seed, bool* ok) {
    std::mt19937_64 rng(seed);
    const int64_t n = 150;
    std::vector<double> A = random_matrix<double>(n, n, n, rng), B = random_matrix<double>(n, n, n, rng);
    std::vector<double> C(n * n), R(n * n, 0.0);
    for (int rep = 0; rep < 3; ++rep)
      cpu::gemm_blocked(false, false, n, n, n, 1.0, A.data(), n, B.data(), n, 0.0, C.data(), n);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t p = 0; p < n; ++p)
        for (int64_t j = 0; j < n; ++j) R[i * n + j] += A[i * n + p] * B[p * n + j];
    *ok = true;
    for (int64_t i = 0; i < n * n; ++i) *ok = *ok && std::abs(C[i] - R[i]) <= 1e-12 * n;
  };
  bool ok1 = false, ok2 = false;
  std::thread t1(work, 11, &ok1), t2(work, 12, &ok2);
  t1.join();
  t2.join();
  EXPECT_TRUE(ok1);
  EXPECT_TRUE(ok2);
}

TEST(Gemm, ReportsItsBackend) {
#ifdef LADNN_HAVE_OPENBLAS
  EXPECT_TRUE(cpu::have_blas());
  EXPECT_NE(std::string(cpu::blas_name()).find("OpenBLAS"), std::string::npos) << cpu::blas_name();
#else
  EXPECT_FALSE(cpu::have_blas());
  EXPECT_STREQ(cpu::blas_name(), "none");
  float x = 0;
  EXPECT_THROW(cpu::gemm_blas(false, false, 1, 1, 1, 1.0f, &x, 1, &x, 1, 0.0f, &x, 1), std::runtime_error);
#endif
  const cpu::GemmBackend b = cpu::gemm_backend();
  EXPECT_TRUE(b == cpu::GemmBackend::Blocked || cpu::have_blas());
  EXPECT_STREQ(cpu::gemm_backend_name(cpu::GemmBackend::Blas), "blas");
  EXPECT_STREQ(cpu::gemm_backend_name(cpu::GemmBackend::Blocked), "native");
}
