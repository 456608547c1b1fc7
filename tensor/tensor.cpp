// tensor/tensor.cpp — storage, geometry, views, copies and printing of Tensor.
#include "tensor/tensor.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iomanip>
#include <ostream>
#include <sstream>

#include "cuda/ops.h"
#include "cuda/runtime.h"
#include "tensor/random.h"

namespace ladnn {

std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::Float32: return 4;
    case DType::Float64: return 8;
    case DType::Int64: return 8;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Int64: return "int64";
  }
  return "?";
}

std::string Device::str() const {
  return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index);
}

std::string shape_str(const Shape& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + ")";
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t s = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = s;
    s *= std::max<int64_t>(shape[i], 1);
  }
  return strides;
}

// ---- Storage ------------------------------------------------------------------------------------------

namespace {
std::atomic<std::size_t> g_cpu_live{0}, g_cpu_peak{0};
std::atomic<CpuStorageObserver> g_cpu_observer{nullptr};

void note_cpu_alloc(std::size_t n) {
  const std::size_t now = g_cpu_live.fetch_add(n) + n;
  std::size_t peak = g_cpu_peak.load();
  while (now > peak && !g_cpu_peak.compare_exchange_weak(peak, now)) {
  }
}
}  // namespace

CpuMemoryStats cpu_memory_stats() {
  return {g_cpu_live.load(), g_cpu_peak.load()};
}
void reset_cpu_memory_peak() {
  g_cpu_peak.store(g_cpu_live.load());
}
void set_cpu_storage_observer(CpuStorageObserver observer) {
  g_cpu_observer.store(observer);
}

Storage::Storage(std::size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  if (device.is_cpu()) {
    // 64-byte alignment: a cache line, and enough for any SIMD load the compiler emits.
    std::size_t rounded = (std::max<std::size_t>(nbytes, 1) + 63) / 64 * 64;
    data_ = std::aligned_alloc(64, rounded);
    if (!data_) throw std::bad_alloc();
    note_cpu_alloc(nbytes_);
    if (CpuStorageObserver obs = g_cpu_observer.load(std::memory_order_relaxed)) obs(data_, nbytes_, true);
  } else {
    data_ = cuda::device_alloc(nbytes, device.index);
  }
}

Storage::~Storage() {
  if (device_.is_cpu()) {
    if (CpuStorageObserver obs = g_cpu_observer.load(std::memory_order_relaxed)) obs(data_, nbytes_, false);
    std::free(data_);
    g_cpu_live.fetch_sub(nbytes_);
  } else {
    cuda::device_free(data_, nbytes_, device_.index);  // never throws
  }
}

// ---- Tensor: construction ---------------------------------------------------------------------------

Tensor::Tensor(std::shared_ptr<Storage> storage, Shape shape, Shape strides, int64_t offset,
               DType dtype)
    : storage_(std::move(storage)),
      shape_(std::move(shape)),
      strides_(std::move(strides)),
      offset_(offset),
      dtype_(dtype) {
  check(storage_ != nullptr, "Tensor: storage is null");
  check(shape_.size() == strides_.size(), "Tensor: shape " + shape_str(shape_) + " and strides " +
                                              shape_str(strides_) + " differ in length");
  int64_t last = offset_;
  for (size_t i = 0; i < shape_.size(); ++i) {
    check(shape_[i] >= 0, "Tensor: negative size in shape " + shape_str(shape_));
    if (shape_[i] > 0) last += (shape_[i] - 1) * strides_[i];
  }
  bool empty = shape_numel(shape_) == 0;
  check(offset_ >= 0 && (empty || (last + 1) * static_cast<int64_t>(dtype_size(dtype_)) <=
                                      static_cast<int64_t>(storage_->nbytes())),
        "Tensor: view of shape " + shape_str(shape_) + " at offset " + std::to_string(offset_) +
            " does not fit in a storage of " + std::to_string(storage_->nbytes()) + " bytes");
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape)
    check(d >= 0, "Tensor::empty: negative size in shape " + shape_str(shape));
  auto storage = std::make_shared<Storage>(shape_numel(shape) * dtype_size(dtype), device);
  return Tensor(std::move(storage), shape, contiguous_strides(shape), 0, dtype);
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  return full(shape, 0.0, dtype, device);
}

