// models/densenet.h — DenseNet-121/169/201 exactly as torchvision builds them, plus a tiny config.
//
// Huang et al., "Densely Connected Convolutional Networks" (CVPR 2017). The feature extractor is
//   conv0 (7x7/2) - norm0 - relu0 - pool0 (3x3/2 max)
//   denseblock1 - transition1 - denseblock2 - transition2 - denseblock3 - transition3 - denseblock4
//   norm5
// A dense layer sees the concatenation of every earlier feature map of its block and adds
// `growth_rate` new channels: BN-ReLU-conv1x1 (to bn_size*growth) then BN-ReLU-conv3x3 (to growth).
// A transition halves the channels (BN-ReLU-conv1x1) and the resolution (2x2 average pool).
//
// Parameter and buffer names are torchvision's ("features.denseblock1.denselayer1.norm1.weight"), so
// a torchvision / timm state dict loads one to one. Initialisation is torchvision's: conv weights
// kaiming_normal (fan_in, gain sqrt(2)), BN weight 1 / bias 0, linear bias 0.
#pragma once

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "layers/batchnorm2d.h"
#include "layers/conv2d.h"
#include "layers/linear.h"
#include "layers/module.h"
#include "layers/sequential.h"

namespace ladnn {

struct DenseNetConfig {
  int64_t growth_rate = 32;
  std::vector<int64_t> block_config = {6, 12, 32, 32};
  int64_t num_init_features = 64;
  int64_t bn_size = 4;
  double drop_rate = 0.0;
  /// Training keeps none of a dense layer's inner maps (both BN-ReLU outputs, the bottleneck) for
  /// backward: it recomputes them there (DenseBlock's one-op training form). Same results; far less
  /// memory, a little more compute. torchvision's memory_efficient recomputes the same convolution but
  /// keeps the bottleneck and its BN-ReLU output (and, like the plain form, the concatenations).
  bool memory_efficient = false;

  static DenseNetConfig densenet121() { return {32, {6, 12, 24, 16}, 64, 4, 0.0}; }
  static DenseNetConfig densenet169() { return {32, {6, 12, 32, 32}, 64, 4, 0.0}; }
  static DenseNetConfig densenet201() { return {32, {6, 12, 48, 32}, 64, 4, 0.0}; }
  /// The same code at toy size, for tests and the CPU demo: 4 blocks of 2 layers, growth 8.
  static DenseNetConfig tiny() { return {8, {2, 2, 2, 2}, 16, 2, 0.0}; }
  /// "densenet121" | "densenet169" | "densenet201" | "tiny"; throws listing the names otherwise.
  static DenseNetConfig by_name(const std::string& arch);

  /// Channels of the final feature map (1664 for DenseNet-169).
  int64_t num_features() const;
};

/// One dense layer: norm1-relu1-conv1 (1x1 bottleneck) then norm2-relu2-conv2 (3x3).
class DenseLayer : public Module {
 public:
  DenseLayer(int64_t num_input_features, int64_t growth_rate, int64_t bn_size, double drop_rate,
             Generator& gen);
  /// x: the concatenation of the block's earlier feature maps -> growth_rate new channels.
  Variable forward(const Variable& x) override;
  /// The same from the block's feature maps, concatenated here (memory-efficient training: inside
  /// forward_recomputed, so the concatenation is never stored).
  Variable forward_features(const std::vector<Variable>& features);
  /// Inference (eval mode, gradients off): the layer's growth_rate channels written straight into `out`
  /// (a channel slice of the block's buffer), conv2's output never a tensor of its own.
  void forward_into(const Variable& x, const Tensor& out);
  void set_memory_efficient(bool on) { memory_efficient_ = on; }
  BatchNorm2d& norm1() { return *norm1_; }
  BatchNorm2d& norm2() { return *norm2_; }
  Conv2d& conv1() { return *conv1_; }
  Conv2d& conv2() { return *conv2_; }
  double drop_rate() const { return drop_rate_; }

