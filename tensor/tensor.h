// tensor/tensor.h — the Tensor: a cheap handle over shared storage.
//
// A Tensor is (storage, shape, strides, offset, dtype). Copying a Tensor copies the handle, not the
// data: two handles may view the same bytes (reshape, narrow, transpose are views). Layout is
// row-major, NCHW for images. This floor knows nothing of autograd (see autograd/variable.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <iosfwd>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace ladnn {

/// Element types. Float32 is the working type; Float64 exists for gradcheck and references;
/// Int64 only stores values (max-pool indices, BatchNorm's num_batches_tracked): math ops refuse it.
enum class DType { Float32, Float64, Int64 };

std::size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);  // "float32", "float64", "int64"

template <typename T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() { return DType::Float32; }
template <>
constexpr DType dtype_of<double>() { return DType::Float64; }
template <>
constexpr DType dtype_of<int64_t>() { return DType::Int64; }

enum class DeviceType { CPU, CUDA };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;
  static Device cpu() { return {DeviceType::CPU, 0}; }
  static Device cuda(int index = 0) { return {DeviceType::CUDA, index}; }
  bool is_cpu() const { return type == DeviceType::CPU; }
  bool is_cuda() const { return type == DeviceType::CUDA; }
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const;  // "cpu", "cuda:0"
};

using Shape = std::vector<int64_t>;

/// "(2, 3, 4)" — the form every error message uses.
std::string shape_str(const Shape& shape);
/// Product of the sizes (1 for a 0-d shape).
int64_t shape_numel(const Shape& shape);
/// Row-major strides for a shape.
Shape contiguous_strides(const Shape& shape);

/// Raw bytes on one device, freed when the last Tensor viewing them goes away.
class Storage {
 public:
  Storage(std::size_t nbytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  std::size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  std::size_t nbytes_ = 0;
  Device device_;
};

/// Bytes of CPU tensor storage alive now and the most alive at once since the last reset — the host's
/// counterpart of cuda::allocator_stats(), for measuring what a training step keeps (tests, benches).
/// Counted per Storage (as asked, not rounded), thread-safe.
struct CpuMemoryStats {
  std::size_t live_bytes = 0;
  std::size_t peak_bytes = 0;
};
CpuMemoryStats cpu_memory_stats();
/// Peak restarts from the live value.
void reset_cpu_memory_peak();
/// Called with every CPU Storage's address and size when it is made (allocated = true) and freed; null
/// (the default) for none. A measuring aid: bench/allocator_bench.cpp replays a training step's
/// allocations through the GPU allocator's book-keeping this way. Not for use while other threads
/// create tensors.
using CpuStorageObserver = void (*)(const void* ptr, std::size_t nbytes, bool allocated);
void set_cpu_storage_observer(CpuStorageObserver observer);

class Generator;

class Tensor {
 public:
  /// An undefined tensor (no storage). `defined()` is false; most calls on it throw.
  Tensor() = default;
  /// A view: `storage` with the given geometry. Checks that the view fits in the storage.
  Tensor(std::shared_ptr<Storage> storage, Shape shape, Shape strides, int64_t offset, DType dtype);

  // ---- creation -------------------------------------------------------------------------------
  static Tensor empty(const Shape& shape, DType dtype = DType::Float32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::Float32, Device device = Device::cpu());
  static Tensor ones(const Shape& shape, DType dtype = DType::Float32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::Float32,
                     Device device = Device::cpu());
  /// [start, end) in steps of `step`, as torch.arange.
  static Tensor arange(double start, double end, double step = 1.0, DType dtype = DType::Float32);
  /// Copies `values` (row-major) into a new CPU tensor of `shape`; sizes must agree.
  static Tensor from_vector(const std::vector<double>& values, const Shape& shape,
                            DType dtype = DType::Float32);
  template <typename T>
  static Tensor from_data(const T* values, const Shape& shape);
  /// U(low, high) and N(mean, std) from a seeded generator (tensor/random.h).
  static Tensor uniform(const Shape& shape, double low, double high, Generator& gen,
                        DType dtype = DType::Float32);
  static Tensor normal(const Shape& shape, double mean, double std, Generator& gen,
                       DType dtype = DType::Float32);