Tensor Tensor::ones(const Shape& shape, DType dtype, Device device) {
  return full(shape, 1.0, dtype, device);
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);  // on the device itself: no host buffer, no copy
  return t;
}

Tensor Tensor::arange(double start, double end, double step, DType dtype) {
  check(step != 0.0, "arange: step must be non-zero");
  check((end - start) / step >= 0, "arange: [" + std::to_string(start) + ", " +
                                       std::to_string(end) + ") is empty in steps of " +
                                       std::to_string(step));
  auto n = static_cast<int64_t>(std::ceil((end - start) / step));
  std::vector<double> values(n);
  for (int64_t i = 0; i < n; ++i) values[i] = start + static_cast<double>(i) * step;
  return from_vector(values, {n}, dtype);
}

Tensor Tensor::from_vector(const std::vector<double>& values, const Shape& shape, DType dtype) {
  check(static_cast<int64_t>(values.size()) == shape_numel(shape),
        "Tensor::from_vector: " + std::to_string(values.size()) + " values do not fill shape " +
            shape_str(shape) + " (" + std::to_string(shape_numel(shape)) + " elements)");
  Tensor t = empty(shape, dtype);
  switch (dtype) {
    case DType::Float32:
      std::copy(values.begin(), values.end(), t.data<float>());
      break;
    case DType::Float64:
      std::copy(values.begin(), values.end(), t.data<double>());
      break;
    case DType::Int64:
      for (size_t i = 0; i < values.size(); ++i) t.data<int64_t>()[i] = static_cast<int64_t>(values[i]);
      break;
  }
  return t;
}

Tensor Tensor::uniform(const Shape& shape, double low, double high, Generator& gen, DType dtype) {
  check(low <= high, "Tensor::uniform: low " + std::to_string(low) + " > high " + std::to_string(high));
  std::vector<double> v(shape_numel(shape));
  for (double& x : v) x = low + (high - low) * gen.uniform01();
  return from_vector(v, shape, dtype);
}

Tensor Tensor::normal(const Shape& shape, double mean, double std, Generator& gen, DType dtype) {
  check(std >= 0, "Tensor::normal: std must be >= 0, got " + std::to_string(std));
  std::vector<double> v(shape_numel(shape));
  for (double& x : v) x = mean + std * gen.normal01();
  return from_vector(v, shape, dtype);
}

// ---- Tensor: geometry --------------------------------------------------------------------------------

void Tensor::check_defined(const char* what) const {
  if (!storage_) throw std::logic_error(std::string("Tensor::") + what + ": tensor is undefined");
}

Device Tensor::device() const {
  check_defined("device");
  return storage_->device();
}

static int64_t wrap_dim(int64_t d, int64_t ndim, const char* op) {
  int64_t w = d < 0 ? d + ndim : d;
  check(w >= 0 && w < ndim, std::string(op) + ": dimension " + std::to_string(d) +
                                " is out of range for a " + std::to_string(ndim) + "-d tensor");
  return w;
}

int64_t Tensor::size(int64_t d) const { return shape_[wrap_dim(d, dim(), "Tensor::size")]; }

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (size_t i = shape_.size(); i-- > 0;) {
    if (shape_[i] == 1) continue;  // a size-1 dim's stride never matters
    if (strides_[i] != expected) return false;
    expected *= shape_[i];
  }
  return true;
}

void* Tensor::raw_data() const {
  check_defined("raw_data");
  return static_cast<char*>(storage_->data()) + offset_ * dtype_size(dtype_);
}

