// tests/safetensors_test.cpp — the safetensors reader and writer (tensor/safetensors.h).
//
// Round trips (every dtype, 0-d, empty, views, many tensors, metadata), the atomic write (no temporary
// left behind; a failed write leaves the old file intact), F16/BF16 widening, reading a file written by
// tools/make_golden.py's Python writer, and every error path of the reader: each corrupt file must
// produce a std::runtime_error whose message names the file and the offending tensor or field, and no
// corruption (every truncation, random byte flips) may crash.
#include "tensor/safetensors.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "tensor/random.h"

namespace ladnn {
namespace {

namespace fs = std::filesystem;

/// A fresh directory per test, removed afterwards.
class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "ladnn_safetensors_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr) << std::strerror(errno);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string path(const std::string& name) const { return (fs::path(dir_) / name).string(); }
  /// Names of the files in the test directory.
  std::vector<std::string> listing() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir_)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
  std::string dir_;
};

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

/// A file from a header text and raw data, with a correct length prefix.
std::string make_file(const std::string& header, const std::string& data) {
  return le64(header.size()) + header + data;
}

/// Bytes of n float32 values 0, 1, 2, ...
std::string floats(int n) {
  std::string s(static_cast<std::size_t>(n) * 4, '\0');
  for (int i = 0; i < n; ++i) {
    float v = static_cast<float>(i);
    std::memcpy(&s[static_cast<std::size_t>(i) * 4], &v, 4);
  }
  return s;
}

/// Element-by-element, bit-exact equality (so NaN payloads and -0 count).
::testing::AssertionResult same_tensor(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype())
    return ::testing::AssertionFailure() << "dtype " << dtype_name(a.dtype()) << " vs " << dtype_name(b.dtype());
  if (a.shape() != b.shape())
    return ::testing::AssertionFailure() << "shape " << shape_str(a.shape()) << " vs " << shape_str(b.shape());
  Tensor ca = a.contiguous(), cb = b.contiguous();
  const std::size_t n = static_cast<std::size_t>(a.numel()) * dtype_size(a.dtype());
  if (n > 0 && std::memcmp(ca.raw_data(), cb.raw_data(), n) != 0)
    return ::testing::AssertionFailure() << "data differs";
  return ::testing::AssertionSuccess();
}

/// Runs `fn`, expecting an exception of type E whose message contains every one of `parts`.
template <typename E, typename Fn>
::testing::AssertionResult throws_with(Fn fn, const std::vector<std::string>& parts) {
  try {
    fn();
  } catch (const E& e) {
    const std::string msg = e.what();
    for (const std::string& p : parts)
      if (msg.find(p) == std::string::npos)
        return ::testing::AssertionFailure() << "message \"" << msg << "\" lacks \"" << p << "\"";
    return ::testing::AssertionSuccess() << msg;
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw the wrong type: " << e.what();
  }
  return ::testing::AssertionFailure() << "did not throw";
}

// ---- round trips ---------------------------------------------------------------------------------------

