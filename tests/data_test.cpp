// tests/data_test.cpp — the data floor: split CSVs, image decoding, transforms, the batch loader.
//
// Tests that need the COVID-CT data find it with find_data_dir() ($LADNN_DATA or ../shared/data/covid-ct)
// and skip with a reason when it is absent. Everything else builds its own files in a temporary folder.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <set>
#include <thread>

#include "data/image.h"
#include "data/loader.h"
#include "data/split.h"
#include "data/transforms.h"
#include "tensor/ops.h"
#include "tensor/random.h"

using namespace ladnn;
using namespace ladnn::data;
namespace fs = std::filesystem;

namespace {

#define REQUIRE_DATA(dir)                                                                             \
  const std::string dir = find_data_dir();                                                            \
  if (dir.empty())                                                                                    \
    GTEST_SKIP() << "COVID-CT data not found: set LADNN_DATA or place it at ../shared/data/covid-ct " \
                    "(tools/get-covid-ct.sh downloads it)";

// A fresh folder under the system temp dir, removed with everything in it at the end of the test.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() /
            ("ladnn_data_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  std::string str(const std::string& rel = "") const {
    return rel.empty() ? path_.string() : (path_ / rel).string();
  }

 private:
  fs::path path_;
};

void write_text(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream out(p, std::ios::binary);
  out << text;
}

std::vector<uint8_t> read_bytes(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& p, const std::vector<uint8_t>& bytes, size_t n) {
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(n));
}

// A deterministic RGB test image with distinct values in every channel.
Image random_image(int w, int h, uint64_t seed) {
  Generator gen(seed);
  Image img;
  img.width = w;
  img.height = h;
  img.pixels.resize(static_cast<size_t>(w) * h * 3);
  for (auto& p : img.pixels) p = static_cast<uint8_t>(gen.below(256));
  return img;
}

Image constant_image(int w, int h, uint8_t r, uint8_t g, uint8_t b) {
  Image img;
  img.width = w;
  img.height = h;
  for (int i = 0; i < w * h; ++i) img.pixels.insert(img.pixels.end(), {r, g, b});
  return img;
}

// Expects `fn` to throw E whose message contains every one of `parts`.
template <typename E, typename F>
void expect_throw_with(F&& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected an exception mentioning '" << parts.front() << "'";
  } catch (const E& e) {
    for (const std::string& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
          << "message: " << e.what() << "\nmissing: " << p;
  }
}

const char* kHeader = "imgname,CVD19,GGO,Csld,CrPa,AirBr,InSepThi\r\n";

// A tiny data folder in the COVID-CT layout: csv() writes data_split/<split>_meta.csv, image() a PNG
// into CT_COVID/ or CT_NonCOVID/.
struct TinyData {
  TempDir dir;
  void csv(const std::string& split, const std::string& body) {
    write_text(dir.path() / "data_split" / (split + "_meta.csv"), body);
  }
  std::string image(const std::string& folder, const std::string& name, const Image& img) {
    fs::create_directories(dir.path() / folder);
    std::string p = (dir.path() / folder / name).string();
    write_png(p, img);
    return p;
  }
};

}  // namespace

// ============================================================================================== split

TEST(DataSplit, ReadsTheThreeSplitsWithTheirLabelTallies) {
  REQUIRE_DATA(dir);
  // Tallies counted from the CSVs with Python's csv module (non-empty cells per column).
  struct Expect {
    const char* split;
    size_t rows;
    int covid;
    std::array<int, 5> lesions;
    int with_lesions;
  };
  const Expect expect[] = {{"train", 425, 191, {108, 51, 11, 8, 12}, 130},
                           {"val", 118, 60, {37, 10, 0, 0, 0}, 39},
                           {"test", 203, 98, {66, 18, 4, 3, 0}, 69}};
  std::set<std::string> names;
  int covid_total = 0, noncovid_total = 0;
  for (const Expect& e : expect) {
    std::vector<Sample> samples = read_split(dir, e.split);
    ASSERT_EQ(samples.size(), e.rows) << e.split;
    int covid = 0, with_lesions = 0;
    std::array<int, 5> lesions{};
    for (const Sample& s : samples) {
      names.insert(s.name);
      covid += s.covid != 0.f;
      bool any = false;
      for (int k = 0; k < 5; ++k) {
        ASSERT_TRUE(s.lesions[k] == 0.f || s.lesions[k] == 1.f);
        lesions[k] += s.lesions[k] != 0.f;
        any = any || s.lesions[k] != 0.f;
      }
      EXPECT_EQ(s.has_lesion_labels, any) << s.name;
      with_lesions += s.has_lesion_labels;
      // Lesion labels come only with COVID rows, and every row's image is in its label's folder.
      if (s.has_lesion_labels) {
        EXPECT_EQ(s.covid, 1.f) << s.name;
      }
      const std::string folder = fs::path(s.path).parent_path().filename().string();
      EXPECT_EQ(folder, s.covid != 0.f ? "CT_COVID" : "CT_NonCOVID") << s.name;
      EXPECT_EQ(fs::path(s.path).filename().string(), s.name);
      (s.covid != 0.f ? covid_total : noncovid_total)++;
    }
    EXPECT_EQ(covid, e.covid) << e.split;
    EXPECT_EQ(lesions, e.lesions) << e.split;
    EXPECT_EQ(with_lesions, e.with_lesions) << e.split;
  }
  EXPECT_EQ(names.size(), 746u) << "an image appears in two splits";
  EXPECT_EQ(covid_total, 349);     // every file of CT_COVID/ ...
  EXPECT_EQ(noncovid_total, 397);  // ... and of CT_NonCOVID/ (the README's counts)
}

