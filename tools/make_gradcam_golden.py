#!/usr/bin/python3
"""The Grad-CAM fixture: pytorch-grad-cam itself (PyPI `grad-cam`) on a tiny LA-DNN, for
tests/gradcam_test.cpp.

    pip install --no-deps --target /tmp/gcam grad-cam ttach
    apt-get install python3-opencv python3-scipy python3-sklearn python3-matplotlib python3-tqdm
    PYTHONPATH=/tmp/gcam /usr/bin/python3 tools/make_gradcam_golden.py --out tests/golden/gradcam

(grad-cam's package __init__ imports every method it ships, hence cv2, scipy, sklearn, matplotlib and
tqdm; torch and torchvision are Debian's. Written with grad-cam 1.5.7, torch 1.13, OpenCV 4.6; the file
is byte-identical on a rerun. The fixture is committed, so CI needs none of this.)

Upsampling convention being matched: pytorch-grad-cam's scale_cam_image normalises each cam to [0, 1]
((m - min) / (1e-7 + max)), resizes it with cv2.resize(cam, (W, H)) — INTER_LINEAR on float32: half-pixel
centres, edge pixels repeated — and its aggregate_multi_layers normalises once more. On float32 maps
cv2.resize equals torch.nn.functional.interpolate(mode='bilinear', align_corners=False) to 1.6e-7
(checked on 3x5 -> 48x80, 7x7 -> 224x224, 2x2 -> 64x64 and 4x6 -> 65x97), which is what
models/gradcam.cpp implements (through data::resize_bilinear).

The model is a DenseNet of two blocks (growth 8, 16 initial features, bn_size 2) with LA-DNN's heads:
at a 40x56 input its final map is 5x7 — small enough to keep the file small, non-square and odd so
that a height/width or off-by-one slip shows. Weights are random, including the BatchNorm affine
parameters and running statistics (eval mode uses them). Two grey images (replicated to 3 channels,
as a CT slice is), one batch.

For both layers — "features" (after norm5's ReLU; hooked as an nn.ReLU module) and "norm5" (before it) —
and every target — the COVID logit, the five lesion logits (ClassifierOutputTarget(k) on the (N, 6)
logits) and "not-covid" (the negated COVID logit, a custom target) — it runs GradCAMPlusPlus and
GradCAM and saves:
  raw.<method>.<layer>.<target>  (N, h, w)  relu(sum_c w_c A_c): pytorch-grad-cam's own get_cam_image
                                            on the activations and gradients its hooks recorded
  map.<method>.<layer>.<target>  (N, H, W)  what cam(...) returns (upsampled, normalised), for a subset
                                            (see MAP_KEYS; the maps are the bulk of the file)
  act.<layer> and grad.<layer>.covid        the recorded map and gradient, to tell a forward/backward
                                            mismatch from a cam one
plus the weights ("weights.<name>", torchvision names), the grey input "x_grey" (N, 1, H, W) and the
logits (N, 6). It also reruns everything in float64 and prints how far float32 is from it: the
fixture's own noise floor, which must stay far below the test's 1e-4.
"""
import argparse
import copy
import os
from importlib.metadata import version
import sys

import numpy as np
import torch
import torch.nn as nn
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_torchvision import write_safetensors  # noqa: E402

from pytorch_grad_cam import GradCAM, GradCAMPlusPlus  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

GROWTH, BLOCKS, INIT, BN_SIZE = 8, (2, 2), 16, 2
HEIGHT, WIDTH, N = 40, 56, 2
LESIONS = ["GGO", "Csld", "CrPa", "AirBr", "InSepThi"]
TARGETS = ["covid"] + LESIONS + ["not-covid"]
METHODS = {"gradcampp": GradCAMPlusPlus, "gradcam": GradCAM}
LAYERS = ["features", "norm5"]
MAP_KEYS = [("gradcampp", l, t) for l in LAYERS for t in ("covid", "GGO", "not-covid")] + \
           [("gradcam", l, "covid") for l in LAYERS] + [("gradcam", "features", "not-covid")]  # an all-zero cam


class LaDnn(nn.Module):
    """models/ladnn.h's network: features (to norm5), ReLU, global average pool, two linear heads.
    The ReLU is a module (not F.relu, not in place) so pytorch-grad-cam can hook its output."""

    def __init__(self):
        super().__init__()
        net = torchvision.models.DenseNet(growth_rate=GROWTH, block_config=BLOCKS, num_init_features=INIT,
                                          bn_size=BN_SIZE)
        self.features = net.features
        f = net.classifier.in_features
        self.relu = nn.ReLU(inplace=False)
        self.covid_head = nn.Linear(f, 1)
        self.lesion_head = nn.Linear(f, 5)

    def forward(self, x):
        h = torch.flatten(nn.functional.adaptive_avg_pool2d(self.relu(self.features(x)), 1), 1)
        return torch.cat([self.covid_head(h), self.lesion_head(h)], 1)  # (N, 6) logits


class NegatedLogit:
    """'Why not COVID': minus the COVID logit (BinaryClassifierOutputTarget(0) on a lone logit)."""

    def __call__(self, model_output):
        return -model_output[0]


def target_of(name):
    if name == "covid":
        return ClassifierOutputTarget(0)
    if name == "not-covid":
        return NegatedLogit()
    return ClassifierOutputTarget(1 + LESIONS.index(name))