  // ---- geometry -------------------------------------------------------------------------------
  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int64_t offset() const { return offset_; }
  int64_t dim() const { return static_cast<int64_t>(shape_.size()); }
  /// Size of dimension `d`; negative `d` counts from the end.
  int64_t size(int64_t d) const;
  int64_t numel() const { return shape_numel(shape_); }
  DType dtype() const { return dtype_; }
  Device device() const;
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  /// True when both handles view the same storage.
  bool shares_storage(const Tensor& other) const { return storage_ == other.storage_; }

  // ---- data access (CPU) ----------------------------------------------------------------------
  /// Pointer to the first element, typed. Throws if T does not match dtype().
  template <typename T>
  T* data() const;
  void* raw_data() const;
  /// The single value of a one-element tensor, as double.
  double item() const;
  /// Every element in row-major order as double (any strides, any dtype; a device tensor is copied to
  /// the host first, which waits for the GPU).
  std::vector<double> to_vector() const;
  /// Element at a multi-index, as double (tests and printing; slow).
  double at(const std::vector<int64_t>& index) const;

  // ---- views (share storage) ------------------------------------------------------------------
  /// Same data, new shape; one size may be -1. Requires a contiguous tensor (see reshape).
  Tensor view(Shape shape) const;
  /// view() when contiguous, otherwise a contiguous copy with the new shape.
  Tensor reshape(Shape shape) const;
  /// Merges dims start..end (inclusive; negative counts from the end) into one.
  Tensor flatten(int64_t start = 0, int64_t end = -1) const;
  /// Elements [start, start+length) along `dim` (a channel slice is narrow(1, c0, n)).
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor unsqueeze(int64_t d) const;

  // ---- copies ---------------------------------------------------------------------------------
  Tensor clone() const;  // contiguous copy, same dtype and device
  Tensor contiguous() const;  // *this when already contiguous
  Tensor to(DType dtype) const;  // converted copy on the same device (or *this when already that dtype)
  Tensor to(Device device) const;  // copy to another device (or *this)
  /// Copies `src` into this tensor's elements (same shape; dtype converted; any strides).
  Tensor& copy_(const Tensor& src);
  Tensor& fill_(double value);
  Tensor& zero_() { return fill_(0.0); }

  /// PyTorch-like text: "tensor([[1.0000, 2.0000]], dtype=float32)"; long tensors are elided.
  std::string str() const;

 private:
  void check_defined(const char* what) const;

  std::shared_ptr<Storage> storage_;
  Shape shape_;
  Shape strides_;
  int64_t offset_ = 0;
  DType dtype_ = DType::Float32;
};

std::ostream& operator<<(std::ostream& os, const Tensor& t);

/// Throws std::invalid_argument with `message` unless `cond` holds. Messages are sentences
/// that name the op and the offending shape or value.
inline void check(bool cond, const std::string& message) {
  if (!cond) throw std::invalid_argument(message);
}

// ---- template definitions -------------------------------------------------------------------------
template <typename T>
T* Tensor::data() const {
  check_defined("data");
  check(dtype_ == dtype_of<T>(), std::string("Tensor::data: tensor holds ") + dtype_name(dtype_) +
                                     ", asked for " + dtype_name(dtype_of<T>()));
  return static_cast<T*>(storage_->data()) + offset_;
}

template <typename T>
Tensor Tensor::from_data(const T* values, const Shape& shape) {
  Tensor t = empty(shape, dtype_of<T>());
  T* out = t.data<T>();
  for (int64_t i = 0; i < t.numel(); ++i) out[i] = values[i];
  return t;
}

}  // namespace ladnn