TEST(DataSplit, ParsesARowExactly) {
  REQUIRE_DATA(dir);
  std::vector<Sample> train = read_split(dir, "train");
  // Line 2 of train_meta.csv: "2020.01.24.919183-p27-132.png,CVD19,,Csld,,,"
  const Sample& s = train.at(0);
  EXPECT_EQ(s.name, "2020.01.24.919183-p27-132.png");
  EXPECT_EQ(s.covid, 1.f);
  EXPECT_EQ(s.lesions, (std::array<float, 5>{0, 1, 0, 0, 0}));
  EXPECT_TRUE(s.has_lesion_labels);
  EXPECT_EQ(fs::path(s.path), fs::path(dir) / "CT_COVID" / s.name);
}

TEST(DataSplit, AcceptsLfBomBlankLinesAndImagesInTheOtherFolder) {
  TinyData d;
  Image img = random_image(5, 4, 1);
  d.image("CT_COVID", "a.png", img);
  d.image("CT_COVID", "b.png", img);  // a non-COVID row whose file sits in CT_COVID/
  d.image("CT_NonCOVID", "c.png", img);
  d.csv("train",
        "\xEF\xBB\xBF"
        "imgname,CVD19,GGO,Csld,CrPa,AirBr,InSepThi\n"
        "a.png,CVD19,GGO,,,,InSepThi\n"
        "\n"
        "b.png,,,,,,\n"
        "c.png,  ,,,,,\n");  // a whitespace-only cell counts as empty
  std::vector<Sample> s = read_split(d.dir.str(), "train");
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(s[0].covid, 1.f);
  EXPECT_EQ(s[0].lesions, (std::array<float, 5>{1, 0, 0, 0, 1}));
  EXPECT_TRUE(s[0].has_lesion_labels);
  EXPECT_EQ(s[1].covid, 0.f);
  EXPECT_FALSE(s[1].has_lesion_labels);
  EXPECT_EQ(fs::path(s[1].path), d.dir.path() / "CT_COVID" / "b.png");
  EXPECT_EQ(s[2].covid, 0.f);
  EXPECT_EQ(fs::path(s[2].path), d.dir.path() / "CT_NonCOVID" / "c.png");
}

TEST(DataSplit, ErrorsNameTheFileLineAndColumn) {
  TinyData d;
  d.image("CT_COVID", "a.png", random_image(3, 3, 2));
  const std::string csv = d.dir.str("data_split/train_meta.csv");

  EXPECT_THROW(read_split(d.dir.str(), "training"), std::invalid_argument);
  expect_throw_with<std::runtime_error>([&] { read_split(d.dir.str(), "val"); },
                                        {"cannot open", "val_meta.csv"});

  d.csv("train", "");
  expect_throw_with<std::runtime_error>([&] { read_split(d.dir.str(), "train"); }, {"empty", csv});

  d.csv("train", "imgname,CVD19,GGX,Csld,CrPa,AirBr,InSepThi\r\na.png,CVD19,,,,,\r\n");
  expect_throw_with<std::runtime_error>([&] { read_split(d.dir.str(), "train"); },
                                        {csv, "line 1", "column 3", "'GGX'", "'GGO'"});

  d.csv("train", "imgname,CVD19,GGO,Csld,CrPa,AirBr\r\n");
  expect_throw_with<std::runtime_error>([&] { read_split(d.dir.str(), "train"); },
                                        {csv, "6 columns", "expected 7"});

  d.csv("train", std::string(kHeader) + "a.png,CVD19,,,,,\r\na.png,CVD19,,,,\r\n");
  expect_throw_with<std::runtime_error>([&] { read_split(d.dir.str(), "train"); },
                                        {csv, "line 3", "6 cells"});

  d.csv("train", std::string(kHeader) + "a.png,CVD19,,,,,,\r\n");
  expect_throw_with<std::runtime_error>([&] { read_split(d.dir.str(), "train"); }, {"line 2", "8 cells"});

  d.csv("train", std::string(kHeader) + ",CVD19,,,,,\r\n");
  expect_throw_with<std::runtime_error>([&] { read_split(d.dir.str(), "train"); },
                                        {"line 2", "empty image name"});

  d.csv("train", std::string(kHeader) + "a.png,CVD19,,,,,\r\n\r\nmissing.png,,,,,,\r\n");
  expect_throw_with<std::runtime_error>([&] { read_split(d.dir.str(), "train"); },
                                        {"'missing.png'", csv, "line 4", "CT_COVID", "CT_NonCOVID"});
}

TEST(DataSplit, FindDataDirHonoursTheEnvironment) {
  const char* old = std::getenv("LADNN_DATA");
  const std::string saved = old ? old : "";
  ::setenv("LADNN_DATA", "/some/where/else", 1);
  EXPECT_EQ(find_data_dir(), "/some/where/else");
  ::unsetenv("LADNN_DATA");
  const std::string found = find_data_dir();
  if (!found.empty()) {
    EXPECT_TRUE(fs::is_regular_file(fs::path(found) / "data_split" / "train_meta.csv"));
  }
  if (old) ::setenv("LADNN_DATA", saved.c_str(), 1);
}

// ============================================================================================== image

