// tensor/safetensors.cpp — safetensors reader and atomic writer (format in tensor/safetensors.h).
//
// Reading: stat the file, read the 8-byte length and the JSON header, validate every tensor entry
// (dtype, shape, offsets, and that the entries tile the data exactly), and only then read each tensor's
// bytes straight into its storage with pread. Nothing is trusted before it is checked, so a corrupt
// length or offset becomes an error message rather than a huge allocation or an out-of-bounds read.
//
// Writing: serialise the header (padded with spaces so the data starts 8-byte aligned, as the Rust
// reference does), write header and data to "<path>.tmp.<pid>", fsync, rename over <path>, fsync the
// directory. Any failure removes the temporary file and leaves <path> as it was.
#include "tensor/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <stdexcept>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "ladnn's safetensors reader assumes a little-endian host (the format's byte order)"
#endif

namespace ladnn {

namespace {

using ordered_json = nlohmann::ordered_json;

// The reference implementation refuses headers over 100 MB; so do we, before allocating them.
constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;

/// The on-disk element types we understand, and what they become in memory.
enum class FileDType { F32, F64, I64, F16, BF16 };

struct FileDTypeInfo {
  FileDType file;
  DType memory;
  std::size_t file_size;  // bytes per element on disk
};

bool parse_dtype(const std::string& s, FileDTypeInfo* out) {
  if (s == "F32") *out = {FileDType::F32, DType::Float32, 4};
  else if (s == "F64") *out = {FileDType::F64, DType::Float64, 8};
  else if (s == "I64") *out = {FileDType::I64, DType::Int64, 8};
  else if (s == "F16") *out = {FileDType::F16, DType::Float32, 2};
  else if (s == "BF16") *out = {FileDType::BF16, DType::Float32, 2};
  else return false;
  return true;
}

// Other dtypes the format defines: refused, but recognised so the message can say "not supported"
// rather than "unknown".
bool is_known_unsupported_dtype(const std::string& s) {
  static const char* const kKnown[] = {"BOOL", "U8",  "I8",  "I16",     "U16",     "I32",
                                       "U32",  "U64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3",
                                       "F6_E3M2", "C64"};
  for (const char* k : kKnown)
    if (s == k) return true;
  return false;
}

/// IEEE half -> float, exact (every half is representable as a float).
float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;  // +-0
    } else {
      // Subnormal half: normalise into a float (float has room for the whole range).
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      bits = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf / nan (payload kept)
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

float bf16_to_float(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

std::string errno_text(int err) { return std::strerror(err); }

/// "safetensors: <path>: <what>" — the prefix of every load error.
[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error("safetensors: " + path + ": " + what);
}

/// Closes a file descriptor on scope exit (RAII; never throws).
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

/// Reads exactly `n` bytes at `offset`; fails naming `what` on a short read or an I/O error.
void pread_exact(int fd, void* buf, uint64_t n, uint64_t offset, const std::string& path,
                 const std::string& what) {
  auto* p = static_cast<char*>(buf);
  while (n > 0) {
    const std::size_t chunk = static_cast<std::size_t>(std::min<uint64_t>(n, 1u << 30));
    const ssize_t r = ::pread(fd, p, chunk, static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      fail(path, "reading " + what + " failed: " + errno_text(errno));
    }
    if (r == 0) fail(path, "unexpected end of file while reading " + what);
    p += r;
    n -= static_cast<uint64_t>(r);
    offset += static_cast<uint64_t>(r);
  }
}

std::string json_type_name(const ordered_json& j) { return j.type_name(); }

std::string offsets_str(uint64_t b, uint64_t e) {
  return "[" + std::to_string(b) + ", " + std::to_string(e) + "]";
}

/// One validated header entry, before its data is read.
struct Entry {
  std::string name;
  FileDTypeInfo dtype;
  Shape shape;
  uint64_t begin = 0, end = 0;
};

/// Validates one tensor entry of the header; `data_size` is the byte count after the header.
Entry parse_entry(const std::string& path, const std::string& name, const ordered_json& info,
                  uint64_t data_size) {
  const std::string where = "tensor '" + name + "'";
  if (!info.is_object())
    fail(path, where + ": entry must be a JSON object with dtype, shape and data_offsets, got " +
                   json_type_name(info));
  Entry e;
  e.name = name;

  // dtype
  auto it = info.find("dtype");
  if (it == info.end()) fail(path, where + ": field 'dtype' is missing");
  if (!it->is_string()) fail(path, where + ": field 'dtype' must be a string, got " + json_type_name(*it));
  const std::string dtype = it->get<std::string>();
  if (!parse_dtype(dtype, &e.dtype)) {
    if (is_known_unsupported_dtype(dtype))
      fail(path, where + ": dtype '" + dtype +
                     "' is not supported (ladnn reads F32, F64, I64, F16 and BF16)");
    fail(path, where + ": unknown dtype '" + dtype + "' (ladnn reads F32, F64, I64, F16 and BF16)");
  }

  // shape
  it = info.find("shape");
  if (it == info.end()) fail(path, where + ": field 'shape' is missing");
  if (!it->is_array()) fail(path, where + ": field 'shape' must be an array, got " + json_type_name(*it));
  // numel is bounded by the data size (checked below), so cap the running product there to avoid
  // overflow on absurd shapes: anything past the cap cannot match the offsets anyway.
  const uint64_t cap = std::numeric_limits<int64_t>::max() / 16;
  uint64_t numel = 1;
  bool zero = false;
  for (std::size_t d = 0; d < it->size(); ++d) {
    const ordered_json& s = (*it)[d];
    // nlohmann parses non-negative integers as unsigned and negative ones as signed.
    if (!s.is_number_unsigned())
      fail(path, where + ": shape[" + std::to_string(d) + "] must be a non-negative integer, got " +
                     s.dump());
    const uint64_t v = s.get<uint64_t>();
    if (v > cap) fail(path, where + ": shape[" + std::to_string(d) + "] = " + std::to_string(v) + " is too large");
    e.shape.push_back(static_cast<int64_t>(v));
    if (v == 0) zero = true;
    if (!zero) {
      if (numel > cap / v)
        fail(path, where + ": shape " + shape_str(e.shape) + "... has too many elements");
      numel *= v;
    }
  }
  if (zero) numel = 0;

  // data_offsets
  it = info.find("data_offsets");
  if (it == info.end()) fail(path, where + ": field 'data_offsets' is missing");
  if (!it->is_array() || it->size() != 2)
    fail(path, where + ": field 'data_offsets' must be an array [begin, end], got " + it->dump());
  for (int k = 0; k < 2; ++k) {
    const ordered_json& o = (*it)[k];
    if (!o.is_number_unsigned())
      fail(path, where + ": data_offsets[" + std::to_string(k) + "] must be a non-negative integer, got " +
                     o.dump());
  }
  e.begin = (*it)[0].get<uint64_t>();
  e.end = (*it)[1].get<uint64_t>();
  if (e.begin > e.end)
    fail(path, where + ": data_offsets " + offsets_str(e.begin, e.end) + " end before they begin");
  if (e.end > data_size)
    fail(path, where + ": data_offsets " + offsets_str(e.begin, e.end) + " run past the end of the data (" +
                   std::to_string(data_size) + " bytes after the header)");
  const uint64_t need = numel * e.dtype.file_size;
  if (e.end - e.begin != need)
    fail(path, where + ": data_offsets " + offsets_str(e.begin, e.end) + " hold " +
                   std::to_string(e.end - e.begin) + " bytes but shape " + shape_str(e.shape) + " of " +
                   dtype + " needs " + std::to_string(need));
  return e;
}

}  // namespace

const char* safetensors_dtype(DType dtype) {
  switch (dtype) {
    case DType::Float32: return "F32";
    case DType::Float64: return "F64";
    case DType::Int64: return "I64";
  }
  throw std::invalid_argument("safetensors_dtype: unknown dtype");
}

const Tensor& SafetensorsFile::at(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return t;
  throw std::out_of_range("safetensors: " + (path.empty() ? std::string("<in memory>") : path) +
                          ": no tensor named '" + name + "' (the file holds " +
                          std::to_string(tensors.size()) + " tensors)");
}

bool SafetensorsFile::contains(const std::string& name) const {
  for (const auto& kv : tensors)
    if (kv.first == name) return true;
  return false;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(tensors.size());
  for (const auto& kv : tensors) out.push_back(kv.first);
  return out;
}

SafetensorsFile load_safetensors(const std::string& path) {
  Fd fd;
  do {
    fd.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  } while (fd.fd < 0 && errno == EINTR);
  if (fd.fd < 0) fail(path, "cannot open for reading: " + errno_text(errno));
  struct stat st;
  if (::fstat(fd.fd, &st) != 0) fail(path, "cannot stat: " + errno_text(errno));
  if (!S_ISREG(st.st_mode)) fail(path, "is not a regular file");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);

  // ---- header length ----
  if (file_size < 8)
    fail(path, "file is " + std::to_string(file_size) +
                   " bytes, too short for the 8-byte header length (truncated or not a safetensors file)");
  unsigned char len_bytes[8];
  pread_exact(fd.fd, len_bytes, 8, 0, path, "the header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  if (header_len > file_size - 8)
    fail(path, "header length " + std::to_string(header_len) + " runs past the end of the file (" +
                   std::to_string(file_size) + " bytes; truncated or not a safetensors file)");
  if (header_len > kMaxHeaderBytes)
    fail(path, "header length " + std::to_string(header_len) + " is over the 100 MB limit");
  if (header_len < 2) fail(path, "header length " + std::to_string(header_len) + " is too short for a JSON object");
  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = file_size - data_start;

  // ---- header JSON ----
  std::string text(static_cast<std::size_t>(header_len), '\0');
  pread_exact(fd.fd, text.data(), header_len, 8, path, "the header");
  if (text[0] != '{')
    fail(path, "header does not start with '{' (not a safetensors file, or corrupt)");
  // Duplicate keys would silently drop a tensor (JSON keeps the last); detect them while parsing.
  std::vector<std::set<std::string>> key_stack;
  std::string duplicate;
  auto callback = [&](int /*depth*/, nlohmann::json::parse_event_t event, ordered_json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (event == E::object_start) {
      key_stack.emplace_back();
    } else if (event == E::object_end) {
      if (!key_stack.empty()) key_stack.pop_back();
    } else if (event == E::key && !key_stack.empty() && parsed.is_string()) {
      const std::string k = parsed.get<std::string>();
      if (!key_stack.back().insert(k).second && duplicate.empty()) duplicate = k;
    }
    return true;
  };
  ordered_json header;
  try {
    header = ordered_json::parse(text, callback);
  } catch (const nlohmann::json::exception& e) {
    fail(path, std::string("header is not valid JSON (") + e.what() + ")");
  }
  if (!duplicate.empty()) fail(path, "header lists the key '" + duplicate + "' twice");
  if (!header.is_object()) fail(path, "header must be a JSON object, got " + json_type_name(header));

  SafetensorsFile out;
  out.path = path;
  std::vector<Entry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      const ordered_json& m = it.value();
      if (!m.is_object())
        fail(path, "field '__metadata__' must be an object of strings, got " + json_type_name(m));
      for (auto mi = m.begin(); mi != m.end(); ++mi) {
        if (!mi.value().is_string())
          fail(path, "__metadata__['" + mi.key() + "'] must be a string, got " + json_type_name(mi.value()));
        out.metadata[mi.key()] = mi.value().get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(path, it.key(), it.value(), data_size));
  }

  // ---- the entries must tile [0, data_size) exactly ----
  std::vector<const Entry*> by_offset;
  for (const Entry& e : entries) by_offset.push_back(&e);
  std::stable_sort(by_offset.begin(), by_offset.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t covered = 0;
  const Entry* prev = nullptr;
  for (const Entry* e : by_offset) {
    if (e->begin < covered)
      fail(path, "tensors '" + prev->name + "' " + offsets_str(prev->begin, prev->end) + " and '" + e->name +
                     "' " + offsets_str(e->begin, e->end) + " overlap");
    if (e->begin > covered)
      fail(path, "bytes [" + std::to_string(covered) + ", " + std::to_string(e->begin) +
                     ") of the data belong to no tensor (gap before tensor '" + e->name + "')");
    covered = e->end;
    prev = e;
  }
  if (covered != data_size)
    fail(path, std::to_string(data_size - covered) + " bytes of trailing data after the last tensor" +
                   (prev ? " ('" + prev->name + "' ends at " + std::to_string(covered) + ")" : std::string()) +
                   " (corrupt, or not a safetensors file)");

  // ---- data ----
  out.tensors.reserve(entries.size());
  for (const Entry& e : entries) {
    Tensor t = Tensor::empty(e.shape, e.dtype.memory);
    const uint64_t nbytes = e.end - e.begin;
    const std::string what = "the data of tensor '" + e.name + "'";
    if (nbytes > 0) {
      if (e.dtype.file == FileDType::F16 || e.dtype.file == FileDType::BF16) {
        std::vector<uint16_t> raw(static_cast<std::size_t>(nbytes / 2));
        pread_exact(fd.fd, raw.data(), nbytes, data_start + e.begin, path, what);
        float* dst = t.data<float>();
        for (std::size_t i = 0; i < raw.size(); ++i)
          dst[i] = e.dtype.file == FileDType::F16 ? half_to_float(raw[i]) : bf16_to_float(raw[i]);
      } else {
        pread_exact(fd.fd, t.raw_data(), nbytes, data_start + e.begin, path, what);
      }
    }
    out.tensors.emplace_back(e.name, std::move(t));
  }
  return out;
}

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // ---- validate and gather contiguous CPU copies before touching the disk ----
  std::vector<Tensor> data;
  data.reserve(tensors.size());
  std::set<std::string> seen;
  ordered_json header = ordered_json::object();
  if (!metadata.empty()) {
    ordered_json m = ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = std::move(m);
  }
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name.empty()) throw std::invalid_argument("save_safetensors: " + path + ": a tensor has an empty name");
    if (name == "__metadata__")
      throw std::invalid_argument("save_safetensors: " + path + ": '__metadata__' is reserved, not a tensor name");
    if (!seen.insert(name).second)
      throw std::invalid_argument("save_safetensors: " + path + ": tensor name '" + name + "' appears twice");
    if (!t.defined())
      throw std::invalid_argument("save_safetensors: " + path + ": tensor '" + name + "' is undefined");
    Tensor c = t.to(Device::cpu()).contiguous();
    const uint64_t nbytes = static_cast<uint64_t>(c.numel()) * dtype_size(c.dtype());
    ordered_json entry = ordered_json::object();
    entry["dtype"] = safetensors_dtype(c.dtype());
    entry["shape"] = c.shape();
    entry["data_offsets"] = {offset, offset + nbytes};
    header[name] = std::move(entry);
    offset += nbytes;
    data.push_back(std::move(c));
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument("save_safetensors: " + path +
                                ": a tensor name or metadata string is not valid UTF-8 (" + e.what() + ")");
  }
  // Pad with spaces so the data starts on an 8-byte boundary (allowed by the format; the Rust
  // reference does the same, and it lets a reader map F64/I64 data aligned).
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');

  // ---- write "<path>.tmp.<pid>", fsync, rename ----
  const std::string tmp = path + ".tmp." + std::to_string(static_cast<long>(::getpid()));
  auto io_fail = [&](const std::string& what, int err, bool remove_tmp) {
    if (remove_tmp) ::unlink(tmp.c_str());
    throw std::runtime_error("save_safetensors: " + what + ": " + errno_text(err));
  };
  int fd;
  do {
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) io_fail("cannot create the temporary file " + tmp + " for " + path, errno, false);
  auto write_all = [&](const void* buf, uint64_t n) {
    const char* p = static_cast<const char*>(buf);
    while (n > 0) {
      const std::size_t chunk = static_cast<std::size_t>(std::min<uint64_t>(n, 1u << 30));
      const ssize_t w = ::write(fd, p, chunk);
      if (w < 0) {
        if (errno == EINTR) continue;
        const int err = errno;
        ::close(fd);
        io_fail("writing " + tmp + " (for " + path + ") failed", err, true);
      }
      p += w;
      n -= static_cast<uint64_t>(w);
    }
  };
  unsigned char len_bytes[8];
  uint64_t len = text.size();
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>((len >> (8 * i)) & 0xff);
  write_all(len_bytes, 8);
  write_all(text.data(), text.size());
  for (const Tensor& c : data) {
    const uint64_t nbytes = static_cast<uint64_t>(c.numel()) * dtype_size(c.dtype());
    if (nbytes > 0) write_all(c.raw_data(), nbytes);
  }
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    io_fail("fsync of " + tmp + " (for " + path + ") failed", err, true);
  }
  if (::close(fd) != 0) io_fail("closing " + tmp + " (for " + path + ") failed", errno, true);
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    io_fail("cannot rename " + tmp + " to " + path, errno, true);
  // Make the rename itself durable. Best effort: some filesystems refuse fsync on a directory, and
  // the file is already complete under its final name.
  const std::size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace ladnn