 private:
  Variable bottleneck(const std::vector<Variable>& features);
  std::shared_ptr<BatchNorm2d> norm1_, norm2_;
  std::shared_ptr<Conv2d> conv1_, conv2_;
  double drop_rate_;
  bool memory_efficient_ = false;
  Generator& gen_;
};

/// A block of dense layers named denselayer1..N; returns the concatenation of input and all outputs.
/// Inference (eval mode, no gradient) and training (with gradients, no dropout) write into one buffer:
/// the block's output is allocated once, each layer reads the channel prefix written so far and its
/// 3x3 convolution writes its growth_rate channels after it, in place. Training runs the whole block
/// as one autograd op whose backward accumulates into one gradient buffer (densenet.cpp); with
/// memory_efficient it keeps no map per layer (only its BatchNorms' statistics) and recomputes. Same
/// values and gradients; none of the O(L^2) concatenation copies or gradient additions. Any other
/// forward that records a graph (eval with gradients: Grad-CAM; dropout) concatenates before each layer,
/// as torchvision.
class DenseBlock : public Module {
 public:
  DenseBlock(int64_t num_layers, int64_t num_input_features, int64_t bn_size, int64_t growth_rate,
             double drop_rate, Generator& gen);
  Variable forward(const Variable& x) override;
  void set_memory_efficient(bool on);
  /// After a training forward that ran the block as one op: the batch statistics of every output
  /// channel, (C_out, 2) float64 [mean, variance] rows (ops::batch_norm_batch_stats), for the BatchNorm
  /// that reads the output next (a transition's); handed over once (undefined after, and after any
  /// other forward).
  Tensor take_output_stats();

 private:
  Variable forward_buffered(const Variable& x);
  /// Training with gradients and no dropout: the block as one op over one buffer (densenet.cpp).
  Variable forward_training(const Variable& x);
  bool dropout_free() const;
  std::vector<std::shared_ptr<DenseLayer>> layers_;
  int64_t growth_rate_;
  bool memory_efficient_ = false;
  Tensor output_stats_;  // see take_output_stats
};

/// norm - relu - conv (1x1, halves channels) - pool (2x2 average).
class Transition : public Module {
 public:
  Transition(int64_t num_input_features, int64_t num_output_features, Generator& gen);
  Variable forward(const Variable& x) override;
  /// Training, with x's batch statistics already known (DenseBlock::take_output_stats; undefined: none).
  Variable forward(const Variable& x, const Tensor& batch_stats);

 private:
  std::shared_ptr<BatchNorm2d> norm_;
  std::shared_ptr<Conv2d> conv_;
};

/// torchvision.models.DenseNet: `features` (ending at norm5, before the final ReLU) and a
/// `classifier` when num_classes > 0 (LA-DNN builds its own heads and passes 0).
class DenseNet : public Module {
 public:
  explicit DenseNet(const DenseNetConfig& config, int64_t num_classes = 1000,
                    Generator& gen = default_generator());
  /// features -> relu -> global average pool -> flatten -> classifier.
  Variable forward(const Variable& x) override;
  /// The `features` Sequential: (N, 3, H, W) -> (N, num_features, H/32, W/32), after norm5.
  Variable features(const Variable& x);
  /// relu(features(x)), with norm5 and the ReLU as one fused op (what the classifier and LA-DNN's heads
  /// read): the same values and gradients, one kernel and one stored map fewer.
  Variable features_relu(const Variable& x);
  const DenseNetConfig& config() const { return config_; }
  /// Switches every dense layer to (or from) the memory-efficient form; weights are unaffected.
  void set_memory_efficient(bool on);

 private:
  Variable run_features(const Variable& x, bool final_relu);
  DenseNetConfig config_;
  // Every BatchNorm of `features`, counted here: num_batches_tracked of all of them grows in one
  // ops::increment_all_ per training forward (one GPU kernel, not one per layer).
  std::vector<BatchNorm2d*> norms_;
  std::shared_ptr<Sequential> features_;
  std::shared_ptr<Linear> classifier_;
};

}  // namespace ladnn