TEST_F(SafetensorsTest, RoundTripAllDtypesAndShapes) {
  Generator gen(7);
  std::vector<std::pair<std::string, Tensor>> tensors;
  tensors.emplace_back("f32", Tensor::normal({3, 5, 2}, 0.0, 1.0, gen, DType::Float32));
  tensors.emplace_back("f64", Tensor::normal({4, 1, 3}, 0.0, 1.0, gen, DType::Float64));
  tensors.emplace_back("i64", Tensor::from_vector({-3, 0, 7, 1ll << 40}, {2, 2}, DType::Int64));
  tensors.emplace_back("scalar", Tensor::full({}, 2.5, DType::Float32));  // 0-d
  tensors.emplace_back("empty", Tensor::zeros({0, 3}, DType::Float64));   // no elements
  tensors.emplace_back("vec1", Tensor::full({1}, -0.0, DType::Float32));
  Tensor special = Tensor::from_vector({0.0, -0.0, 1e-45, 3.4e38, INFINITY, -INFINITY, NAN}, {7});
  tensors.emplace_back("special", special);
  const std::map<std::string, std::string> meta = {
      {"epoch", "3"}, {"note", "unicode ✓ and \"quotes\"\n"}, {"empty", ""}};
  const std::string p = path("a.safetensors");
  save_safetensors(p, tensors, meta);

  const SafetensorsFile f = load_safetensors(p);
  EXPECT_EQ(f.path, p);
  EXPECT_EQ(f.metadata, meta);
  ASSERT_EQ(f.tensors.size(), tensors.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    SCOPED_TRACE(tensors[i].first);
    EXPECT_EQ(f.tensors[i].first, tensors[i].first) << "header order is kept";
    EXPECT_TRUE(same_tensor(f.tensors[i].second, tensors[i].second));
    EXPECT_TRUE(f.tensors[i].second.is_contiguous());
    EXPECT_TRUE(same_tensor(f.at(tensors[i].first), tensors[i].second));
  }
  EXPECT_EQ(f.at("scalar").dim(), 0);
  EXPECT_EQ(f.at("i64").at({1, 1}), static_cast<double>(1ll << 40));
  EXPECT_TRUE(f.contains("f64"));
  EXPECT_FALSE(f.contains("F64"));
  EXPECT_EQ(f.names(), (std::vector<std::string>{"f32", "f64", "i64", "scalar", "empty", "vec1", "special"}));
}

TEST_F(SafetensorsTest, RoundTripNothingAndEmptyMetadata) {
  const std::string p = path("empty.safetensors");
  save_safetensors(p, {}, {});
  const std::string bytes = read_bytes(p);
  ASSERT_GE(bytes.size(), 10u);
  EXPECT_EQ(bytes.size() % 8, 0u) << "header padded so the data starts 8-byte aligned";
  const SafetensorsFile f = load_safetensors(p);
  EXPECT_TRUE(f.tensors.empty());
  EXPECT_TRUE(f.metadata.empty());

  // Tensors but no metadata: no "__metadata__" key is written at all.
  save_safetensors(p, {{"w", Tensor::ones({2})}});
  EXPECT_EQ(read_bytes(p).find("__metadata__"), std::string::npos);
  EXPECT_TRUE(load_safetensors(p).metadata.empty());
}

TEST_F(SafetensorsTest, RoundTripManyTensorsAndViews) {
  Generator gen(11);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (int i = 0; i < 300; ++i) {
    const Shape shape = {static_cast<int64_t>(gen.below(4)), static_cast<int64_t>(1 + gen.below(5))};
    const DType dt = i % 3 == 0 ? DType::Float64 : (i % 3 == 1 ? DType::Float32 : DType::Int64);
    Tensor t = dt == DType::Int64 ? Tensor::arange(0, static_cast<double>(shape_numel(shape)), 1, DType::Float64)
                                        .to(DType::Int64)
                                        .reshape(shape)
                                  : Tensor::uniform(shape, -1, 1, gen, dt);
    tensors.emplace_back("layer" + std::to_string(i) + ".weight", t);
  }
  // Views with strides and offsets are written as their logical (row-major) contents.
  Tensor base = Tensor::uniform({4, 6}, -1, 1, gen);
  tensors.emplace_back("transposed", base.transpose(0, 1));
  tensors.emplace_back("narrowed", base.narrow(1, 2, 3));
  const std::string p = path("many.safetensors");
  save_safetensors(p, tensors, {{"k", "v"}});
  const SafetensorsFile f = load_safetensors(p);
  ASSERT_EQ(f.tensors.size(), tensors.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    ASSERT_EQ(f.tensors[i].first, tensors[i].first);
    ASSERT_TRUE(same_tensor(f.tensors[i].second, tensors[i].second)) << tensors[i].first;
  }
  EXPECT_EQ(f.at("transposed").to_vector(), base.transpose(0, 1).to_vector());
}

