// data/image.cpp — file reading, stb decoding with checks, PNG writing.
#include "data/image.h"

#include <stb_image.h>
#include <stb_image_write.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>

namespace ladnn::data {

namespace detail {
void clear_stbi_failure_reason();  // data/stb_image_impl.cpp
}  // namespace detail

namespace {

[[noreturn]] void fail(const std::string& name, const std::string& reason) {
  throw std::runtime_error("data: cannot decode '" + name + "': " + reason);
}

bool starts_with(const uint8_t* data, size_t size, const char* magic, size_t n) {
  return size >= n && std::memcmp(data, magic, n) == 0;
}

// stb's JPEG decoder reads past the end of a truncated file as zeros and returns a half-grey image
// without complaint. A complete JPEG ends its last scan with an EOI marker (FF D9); inside
// entropy-coded data every FF byte is followed by 00 or a restart marker, so a marker pair seen there
// is real. The last EOI must therefore come after the last start-of-scan (FF DA). An EXIF thumbnail
// has its own SOS and EOI, but it sits before the main image's scans, so it does not fool the test.
bool jpeg_is_complete(const uint8_t* data, size_t size) {
  long last_sos = -1, last_eoi = -1;
  for (size_t i = 0; i + 1 < size; ++i) {
    if (data[i] != 0xFF) continue;
    if (data[i + 1] == 0xDA) last_sos = static_cast<long>(i);
    if (data[i + 1] == 0xD9) last_eoi = static_cast<long>(i);
  }
  return last_sos >= 0 && last_eoi > last_sos;
}

// stb decodes a PNG whose IEND chunk is cut off, and some cuts inside the last chunk surface only as an
// empty error string. A complete PNG has the fixed 12-byte IEND chunk (length 0, "IEND", CRC AE426082);
// bytes after it are tolerated.
bool png_is_complete(const uint8_t* data, size_t size) {
  static const uint8_t iend[12] = {0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xAE, 0x42, 0x60, 0x82};
  for (size_t i = size; i >= 12; --i)
    if (std::memcmp(data + i - 12, iend, 12) == 0) return true;
  return false;
}

// stb's reason, or a sentence when it gave none (stb reports an unknown chunk of type 0, which a cut
// inside the last chunk produces, as an empty string).
std::string stb_reason(bool truncated_png) {
  const char* r = stbi_failure_reason();
  if (r != nullptr && r[0] != '\0') return r;
  return truncated_png ? "truncated PNG (no IEND chunk)"
                       : "corrupt or truncated data (stb_image gave no detail)";
}

}  // namespace

Image decode_image(const uint8_t* data, size_t size, const std::string& name) {
  if (size == 0) fail(name, "the file is empty");
  if (size > static_cast<size_t>(INT32_MAX)) fail(name, "the file is larger than 2 GiB");
  const bool is_png = starts_with(data, size, "\x89PNG\r\n\x1a\n", 8);
  const bool is_jpeg = starts_with(data, size, "\xFF\xD8\xFF", 3);
  const bool truncated_png = is_png && !png_is_complete(data, size);

  const int len = static_cast<int>(size);
  int w = 0, h = 0, c = 0;
  detail::clear_stbi_failure_reason();
  if (!stbi_info_from_memory(data, len, &w, &h, &c)) fail(name, stb_reason(truncated_png));
  if (w < 1 || h < 1 || w > kMaxImageSide || h > kMaxImageSide ||
      static_cast<int64_t>(w) * h > kMaxImagePixels)
    fail(name, "implausible size " + std::to_string(w) + "x" + std::to_string(h) +
                   " (each side must be in [1, " + std::to_string(kMaxImageSide) + "] and at most " +
                   std::to_string(kMaxImagePixels) + " pixels)");

  // req_comp = 3: stb replicates grey into RGB and drops alpha, as PIL's convert('RGB').
  std::unique_ptr<stbi_uc, void (*)(void*)> pixels(stbi_load_from_memory(data, len, &w, &h, &c, 3),
                                                   stbi_image_free);
  if (!pixels) fail(name, stb_reason(truncated_png));
  // What stb lets through: a cut it does not notice (checked after decoding, so that stb's own reason
  // is the one reported whenever it has one).
  if (is_jpeg && !jpeg_is_complete(data, size))
    fail(name, "truncated JPEG (no end-of-image marker after the last scan)");
  if (truncated_png) fail(name, "truncated PNG (no IEND chunk)");
  Image img;
  img.width = w;
  img.height = h;
  img.channels = 3;
  img.pixels.assign(pixels.get(), pixels.get() + static_cast<size_t>(w) * h * 3);
  return img;
}

Image read_image(const std::string& path) {
  // A folder opens fine with fopen on Linux and then reports a nonsense size: check the kind first.
  struct stat st;
  if (::stat(path.c_str(), &st) != 0)
    fail(path, std::string("cannot open the file (") + std::strerror(errno) + ")");
  if (!S_ISREG(st.st_mode)) fail(path, "not a regular file");
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) fail(path, std::string("cannot open the file (") + std::strerror(errno) + ")");
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(f, std::fclose);
  if (std::fseek(f, 0, SEEK_END) != 0) fail(path, "cannot seek in the file (is it a regular file?)");
  long size = std::ftell(f);
  if (size < 0) fail(path, "cannot tell the file's size (is it a regular file?)");
  std::rewind(f);
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  if (size > 0 && std::fread(bytes.data(), 1, bytes.size(), f) != bytes.size())
    fail(path, std::string("read error (") + std::strerror(errno) + ")");
  return decode_image(bytes.data(), bytes.size(), path);
}

void write_png(const std::string& path, const Image& image) {
  const int c = image.channels;
  if (c < 1 || c > 4)
    throw std::invalid_argument("write_png: '" + path + "': channels must be 1 to 4, got " +
                                std::to_string(c));
  if (image.width < 1 || image.height < 1 ||
      image.pixels.size() != static_cast<size_t>(image.width) * image.height * c)
    throw std::invalid_argument("write_png: '" + path + "': " + std::to_string(image.width) + "x" +
                                std::to_string(image.height) + "x" + std::to_string(c) + " image holds " +
                                std::to_string(image.pixels.size()) + " bytes");
  std::vector<uint8_t> encoded;
  auto append = [](void* ctx, void* data, int size) {
    auto* out = static_cast<std::vector<uint8_t>*>(ctx);
    out->insert(out->end(), static_cast<uint8_t*>(data), static_cast<uint8_t*>(data) + size);
  };
  if (!stbi_write_png_to_func(append, &encoded, image.width, image.height, c, image.pixels.data(),
                              image.width * c))
    throw std::runtime_error("write_png: cannot encode '" + path + "'");
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr)
    throw std::runtime_error("write_png: cannot create '" + path + "': " + std::strerror(errno));
  size_t written = std::fwrite(encoded.data(), 1, encoded.size(), f);
  int closed = std::fclose(f);
  if (written != encoded.size() || closed != 0)
    throw std::runtime_error("write_png: cannot write '" + path + "': " + std::strerror(errno));
}

}  // namespace ladnn::data