// Calls fn(element_offset) for every element in row-major order (iterative multi-index walk).
template <typename Fn>
static void for_each_offset(const Shape& shape, const Shape& strides, int64_t offset, Fn fn) {
  int64_t n = shape_numel(shape);
  if (n == 0) return;
  std::vector<int64_t> idx(shape.size(), 0);
  int64_t off = offset;
  for (int64_t i = 0; i < n; ++i) {
    fn(off);
    for (size_t d = shape.size(); d-- > 0;) {
      if (++idx[d] < shape[d]) {
        off += strides[d];
        break;
      }
      off -= (shape[d] - 1) * strides[d];
      idx[d] = 0;
    }
  }
}

static double load(const void* base, DType dtype, int64_t off) {
  switch (dtype) {
    case DType::Float32: return static_cast<const float*>(base)[off];
    case DType::Float64: return static_cast<const double*>(base)[off];
    case DType::Int64: return static_cast<double>(static_cast<const int64_t*>(base)[off]);
  }
  return 0;
}

std::vector<double> Tensor::to_vector() const {
  check_defined("to_vector");
  if (!device().is_cpu()) return to(Device::cpu()).to_vector();  // copies (and waits for) the device
  std::vector<double> out;
  out.reserve(numel());
  const void* base = storage_->data();
  for_each_offset(shape_, strides_, offset_, [&](int64_t off) { out.push_back(load(base, dtype_, off)); });
  return out;
}

double Tensor::item() const {
  check(numel() == 1, "Tensor::item: tensor of shape " + shape_str(shape_) + " has " +
                          std::to_string(numel()) + " elements, not 1");
  return to_vector()[0];
}

double Tensor::at(const std::vector<int64_t>& index) const {
  check_defined("at");
  check(index.size() == shape_.size(), "Tensor::at: index has " + std::to_string(index.size()) +
                                           " entries for a " + std::to_string(dim()) + "-d tensor");
  int64_t off = offset_;
  for (size_t d = 0; d < index.size(); ++d) {
    check(index[d] >= 0 && index[d] < shape_[d], "Tensor::at: index " + std::to_string(index[d]) +
                                                     " out of range for dim " + std::to_string(d) +
                                                     " of shape " + shape_str(shape_));
    off += index[d] * strides_[d];
  }
  // On a device: copy just that element (a 0-d view of it) to the host.
  if (!device().is_cpu()) return Tensor(storage_, {}, {}, off, dtype_).item();
  return load(storage_->data(), dtype_, off);
}

// ---- Tensor: views -----------------------------------------------------------------------------------

static Shape infer_shape(Shape shape, int64_t numel, const Shape& from) {
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      check(infer < 0, "reshape: only one size may be -1, got " + shape_str(shape));
      infer = static_cast<int64_t>(i);
    } else {
      check(shape[i] >= 0, "reshape: invalid size in " + shape_str(shape));
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    check(known > 0 && numel % known == 0,
          "reshape: cannot view " + shape_str(from) + " as " + shape_str(shape));
    shape[infer] = numel / known;
  }
  check(shape_numel(shape) == numel, "reshape: cannot view " + shape_str(from) + " (" +
                                         std::to_string(numel) + " elements) as " + shape_str(shape));
  return shape;
}

Tensor Tensor::view(Shape shape) const {
  check_defined("view");
  check(is_contiguous(), "view: tensor of shape " + shape_str(shape_) + " with strides " +
                             shape_str(strides_) + " is not contiguous; use reshape (copies)");
  Shape s = infer_shape(std::move(shape), numel(), shape_);
  return Tensor(storage_, s, contiguous_strides(s), offset_, dtype_);
}

Tensor Tensor::reshape(Shape shape) const {
  return is_contiguous() ? view(std::move(shape)) : contiguous().view(std::move(shape));
}