TEST_F(SafetensorsTest, OverwriteIsAtomicAndLeavesNoTemporary) {
  const std::string p = path("ckpt.safetensors");
  save_safetensors(p, {{"a", Tensor::ones({3})}}, {{"v", "1"}});
  save_safetensors(p, {{"b", Tensor::zeros({2, 2})}}, {{"v", "2"}});
  EXPECT_EQ(listing(), std::vector<std::string>{"ckpt.safetensors"}) << "no .tmp file is left behind";
  const SafetensorsFile f = load_safetensors(p);
  EXPECT_EQ(f.metadata.at("v"), "2");
  EXPECT_EQ(f.names(), std::vector<std::string>{"b"});
}

TEST_F(SafetensorsTest, FailedWriteLeavesTheOldFileIntact) {
  const std::string p = path("ckpt.safetensors");
  save_safetensors(p, {{"a", Tensor::full({3}, 4.0)}}, {{"v", "old"}});
  const std::string before = read_bytes(p);
  // Block the temporary file's name with a directory: creating it fails (EISDIR), as a full disk or a
  // permission error would, after the old file exists.
  const std::string tmp = p + ".tmp." + std::to_string(static_cast<long>(::getpid()));
  ASSERT_EQ(::mkdir(tmp.c_str(), 0755), 0);
  EXPECT_TRUE(throws_with<std::runtime_error>([&] { save_safetensors(p, {{"b", Tensor::ones({5})}}, {{"v", "new"}}); },
                                              {p, tmp, std::strerror(EISDIR)}));
  EXPECT_EQ(read_bytes(p), before);
  EXPECT_EQ(load_safetensors(p).metadata.at("v"), "old");
  ASSERT_EQ(::rmdir(tmp.c_str()), 0) << "the writer must not remove what it did not create";
  EXPECT_EQ(listing(), std::vector<std::string>{"ckpt.safetensors"});
}

TEST_F(SafetensorsTest, FailedRenameRemovesTheTemporary) {
  // The target is a non-empty directory: the temporary is written, the rename fails, and the temporary
  // must be cleaned up.
  const std::string p = path("target");
  ASSERT_EQ(::mkdir(p.c_str(), 0755), 0);
  write_bytes(p + "/keep", "x");
  EXPECT_TRUE(throws_with<std::runtime_error>([&] { save_safetensors(p, {{"a", Tensor::ones({2})}}); },
                                              {"rename", p}));
  EXPECT_EQ(listing(), std::vector<std::string>{"target"});
  EXPECT_EQ(read_bytes(p + "/keep"), "x");
}

TEST_F(SafetensorsTest, WriteIntoMissingDirectoryNamesPathAndErrno) {
  const std::string p = path("no/such/dir/x.safetensors");
  EXPECT_TRUE(throws_with<std::runtime_error>([&] { save_safetensors(p, {{"a", Tensor::ones({2})}}); },
                                              {p, std::strerror(ENOENT)}));
}

