// models/graphed_step.cpp — GraphedTrainStep (see the header for the rules).
#include "models/graphed_step.h"

#include <cstring>

#include "cuda/graph.h"
#include "cuda/profiler.h"
#include "cuda/runtime.h"

namespace ladnn {

namespace {

bool same_layout(const Tensor& a, const Tensor& b) {
  return a.defined() && b.defined() && a.shape() == b.shape() && a.dtype() == b.dtype();
}

// Fewer rows of the same kind: a's shape is b's with a smaller first dimension, same dtype.
bool fewer_rows(const Tensor& a, const Tensor& b) {
  if (!a.defined() || !b.defined() || a.dtype() != b.dtype() || a.dim() != b.dim() || a.dim() == 0) return false;
  for (int64_t d = 1; d < a.dim(); ++d)
    if (a.size(d) != b.size(d)) return false;
  return a.size(0) < b.size(0);
}

std::size_t bytes_of(const Tensor& t) { return static_cast<std::size_t>(t.numel()) * dtype_size(t.dtype()); }

// A host copy of `t` (on any device) that nobody else writes to.
Tensor host_copy(const Tensor& t) { return t.device().is_cpu() ? t.clone() : t.to(Device::cpu()); }

}  // namespace

GraphedTrainStep::GraphedTrainStep(LaDnn& model, Optimizer& opt, LossConfig loss)
    : model_(model), opt_(opt), loss_(loss), device_(Device::cpu()) {
  const auto params = model.parameters();
  check(!params.empty() && params.front().tensor().device().is_cuda(),
        "CUDA-graph training needs the model on a GPU (--device cuda): graphs are a CUDA feature");
  device_ = params.front().tensor().device();
}

GraphedTrainStep::~GraphedTrainStep() {
  // Queued copies may still read or write the pinned slots: let them finish before the slots go.
  for (Slot& s : slots_) {
    try {
      if (s.done) s.done->wait();
    } catch (...) {  // a failed device has nothing left to wait for
    }
  }  // (PinnedBuffer's cudaFreeHost is not documented to wait for queued copies: hence the waits)
  // The outputs live in the graph's pool: let them go first, then the graph.
  loss_out_ = Tensor();
  logit_out_ = Tensor();
  graph_.reset();
}

GraphedTrainStep::Result GraphedTrainStep::eager(const Tensor& images, const Tensor& covid,
                                                 const Tensor& lesions, const Tensor& lesion_mask) {
  LaDnn::Output out = model_.forward_heads(Variable(images.to(device_)));
  Variable l =
      lesion_attention_loss(out, covid.to(device_), lesions.to(device_), lesion_mask.to(device_), loss_);
  opt_.zero_grad();
  l.backward();
  opt_.step();
  ++eager_steps_;
  return {l.tensor().item(), out.covid.tensor().to(Device::cpu()), host_copy(covid), false};
}

void GraphedTrainStep::capture() {
  loss_out_ = Tensor();
  logit_out_ = Tensor();
  graph_.reset();  // its pool goes back to the cache before the new capture takes one
  auto g = std::make_unique<cuda::Graph>();
  // Profiling (ladnn train --profile): the graph's ops are timed inside each replay (capture timing),
  // read right after it — which waits for every step, so profiled runs are not pipelined.
  timed_ = cuda::profiler::enabled();
  if (timed_) cuda::profiler::set_capture_timing(true);
  struct Off {
    bool on;
    ~Off() {
      if (on) cuda::profiler::set_capture_timing(false);
    }
  } off{timed_};
  g->capture([&] {
    LaDnn::Output out = model_.forward_heads(Variable(images_));
    Variable l = lesion_attention_loss(out, covid_, lesions_, mask_, loss_);
    opt_.zero_grad();
    l.backward();
    opt_.step();
    loss_out_ = l.tensor();
    logit_out_ = out.covid.tensor();
  });
  // The gradients the capture left on the parameters live in the graph's pool and change under every
  // replay: nobody outside the graph should read them.
  opt_.zero_grad();
  graph_ = std::move(g);
  graph_lr_ = opt_.lr();
  ++captures_;
}

void GraphedTrainStep::settle(Owed& o) {
  if (o.slot < 0) return;
  Slot& s = slots_[o.slot];
  s.done->wait();
  // The slot's out: the loss, then the logits (the layout submit() queued).
  const auto* bytes = static_cast<const unsigned char*>(s.out.data());
  Tensor loss = Tensor::empty(loss_out_.shape(), loss_out_.dtype());
  std::memcpy(loss.raw_data(), bytes, bytes_of(loss));
  o.result.loss = loss.item();
  o.result.covid_logit = Tensor::empty(logit_out_.shape(), logit_out_.dtype());
  std::memcpy(o.result.covid_logit.raw_data(), bytes + bytes_of(loss), bytes_of(logit_out_));
  o.slot = -1;
}

void GraphedTrainStep::settle() {
  for (Owed& o : owed_) settle(o);
}

void GraphedTrainStep::allocate(const Tensor& images, const Tensor& covid, const Tensor& lesions,
                                const Tensor& lesion_mask) {
  // Everything is made first and kept only when all of it was: a failure leaves no half-set state.
  Tensor im = Tensor::empty(images.shape(), images.dtype(), device_);
  Tensor co = Tensor::empty(covid.shape(), covid.dtype(), device_);
  Tensor le = Tensor::empty(lesions.shape(), lesions.dtype(), device_);
  Tensor ma = Tensor::empty(lesion_mask.shape(), lesion_mask.dtype(), device_);
  // Out: the loss (one value) and the (N, 1) logits, of the parameters' dtype.
  const DType dt = model_.parameters().front().tensor().dtype();
  const std::size_t out_bytes = (1 + static_cast<std::size_t>(images.size(0))) * dtype_size(dt);
  Slot made[2];
  for (Slot& s : made) {
    s.in = cuda::PinnedBuffer(bytes_of(im) + bytes_of(co) + bytes_of(le) + bytes_of(ma));
    s.out = cuda::PinnedBuffer(out_bytes);
    s.done = std::make_unique<cuda::StreamEvent>();
  }
  for (Slot& s : slots_)
    if (s.done) s.done->wait();  // the old slots' copies are done before their memory goes
  for (int i = 0; i < 2; ++i) slots_[i] = std::move(made[i]);
  images_ = std::move(im);
  covid_ = std::move(co);
  lesions_ = std::move(le);
  mask_ = std::move(ma);
}

void GraphedTrainStep::submit(const Tensor& images, const Tensor& covid, const Tensor& lesions,
                              const Tensor& lesion_mask) {
  // The first step runs eagerly: the optimizer state and the cuDNN algorithm choices are made there.
  if (eager_steps_ == 0 && !graph_) {
    settle();
    owed_.push_back({-1, eager(images, covid, lesions, lesion_mask)});
    return;
  }
  const bool recapture = !graph_ || opt_.lr() != graph_lr_;
  const bool same = same_layout(images, images_) && same_layout(covid, covid_) &&
                    same_layout(lesions, lesions_) && same_layout(lesion_mask, mask_);
  if (images_.defined() && !same) {
    // A batch of fewer rows (an epoch's last) runs eagerly and the graph stays for the full ones. Any
    // other layout (more rows, another image size or dtype) replaces the graph: this batch runs eagerly
    // — its shapes' cuDNN algorithms are searched there, which a capture cannot do — and the next batch
    // of its layout is captured.
    settle();  // every step in flight reads its result before anything changes under it
    const bool shorter = fewer_rows(images, images_) && fewer_rows(covid, covid_) &&
                         fewer_rows(lesions, lesions_) && fewer_rows(lesion_mask, mask_) &&
                         images.size(0) == covid.size(0) && covid.size(0) == lesions.size(0) &&
                         lesions.size(0) == lesion_mask.size(0);
    if (!shorter) {
      loss_out_ = Tensor();
      logit_out_ = Tensor();
      graph_.reset();
      images_ = covid_ = lesions_ = mask_ = Tensor();
    }
    owed_.push_back({-1, eager(images, covid, lesions, lesion_mask)});
    return;
  }
  if (recapture) settle();  // the old graph's outputs go with it
  if (!images_.defined()) allocate(images, covid, lesions, lesion_mask);

  // The slot used two steps ago: its copies must be done and its result read before it is reused.
  const int si = next_slot_;
  next_slot_ ^= 1;
  for (Owed& o : owed_)
    if (o.slot == si) settle(o);
  Slot& slot = slots_[si];
  slot.done->wait();

  // In: host batches through the pinned slot by queued copies; device batches straight across. The
  // slot's event is recorded after them at once, so that it covers them even if the capture below
  // throws; again after the results' copies.
  auto* in = static_cast<unsigned char*>(slot.in.data());
  for (auto [src, dst] : {std::pair<const Tensor*, Tensor*>{&images, &images_}, {&covid, &covid_},
                          {&lesions, &lesions_}, {&lesion_mask, &mask_}}) {
    const std::size_t n = bytes_of(*dst);
    if (src->device().is_cpu()) {
      const Tensor c = src->contiguous();
      std::memcpy(in, c.raw_data(), n);
      cuda::copy_async(dst->raw_data(), device_, in, Device::cpu(), n);
    } else {
      dst->copy_(*src);
    }
    in += n;
  }
  slot.done->record();
  if (recapture) capture();
  graph_->replay();
  opt_.replayed_step();
  ++replays_;
  if (timed_) cuda::profiler::collect_captured();
  // Out: the loss and the logits into the slot, read by settle() once the event has passed.
  auto* out = static_cast<unsigned char*>(slot.out.data());
  cuda::copy_async(out, Device::cpu(), loss_out_.raw_data(), device_, bytes_of(loss_out_));
  cuda::copy_async(out + bytes_of(loss_out_), Device::cpu(), logit_out_.raw_data(), device_, bytes_of(logit_out_));
  slot.done->record();
  Owed o;
  o.slot = si;
  o.result.covid = host_copy(covid);
  o.result.replayed = true;
  owed_.push_back(std::move(o));
}

bool GraphedTrainStep::next_result(Result& out, bool wait) {
  if (owed_.empty()) return false;
  Owed& front = owed_.front();
  if (!wait && front.slot >= 0 && owed_.size() < 2) return false;
  settle(front);
  out = std::move(front.result);
  owed_.pop_front();
  return true;
}

GraphedTrainStep::Result GraphedTrainStep::step(const Tensor& images, const Tensor& covid, const Tensor& lesions,
                                                const Tensor& lesion_mask) {
  check(owed_.empty(), "GraphedTrainStep::step: " + std::to_string(owed_.size()) +
                           " submitted step(s) not read yet; read them with next_result first");
  submit(images, covid, lesions, lesion_mask);
  Result r;
  next_result(r, true);
  return r;
}

}  // namespace ladnn