Tensor Tensor::flatten(int64_t start, int64_t end) const {
  if (dim() == 0) return reshape({1});
  int64_t s = wrap_dim(start, dim(), "flatten"), e = wrap_dim(end, dim(), "flatten");
  check(s <= e, "flatten: start dim " + std::to_string(start) + " is after end dim " + std::to_string(end));
  Shape out(shape_.begin(), shape_.begin() + s);
  int64_t merged = 1;
  for (int64_t d = s; d <= e; ++d) merged *= shape_[d];
  out.push_back(merged);
  out.insert(out.end(), shape_.begin() + e + 1, shape_.end());
  return reshape(out);
}

Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  check_defined("narrow");
  int64_t w = wrap_dim(d, dim(), "narrow");
  check(start >= 0 && length >= 0 && start + length <= shape_[w],
        "narrow: [" + std::to_string(start) + ", " + std::to_string(start + length) +
            ") is outside dim " + std::to_string(w) + " of shape " + shape_str(shape_));
  Shape s = shape_;
  s[w] = length;
  return Tensor(storage_, s, strides_, offset_ + start * strides_[w], dtype_);
}

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  check_defined("transpose");
  int64_t a = wrap_dim(d0, dim(), "transpose"), b = wrap_dim(d1, dim(), "transpose");
  Shape s = shape_, st = strides_;
  std::swap(s[a], s[b]);
  std::swap(st[a], st[b]);
  return Tensor(storage_, s, st, offset_, dtype_);
}

Tensor Tensor::unsqueeze(int64_t d) const {
  check_defined("unsqueeze");
  int64_t w = wrap_dim(d, dim() + 1, "unsqueeze");
  Shape s = shape_, st = strides_;
  int64_t stride = w < dim() ? shape_[w] * strides_[w] : 1;
  s.insert(s.begin() + w, 1);
  st.insert(st.begin() + w, stride);
  return Tensor(storage_, s, st, offset_, dtype_);
}

// ---- Tensor: copies ------------------------------------------------------------------------------------

Tensor& Tensor::copy_(const Tensor& src) {
  check_defined("copy_");
  check(src.defined(), "copy_: source tensor is undefined");
  check(src.shape_ == shape_, "copy_: source shape " + shape_str(src.shape_) +
                                  " differs from destination shape " + shape_str(shape_));
  Device dd = device(), sd = src.device();
  if (!dd.is_cpu() || !sd.is_cpu()) {
    if (numel() == 0) return *this;
    // On the device: strided_copy takes any strides and dtypes, copies whole contiguous buffers with one
    // cudaMemcpyAsync, and goes through a temporary when the two views overlap.
    if (dd.is_cuda() && sd.is_cuda()) {
      cuda::strided_copy(*this, src);
      return *this;
    }
    // Between host and device, whole contiguous buffers of one dtype move as bytes.
    if (src.dtype_ == dtype_ && is_contiguous() && src.is_contiguous()) {
      cuda::copy_bytes(raw_data(), dd, src.raw_data(), sd, numel() * dtype_size(dtype_));
      return *this;
    }
    // Between host and device with strides or a dtype change: the strides and the conversion are done
    // on whichever side the data is on, and one contiguous buffer crosses.
    if (dd.is_cuda()) {
      Tensor staged = empty(shape_, dtype_);  // host, our dtype, contiguous
      staged.copy_(src);
      const std::size_t nbytes = numel() * dtype_size(dtype_);
      if (is_contiguous()) {
        cuda::copy_bytes(raw_data(), dd, staged.raw_data(), sd, nbytes);
      } else {
        Tensor moved = empty(shape_, dtype_, dd);
        cuda::copy_bytes(moved.raw_data(), dd, staged.raw_data(), sd, nbytes);
        cuda::strided_copy(*this, moved);
      }
    } else {
      Tensor packed = src.contiguous();  // on the device, src's dtype
      Tensor host = empty(shape_, src.dtype_);
      cuda::copy_bytes(host.raw_data(), dd, packed.raw_data(), sd, numel() * dtype_size(src.dtype_));
      copy_(host);  // host to host: strides and conversion
    }
    return *this;
  }
  if (src.dtype_ == dtype_ && is_contiguous() && src.is_contiguous()) {
    if (!(storage_ == src.storage_ && offset_ == src.offset_))
      std::memmove(raw_data(), src.raw_data(), numel() * dtype_size(dtype_));
    return *this;
  }
  // General path: walk both in row-major order. Via double is exact for float32/float64 and for
  // int64 up to 2^53 (indices, counters).
  std::vector<double> values = src.to_vector();
  size_t i = 0;
  void* base = storage_->data();
  for_each_offset(shape_, strides_, offset_, [&](int64_t off) {
    double v = values[i++];
    switch (dtype_) {
      case DType::Float32: static_cast<float*>(base)[off] = static_cast<float>(v); break;
      case DType::Float64: static_cast<double*>(base)[off] = v; break;
      case DType::Int64: static_cast<int64_t*>(base)[off] = static_cast<int64_t>(v); break;
    }
  });
  return *this;
}