TEST(DataImage, DecodesEveryImageOfTheDataset) {
  REQUIRE_DATA(dir);
  std::vector<Sample> all;
  for (const char* split : {"train", "val", "test"}) {
    std::vector<Sample> s = read_split(dir, split);
    all.insert(all.end(), s.begin(), s.end());
  }
  ASSERT_EQ(all.size(), 746u);
  // Two threads: the whole set decodes in a few seconds on two cores.
  std::vector<std::string> errors(all.size());
  std::vector<int> kind(all.size());  // 1 PNG, 2 baseline JPEG, 3 progressive JPEG
  auto work = [&](size_t first, size_t step) {
    for (size_t i = first; i < all.size(); i += step) {
      try {
        std::vector<uint8_t> bytes = read_bytes(all[i].path);
        Image img = decode_image(bytes.data(), bytes.size(), all[i].path);
        if (img.channels != 3 || img.width < 16 || img.height < 16 || img.width > 4096 || img.height > 4096 ||
            img.pixels.size() != static_cast<size_t>(img.width) * img.height * 3)
          errors[i] = "odd geometry " + std::to_string(img.width) + "x" + std::to_string(img.height);
        const bool png = bytes.size() > 8 && bytes[0] == 0x89 && bytes[1] == 'P';
        bool progressive = false;
        for (size_t k = 0; !png && k + 1 < bytes.size(); ++k)
          if (bytes[k] == 0xFF && bytes[k + 1] == 0xC2) progressive = true;  // SOF2
        kind[i] = png ? 1 : progressive ? 3 : 2;
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    }
  };
  std::thread t(work, 1, 2);
  work(0, 2);
  t.join();
  for (size_t i = 0; i < all.size(); ++i) EXPECT_EQ(errors[i], "") << all[i].path;
  // The README's census: 510 PNG and 236 JPEG files, 4 of those progressive (by content, not by name:
  // some .png files hold JPEG data).
  EXPECT_EQ(std::count(kind.begin(), kind.end(), 1), 510);
  EXPECT_EQ(std::count(kind.begin(), kind.end(), 2), 232);
  EXPECT_EQ(std::count(kind.begin(), kind.end(), 3), 4);
}

TEST(DataImage, PngChannelLayoutsBecomeRgb) {
  TempDir tmp;
  const int w = 7, h = 5;
  for (int channels : {1, 2, 3, 4}) {
    Image src;
    src.width = w;
    src.height = h;
    src.channels = channels;
    Generator gen(channels);
    src.pixels.resize(static_cast<size_t>(w) * h * channels);
    for (auto& p : src.pixels) p = static_cast<uint8_t>(gen.below(256));
    const std::string path = tmp.str("c" + std::to_string(channels) + ".png");
    write_png(path, src);
    Image img = read_image(path);
    ASSERT_EQ(img.width, w);
    ASSERT_EQ(img.height, h);
    ASSERT_EQ(img.channels, 3);
    const int colour = channels >= 3 ? 3 : 1;  // grey (+alpha) or RGB (+alpha)
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x)
        for (int c = 0; c < 3; ++c)
          ASSERT_EQ(img.at(y, x, c),
                    src.pixels[(static_cast<size_t>(y) * w + x) * channels + (colour == 1 ? 0 : c)])
              << channels << " channels at (" << x << ", " << y << ", " << c << ")";
  }
}

TEST(DataImage, RejectsBadFilesNamingThem) {
  TempDir tmp;
  Image img = random_image(40, 30, 3);
  const std::string good = tmp.str("good.png");
  write_png(good, img);
  std::vector<uint8_t> bytes = read_bytes(good);
  ASSERT_GT(bytes.size(), 100u);
  EXPECT_EQ(read_image(good).pixels, img.pixels);

  // Cut inside the signature, the header, the image data, and the final IEND chunk.
  for (size_t keep :
       {size_t{5}, size_t{30}, bytes.size() / 2, bytes.size() - 20, bytes.size() - 6, bytes.size() - 1}) {
    const std::string cut = tmp.str("cut_" + std::to_string(keep) + ".png");
    write_bytes(cut, bytes, keep);
    expect_throw_with<std::runtime_error>([&] { read_image(cut); }, {"data: cannot decode '" + cut + "': "});
  }
  const std::string text = tmp.str("notes.png");
  write_text(text, "this is not an image\n");
  expect_throw_with<std::runtime_error>([&] { read_image(text); },
                                        {"cannot decode '" + text + "'", "unknown image type"});
  const std::string empty = tmp.str("empty.png");
  write_text(empty, "");
  expect_throw_with<std::runtime_error>([&] { read_image(empty); }, {empty, "empty"});
  const std::string missing = tmp.str("missing.png");
  expect_throw_with<std::runtime_error>([&] { read_image(missing); },
                                        {missing, "cannot open", "No such file"});
  expect_throw_with<std::runtime_error>([&] { read_image(tmp.str()); }, {tmp.str(), "not a regular file"});

  // A header claiming 100000 x 1 pixels: stb would try; we refuse before allocating.
  std::vector<uint8_t> huge(bytes.begin(), bytes.end());
  huge[16] = 0, huge[17] = 0x01, huge[18] = 0x86, huge[19] = 0xA0;  // IHDR width, big-endian
  const std::string big = tmp.str("huge.png");
  write_bytes(big, huge, huge.size());
  expect_throw_with<std::runtime_error>([&] { read_image(big); }, {big, "implausible size 100000x30"});
}

TEST(DataImage, RejectsATruncatedJpeg) {
  REQUIRE_DATA(dir);
  // A real JPEG from the set, cut at several points past its header.
  std::string jpeg;
  for (const Sample& s : read_split(dir, "test"))
    if (s.name.size() > 4 && s.name.substr(s.name.size() - 4) == ".jpg") {
      jpeg = s.path;
      break;
    }
  ASSERT_FALSE(jpeg.empty());
  std::vector<uint8_t> bytes = read_bytes(jpeg);
  TempDir tmp;
  for (size_t keep : {bytes.size() / 2, bytes.size() * 9 / 10, bytes.size() - 2, bytes.size() - 1}) {
    const std::string cut = tmp.str("cut.jpg");
    write_bytes(cut, bytes, keep);
    expect_throw_with<std::runtime_error>([&] { read_image(cut); }, {"cannot decode '" + cut + "'"});
  }
}

// ========================================================================================= transforms

