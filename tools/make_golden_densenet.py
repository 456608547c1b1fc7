#!/usr/bin/python3
"""The DenseNet golden fixture: torchvision's DenseNet with LA-DNN heads, one training step's worth of
forward and backward in PyTorch, saved for tests/densenet_golden_test.cpp.

    /usr/bin/python3 tools/make_golden_densenet.py --arch densenet169 --out build/golden

Writes <out>/<arch>_weights.safetensors (random float32 weights, torchvision names plus
covid_head/lesion_head) and <out>/<arch>_io.safetensors: the input batch (2, 3, S, S), the targets, and
PyTorch's float64 results from those weights — logits in training mode (batch statistics) and eval
mode, the lesion-attention loss, the loss's gradient for every parameter ("grad.<name>"), the running
statistics after the step ("after.<name>") — plus, per result, PyTorch's own float32 error against
that float64 reference ("floor.<name>"). Too large to commit for DenseNet-169 (~170 MB), so
tools/test.sh generates it before the tests run; torch runs on 2 threads and the file is the same
every run.
"""
import argparse
import copy
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_torchvision import write_safetensors  # noqa: E402


class LaDnn(nn.Module):
    """The model ladnn's models/ladnn.h builds: torchvision features, ReLU, GAP, two linear heads."""

    def __init__(self, arch, tiny):
        super().__init__()
        import torchvision
        if tiny:
            net = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, bn_size=2)
        else:
            net = getattr(torchvision.models, arch)()
        self.features = net.features
        f = net.classifier.in_features
        self.covid_head = nn.Linear(f, 1)
        self.lesion_head = nn.Linear(f, 5)
        nn.init.constant_(self.covid_head.bias, 0)
        nn.init.constant_(self.lesion_head.bias, 0)

    def forward(self, x):
        h = F.adaptive_avg_pool2d(F.relu(self.features(x)), (1, 1)).flatten(1)
        return self.covid_head(h), self.lesion_head(h)


def worst_error(a, ref):
    """max_i |a_i - ref_i| / max(|ref_i|, rms(ref)): the metric of tests/golden_util.h."""
    a, ref = a.detach().double(), ref.detach().double()
    rms = ref.pow(2).mean().sqrt()
    return ((a - ref).abs() / torch.maximum(ref.abs(), rms)).max().item()


def lesion_attention_loss(covid, lesions, covid_y, lesion_y, mask, w_main=5.0):
    """(1/6N) sum_i [w_main BCE(covid_i) + m_i sum_k BCE(lesion_ik)] — the paper's formula, spelled out."""
    n = covid.shape[0]
    bce_c = F.binary_cross_entropy_with_logits(covid, covid_y, reduction="none").sum(1)
    bce_l = F.binary_cross_entropy_with_logits(lesions, lesion_y, reduction="none").sum(1)
    return (w_main * bce_c + mask[:, 0] * bce_l).sum() / (6 * n)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", default="densenet169", help="densenet121|densenet169|densenet201|tiny")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    os.makedirs(args.out, exist_ok=True)

    model = LaDnn(args.arch, args.arch == "tiny")
    # torchvision's init (BN weight 1, bias 0) makes the net nearly invariant to each BN's scale (ReLU
    # and pooling are positively homogeneous and the next train-mode BN divides the scale out), so
    # those gradients would be ~0 and pure rounding noise. Random affine parameters remove the
    # degeneracy and test more.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # BN weights/biases and the heads' biases
                scale = "norm" in name and name.endswith("weight")
                p.copy_(torch.empty_like(p).uniform_(0.5, 1.5) if scale else torch.empty_like(p).uniform_(-0.5, 0.5))
    weights = list(model.state_dict().items())
    write_safetensors(os.path.join(args.out, f"{args.arch}_weights.safetensors"), weights,
                      {"torch": torch.__version__, "arch": args.arch})

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, args.size, args.size, generator=g)
    covid_y = torch.tensor([[1.0], [0.0]])
    lesion_y = torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0], [0.0]])  # image 0 carries lesion labels, image 1 does not

    def step(m, dt):
        """One training-mode forward + backward and an eval forward of m in dtype dt: name -> tensor."""
        m = copy.deepcopy(m).to(dt).train()
        c, l = m(x.to(dt))
        loss = lesion_attention_loss(c, l, covid_y.to(dt), lesion_y.to(dt), mask.to(dt))
        loss.backward()
        out = {"train.covid": c, "train.lesions": l, "loss": loss.reshape(())}
        out.update({"grad." + n: p.grad for n, p in m.named_parameters()})
        # Running statistics after the training forward (BN momentum 0.1).
        out.update({"after." + n: t for n, t in m.state_dict().items() if "running_" in n})
        m.eval()
        with torch.no_grad():
            c, l = m(x.to(dt))
        out.update({"eval.covid": c, "eval.lesions": l})
        return {k: v.detach() for k, v in out.items()}

    # The reference is PyTorch in float64 from the same (float32) weights. PyTorch's own float32 result
    # is measured against it under the C++ test's metric and saved per tensor as "floor.<name>": the
    # float32 noise floor that ladnn's float32 result is held to (see tests/densenet_test.cpp).
    ref = step(model, torch.float64)
    f32 = step(model, torch.float32)
    floors = {k: worst_error(f32[k], ref[k]) for k in ref}
    worst = max(floors, key=floors.get)
    print(f"{args.arch}: PyTorch float32 vs float64: worst error {floors[worst]:.2e} ({worst})")
    io = [("x", x), ("covid_y", covid_y), ("lesion_y", lesion_y), ("lesion_mask", mask)]
    io += list(ref.items())
    io += [("floor." + k, torch.tensor(v, dtype=torch.float64)) for k, v in floors.items()]
    write_safetensors(os.path.join(args.out, f"{args.arch}_io.safetensors"), io,
                      {"torch": torch.__version__, "arch": args.arch, "reference": "float64"})
    print(f"{args.arch}: loss {ref['loss'].item():.6f}, {len(weights)} weights -> {args.out}")


if __name__ == "__main__":
    sys.exit(main())
