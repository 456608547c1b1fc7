// models/ladnn.h — LA-DNN: a DenseNet with a COVID head and a 5-lesion head, and its loss.
//
// Liu et al., "Online COVID-19 diagnosis with chest CT images: Lesion-attention deep neural networks"
// (medRxiv 2020.05.11.20097907). The lesion head is trained only on images that carry lesion labels,
// and pushes the shared features to attend to the lesions a radiologist reads.
//
//   x (N, 3, H, W) -> features (DenseNet, ends at norm5) -> ReLU -> global average pool -> (N, F)
//                  -> covid_head  Linear(F, 1): the COVID logit
//                  -> lesion_head Linear(F, 5): GGO, Csld, CrPa, AirBr, InSepThi logits
//
// Names are torchvision's for the backbone ("features.…") plus "covid_head.*" and "lesion_head.*".
#pragma once

#include <array>
#include <memory>
#include <string>

#include "layers/linear.h"
#include "models/densenet.h"

namespace ladnn {

/// The five lesions, in the order of the split CSVs and of lesion_head's outputs.
inline constexpr std::array<const char*, 5> kLesionNames = {"GGO", "Csld", "CrPa", "AirBr", "InSepThi"};

class LaDnn : public DenseNet {
 public:
  struct Output {
    Variable covid;    // (N, 1) logit
    Variable lesions;  // (N, 5) logits
  };

  explicit LaDnn(const DenseNetConfig& config, Generator& gen = default_generator());

  /// The whole network: image -> both heads' logits.
  Output forward_heads(const Variable& x);
  /// The heads on a post-ReLU feature map (N, F, h, w): pooling and the two linear layers. Grad-CAM
  /// uses this to reach the logits from a feature map it holds.
  Output heads(const Variable& activated_features);
  /// (N, 6): [covid, lesions...] in one tensor (Module's single-output interface).
  Variable forward(const Variable& x) override;

 private:
  std::shared_ptr<Linear> covid_head_, lesion_head_;
};

enum class LossMode {
  Ladnn,     // w_main * BCE(covid) + lesion BCEs on images with lesion labels, / 6 terms
  Baseline,  // BCE(covid) alone (the ablation)
};

struct LossConfig {
  LossMode mode = LossMode::Ladnn;
  double w_main = 5.0;  // the paper's weight of the COVID term
};

/// "ladnn" | "baseline"; throws naming the value otherwise.
LossMode loss_mode_by_name(const std::string& name);

/// The lesion-attention loss, a scalar:
///   Ladnn:    (1 / 6N) * sum_i [ w_main * BCE(covid_i) + m_i * sum_k BCE(lesion_ik) ]
///   Baseline: (1 / N)  * sum_i BCE(covid_i)
/// covid_y (N, 1), lesion_y (N, 5) in {0, 1}; lesion_mask (N, 1): m_i = 1 when image i carries at
/// least one lesion label (its lesion targets are known), else 0.
Variable lesion_attention_loss(const LaDnn::Output& out, const Tensor& covid_y, const Tensor& lesion_y,
                               const Tensor& lesion_mask, const LossConfig& config = {});

}  // namespace ladnn