// Expected values from PyTorch 1.13: F.interpolate(x, size, mode='bilinear', align_corners=False).
TEST(DataTransforms, ResizeMatchesTorch) {
  // x = [[0, 1], [2, 3]] -> (4, 4): every value is a multiple of 1/4, exact in float.
  Tensor x = Tensor::from_vector({0, 1, 2, 3}, {1, 2, 2});
  Tensor y = resize_bilinear(x, 4, 4);
  EXPECT_EQ(y.shape(), (Shape{1, 4, 4}));
  EXPECT_EQ(y.to_vector(), (std::vector<double>{0, 0.25, 0.75, 1, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5,
                                                2, 2.25, 2.75, 3}));
  // (2, 2) -> (3, 5), 4-D input. Torch's float32 results printed to 9 digits; positions like 0.1 are
  // inexact in float, so outputs agree to a few ulps of 3 (2.4e-7 each), not bit for bit.
  const std::vector<double> wide = {0, 0.100000009, 0.5, 0.900000036, 1,
                                    1, 1.10000002,  1.5, 1.9000001,   2,
                                    2, 2.0999999,   2.5, 2.89999986,  2.99999976};
  std::vector<double> got = resize_bilinear(x.reshape({1, 1, 2, 2}), 3, 5).to_vector();
  ASSERT_EQ(got.size(), wide.size());
  for (size_t i = 0; i < wide.size(); ++i) EXPECT_NEAR(got[i], wide[i], 1e-6) << i;

  // A 4x5 image shrunk to (3, 2) and stretched to (7, 3), in float64 (the float32 inputs widened).
  const std::vector<double> v = {0,    3.1f, 1.2f, 4.3f,  1.4f, 5.5f,  9.6f, 2.7f, 6.8f, 5.9f,
                                 4.0f, 6.1f, 9.2f, 10.3f, 8.4f, 10.5f, 4.6f, 3.7f, 4.8f, 9.9f};
  const std::vector<double> down = {3.3666666547457371, 4.0750001420577364, 7.0750001072883606,
                                    8.2000001072883606, 5.9916665951410923, 6.7000000476837176};
  const std::vector<double> up = {
      1.0333333015441897, 1.2000000476837158, 2.3666667143503815, 3.116666691643851,  1.7357143333980014,
      3.7357143617811648, 6.4500001158033093, 2.5928571905408586, 5.9261905976704181, 5.7833333810170489,
      5.9499999284744263, 7.6166666348775225, 4.9738094920203793, 8.8071426834378936, 8.9738093330746604,
      7.1642856824965708, 5.6642856768199374, 8.4976188568841842, 8.5333333015441877, 3.7000000476837158,
      8.1999998092651385};
  for (DType dt : {DType::Float64, DType::Float32}) {
    // float64: exact up to the last bits of a few products; float32: values below 11 carry an ulp of
    // about 1e-6, and each output is a sum of four rounded products.
    const double tol = dt == DType::Float64 ? 1e-12 : 4e-6;
    Tensor img = Tensor::from_vector(v, {1, 4, 5}, dt);
    std::vector<double> got_down = resize_bilinear(img, 3, 2).to_vector();
    std::vector<double> got_up = resize_bilinear(img, 7, 3).to_vector();
    for (size_t i = 0; i < down.size(); ++i)
      EXPECT_NEAR(got_down[i], down[i], tol) << dtype_name(dt) << " down " << i;
    for (size_t i = 0; i < up.size(); ++i)
      EXPECT_NEAR(got_up[i], up[i], tol) << dtype_name(dt) << " up " << i;
  }
}

TEST(DataTransforms, ResizeErrors) {
  EXPECT_THROW(resize_bilinear(Tensor::zeros({4, 4}), 2, 2), std::invalid_argument);
  EXPECT_THROW(resize_bilinear(Tensor::zeros({1, 4, 4}, DType::Int64), 2, 2), std::invalid_argument);
  EXPECT_THROW(resize_bilinear(Tensor::zeros({1, 4, 4}), 0, 2), std::invalid_argument);
  EXPECT_THROW(resize_bilinear(Tensor::zeros({1, 0, 4}), 2, 2), std::invalid_argument);
}

TEST(DataTransforms, IdentityAugmentationIsThePlainResize) {
  // Shrinking (300x200 -> 64), enlarging (13x9 -> 40) and the same size (21 -> 21).
  for (auto [w, h, S] : std::vector<std::array<int, 3>>{{300, 200, 64}, {13, 9, 40}, {21, 21, 21}}) {
    Image img = random_image(w, h, static_cast<uint64_t>(w));
    Tensor fused = transform(img, S, Affine{}, Normalize::none());
    Tensor plain = resize_bilinear(image_to_tensor(img), S, S);
    ASSERT_EQ(fused.shape(), (Shape{3, S, S}));
    // The fused path interpolates 0..255 values and scales by 1/255 after; the reference scales first.
    // Values lie in [0, 1]: the two roundings differ by a few float ulps (~1e-7).
    EXPECT_LE(ops::max_abs_diff(fused, plain), 1e-6) << w << "x" << h << " -> " << S;
  }
  // And same-size is the image itself.
  Image img = random_image(21, 21, 5);
  EXPECT_LE(ops::max_abs_diff(transform(img, 21, Affine{}, Normalize::none()), image_to_tensor(img)), 1e-7);
}

TEST(DataTransforms, FlipMirrorsExactly) {
  Image img = random_image(57, 43, 6);
  for (Affine a : {Affine{1.f, 0.f, false}, Affine{1.13f, 0.17f, false}, Affine{0.85f, -0.2f, false}}) {
    Tensor plain = transform(img, 32, a);
    a.flip = true;
    Tensor flipped = transform(img, 32, a);
    const float* p = plain.data<float>();
    const float* f = flipped.data<float>();
    for (int c = 0; c < 3; ++c)
      for (int y = 0; y < 32; ++y)
        for (int x = 0; x < 32; ++x)
          ASSERT_EQ(f[(c * 32 + y) * 32 + x], p[(c * 32 + y) * 32 + (31 - x)]) << a.scale << " " << a.shear;
  }
}

