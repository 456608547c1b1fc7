// models/densenet.cpp — the DenseNet modules (see densenet.h).
#include "models/densenet.h"

#include "autograd/functions.h"
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
  Variable out = memory_efficient_ && is_training() && grad_enabled()
                     ? forward_recomputed(features)
                     : (*conv2_)(norm2_->forward_relu(bottleneck(features)));  // (N, growth, H, W)
  if (drop_rate_ > 0) out = dropout(out, drop_rate_, is_training(), gen_);
  return out;
}

// The memory-efficient layer as one autograd op with a hand-written backward. Forward computes
//   x = cat(features), t = relu(norm1(x)), b = conv1(t), h = relu(norm2(b)), out = conv2(h)
// and keeps none of x, t, b, h: only the features (alive anyway, they are the block's output) and the
// parameters. Backward recomputes them — the same batch statistics of the same values, so the same bits
// — and runs the layer's backward by hand, freeing each map as soon as it is used:
//   dW2 = conv2'(dout; h)    dh = conv2'(dout; W2)    db, dgamma2, dbeta2 = norm2'(dh; b, h)
//   dW1 = conv1'(db; t)      dt = conv1'(db; W1)      dx, dgamma1, dbeta1 = norm1'(dt; x, t)
// and dx split back onto the features. torchvision's memory_efficient (a checkpoint around x..b) re-runs
// the same convolution in backward but keeps b and h from forward: 128 + 128 channels per layer, most of
// the step's memory. Here the price of dropping them is one BatchNorm pass (norm2's statistics again).
Variable DenseLayer::forward_recomputed(const std::vector<Variable>& features) {
  std::vector<Tensor> parts;
  std::vector<int64_t> sizes;
  for (const Variable& f : features) {
    parts.push_back(f.tensor());
    sizes.push_back(f.size(1));
  }
  auto concat = [](const std::vector<Tensor>& p) { return p.size() == 1 ? p[0] : ops::cat(p, 1); };
  const ops::Conv2dParams p1 = conv1_->params(), p2 = conv2_->params();
  Tensor out;
  {
    Tensor t = norm1_->forward_train(concat(parts), ops::BnAct::Relu).y;  // x dies here
    Tensor b = ops::conv2d_forward(t, conv1_->weight().tensor(), Tensor(), p1);
    t = Tensor();
    Tensor h = norm2_->forward_train(b, ops::BnAct::Relu).y;
    b = Tensor();
    out = ops::conv2d_forward(h, conv2_->weight().tensor(), Tensor(), p2);
  }
  std::vector<Variable> inputs = features;
  for (const Variable* v : {&norm1_->weight(), &norm1_->bias(), &conv1_->weight(), &norm2_->weight(),
                            &norm2_->bias(), &conv2_->weight()})
    inputs.push_back(*v);
  const Tensor g1 = norm1_->weight().tensor(), be1 = norm1_->bias().tensor(), w1 = conv1_->weight().tensor();
  const Tensor g2 = norm2_->weight().tensor(), be2 = norm2_->bias().tensor(), w2 = conv2_->weight().tensor();
  const double eps1 = norm1_->eps(), eps2 = norm2_->eps();
  return Variable::from_op(
      std::move(out), std::move(inputs),
      [=](const Tensor& dout, const std::vector<bool>& needs) {
        const std::size_t nf = parts.size();  // needs/grads: features, gamma1, beta1, W1, gamma2, beta2, W2
        std::vector<Tensor> grads(nf + 6);
        Tensor none_mean, none_var;  // recomputation: no running statistics to update
        const Tensor x = concat(parts);
        const ops::BatchNormForward f1 =
            ops::batch_norm_forward_train(x, g1, be1, none_mean, none_var, 0.0, eps1, ops::BnAct::Relu);
        Tensor db;
        {
          const Tensor b = ops::conv2d_forward(f1.y, w1, Tensor(), p1);
          const ops::BatchNormForward f2 =
              ops::batch_norm_forward_train(b, g2, be2, none_mean, none_var, 0.0, eps2, ops::BnAct::Relu);
          if (needs[nf + 5]) grads[nf + 5] = ops::conv2d_backward_weight(dout, f2.y, w2.shape(), p2);
          const Tensor dh = ops::conv2d_backward_input(dout, w2, f2.y.shape(), p2);
          ops::BatchNormGrads n2 = ops::batch_norm_backward_train(dh, b, g2, f2.save_mean, f2.save_invstd, f2.y);
          if (needs[nf + 3]) grads[nf + 3] = std::move(n2.dgamma);
          if (needs[nf + 4]) grads[nf + 4] = std::move(n2.dbeta);
          db = std::move(n2.dx);
        }
        if (needs[nf + 2]) grads[nf + 2] = ops::conv2d_backward_weight(db, f1.y, w1.shape(), p1);
        bool below = needs[nf] || needs[nf + 1];
        for (std::size_t i = 0; i < nf; ++i) below = below || needs[i];
        if (below) {
          const Tensor dt = ops::conv2d_backward_input(db, w1, f1.y.shape(), p1);
          db = Tensor();
          ops::BatchNormGrads n1 = ops::batch_norm_backward_train(dt, x, g1, f1.save_mean, f1.save_invstd, f1.y);
          if (needs[nf]) grads[nf] = std::move(n1.dgamma);
          if (needs[nf + 1]) grads[nf + 1] = std::move(n1.dbeta);
          const std::vector<Tensor> dparts = nf == 1 ? std::vector<Tensor>{n1.dx} : ops::split(n1.dx, sizes, 1);
          for (std::size_t i = 0; i < nf; ++i)
            if (needs[i]) grads[i] = dparts[i];
        }
        return grads;
      },
      "dense_layer_recomputed");
}

void DenseLayer::forward_into(const Variable& x, const Tensor& out) {
  check(!is_training(), "DenseLayer::forward_into: for inference (eval mode)");
  // Dropout is the identity in eval mode, so conv2 is the layer's last op.
  conv2_->forward_into(norm2_->forward_relu(bottleneck({x})).tensor(), out);
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

Variable DenseBlock::forward(const Variable& x) {
  if (!is_training() && !grad_enabled()) return forward_buffered(x);
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
  for (auto& layer : layers_) layer->set_memory_efficient(on);
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
  ops::Pool2dParams pool;  // 2x2, stride 2
  // torchvision's order is norm, relu, conv (1x1, no bias), pool. A 1x1 convolution without bias and a
  // 2x2 average pool are both linear maps, one across channels, one across pixels: they commute, exactly
  // (up to rounding). Pooling first runs the convolution on a quarter of the pixels — a quarter of the
  // FLOPs and of the stored output, forward and backward (the three transitions of DenseNet-169 are
  // ~10% of its convolution work). Odd sizes too: both orders drop the same last row and column.
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
  // torchvision's names and printout).
  Variable h = x;
  for (std::size_t i = 0; i < features_->size(); ++i) {
    const std::shared_ptr<Module> m = (*features_)[i];
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
