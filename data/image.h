// data/image.h — decoded 8-bit RGB images: PNG and JPEG in, PNG out (stb_image / stb_image_write).
//
// Every image comes out as 3-channel RGB, whatever the file holds: grey is replicated into R, G and B,
// and an alpha channel is dropped (not composited), as PIL's Image.convert('RGB') does, so a
// PyTorch pipeline that opens the same file sees the same pixels. 16-bit PNGs are reduced to 8 bits.
// Decoding is thread-safe (stb keeps its error string per thread).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ladnn::data {

/// A decoded image: `pixels` holds height rows of width RGB triples (HWC, row-major).
struct Image {
  int width = 0;
  int height = 0;
  int channels = 3;
  std::vector<uint8_t> pixels;  // (height, width, channels)

  uint8_t at(int y, int x, int c) const {
    return pixels[(static_cast<size_t>(y) * width + x) * channels + c];
  }
};

/// Largest accepted side and pixel count: a CT slice is at most a few thousand pixels a side, and
/// these bounds stop a corrupt header from asking for gigabytes.
inline constexpr int kMaxImageSide = 16384;
inline constexpr int64_t kMaxImagePixels = int64_t{64} << 20;

/// Reads and decodes a PNG (grey, grey+alpha, RGB, RGBA, palette; 8 or 16 bit) or JPEG (baseline or
/// progressive) file into RGB. Throws std::runtime_error naming the file and the reason, e.g.
/// "data: cannot decode 'x.png': bad png sig" — for a missing or unreadable file, an empty, truncated
/// or non-image file, or dimensions outside [1, kMaxImageSide] / above kMaxImagePixels.
Image read_image(const std::string& path);

/// Decodes an encoded PNG or JPEG held in memory; `name` is used in error messages.
Image decode_image(const uint8_t* data, size_t size, const std::string& name);

/// Writes `image` as a PNG: 1 channel grey, 2 grey + alpha, 3 RGB, 4 RGBA. Throws std::runtime_error naming
/// the file on failure.
void write_png(const std::string& path, const Image& image);

}  // namespace ladnn::data
