// data/stb_image_impl.cpp — the one translation unit that compiles stb_image and stb_image_write.
//
// Only PNG and JPEG are compiled in: those are the formats of the COVID-CT data, and a smaller
// decoder is a smaller attack surface for files from the internet. Everything else is rejected as
// "unknown image type". stb's own warnings are not ours to fix, so they are silenced here only.
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#endif

#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_NO_STDIO  // files are read by data/image.cpp, which reports open errors itself
#define STB_IMAGE_IMPLEMENTATION
#include <stb_image.h>

#define STBI_WRITE_NO_STDIO  // write_png encodes to memory and writes the file itself
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>

#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace ladnn::data::detail {
// stb keeps its last error in a per-thread static and some failures return without setting one; clearing
// it before a decode keeps an old reason from being reported for a new file (data/image.cpp).
void clear_stbi_failure_reason() {
  stbi__g_failure_reason = nullptr;
}
}  // namespace ladnn::data::detail