TEST(DataTransforms, NormalisesAConstantImageAndFillsWithBlack) {
  const uint8_t rgb[3] = {10, 128, 250};
  Image img = constant_image(50, 30, rgb[0], rgb[1], rgb[2]);
  const Normalize n = Normalize::imagenet();
  // Zoomed in (every output pixel inside the image): each is (v / 255 - mean) / std. The sampler
  // weights sum to one only up to float rounding, hence a tolerance of a few ulps of values near 2.
  Tensor t = transform(img, 24, Affine{1.1f, 0.1f, true}, n);
  const float* d = t.data<float>();
  for (int c = 0; c < 3; ++c) {
    const double expect = (rgb[c] / 255.0 - n.mean[c]) / n.std[c];
    for (int i = 0; i < 24 * 24; ++i) ASSERT_NEAR(d[c * 576 + i], expect, 2e-6) << "channel " << c;
  }
  // Zoomed out to half size: the border is outside the image and gets black, i.e. -mean/std.
  Tensor z = transform(img, 24, Affine{0.5f, 0.f, false}, n);
  for (int c = 0; c < 3; ++c) {
    EXPECT_FLOAT_EQ(z.at({c, 0, 0}), -n.mean[c] / n.std[c]);
    EXPECT_FLOAT_EQ(z.at({c, 23, 12}), -n.mean[c] / n.std[c]);
    EXPECT_NEAR(z.at({c, 12, 12}), (rgb[c] / 255.0 - n.mean[c]) / n.std[c], 2e-6);
  }
  // The ImageNet constants themselves.
  EXPECT_EQ(n.mean, (std::array<float, 3>{0.485f, 0.456f, 0.406f}));
  EXPECT_EQ(n.std, (std::array<float, 3>{0.229f, 0.224f, 0.225f}));
}

TEST(DataTransforms, ShearAndScaleMovePointsAsDocumented) {
  // A 21x21 image resized to 21 is unchanged, so the affine alone acts. Centre c = (10, 10).
  // Shear s = 0.2 (x' = x + s * y about the centre, y down): (10, 15) -> (11, 15).
  Image img = constant_image(21, 21, 0, 0, 0);
  auto set = [&](int x, int y, uint8_t v) {
    for (int c = 0; c < 3; ++c) img.pixels[(static_cast<size_t>(y) * 21 + x) * 3 + c] = v;
  };
  set(10, 15, 255);
  Tensor t = transform(img, 21, Affine{1.f, 0.2f, false}, Normalize::none());
  for (int x = 0; x < 21; ++x) EXPECT_NEAR(t.at({0, 15, x}), x == 11 ? 1.0 : 0.0, 1e-6) << "x " << x;
  // Above the centre the shear goes the other way: (10, 5) -> (9, 5).
  set(10, 15, 0);
  set(10, 5, 255);
  t = transform(img, 21, Affine{1.f, 0.2f, false}, Normalize::none());
  for (int x = 0; x < 21; ++x) EXPECT_NEAR(t.at({1, 5, x}), x == 9 ? 1.0 : 0.0, 1e-6) << "x " << x;
  // Scale 2 about the centre: (12, 10) -> (14, 10); output (13, 10) samples x = 11.5, half the dot.
  set(10, 5, 0);
  set(12, 10, 255);
  t = transform(img, 21, Affine{2.f, 0.f, false}, Normalize::none());
  EXPECT_NEAR(t.at({2, 10, 14}), 1.0, 1e-6);
  EXPECT_NEAR(t.at({2, 10, 13}), 0.5, 1e-6);
  EXPECT_NEAR(t.at({2, 10, 12}), 0.0, 1e-6);
  EXPECT_NEAR(t.at({2, 11, 14}), 0.5, 1e-6);  // y = 10.5 between the dot's row and the next
}

TEST(DataTransforms, SampleAffineDrawsThePapersRanges) {
  Generator gen(11);
  const int n = 4000;
  int flips = 0;
  double scale_sum = 0, shear_sum = 0, scale_min = 9, scale_max = 0, shear_min = 9, shear_max = -9;
  for (int i = 0; i < n; ++i) {
    Affine a = sample_affine(gen);
    flips += a.flip;
    scale_sum += a.scale;
    shear_sum += a.shear;
    scale_min = std::min<double>(scale_min, a.scale), scale_max = std::max<double>(scale_max, a.scale);
    shear_min = std::min<double>(shear_min, a.shear), shear_max = std::max<double>(shear_max, a.shear);
  }
  EXPECT_GE(scale_min, 0.8);
  EXPECT_LT(scale_max, 1.2);
  EXPECT_GE(shear_min, -0.2);
  EXPECT_LT(shear_max, 0.2);
  // The extremes are approached (4000 draws leave a gap of ~1e-4 of the range on each side).
  EXPECT_LT(scale_min, 0.801);
  EXPECT_GT(scale_max, 1.199);
  EXPECT_LT(shear_min, -0.199);
  EXPECT_GT(shear_max, 0.199);
  // Means within 5 standard errors: U(0.8, 1.2) has sd 0.115, U(-0.2, 0.2) the same; flips ~ B(4000, 0.5).
  EXPECT_NEAR(scale_sum / n, 1.0, 5 * 0.1155 / std::sqrt(n));
  EXPECT_NEAR(shear_sum / n, 0.0, 5 * 0.1155 / std::sqrt(n));
  EXPECT_NEAR(flips, n / 2, 5 * std::sqrt(n * 0.25));
  // The same seed, the same draws.
  Generator g1(3), g2(3);
  Affine a1 = sample_affine(g1), a2 = sample_affine(g2);
  EXPECT_EQ(a1.scale, a2.scale);
  EXPECT_EQ(a1.shear, a2.shear);
  EXPECT_EQ(a1.flip, a2.flip);
  AugmentConfig bad;
  bad.scale_min = 1.3f;
  EXPECT_THROW(sample_affine(gen, bad), std::invalid_argument);
  bad = AugmentConfig{};
  bad.flip_probability = 1.5f;
  EXPECT_THROW(sample_affine(gen, bad), std::invalid_argument);
}

