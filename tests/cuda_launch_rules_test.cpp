// tests/cuda_launch_rules_test.cpp — the two rules of cuda/launch.h, read from the sources (no GPU needed):
// every __global__ function in cuda/ begins with pdl_enter(), and no kernel there is launched with
// <<<...>>> (all go through launch_kernel, so LADNN_PDL reaches every one of them). With programmatic
// dependent launch on, a kernel that read or wrote before pdl_enter() would race with the kernel before
// it, and only sometimes: a race no GPU test is sure to catch, hence a rule checked on every build.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace ladnn {
namespace {

/// The source with its comments blanked (string literals in these files hold no comment markers).
std::string without_comments(const std::string& src) {
  std::string out = src;
  for (std::size_t i = 0; i + 1 < out.size(); ++i) {
    if (out[i] == '/' && out[i + 1] == '/') {
      while (i < out.size() && out[i] != '\n') out[i++] = ' ';
    } else if (out[i] == '/' && out[i + 1] == '*') {
      while (i + 1 < out.size() && !(out[i] == '*' && out[i + 1] == '/')) {
        if (out[i] != '\n') out[i] = ' ';
        ++i;
      }
      if (i + 1 < out.size()) out[i] = out[i + 1] = ' ';
    }
  }
  return out;
}

std::size_t line_of(const std::string& s, std::size_t pos) {
  return 1 +
         static_cast<std::size_t>(std::count(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(pos), '\n'));
}

/// "name:line: what" for each __global__ function whose body does not begin with pdl_enter(); and for
/// each <<< launch.
std::vector<std::string> launch_rule_violations(const std::string& name, const std::string& source) {
  const std::string s = without_comments(source);
  std::vector<std::string> found;
  for (std::size_t at = s.find("__global__"); at != std::string::npos; at = s.find("__global__", at + 1)) {
    // The body's brace: the first '{' outside the parentheses (__launch_bounds__(...), the parameters).
    int depth = 0;
    std::size_t i = at;
    for (; i < s.size(); ++i) {
      if (s[i] == '(') ++depth;
      if (s[i] == ')') --depth;
      if (depth == 0 && (s[i] == '{' || s[i] == ';')) break;
    }
    if (i >= s.size() || s[i] == ';') continue;  // a declaration
    std::size_t j = i + 1;
    while (j < s.size() && std::isspace(static_cast<unsigned char>(s[j]))) ++j;
    if (s.compare(j, 12, "pdl_enter();") != 0)
      found.push_back(name + ":" + std::to_string(line_of(s, at)) +
                      ": a kernel that does not begin with pdl_enter()");
  }
  for (std::size_t at = s.find("<<<"); at != std::string::npos; at = s.find("<<<", at + 3))
    found.push_back(name + ":" + std::to_string(line_of(s, at)) + ": a <<<...>>> launch (use launch_kernel)");
  return found;
}

TEST(CudaLaunchRules, TheCheckFindsAKernelWithoutPdlEnterAndAChevronLaunch) {
  const std::string good =
      "// a __global__ in a comment, and <<< too\n"
      "template <int V>\n"
      "__global__ void __launch_bounds__(256) k(const float* x, int n) {\n"
      "  pdl_enter();\n"
      "  if (n == 0) return;\n"
      "}\n"
      "__global__ void declared_only(int n);\n";
  EXPECT_TRUE(launch_rule_violations("good.cu", good).empty());
  const std::string bad =
      "__global__ void k(int n) {\n"
      "  if (n == 0) return;\n"
      "  pdl_enter();\n"
      "}\n"
      "void run() { k<<<1, 32, 0, s>>>(3); }\n";
  const std::vector<std::string> v = launch_rule_violations("bad.cu", bad);
  ASSERT_EQ(v.size(), 2u);
  EXPECT_EQ(v[0], "bad.cu:1: a kernel that does not begin with pdl_enter()");
  EXPECT_EQ(v[1], "bad.cu:5: a <<<...>>> launch (use launch_kernel)");
}

TEST(CudaLaunchRules, EveryKernelInCudaBeginsWithPdlEnterAndLaunchesThroughLaunchKernel) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(LADNN_SOURCE_DIR) / "cuda";
  ASSERT_TRUE(fs::is_directory(dir)) << dir;
  int files = 0, kernels = 0;
  std::vector<std::string> violations;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string ext = entry.path().extension().string();
    if (ext != ".cu" && ext != ".cuh") continue;
    std::ifstream in(entry.path());
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string src = ss.str();
    ++files;
    const std::string code = without_comments(src);
    for (std::size_t at = code.find("pdl_enter();"); at != std::string::npos;
         at = code.find("pdl_enter();", at + 1))
      ++kernels;
    for (std::string& v : launch_rule_violations("cuda/" + entry.path().filename().string(), src))
      violations.push_back(std::move(v));
  }
  EXPECT_GE(files, 10);
  EXPECT_GE(kernels, 50);  // the rule covers the kernels it should: 57 when it was written
  std::string all;
  for (const std::string& v : violations) all += v + "\n";
  EXPECT_TRUE(violations.empty()) << all;
}

}  // namespace
}  // namespace ladnn