TEST_F(SafetensorsTest, SaveRejectsBadNamesAndUndefinedTensors) {
  const std::string p = path("bad.safetensors");
  const Tensor t = Tensor::ones({2});
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { save_safetensors(p, {{"w", t}, {"w", t}}); },
                                                 {p, "'w'", "twice"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { save_safetensors(p, {{"", t}}); }, {p, "empty name"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { save_safetensors(p, {{"__metadata__", t}}); },
                                                 {p, "__metadata__"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>([&] { save_safetensors(p, {{"u", Tensor()}}); },
                                                 {p, "'u'", "undefined"}));
  EXPECT_TRUE(throws_with<std::invalid_argument>(
      [&] { save_safetensors(p, {{"w", t}}, {{"bad", std::string("\xff\xfe", 2)}}); }, {p, "UTF-8"}));
  EXPECT_TRUE(listing().empty()) << "nothing is written when the arguments are refused";
}

TEST_F(SafetensorsTest, AtNamesTheFileAndTheMissingKey) {
  const std::string p = path("m.safetensors");
  save_safetensors(p, {{"present", Tensor::ones({1})}});
  const SafetensorsFile f = load_safetensors(p);
  EXPECT_TRUE(throws_with<std::out_of_range>([&] { f.at("absent.weight"); }, {p, "'absent.weight'"}));
}

// ---- reading files from elsewhere ------------------------------------------------------------------

TEST_F(SafetensorsTest, ReadsF16AndBF16AsFloat32) {
  // F16: 1, -2, 0.5, 65504 (max), 2^-24 (smallest subnormal), 2^-14 (smallest normal), -0, +inf.
  const std::vector<uint16_t> h = {0x3C00, 0xC000, 0x3800, 0x7BFF, 0x0001, 0x0400, 0x8000, 0x7C00};
  const std::vector<float> h_expect = {1.0f, -2.0f, 0.5f, 65504.0f, std::ldexp(1.0f, -24), std::ldexp(1.0f, -14),
                                       -0.0f, INFINITY};
  // BF16: 1, -3, 2^-133 (subnormal), 3.3895e38 (max)
  const std::vector<uint16_t> b = {0x3F80, 0xC040, 0x0001, 0x7F7F};
  const std::vector<float> b_expect = {1.0f, -3.0f, std::ldexp(1.0f, -133), 3.3895313892515355e38f};
  std::string data;
  for (uint16_t v : h) data += std::string(reinterpret_cast<const char*>(&v), 2);
  for (uint16_t v : b) data += std::string(reinterpret_cast<const char*>(&v), 2);
  const std::string header =
      R"({"half":{"dtype":"F16","shape":[2,4],"data_offsets":[0,16]},)"
      R"("bf":{"dtype":"BF16","shape":[4],"data_offsets":[16,24]}})";
  const std::string p = path("half.safetensors");
  write_bytes(p, make_file(header, data));
  const SafetensorsFile f = load_safetensors(p);
  ASSERT_EQ(f.at("half").dtype(), DType::Float32);
  ASSERT_EQ(f.at("half").shape(), (Shape{2, 4}));
  const float* hp = f.at("half").data<float>();
  for (std::size_t i = 0; i < h.size(); ++i) {
    EXPECT_EQ(hp[i], h_expect[i]) << "F16 element " << i;
    EXPECT_EQ(std::signbit(hp[i]), std::signbit(h_expect[i])) << "F16 element " << i;
  }
  const float* bp = f.at("bf").data<float>();
  for (std::size_t i = 0; i < b.size(); ++i) EXPECT_EQ(bp[i], b_expect[i]) << "BF16 element " << i;
  // Half NaN stays NaN.
  const uint16_t nan16 = 0x7E00;
  write_bytes(p, make_file(R"({"n":{"dtype":"F16","shape":[],"data_offsets":[0,2]}})",
                           std::string(reinterpret_cast<const char*>(&nan16), 2)));
  EXPECT_TRUE(std::isnan(load_safetensors(p).at("n").item()));
}

TEST_F(SafetensorsTest, ReadsAFixtureWrittenByThePythonWriter) {
  // tools/make_golden.py writes these with its own struct+json writer: an interop check.
  const std::string p = std::string(LADNN_GOLDEN_DIR) + "/linear_bias.safetensors";
  if (!fs::exists(p)) GTEST_SKIP() << p << " is missing: run /usr/bin/python3 tools/make_golden.py";
  const SafetensorsFile f = load_safetensors(p);
  EXPECT_EQ(f.metadata.at("case"), "linear_bias");
  EXPECT_FALSE(f.metadata.at("torch_version").empty());
  EXPECT_EQ(f.at("x").shape(), (Shape{5, 7}));
  EXPECT_EQ(f.at("weight").shape(), (Shape{4, 7}));
  EXPECT_EQ(f.at("y").dtype(), DType::Float32);
  // And it survives our own round trip byte for byte in content.
  save_safetensors(path("copy.safetensors"), f.tensors, f.metadata);
  const SafetensorsFile g = load_safetensors(path("copy.safetensors"));
  ASSERT_EQ(g.tensors.size(), f.tensors.size());
  for (std::size_t i = 0; i < f.tensors.size(); ++i) EXPECT_TRUE(same_tensor(g.tensors[i].second, f.tensors[i].second));
}

// ---- every error path of the reader ------------------------------------------------------------------

TEST_F(SafetensorsTest, MissingFileAndDirectory) {
  const std::string p = path("nope.safetensors");
  EXPECT_TRUE(throws_with<std::runtime_error>([&] { load_safetensors(p); }, {p, std::strerror(ENOENT)}));
  EXPECT_TRUE(throws_with<std::runtime_error>([&] { load_safetensors(dir_); }, {dir_, "not a regular file"}));
}

TEST_F(SafetensorsTest, EveryTruncationIsReportedWithTheFileAndTheField) {
  const std::string good = path("good.safetensors");
  save_safetensors(good, {{"alpha", Tensor::ones({3, 2})}, {"beta", Tensor::zeros({4}, DType::Float64)},
                          {"gamma", Tensor::full({}, 1.0, DType::Int64)}},
                   {{"m", "x"}});
  const std::string bytes = read_bytes(good);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(bytes[i]);
  const std::string p = path("cut.safetensors");
  for (std::size_t len = 0; len < bytes.size(); ++len) {
    SCOPED_TRACE("truncated to " + std::to_string(len) + " of " + std::to_string(bytes.size()) + " bytes");
    write_bytes(p, bytes.substr(0, len));
    std::vector<std::string> parts = {p};
    if (len < 8) parts.push_back("8-byte header length");
    else if (len < 8 + header_len) parts.push_back("header length " + std::to_string(header_len) + " runs past");
    else parts.push_back("tensor '");  // the data is short: the tensor whose offsets run past it is named
    EXPECT_TRUE(throws_with<std::runtime_error>([&] { load_safetensors(p); }, parts));
  }
}

TEST_F(SafetensorsTest, HeaderLengthErrors) {
  const std::string p = path("len.safetensors");
  write_bytes(p, le64(~0ull) + "{}");
  EXPECT_TRUE(throws_with<std::runtime_error>([&] { load_safetensors(p); }, {p, "header length", "runs past"}));
  write_bytes(p, le64(1) + "{");
  EXPECT_TRUE(throws_with<std::runtime_error>([&] { load_safetensors(p); }, {p, "header length 1"}));
  write_bytes(p, le64(0));
  EXPECT_TRUE(throws_with<std::runtime_error>([&] { load_safetensors(p); }, {p, "header length 0"}));
}

TEST_F(SafetensorsTest, GarbageHeaders) {
  const std::string p = path("garbage.safetensors");
  struct Case {
    std::string header;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {"PK\x03\x04 zip file", {"does not start with '{'"}},
      {"[1, 2, 3]", {"does not start with '{'"}},
      {"{not json at all", {"not valid JSON"}},
      {R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]})", {"not valid JSON"}},  // unclosed
      {R"({"a": 1} trailing)", {"not valid JSON"}},
      {std::string("{\"a\0\": 1}", 9), {"not valid JSON"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.header);
    write_bytes(p, make_file(c.header, floats(1)));
    std::vector<std::string> parts = c.parts;
    parts.push_back(p);
    EXPECT_TRUE(throws_with<std::runtime_error>([&] { load_safetensors(p); }, parts));
  }
}

TEST_F(SafetensorsTest, BadFieldsNameTheTensorAndTheField) {
  const std::string p = path("fields.safetensors");
  struct Case {
    std::string header;
    int data_floats;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {R"({"w":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}})", 2, {"tensor 'w'", "unknown dtype 'Q7'"}},
      {R"({"w":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})", 2, {"tensor 'w'", "dtype 'I32' is not supported"}},
      {R"({"w":{"dtype":7,"shape":[2],"data_offsets":[0,8]}})", 2, {"tensor 'w'", "'dtype' must be a string"}},
      {R"({"w":{"shape":[2],"data_offsets":[0,8]}})", 2, {"tensor 'w'", "'dtype' is missing"}},
      {R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", 2, {"tensor 'w'", "'shape' is missing"}},
      {R"({"w":{"dtype":"F32","shape":[2]}})", 2, {"tensor 'w'", "'data_offsets' is missing"}},
      {R"({"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", 2, {"tensor 'w'", "'shape' must be an array"}},
      {R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 2, {"tensor 'w'", "shape[0]", "non-negative"}},
      {R"({"w":{"dtype":"F32","shape":[1,2.5],"data_offsets":[0,8]}})", 2, {"tensor 'w'", "shape[1]"}},
      {R"({"w":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904],"data_offsets":[0,8]}})", 2,
       {"tensor 'w'", "shape"}},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 2, {"tensor 'w'", "'data_offsets' must be an array [begin, end]"}},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":"0-8"}})", 2, {"tensor 'w'", "'data_offsets'"}},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,-8]}})", 2, {"tensor 'w'", "data_offsets[1]"}},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 2, {"tensor 'w'", "end before they begin"}},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,12]}})", 2, {"tensor 'w'", "[0, 12]", "run past the end of the data"}},
      {R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 2, {"tensor 'w'", "shape (3)", "needs 12"}},
      {R"({"w":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}})", 2, {"tensor 'w'", "F64", "needs 16"}},
      {R"({"w":[0,8]})", 2, {"tensor 'w'", "must be a JSON object"}},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       3, {"'a'", "'b'", "overlap"}},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
       2, {"'a'", "'b'", "overlap"}},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
       3, {"bytes [4, 8)", "tensor 'b'", "belong to no tensor"}},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 2, {"bytes [0, 4)", "tensor 'a'"}},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 3, {"8 bytes of trailing data", "'a'"}},
      {R"({})", 1, {"4 bytes of trailing data"}},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
       2, {"'a'", "twice"}},
      {R"({"__metadata__":[1,2]})", 0, {"'__metadata__' must be an object"}},
      {R"({"__metadata__":{"epoch":3}})", 0, {"__metadata__['epoch']", "must be a string"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.header);
    write_bytes(p, make_file(c.header, floats(c.data_floats)));
    std::vector<std::string> parts = c.parts;
    parts.push_back(p);
    EXPECT_TRUE(throws_with<std::runtime_error>([&] { load_safetensors(p); }, parts));
  }
  // Sanity: the same construction with correct fields loads, so the failures above are the fields'.
  write_bytes(p, make_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", floats(2)));
  EXPECT_EQ(load_safetensors(p).at("w").to_vector(), (std::vector<double>{0.0, 1.0}));
  // Trailing spaces (header padding) and extra unknown fields are accepted.
  write_bytes(p, make_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}}   )", floats(1)));
  EXPECT_EQ(load_safetensors(p).at("w").item(), 0.0);
}