TEST(DataTransforms, Errors) {
  Image img = random_image(4, 4, 1);
  EXPECT_THROW(transform(img, 0), std::invalid_argument);
  EXPECT_THROW(transform(img, 8, Affine{0.f, 0.f, false}), std::invalid_argument);
  Normalize n;
  n.std[1] = 0.f;
  EXPECT_THROW(transform(img, 8, Affine{}, n), std::invalid_argument);
  Image broken = img;
  broken.pixels.pop_back();
  expect_throw_with<std::invalid_argument>([&] { transform(broken, 8); }, {"transform", "4x4x3", "47 bytes"});
}

// ============================================================================================= loader

namespace {

// The first `n` training samples (or skips when the data is absent).
std::vector<Sample> first_train_samples(const std::string& dir, size_t n) {
  std::vector<Sample> s = read_split(dir, "train");
  s.resize(std::min(n, s.size()));
  return s;
}

std::vector<Batch> whole_epoch(Loader& loader, int epoch) {
  loader.start_epoch(epoch);
  std::vector<Batch> out;
  Batch b;
  while (loader.next(b)) out.push_back(b);
  return out;
}

void expect_same_batches(const std::vector<Batch>& a, const std::vector<Batch>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].names, b[i].names) << what << " batch " << i;
    ASSERT_EQ(a[i].images.shape(), b[i].images.shape()) << what << " batch " << i;
    EXPECT_EQ(ops::max_abs_diff(a[i].images, b[i].images), 0.0) << what << " batch " << i;
    EXPECT_EQ(a[i].covid.to_vector(), b[i].covid.to_vector());
    EXPECT_EQ(a[i].lesions.to_vector(), b[i].lesions.to_vector());
    EXPECT_EQ(a[i].lesion_mask.to_vector(), b[i].lesion_mask.to_vector());
  }
}

}  // namespace

TEST(DataLoader, SameSeedAndEpochGiveIdenticalBatchesForAnyThreading) {
  REQUIRE_DATA(dir);
  std::vector<Sample> samples = first_train_samples(dir, 30);
  LoaderOptions o;
  o.batch_size = 8;
  o.shuffle = true;
  o.augment = true;
  o.image_size = 48;
  o.seed = 7;
  o.workers = 2;
  Loader two(samples, o);
  std::vector<Batch> ref = whole_epoch(two, 3);
  ASSERT_EQ(ref.size(), 4u);  // 8 + 8 + 8 + 6
  EXPECT_EQ(ref.back().size(), 6);
  expect_same_batches(whole_epoch(two, 3), ref, "same loader, epoch 3 again");
  o.workers = 0;
  Loader inline_loader(samples, o);
  expect_same_batches(whole_epoch(inline_loader, 3), ref, "workers = 0");
  o.workers = 3;
  o.prefetch = 1;
  Loader three(samples, o);
  expect_same_batches(whole_epoch(three, 3), ref, "workers = 3, prefetch = 1");

  // Another epoch: another order, and other augmentations of the same images.
  std::vector<Batch> other = whole_epoch(two, 4);
  std::vector<std::string> order3, order4;
  for (const Batch& b : ref) order3.insert(order3.end(), b.names.begin(), b.names.end());
  for (const Batch& b : other) order4.insert(order4.end(), b.names.begin(), b.names.end());
  EXPECT_NE(order3, order4);
  std::vector<std::string> sorted3 = order3, sorted4 = order4;
  std::sort(sorted3.begin(), sorted3.end());
  std::sort(sorted4.begin(), sorted4.end());
  EXPECT_EQ(sorted3, sorted4);  // a permutation of the same samples
  EXPECT_EQ(std::set<std::string>(sorted3.begin(), sorted3.end()).size(), samples.size());  // each once
  const Affine a3 = two.augmentation(3, 0), a4 = two.augmentation(4, 0);
  EXPECT_TRUE(a3.scale != a4.scale || a3.shear != a4.shear);
  // Another seed: another order.
  o.seed = 8;
  o.workers = 2;
  Loader seeded(samples, o);
  EXPECT_NE(seeded.epoch_order(3), two.epoch_order(3));
}

