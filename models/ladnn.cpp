// models/ladnn.cpp — LA-DNN model and the lesion-attention loss (see ladnn.h).
#include "models/ladnn.h"

#include "autograd/functions.h"

namespace ladnn {

LaDnn::LaDnn(const DenseNetConfig& config, Generator& gen) : DenseNet(config, /*num_classes=*/0, gen) {
  const int64_t f = config.num_features();
  // Linear's default init (kaiming_uniform a=sqrt(5)), bias zero as torchvision's classifier.
  covid_head_ = register_module("covid_head", std::make_shared<Linear>(f, 1, true, gen));
  lesion_head_ = register_module("lesion_head", std::make_shared<Linear>(f, 5, true, gen));
  for (auto& head : {covid_head_, lesion_head_}) {
    Variable b = head->bias();
    b.mutable_tensor().zero_();
  }
}

LaDnn::Output LaDnn::heads(const Variable& activated_features) {
  check(activated_features.dim() == 4, "LaDnn::heads: feature map must be (N, F, h, w), got " +
                                           shape_str(activated_features.shape()));
  Variable pooled = flatten(adaptive_avg_pool2d(activated_features, 1, 1), 1);  // (N, F)
  return {(*covid_head_)(pooled), (*lesion_head_)(pooled)};
}

LaDnn::Output LaDnn::forward_heads(const Variable& x) { return heads(features_relu(x)); }

Variable LaDnn::forward(const Variable& x) {
  Output out = forward_heads(x);
  return cat({out.covid, out.lesions}, 1);
}

LossMode loss_mode_by_name(const std::string& name) {
  if (name == "ladnn") return LossMode::Ladnn;
  if (name == "baseline") return LossMode::Baseline;
  throw std::invalid_argument("loss: unknown mode '" + name + "' (choose ladnn or baseline)");
}

Variable lesion_attention_loss(const LaDnn::Output& out, const Tensor& covid_y, const Tensor& lesion_y,
                               const Tensor& lesion_mask, const LossConfig& config) {
  const int64_t n = out.covid.size(0);
  check(out.covid.shape() == Shape({n, 1}) && covid_y.shape() == Shape({n, 1}),
        "lesion_attention_loss: covid logits " + shape_str(out.covid.shape()) + " and targets " +
            shape_str(covid_y.shape()) + " must both be (N, 1)");
  if (config.mode == LossMode::Baseline) return bce_with_logits(out.covid, covid_y, Tensor());

  check(out.lesions.shape() == Shape({n, 5}) && lesion_y.shape() == Shape({n, 5}),
        "lesion_attention_loss: lesion logits " + shape_str(out.lesions.shape()) + " and targets " +
            shape_str(lesion_y.shape()) + " must both be (N, 5)");
  check(lesion_mask.shape() == Shape({n, 1}),
        "lesion_attention_loss: lesion mask must be (N, 1), got " + shape_str(lesion_mask.shape()));
  // Per-element weights carry both the COVID weight and the lesion mask; one Sum over each head and
  // a single division by 6N give the paper's average over 6 terms and the batch.
  Tensor w_main = Tensor::full({n, 1}, config.w_main, out.covid.dtype(), out.covid.tensor().device());
  Variable covid_term = bce_with_logits(out.covid, covid_y, w_main, ops::Reduction::Sum);
  Variable lesion_term = bce_with_logits(out.lesions, lesion_y, lesion_mask, ops::Reduction::Sum);
  return mul_scalar(covid_term + lesion_term, 1.0 / (6.0 * static_cast<double>(n)));
}

}  // namespace ladnn