Tensor& Tensor::fill_(double value) {
  check_defined("fill_");
  if (device().is_cuda()) {
    cuda::fill(*this, value);  // any strides, on the device
    return *this;
  }
  void* base = storage_->data();
  for_each_offset(shape_, strides_, offset_, [&](int64_t off) {
    switch (dtype_) {
      case DType::Float32: static_cast<float*>(base)[off] = static_cast<float>(value); break;
      case DType::Float64: static_cast<double*>(base)[off] = value; break;
      case DType::Int64: static_cast<int64_t*>(base)[off] = static_cast<int64_t>(value); break;
    }
  });
  return *this;
}

Tensor Tensor::clone() const {
  check_defined("clone");
  Tensor out = empty(shape_, dtype_, device());
  out.copy_(*this);
  return out;
}

Tensor Tensor::contiguous() const {
  check_defined("contiguous");
  return is_contiguous() ? *this : clone();
}

Tensor Tensor::to(DType dtype) const {
  check_defined("to");
  if (dtype == dtype_) return *this;
  Tensor out = empty(shape_, dtype, device());  // converted where the data is
  out.copy_(*this);
  return out;
}

Tensor Tensor::to(Device device) const {
  check_defined("to");
  if (device == this->device()) return *this;
  Tensor src = contiguous();
  Tensor out = empty(shape_, dtype_, device);
  out.copy_(src);
  return out;
}

// ---- printing --------------------------------------------------------------------------------------------

std::string Tensor::str() const {
  if (!defined()) return "tensor(undefined)";
  std::ostringstream os;
  if (!device().is_cpu()) return to(Device::cpu()).str() + " on " + device().str();
  std::vector<double> v = to_vector();
  const int64_t edge = 3;  // elements kept at each end of a long dimension
  const bool elide = numel() > 1000;
  auto fmt = [&](double x) {
    std::ostringstream e;
    if (dtype_ == DType::Int64) e << static_cast<int64_t>(x);
    else e << std::fixed << std::setprecision(4) << x;
    return e.str();
  };
  Shape cstr = contiguous_strides(shape_);
  // Iterative printing would be clearer as recursion; the depth is the tensor's rank (small).
  std::function<void(int64_t, int64_t)> rec = [&](int64_t d, int64_t base) {
    if (d == dim()) {
      os << fmt(v[base]);
      return;
    }
    os << "[";
    int64_t n = shape_[d];
    for (int64_t i = 0; i < n; ++i) {
      if (elide && n > 2 * edge && i == edge) {
        os << "...";
        i = n - edge - 1;
        if (d + 1 < dim()) os << ",\n" << std::string(static_cast<size_t>(d + 8), ' ');
        else os << ", ";
        continue;
      }
      rec(d + 1, base + i * cstr[d]);
      if (i + 1 < n) {
        if (d + 1 < dim()) os << ",\n" << std::string(static_cast<size_t>(d + 8), ' ');
        else os << ", ";
      }
    }
    os << "]";
  };
  os << "tensor(";
  rec(0, 0);
  os << ", dtype=" << dtype_name(dtype_) << ")";
  return os.str();
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << t.str(); }

}  // namespace ladnn