TEST(DataLoader, BatchesHoldTheTransformedImagesAndLabels) {
  REQUIRE_DATA(dir);
  std::vector<Sample> all = read_split(dir, "val");
  // Rows with and without lesion labels, COVID and not.
  std::vector<Sample> samples(all.begin(), all.begin() + 12);
  LoaderOptions o;
  o.batch_size = 5;
  o.shuffle = true;
  o.augment = true;
  o.image_size = 40;
  o.seed = 3;
  Loader loader(samples, o);
  EXPECT_EQ(loader.num_batches(), 3);
  std::vector<Batch> batches = whole_epoch(loader, 1);
  ASSERT_EQ(batches.size(), 3u);
  std::vector<int64_t> order = loader.epoch_order(1);
  size_t pos = 0;
  for (const Batch& b : batches) {
    const int64_t n = b.size();
    EXPECT_EQ(b.images.shape(), (Shape{n, 3, 40, 40}));
    EXPECT_EQ(b.covid.shape(), (Shape{n, 1}));
    EXPECT_EQ(b.lesions.shape(), (Shape{n, 5}));
    EXPECT_EQ(b.lesion_mask.shape(), (Shape{n, 1}));
    for (int64_t i = 0; i < n; ++i, ++pos) {
      const int64_t idx = order[pos];
      ASSERT_EQ(b.indices[i], idx);
      const Sample& s = samples[idx];
      EXPECT_EQ(b.names[i], s.name);
      EXPECT_EQ(b.covid.at({i, 0}), s.covid);
      for (int64_t k = 0; k < 5; ++k) EXPECT_EQ(b.lesions.at({i, k}), s.lesions[k]);
      EXPECT_EQ(b.lesion_mask.at({i, 0}), s.has_lesion_labels ? 1.0 : 0.0);
      Tensor expect = transform(read_image(s.path), 40, loader.augmentation(1, idx));
      EXPECT_EQ(ops::max_abs_diff(b.images.narrow(0, i, 1).reshape({3, 40, 40}), expect), 0.0) << s.name;
    }
  }
  EXPECT_EQ(pos, samples.size());

  // No shuffle, no augmentation, drop_last: the CSV order, plain resized images, only full batches.
  o.shuffle = false;
  o.augment = false;
  o.drop_last = true;
  Loader plain(samples, o);
  EXPECT_EQ(plain.num_batches(), 2);
  std::vector<Batch> pb = whole_epoch(plain, 9);
  ASSERT_EQ(pb.size(), 2u);
  EXPECT_EQ(pb[1].names.front(), samples[5].name);
  EXPECT_EQ(ops::max_abs_diff(pb[0].images.narrow(0, 2, 1).reshape({3, 40, 40}),
                              transform(read_image(samples[2].path), 40)),
            0.0);
}

TEST(DataLoader, BadImagesThrowOrAreSkipped) {
  TinyData d;
  std::string rows = kHeader;
  // ok0 ok1 | bad_a bad_b | ok2 ok3 | ok4   with batch_size 2 and no shuffle.
  for (const char* name : {"ok0.png", "ok1.png"})
    d.image("CT_COVID", name, random_image(12, 9, 1)), rows += std::string(name) + ",CVD19,GGO,,,,\r\n";
  fs::create_directories(d.dir.path() / "CT_NonCOVID");
  write_bytes(d.dir.str("CT_NonCOVID/bad_a.png"), read_bytes(d.dir.str("CT_COVID/ok0.png")),
              40);                                                    // truncated
  write_text(d.dir.path() / "CT_NonCOVID" / "bad_b.png", "hello\n");  // not an image
  rows += "bad_a.png,,,,,,\r\nbad_b.png,,,,,,\r\n";
  for (const char* name : {"ok2.png", "ok3.png", "ok4.png"})
    d.image("CT_NonCOVID", name, random_image(9, 12, 2)), rows += std::string(name) + ",,,,,,\r\n";
  d.csv("train", rows);
  std::vector<Sample> samples = read_split(d.dir.str(), "train");
  ASSERT_EQ(samples.size(), 7u);

  LoaderOptions o;
  o.batch_size = 2;
  o.image_size = 16;
  for (int workers : {0, 2}) {
    o.workers = workers;
    o.skip_bad = false;
    Loader strict(samples, o);
    Batch b;
    EXPECT_THROW(strict.next(b), std::logic_error);  // before start_epoch
    strict.start_epoch(0);
    ASSERT_TRUE(strict.next(b));
    EXPECT_EQ(b.names, (std::vector<std::string>{"ok0.png", "ok1.png"}));
    expect_throw_with<std::runtime_error>(
        [&] { strict.next(b); }, {"epoch 0, batch 1", "cannot decode", d.dir.str("CT_NonCOVID/bad_a.png")});
    EXPECT_FALSE(strict.next(b));  // the epoch ended with the error
    strict.start_epoch(1);         // and a new one starts cleanly
    ASSERT_TRUE(strict.next(b));
    EXPECT_EQ(b.size(), 2);

    o.skip_bad = true;
    Loader lenient(samples, o);
    testing::internal::CaptureStderr();
    std::vector<Batch> got = whole_epoch(lenient, 0);
    const std::string warnings = testing::internal::GetCapturedStderr();
    ASSERT_EQ(got.size(), 3u) << "the batch of two bad images is skipped";
    EXPECT_EQ(got[1].names, (std::vector<std::string>{"ok2.png", "ok3.png"}));
    EXPECT_EQ(got[2].names, (std::vector<std::string>{"ok4.png"}));
    EXPECT_EQ(got[2].images.shape(), (Shape{1, 3, 16, 16}));
    EXPECT_EQ(lenient.skipped(), 2);
    EXPECT_NE(warnings.find("bad_a.png"), std::string::npos) << warnings;
    EXPECT_NE(warnings.find("bad_b.png"), std::string::npos) << warnings;
  }

  // A batch mixing good and bad images shrinks.
  std::vector<Sample> mixed = {samples[0], samples[2], samples[4]};
  o.batch_size = 3;
  o.workers = 1;
  Loader lenient(mixed, o);
  testing::internal::CaptureStderr();
  std::vector<Batch> got = whole_epoch(lenient, 0);
  testing::internal::GetCapturedStderr();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].names, (std::vector<std::string>{"ok0.png", "ok2.png"}));
  EXPECT_EQ(got[0].images.shape(), (Shape{2, 3, 16, 16}));
  EXPECT_EQ(got[0].covid.to_vector(), (std::vector<double>{1, 0}));
  EXPECT_EQ(got[0].lesion_mask.to_vector(), (std::vector<double>{1, 0}));
}

