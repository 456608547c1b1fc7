// tensor/safetensors.h — read and write the safetensors format (checkpoints, PyTorch weights, golden
// test fixtures).
//
// The format (https://github.com/huggingface/safetensors):
//   8 bytes   N, the header length, unsigned little-endian
//   N bytes   a JSON object: {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [b, e]}, …,
//             "__metadata__": {"<key>": "<string>", …}}  (optionally padded with trailing spaces)
//   rest      the raw little-endian data; tensor <name> is bytes [b, e) of it, row-major.
// The data must be covered exactly: tensors neither overlap nor leave gaps, and nothing follows the
// last one (the same rule as the reference Rust implementation).
//
// Loading validates every field before reading a byte of data, and every error is a sentence that
// names the file and the tensor or field, so a corrupt or truncated checkpoint is reported, never
// crashes. Saving writes "<path>.tmp.<pid>", fsyncs it and renames it over <path>: a crash mid-write
// leaves the previous file intact.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "tensor/tensor.h"

namespace ladnn {

/// The contents of one safetensors file.
struct SafetensorsFile {
  /// The file it was read from (for error messages); empty for a file built in memory.
  std::string path;
  /// Tensors in header order (the order the writer listed them). CPU, contiguous.
  std::vector<std::pair<std::string, Tensor>> tensors;
  /// The "__metadata__" object (string to string); empty when the file has none.
  std::map<std::string, std::string> metadata;

  /// The tensor named `name`; throws std::out_of_range naming the file and the key when absent.
  const Tensor& at(const std::string& name) const;
  /// Whether a tensor named `name` is present.
  bool contains(const std::string& name) const;
  /// The tensor names, in header order.
  std::vector<std::string> names() const;
};

/// Reads and validates a safetensors file. dtypes: F32 -> Float32, F64 -> Float64, I64 -> Int64;
/// F16 and BF16 are widened to Float32 (exactly; every half value is a float). Any other dtype is
/// refused by name. Throws std::runtime_error naming `path` and the offending tensor or field.
SafetensorsFile load_safetensors(const std::string& path);

/// Writes `tensors` (any device, any strides; copied to contiguous CPU data) and `metadata`
/// atomically: "<path>.tmp.<pid>" is written, fsynced and renamed over `path`. Names must be unique,
/// non-empty and not "__metadata__" (std::invalid_argument otherwise). I/O failures throw
/// std::runtime_error naming the path and the errno text, and leave any existing `path` untouched.
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

/// The safetensors dtype string of a ladnn dtype ("F32", "F64", "I64").
const char* safetensors_dtype(DType dtype);

}  // namespace ladnn