TEST_F(SafetensorsTest, RandomCorruptionNeverCrashes) {
  // Flip random bytes of a valid file: each load either succeeds or throws std::runtime_error naming
  // the file. Anything else (another exception, a crash, a hang) fails the test.
  const std::string good = path("good.safetensors");
  save_safetensors(good,
                   {{"conv.weight", Tensor::ones({2, 3})}, {"bn.num_batches_tracked", Tensor::zeros({}, DType::Int64)},
                    {"fc.bias", Tensor::full({3}, 0.5, DType::Float64)}},
                   {{"epoch", "12"}});
  const std::string bytes = read_bytes(good);
  const std::string p = path("fuzz.safetensors");
  std::mt19937 rng(2024);
  int loaded = 0, refused = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::string b = bytes;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < flips; ++k) {
      // Mostly hit the length and header, where the structure is.
      const std::size_t limit = (rng() % 4 == 0) ? b.size() : std::min<std::size_t>(b.size(), 160);
      b[rng() % limit] = static_cast<char>(rng() % 256);
    }
    if (trial % 10 == 0) b.resize(rng() % b.size());
    write_bytes(p, b);
    try {
      load_safetensors(p);
      ++loaded;
    } catch (const std::runtime_error& e) {
      ++refused;
      ASSERT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
  }
  EXPECT_GT(refused, 1000);
  EXPECT_EQ(loaded + refused, 3000);
}

}  // namespace
}  // namespace ladnn
