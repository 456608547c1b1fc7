// models/densenet.cpp — the DenseNet modules (see densenet.h).
#include "models/densenet.h"

#include <algorithm>
#include <functional>

#include "autograd/checkpoint.h"
#include "autograd/functions.h"
#include "cuda/context.h"
#include "layers/activation.h"
#include "layers/pool.h"

namespace ladnn {

DenseNetConfig DenseNetConfig::by_name(const std::string& arch) {
  if (arch == "densenet121") return densenet121();
  if (arch == "densenet169") return densenet169();
  if (arch == "densenet201") return densenet201();
  if (arch == "tiny") return tiny();
  throw std::invalid_argument("DenseNet: unknown architecture '" + arch +
                              "' (choose densenet121, densenet169, densenet201 or tiny)");
}

int64_t DenseNetConfig::num_features() const {
  int64_t n = num_init_features;
  for (size_t i = 0; i < block_config.size(); ++i) {
    n += block_config[i] * growth_rate;
    if (i + 1 < block_config.size()) n /= 2;
  }
  return n;
}

namespace {
/// torchvision re-initialises every conv with kaiming_normal_ (fan_in, relu gain).
void torchvision_init(Conv2d& conv, Generator& gen) {
  Variable w = conv.weight();
  w.mutable_tensor().copy_(kaiming_normal(w.shape(), 0.0, gen, FanMode::FanIn, w.dtype()));
}

std::shared_ptr<Conv2d> make_conv(int64_t in, int64_t out, int64_t k, int64_t stride, int64_t pad,
                                  Generator& gen) {
  auto conv = std::make_shared<Conv2d>(in, out, k, stride, pad, /*bias=*/false, gen);
  torchvision_init(*conv, gen);
  return conv;
}
}  // namespace

// ---- DenseLayer --------------------------------------------------------------------------------------

DenseLayer::DenseLayer(int64_t num_input_features, int64_t growth_rate, int64_t bn_size,
                       double drop_rate, Generator& gen)
    : Module("DenseLayer"), drop_rate_(drop_rate), gen_(gen) {
  norm1_ = register_module("norm1", std::make_shared<BatchNorm2d>(num_input_features));
  register_module("relu1", std::make_shared<ReLU>());
  conv1_ = register_module("conv1", make_conv(num_input_features, bn_size * growth_rate, 1, 1, 0, gen));
  norm2_ = register_module("norm2", std::make_shared<BatchNorm2d>(bn_size * growth_rate));
  register_module("relu2", std::make_shared<ReLU>());
  conv2_ = register_module("conv2", make_conv(bn_size * growth_rate, growth_rate, 3, 1, 1, gen));
}

Variable DenseLayer::forward(const Variable& x) {
  return forward_features({x});
}

Variable DenseLayer::bottleneck(const std::vector<Variable>& features) {
  const Variable x = features.size() == 1 ? features[0] : cat(features, 1);
  return (*conv1_)(norm1_->forward_relu(x));  // (N, bn_size*growth, H, W); norm1-relu1 fused
}

Variable DenseLayer::forward_features(const std::vector<Variable>& features) {
  // Memory-efficient here (training with dropout; without, DenseBlock runs its one-op form):
  // torchvision's checkpoint around the concatenation-BN-ReLU-conv1.
  Variable b = memory_efficient_ && is_training()
                   ? checkpoint([this](const std::vector<Variable>& in) { return bottleneck(in); }, features)
                   : bottleneck(features);
  Variable out = (*conv2_)(norm2_->forward_relu(b));  // (N, growth, H, W)
  if (drop_rate_ > 0) out = dropout(out, drop_rate_, is_training(), gen_);
  return out;
}

void DenseLayer::forward_into(const Variable& x, const Tensor& out) {
  check(!is_training(), "DenseLayer::forward_into: for inference (eval mode)");
  // norm1-relu1-conv1-norm2-relu2 as one op, then conv2 (dropout is the identity in eval mode): the
  // same ops as forward() on the CPU; on the GPU one kernel each when LADNN_FUSED_CONV picks it.
  const ops::BnEval n1 = norm1_->eval_params(ops::BnAct::Relu), n2 = norm2_->eval_params(ops::BnAct::Relu);
  const Tensor h = ops::conv2d_bn_eval(x.tensor(), &n1, conv1_->weight().tensor(), conv1_->params(), &n2);
  ops::conv2d_bn_eval_into(h, nullptr, conv2_->weight().tensor(), conv2_->params(), nullptr, out);
}

// ---- DenseBlock ---------------------------------------------------------------------------------------

DenseBlock::DenseBlock(int64_t num_layers, int64_t num_input_features, int64_t bn_size,
                       int64_t growth_rate, double drop_rate, Generator& gen)
    : Module("DenseBlock"), growth_rate_(growth_rate) {
  for (int64_t i = 0; i < num_layers; ++i) {
    auto layer = std::make_shared<DenseLayer>(num_input_features + i * growth_rate, growth_rate,
                                              bn_size, drop_rate, gen);
    layers_.push_back(register_module("denselayer" + std::to_string(i + 1), layer));
  }
}

Tensor DenseBlock::take_output_stats() {
  Tensor s = std::move(output_stats_);
  output_stats_ = Tensor();
  return s;
}

Variable DenseBlock::forward(const Variable& x) {
  output_stats_ = Tensor();
  if (!is_training() && !grad_enabled()) return forward_buffered(x);
  if (is_training() && grad_enabled() && dropout_free()) return forward_training(x);
  // Every layer reads all earlier maps: features grows by growth_rate channels per layer.
  std::vector<Variable> features{x};
  for (auto& layer : layers_) features.push_back(layer->forward_features(features));
  return cat(features, 1);
}

Variable DenseBlock::forward_buffered(const Variable& x) {
  const Tensor& in = x.tensor();
  check(in.dim() == 4, "DenseBlock: input must be (N, C, H, W), got " + shape_str(in.shape()));
  const int64_t c_in = in.size(1);
  const int64_t total = c_in + static_cast<int64_t>(layers_.size()) * growth_rate_;
  Tensor block = Tensor::empty({in.size(0), total, in.size(2), in.size(3)}, in.dtype(), in.device());
  block.narrow(1, 0, c_in).copy_(in);
  int64_t c = c_in;
  for (auto& layer : layers_) {
    // Reads the first c channels of every sample (a view, contiguous only at batch 1) in place and
    // writes channels [c, c + growth) of every sample, also in place.
    layer->forward_into(Variable(block.narrow(1, 0, c)), block.narrow(1, c, growth_rate_));
    c += growth_rate_;
  }
  return Variable(block);
}

void DenseBlock::set_memory_efficient(bool on) {
  memory_efficient_ = on;
  for (auto& layer : layers_) layer->set_memory_efficient(on);
}

bool DenseBlock::dropout_free() const {
  for (const auto& layer : layers_)
    if (layer->drop_rate() > 0) return false;
  return true;
}

// Training: the block as one autograd op over one feature buffer (Pleiss et al. 2017's shared storage,
// and the same for the gradient).
//
// Forward: the block's output is allocated once; layer l reads the channel prefix [0, c_l) written so
// far and its conv2 writes channels [c_l, c_l + growth) in place — no concatenation, stored or not.
// Per layer it keeps t = relu(norm1(prefix)) (conv1's input), b = conv1(t) and h = relu(norm2(b))
// (conv2's input) with their batch statistics; memory-efficient, it keeps none of them and recomputes
// them in backward (the same batch statistics of the same values: the same bits where the convolutions
// are deterministic, as on the CPU and on the GPU with LADNN_DETERMINISTIC=1; otherwise cuDNN may order
// a sum differently and the recomputed maps differ in the last bits), so the step holds little more
// than the block buffers.
//
// Backward: one gradient buffer G (the output's gradient) for the whole block. Going back from the
// last layer, G's channels [c_l, c_l + growth) are complete when layer l is reached (only later layers
// read them), so they are layer l's output gradient; its backward, written out by hand,
//   dW2 = conv2'(dout; h)    dh = conv2'(dout; W2)    db, dgamma2, dbeta2 = norm2'(dh; b, h)
//   dW1 = conv1'(db; t)      dt = conv1'(db; W1)      dx, dgamma1, dbeta1 = norm1'(dt; prefix)
// ends with G[:, 0:c_l] += dx, done by norm1's backward itself (dx_into): no dx tensor at all. Both
// BatchNorms' ReLU masks are recomputed from their inputs (BnReluFromX), so the backwards read neither t
// nor h. (The per-layer autograd form accumulates each earlier feature's gradient separately: O(L^2)
// small additions per block, ~1,100 kernels per DenseNet-169 step.) G[:, 0:c_0] is the block input's
// gradient.
//
// Batch statistics, once per channel: norm1 of layer l normalises channels [0, c_l) with their batch
// statistics, and a channel's values never change once written — so layer l + 1's norm1 would find the
// same statistics for all but its last growth channels. The block keeps one table S, (C_total, 2) float64
// [mean, variance] rows (ops::batch_norm_batch_stats): the input's rows at the start, each layer's new
// channels' rows by the next layer's norm1 (its `fresh` channels: on the GPU, for 14x14 and 7x7, inside
// the norm1's own kernel), the last layer's right after its conv2 writes them. Each norm1 (and its
// recomputation when memory-efficient) takes rows [0, c_l) of S and reads its input once, to normalise it,
// instead of twice. All of S is the block output's statistics: the transition after the block takes them
// (take_output_stats) for its BatchNorm.
// Over DenseNet-169's 82 norm1s that is one pass over ~48 MB of prefixes per sample fewer per step (once
// more when memory-efficient), for one more read of each layer's growth channels.
namespace {
/// A folded norm1 (LADNN_NORM1_FOLD) as conv1's pre BatchNorm: its map with the statistics its forward
/// recorded (the batch form of ops::BnEval) — the values the unfolded norm1 writes.
ops::BnEval folded_pre(const Tensor& gamma, const Tensor& beta, const ops::BatchNormForward& n1) {
  ops::BnEval pre;
  pre.gamma = gamma;
  pre.beta = beta;
  pre.act = ops::BnAct::Relu;
  pre.save_mean = n1.save_mean;
  pre.save_invstd = n1.save_invstd;
  return pre;
}
}  // namespace

Variable DenseBlock::forward_training(const Variable& x) {
  const Tensor& in = x.tensor();
  check(in.dim() == 4, "DenseBlock: input must be (N, C, H, W), got " + shape_str(in.shape()));
  const int64_t c0 = in.size(1), g = growth_rate_, L = static_cast<int64_t>(layers_.size());
  Tensor block = Tensor::empty({in.size(0), c0 + L * g, in.size(2), in.size(3)}, in.dtype(), in.device());
  block.narrow(1, 0, c0).copy_(in);
  // S: the batch statistics of every channel (the last layer's for the transition's BatchNorm).
  const Tensor stats = Tensor::empty({c0 + L * g, 2}, DType::Float64, in.device());
  ops::batch_norm_batch_stats_into(block.narrow(1, 0, c0), stats.narrow(0, 0, c0));

  struct Saved {
    ops::BatchNormForward n1, n2;  // y: t and h
    Tensor b;
  };
  const bool keep = !memory_efficient_;
  // Folded (LADNN_NORM1_FOLD=1): norm1 records its statistics and conv1 applies its map as it reads the
  // prefix. Where a pass of its own made the map (the CPU; the GPU's library path) it is kept as before;
  // where our kernel normalised on the fly there is none, and the backward's conv1 weight gradient applies
  // the map again from the saved statistics (kept even when memory-efficient: two vectors a layer).
  const bool fold = cuda::fold_norm1();
  // Memory-efficient, each layer still keeps norm2's statistics (two vectors of bn_size * growth): the
  // recomputation maps b with them (batch_norm_map_saved, the forward's bits) instead of reducing b again.
  auto saved = std::make_shared<std::vector<Saved>>(L);
  struct Params {
    Tensor g1, be1, w1, g2, be2, w2;
    double eps1, eps2;
    ops::Conv2dParams p1, p2;
  };
  std::vector<Params> params;
  std::vector<Variable> inputs{x};
  for (int64_t l = 0; l < L; ++l) {
    DenseLayer& layer = *layers_[l];
    const int64_t c = c0 + l * g;
    // The previous layer's g new channels are not in the table yet: this norm1 computes their rows first
    // (fresh), in the same kernel as its map where that takes a block per channel.
    const Tensor prefix = block.narrow(1, 0, c);
    ops::BatchNormForward n1;
    Tensor b;
    if (fold) {
      n1 = layer.norm1().record_train(prefix, ops::BnAct::Relu, stats.narrow(0, 0, c), l > 0 ? g : 0);
      const ops::BnEval pre = folded_pre(layer.norm1().weight().tensor(), layer.norm1().bias().tensor(), n1);
      b = ops::conv2d_bn_eval(prefix, &pre, layer.conv1().weight().tensor(), layer.conv1().params(), nullptr,
                              keep ? &n1.y : nullptr);
    } else {
      n1 = layer.norm1().forward_train(prefix, ops::BnAct::Relu, stats.narrow(0, 0, c), l > 0 ? g : 0);
      // The forward convolutions as conv2d_bn_eval without BatchNorms: plain convolutions (the same ops on
      // the CPU, and on the GPU unless LADNN_FUSED_CONV=auto finds our kernel faster for the shape).
      b = ops::conv2d_bn_eval(n1.y, nullptr, layer.conv1().weight().tensor(), layer.conv1().params(),
                              nullptr);
    }
    ops::BatchNormForward n2 = layer.norm2().forward_train(b, ops::BnAct::Relu);
    ops::conv2d_bn_eval_into(n2.y, nullptr, layer.conv2().weight().tensor(), layer.conv2().params(), nullptr,
                             block.narrow(1, c, g));
    if (l == L - 1)  // the last layer's new channels: for the transition's BatchNorm (take_output_stats)
      ops::batch_norm_batch_stats_into(block.narrow(1, c, g), stats.narrow(0, c, g));
    if (keep) {
      (*saved)[l] = {std::move(n1), std::move(n2), std::move(b)};
    } else {  // the statistics; no maps
      if (fold) (*saved)[l].n1 = std::move(n1);
      (*saved)[l].n2 = {Tensor(), n2.save_mean, n2.save_invstd, n2.relu_from_x};
    }
    params.push_back({layer.norm1().weight().tensor(), layer.norm1().bias().tensor(),
                      layer.conv1().weight().tensor(), layer.norm2().weight().tensor(),
                      layer.norm2().bias().tensor(), layer.conv2().weight().tensor(), layer.norm1().eps(),
                      layer.norm2().eps(), layer.conv1().params(), layer.conv2().params()});
    for (const Variable* v : {&layer.norm1().weight(), &layer.norm1().bias(), &layer.conv1().weight(),
                              &layer.norm2().weight(), &layer.norm2().bias(), &layer.conv2().weight()})
      inputs.push_back(*v);
  }

  output_stats_ = stats;
  return Variable::from_op(
      block, std::move(inputs),
      [block, stats, saved, params, c0, g, L, keep, fold](const Tensor& dblock,
                                                          const std::vector<bool>& needs) {
        std::vector<Tensor> grads(1 + 6 * static_cast<std::size_t>(L));
        // Ours to accumulate into: the output's gradient itself when nothing else can see it (as in a
        // training step: one block-sized copy fewer), else a copy.
        Tensor G = gradient_is_exclusive(dblock) ? dblock : dblock.clone();
        Tensor none_mean, none_var;  // recomputation: no running statistics to update
        for (int64_t l = L - 1; l >= 0; --l) {
          const Params& p = params[l];
          const int64_t c = c0 + l * g;
          const std::size_t k = 1 + 6 * static_cast<std::size_t>(l);  // gamma1, beta1, W1, gamma2, beta2, W2
          const Tensor prefix = block.narrow(1, 0, c);
          ops::BatchNormForward n1, n2;
          Tensor b;
          if (keep) {
            n1 = (*saved)[l].n1;
            n2 = (*saved)[l].n2;
            b = (*saved)[l].b;
          } else {
            if (fold) {  // the statistics kept, the map applied again inside conv1
              n1 = (*saved)[l].n1;
              const ops::BnEval pre = folded_pre(p.g1, p.be1, n1);
              // (the map, where a pass of its own made it, for the weight gradient below: not made twice)
              b = ops::conv2d_bn_eval(prefix, &pre, p.w1, p.p1, nullptr, &n1.y);
            } else {
              n1 = ops::batch_norm_forward_train(prefix, p.g1, p.be1, none_mean, none_var, 0.0, p.eps1,
                                                 ops::BnAct::Relu, stats.narrow(0, 0, c));
              b = ops::conv2d_bn_eval(n1.y, nullptr, p.w1, p.p1, nullptr);  // as the forward ran it
            }
            n2 = (*saved)[l].n2;
            if (n2.relu_from_x)  // the native arithmetic (and the CPU's): the map from the kept statistics
              n2.y =
                  ops::batch_norm_map_saved(b, p.g2, p.be2, n2.save_mean, n2.save_invstd, ops::BnAct::Relu);
            else  // (cuDNN's forward: its own arithmetic again)
              n2 = ops::batch_norm_forward_train(b, p.g2, p.be2, none_mean, none_var, 0.0, p.eps2,
                                                 ops::BnAct::Relu);
          }
          // Both conv2 passes read the output gradient in place: each image's g channels are one packed
          // block, images (c0 + L*g)*H*W apart, which the convolutions take (cuDNN's descriptors, our
          // kernels' image strides). The CPU's convolutions make their own packed copies.
          const Tensor dout = G.narrow(1, c, g);
          if (needs[k + 5]) grads[k + 5] = ops::conv2d_backward_weight(dout, n2.y, p.w2.shape(), p.p2);
          Tensor db;
          {
            const Tensor dh = ops::conv2d_backward_input(dout, p.w2, n2.y.shape(), p.p2);
            // The ReLU's mask from b (read anyway), not from h: as norm1's below.
            const ops::BnReluMask m2 = ops::relu_mask_of(n2, p.be2);
            ops::BatchNormGrads bn2 =
                ops::batch_norm_backward_train(dh, b, p.g2, n2.save_mean, n2.save_invstd, m2.relu_y, Tensor(), m2.from_x);
            if (needs[k + 3]) grads[k + 3] = std::move(bn2.dgamma);
            if (needs[k + 4]) grads[k + 4] = std::move(bn2.dbeta);
            db = std::move(bn2.dx);
          }
          if (needs[k + 2])  // folded without a kept map: the weight gradient applies it to the prefix
            grads[k + 2] = n1.y.defined() ? ops::conv2d_backward_weight(db, n1.y, p.w1.shape(), p.p1)
                                          : ops::conv2d_backward_weight(db, prefix, p.w1.shape(), p.p1,
                                                                        folded_pre(p.g1, p.be1, n1));
          const Tensor dt = ops::conv2d_backward_input(db, p.w1, prefix.shape(), p.p1);
          db = Tensor();
          // dx goes straight into G's first c channels (added by the backward's last pass), and the
          // ReLU's mask is recomputed from the prefix it reads anyway instead of read from t (two
          // prefix-sized reads fewer), where the forward's arithmetic allows (BatchNormForward::relu_from_x).
          const ops::BnReluMask m1 = ops::relu_mask_of(n1, p.be1);
          ops::BatchNormGrads bn1 = ops::batch_norm_backward_train(dt, prefix, p.g1, n1.save_mean, n1.save_invstd,
                                                                   m1.relu_y, G.narrow(1, 0, c), m1.from_x);
          if (needs[k]) grads[k] = std::move(bn1.dgamma);
          if (needs[k + 1]) grads[k + 1] = std::move(bn1.dbeta);
        }
        if (needs[0]) grads[0] = G.narrow(1, 0, c0);
        return grads;
      },
      "dense_block");
}

// ---- Transition ---------------------------------------------------------------------------------------

Transition::Transition(int64_t num_input_features, int64_t num_output_features, Generator& gen)
    : Module("Transition") {
  norm_ = register_module("norm", std::make_shared<BatchNorm2d>(num_input_features));
  register_module("relu", std::make_shared<ReLU>());
  conv_ = register_module("conv", make_conv(num_input_features, num_output_features, 1, 1, 0, gen));
  register_module("pool", std::make_shared<AvgPool2d>(2, 2));
}

Variable Transition::forward(const Variable& x) {
  return forward(x, Tensor());
}

Variable Transition::forward(const Variable& x, const Tensor& batch_stats) {
  ops::Pool2dParams pool;  // 2x2, stride 2
  // torchvision's order is norm, relu, conv (1x1, no bias), pool. A 1x1 convolution without bias and a
  // 2x2 average pool are both linear maps, one across channels, one across pixels: they commute, exactly
  // (up to rounding). Pooling first runs the convolution on a quarter of the pixels — a quarter of the
  // FLOPs and of the stored output, forward and backward (the three transitions of DenseNet-169 are
  // ~10% of its convolution work). Odd sizes too: both orders drop the same last row and column.
  // At inference (eval, no gradient) norm, relu and pool are one op: on the GPU one kernel that never
  // writes the normalised map (as large as the dense block's output), the same values.
  // In training they are one op too (batch_norm_relu_avg_pool2d): the normalised map is not kept for the
  // backward, and on the GPU never written; with the dense block's statistics the BatchNorm reads its
  // input once.
  if (!is_training() && !grad_enabled())
    return (*conv_)(
        Variable(ops::bn_avg_pool2d_eval(x.tensor(), norm_->eval_params(ops::BnAct::Relu), pool)));
  if (is_training()) return (*conv_)(norm_->forward_relu_avg_pool(x, pool, batch_stats));
  return (*conv_)(avg_pool2d(norm_->forward_relu(x), pool));
}

// ---- DenseNet -----------------------------------------------------------------------------------------

DenseNet::DenseNet(const DenseNetConfig& config, int64_t num_classes, Generator& gen)
    : Module("DenseNet"), config_(config) {
  check(!config.block_config.empty() && config.growth_rate > 0 && config.num_init_features > 0 &&
            config.bn_size > 0,
        "DenseNet: the configuration needs at least one block and positive sizes");
  features_ = register_module("features", std::make_shared<Sequential>());
  features_->push_back("conv0", make_conv(3, config.num_init_features, 7, 2, 3, gen));
  features_->push_back("norm0", std::make_shared<BatchNorm2d>(config.num_init_features));
  features_->push_back("relu0", std::make_shared<ReLU>());
  features_->push_back("pool0", std::make_shared<MaxPool2d>(3, 2, 1));
  int64_t num_features = config.num_init_features;
  for (size_t i = 0; i < config.block_config.size(); ++i) {
    int64_t n = config.block_config[i];
    features_->push_back("denseblock" + std::to_string(i + 1),
                         std::make_shared<DenseBlock>(n, num_features, config.bn_size,
                                                      config.growth_rate, config.drop_rate, gen));
    num_features += n * config.growth_rate;
    if (i + 1 < config.block_config.size()) {
      features_->push_back("transition" + std::to_string(i + 1),
                           std::make_shared<Transition>(num_features, num_features / 2, gen));
      num_features /= 2;
    }
  }
  features_->push_back("norm5", std::make_shared<BatchNorm2d>(num_features));
  // Every BatchNorm below features_ (the tree's modules live as long as this one).
  std::function<void(const Module&)> collect = [&](const Module& m) {
    for (const auto& [name, child] : m.named_children()) {
      if (auto* bn = dynamic_cast<BatchNorm2d*>(child.get())) {
        bn->set_counted_by_owner(true);
        norms_.push_back(bn);
      }
      collect(*child);
    }
  };
  collect(*features_);
  set_memory_efficient(config.memory_efficient);
  if (num_classes > 0) {
    classifier_ = register_module("classifier", std::make_shared<Linear>(num_features, num_classes, true, gen));
    // torchvision sets the classifier bias to 0 (the weight keeps Linear's default init).
    Variable b = classifier_->bias();
    b.mutable_tensor().zero_();
  }
}

void DenseNet::set_memory_efficient(bool on) {
  config_.memory_efficient = on;
  for (const auto& [name, child] : features_->named_children())
    if (auto block = std::dynamic_pointer_cast<DenseBlock>(child)) block->set_memory_efficient(on);
}

Variable DenseNet::features(const Variable& x) {
  return run_features(x, /*final_relu=*/false);
}

Variable DenseNet::features_relu(const Variable& x) {
  return run_features(x, /*final_relu=*/true);
}

Variable DenseNet::run_features(const Variable& x, bool final_relu) {
  check(x.dim() == 4 && x.size(1) == 3,
        "DenseNet: input must be (N, 3, H, W), got " + shape_str(x.shape()));
  // The Sequential's children in order, except that a BatchNorm2d followed by a ReLU (norm0, relu0)
  // runs as one fused op, as inside the dense layers and transitions (the ReLU modules stay registered:
  // torchvision's names and printout); at inference (eval, no gradient) the stem's conv0-norm0-relu0 is
  // one op too (ops::conv2d_bn_eval: one kernel on the GPU when LADNN_FUSED_CONV picks it).
  const bool inference = !is_training() && !grad_enabled();
  if (is_training() && !recomputing()) {  // each BatchNorm's num_batches_tracked, all in one op
    std::vector<Tensor> counters;
    counters.reserve(norms_.size());
    for (BatchNorm2d* bn : norms_) counters.push_back(bn->buffer("num_batches_tracked"));
    ops::increment_all_(counters);
  }
  Variable h = x;
  for (std::size_t i = 0; i < features_->size(); ++i) {
    const std::shared_ptr<Module> m = (*features_)[i];
    auto* conv = dynamic_cast<Conv2d*>(m.get());
    auto* conv_bn = i + 1 < features_->size() ? dynamic_cast<BatchNorm2d*>((*features_)[i + 1].get()) : nullptr;
    if (inference && conv && !conv->bias().defined() && conv_bn && i + 2 < features_->size() &&
        dynamic_cast<ReLU*>((*features_)[i + 2].get())) {
      const ops::BnEval n = conv_bn->eval_params(ops::BnAct::Relu);
      h = Variable(ops::conv2d_bn_eval(h.tensor(), nullptr, conv->weight().tensor(), conv->params(), &n));
      i += 2;
      continue;
    }
    // Training: the stem's norm0, relu0 and pool0 as one op (the normalised map neither kept nor, on the
    // GPU, written), and a dense block hands its output's batch statistics to the transition after it.
    auto* pool = i + 2 < features_->size() ? dynamic_cast<MaxPool2d*>((*features_)[i + 2].get()) : nullptr;
    if (is_training() && pool && dynamic_cast<BatchNorm2d*>(m.get()) &&
        dynamic_cast<ReLU*>((*features_)[i + 1].get())) {
      h = static_cast<BatchNorm2d*>(m.get())->forward_relu_max_pool(h, pool->params());
      i += 2;
      continue;
    }
    auto* block = dynamic_cast<DenseBlock*>(m.get());
    auto* transition =
        i + 1 < features_->size() ? dynamic_cast<Transition*>((*features_)[i + 1].get()) : nullptr;
    if (block && transition && is_training()) {
      h = block->forward(h);
      h = transition->forward(h, block->take_output_stats());
      ++i;
      continue;
    }
    auto* bn = dynamic_cast<BatchNorm2d*>(m.get());
    if (bn && i + 1 < features_->size() && dynamic_cast<ReLU*>((*features_)[i + 1].get())) {
      h = bn->forward_relu(h);
      ++i;
    } else if (bn && final_relu && i + 1 == features_->size()) {
      h = bn->forward_relu(h);  // norm5 and the ReLU the heads apply, fused
    } else {
      h = m->forward(h);
    }
  }
  return h;
}

Variable DenseNet::forward(const Variable& x) {
  check(classifier_ != nullptr, "DenseNet: built without a classifier (num_classes = 0); use features()");
  Variable pooled = flatten(adaptive_avg_pool2d(features_relu(x), 1, 1), 1);
  return (*classifier_)(pooled);
}

}  // namespace ladnn