TEST(DataLoader, CachedDecodesGiveTheSameBatchesWithinTheBudget) {
  TinyData d;
  std::string rows = kHeader;
  // Six images of 12x9, 9x12, 10x10, ... pixels (RGB bytes: 324, 324, 300, ...) and one bad file.
  const int sides[6][2] = {{12, 9}, {9, 12}, {10, 10}, {14, 8}, {8, 8}, {11, 13}};
  int64_t total = 0;
  for (int i = 0; i < 6; ++i) {
    const std::string name = "img" + std::to_string(i) + ".png";
    d.image(i % 2 ? "CT_NonCOVID" : "CT_COVID", name, random_image(sides[i][0], sides[i][1], 10 + i));
    rows += name + (i % 2 ? ",,,,,," : ",CVD19,GGO,,,,") + "\r\n";
    total += int64_t{3} * sides[i][0] * sides[i][1];
  }
  write_text(d.dir.path() / "CT_NonCOVID" / "bad.png", "not a png\n");
  rows += "bad.png,,,,,,\r\n";
  d.csv("train", rows);
  const std::vector<Sample> samples = read_split(d.dir.str(), "train");
  ASSERT_EQ(samples.size(), 7u);

  LoaderOptions o;
  o.batch_size = 3;
  o.image_size = 16;
  o.shuffle = true;
  o.augment = true;
  o.skip_bad = true;
  o.seed = 11;
  o.workers = 2;
  testing::internal::CaptureStderr();
  Loader plain(samples, o);
  const std::vector<Batch> ref0 = whole_epoch(plain, 0), ref1 = whole_epoch(plain, 1);
  EXPECT_EQ(plain.cached_images(), 0);
  EXPECT_EQ(plain.cached_bytes(), 0);

  o.cache_bytes = int64_t{1} << 30;
  Loader cached(samples, o);
  expect_same_batches(whole_epoch(cached, 0), ref0, "cache filling, epoch 0");
  EXPECT_EQ(cached.cached_images(), 6) << "every good image, never the bad one";
  EXPECT_EQ(cached.cached_bytes(), total);
  // From the cache: epoch 1 needs none of the files it cached (they are gone), only the bad one again.
  for (const Sample& sample : samples)
    if (sample.name != "bad.png") fs::remove(sample.path);
  expect_same_batches(whole_epoch(cached, 1), ref1, "from the cache, epoch 1, files removed");
  EXPECT_EQ(cached.skipped(), 1) << "the bad image is read (and skipped) again each epoch";
  EXPECT_EQ(cached.cached_bytes(), total);
  for (int i = 0; i < 6; ++i)  // the files back, for the budget runs below
    d.image(i % 2 ? "CT_NonCOVID" : "CT_COVID", "img" + std::to_string(i) + ".png",
            random_image(sides[i][0], sides[i][1], 10 + i));

  // A budget below the smallest image (192 bytes) keeps nothing; one of 700 keeps exactly two images
  // whatever the order (the three smallest take 816 bytes; the largest, 429, and the smallest fit);
  // the batches never change.
  for (int64_t budget : {int64_t{100}, int64_t{700}}) {
    o.cache_bytes = budget;
    for (int workers : {0, 3}) {
      o.workers = workers;
      Loader small(samples, o);
      expect_same_batches(whole_epoch(small, 0), ref0, "budget " + std::to_string(budget));
      expect_same_batches(whole_epoch(small, 1), ref1, "budget " + std::to_string(budget));
      EXPECT_LE(small.cached_bytes(), budget);
      if (budget == 100) EXPECT_EQ(small.cached_images(), 0);
      if (budget == 700) {
        EXPECT_EQ(small.cached_images(), 2);
        EXPECT_GE(small.cached_bytes(), 192 + 300);
      }
    }
  }
  testing::internal::GetCapturedStderr();
}

TEST(DataLoader, StopsCleanlyMidEpochAndRestarts) {
  REQUIRE_DATA(dir);
  std::vector<Sample> samples = first_train_samples(dir, 40);
  LoaderOptions o;
  o.batch_size = 4;
  o.image_size = 32;
  o.shuffle = true;
  o.prefetch = 4;
  {
    Loader never_started(samples, o);  // workers idle, then joined
  }
  {
    Loader loader(samples, o);
    loader.start_epoch(0);
    Batch b;
    ASSERT_TRUE(loader.next(b));  // workers are busy prefetching when the loader goes away
  }
  Loader loader(samples, o);
  loader.start_epoch(5);
  Batch first, again;
  ASSERT_TRUE(loader.next(first));
  ASSERT_TRUE(loader.next(again));
  loader.start_epoch(5);  // restart mid-epoch: the prefetched batches of the old run are dropped
  ASSERT_TRUE(loader.next(again));
  EXPECT_EQ(again.names, first.names);
  EXPECT_EQ(ops::max_abs_diff(again.images, first.images), 0.0);
  int count = 1;
  while (loader.next(again)) ++count;
  EXPECT_EQ(count, 10);
  EXPECT_FALSE(loader.next(again));  // stays at the end
}

TEST(DataLoader, EmptyListAndOptionErrors) {
  LoaderOptions o;
  Loader empty({}, o);
  EXPECT_EQ(empty.num_batches(), 0);
  empty.start_epoch(0);
  Batch b;
  EXPECT_FALSE(empty.next(b));
  for (auto bad : std::vector<std::function<void(LoaderOptions&)>>{
           [](LoaderOptions& x) { x.batch_size = 0; }, [](LoaderOptions& x) { x.image_size = 0; },
           [](LoaderOptions& x) { x.workers = -1; }, [](LoaderOptions& x) { x.prefetch = 0; },
           [](LoaderOptions& x) { x.cache_bytes = -1; },
           [](LoaderOptions& x) { x.normalize.std[2] = 0.f; },
           [](LoaderOptions& x) { x.augment = true, x.augment_config.scale_min = -1.f; }}) {
    LoaderOptions x;
    bad(x);
    EXPECT_THROW(Loader({}, x), std::invalid_argument);
  }
}