def layer_of(model, name):
    return model.relu if name == "features" else model.features.norm5


def run_all(model, x):
    """Every (method, layer, target): raw cam, final map, and the hooks' activations and gradients."""
    out = {}
    for method, cls in METHODS.items():
        for layer in LAYERS:
            for t in TARGETS:
                targets = [target_of(t) for _ in range(x.shape[0])]
                with cls(model=model, target_layers=[layer_of(model, layer)]) as cam:
                    final = cam(input_tensor=x, targets=targets)
                    acts = cam.activations_and_grads.activations[0].numpy()
                    grads = cam.activations_and_grads.gradients[0].numpy()
                    raw = np.maximum(cam.get_cam_image(x, layer_of(model, layer), targets, acts, grads, False), 0)
                out[f"raw.{method}.{layer}.{t}"] = raw
                out[f"map.{method}.{layer}.{t}"] = final
                out[f"act.{layer}"] = acts
                out[f"grad.{layer}.{t}"] = grads
    return out


def double_copy(model):
    return copy.deepcopy(model).double().eval()


def worst_error(a, ref):
    """max_i |a_i - ref_i| / max(|ref_i|, rms(ref)): the metric of tests/golden_util.h."""
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    rms = np.sqrt(np.mean(ref ** 2))
    if rms == 0:
        return float(np.abs(a - ref).max())
    return float((np.abs(a - ref) / np.maximum(np.abs(ref), rms)).max())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/golden/gradcam")
    # Seed 2: the float64 rerun agrees to 2e-6. Seeds 0 and 1 reach 1e-5 to 2e-5 where a Grad-CAM sum
    # nearly cancels (still under 1e-4, but a fixture should sit far from its tolerance).
    ap.add_argument("--seed", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)

    model = LaDnn()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # BN affine and head biases: random, not torchvision's 1 / 0
                scale = "norm" in name and name.endswith("weight")
                p.copy_(torch.empty_like(p).uniform_(0.5, 1.5) if scale else torch.empty_like(p).uniform_(-0.5, 0.5))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.empty_like(b).uniform_(-0.3, 0.3))
            elif name.endswith("running_var"):
                b.copy_(torch.empty_like(b).uniform_(0.5, 1.5))
    model.eval()

    # Grey "slices": a few Gaussian blobs on noise, then standardised; replicated to 3 channels.
    g = torch.Generator().manual_seed(args.seed + 1)
    yy, xx = torch.meshgrid(torch.arange(HEIGHT, dtype=torch.float32), torch.arange(WIDTH, dtype=torch.float32),
                            indexing="ij")
    grey = 0.3 * torch.randn(N, 1, HEIGHT, WIDTH, generator=g)
    for i in range(N):
        for _ in range(3):
            cy, cx = torch.rand(2, generator=g) * torch.tensor([HEIGHT, WIDTH])
            r = 3 + 6 * torch.rand(1, generator=g)
            grey[i, 0] += 2.0 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r ** 2))
    grey = (grey - grey.mean()) / grey.std()
    x = grey.expand(N, 3, HEIGHT, WIDTH).contiguous()

    with torch.no_grad():
        logits = model(x)
    ref = run_all(model, x)

    # The float64 rerun: how well-conditioned this fixture is (a flipped ReLU mask at norm5 or a
    # near-zero Grad-CAM++ denominator would show here as a large error).
    ref64 = run_all(double_copy(model), x.double())
    floor = {k: worst_error(v, ref64[k]) for k, v in ref.items()}
    worst = max(floor, key=floor.get)
    margin = float(np.abs(ref["act.norm5"]).min())
    print(f"float32 vs float64: worst {floor[worst]:.2e} ({worst}); min |norm5| = {margin:.2e}")
    for k in sorted(floor, key=floor.get)[-6:]:
        print(f"  {k}: {floor[k]:.2e}")
    if floor[worst] > 1e-5:
        raise SystemExit("the fixture is ill-conditioned in float32; pick another --seed")

    tensors = [("weights." + k, v) for k, v in model.state_dict().items()]
    tensors += [("x_grey", grey), ("logits", logits)]
    for layer in LAYERS:
        tensors += [(f"act.{layer}", ref[f"act.{layer}"]), (f"grad.{layer}.covid", ref[f"grad.{layer}.covid"])]
    tensors += [(k, v.astype(np.float32)) for k, v in ref.items() if k.startswith("raw.")]
    tensors += [(f"map.{m}.{l}.{t}", ref[f"map.{m}.{l}.{t}"].astype(np.float32)) for m, l, t in MAP_KEYS]
    meta = {
        "torch": torch.__version__, "grad-cam": version("grad-cam"),
        "growth_rate": GROWTH, "block_config": ",".join(map(str, BLOCKS)), "num_init_features": INIT,
        "bn_size": BN_SIZE, "targets": ",".join(TARGETS), "layers": ",".join(LAYERS),
        "float64_floor": f"{floor[worst]:.3e}", "seed": args.seed,
    }
    path = os.path.join(args.out, "tiny_gradcam.safetensors")
    write_safetensors(path, tensors, meta)
    print(f"wrote {len(tensors)} tensors, {os.path.getsize(path)} bytes to {path}")


if __name__ == "__main__":
    sys.exit(main())
