// models/graphed_step.cpp — GraphedTrainStep (see the header for the rules).
#include "models/graphed_step.h"

#include "cuda/graph.h"
#include "cuda/runtime.h"

namespace ladnn {

GraphedTrainStep::GraphedTrainStep(LaDnn& model, Optimizer& opt, LossConfig loss)
    : model_(model), opt_(opt), loss_(loss), device_(Device::cpu()) {
  const auto params = model.parameters();
  check(!params.empty() && params.front().tensor().device().is_cuda(),
        "CUDA-graph training needs the model on a GPU (--device cuda): graphs are a CUDA feature");
  device_ = params.front().tensor().device();
}

GraphedTrainStep::~GraphedTrainStep() {
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
  return {l.tensor().item(), out.covid.tensor().to(Device::cpu()), false};
}

void GraphedTrainStep::capture() {
  loss_out_ = Tensor();
  logit_out_ = Tensor();
  graph_.reset();  // its pool goes back to the cache before the new capture takes one
  auto g = std::make_unique<cuda::Graph>();
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

GraphedTrainStep::Result GraphedTrainStep::step(const Tensor& images, const Tensor& covid,
                                                const Tensor& lesions, const Tensor& lesion_mask) {
  // The first step runs eagerly: the optimizer state and the cuDNN algorithm choices are made there.
  if (eager_steps_ == 0 && !graph_) return eager(images, covid, lesions, lesion_mask);
  bool recapture = !graph_ || opt_.lr() != graph_lr_;
  const bool same_shape = images_.defined() && images.shape() == images_.shape() &&
                          covid.shape() == covid_.shape() && lesions.shape() == lesions_.shape() &&
                          lesion_mask.shape() == mask_.shape();
  if (images_.defined() && !same_shape) {
    // A smaller batch (an epoch's last) runs eagerly and the graph stays for the full ones; a larger
    // one (the graph was captured on a short batch) takes the graph's place.
    if (images.dim() == 4 && images.size(0) <= images_.size(0))
      return eager(images, covid, lesions, lesion_mask);
    loss_out_ = Tensor();
    logit_out_ = Tensor();
    graph_.reset();
    images_ = covid_ = lesions_ = mask_ = Tensor();
    recapture = true;
  }
  if (!images_.defined()) {
    images_ = Tensor::empty(images.shape(), images.dtype(), device_);
    covid_ = Tensor::empty(covid.shape(), covid.dtype(), device_);
    lesions_ = Tensor::empty(lesions.shape(), lesions.dtype(), device_);
    mask_ = Tensor::empty(lesion_mask.shape(), lesion_mask.dtype(), device_);
  }
  images_.copy_(images);
  covid_.copy_(covid);
  lesions_.copy_(lesions);
  mask_.copy_(lesion_mask);
  if (recapture) capture();
  graph_->replay();
  opt_.replayed_step();
  ++replays_;
  return {loss_out_.item(), logit_out_.to(Device::cpu()), true};
}

}  // namespace ladnn
