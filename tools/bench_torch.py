#!/usr/bin/env python3
"""PyTorch eager twin of `ladnn bench` (issue 6): the same LA-DNN workload, timed the same way.

Model: torchvision DenseNet-169 features -> ReLU -> global average pool -> covid_head Linear(1664, 1)
and lesion_head Linear(1664, 5); loss: the lesion-attention loss of models/ladnn.h,
(1 / 6N) sum_i [5 BCE(covid_i) + m_i sum_k BCE(lesion_ik)]; optimizer Adam(lr 1e-4). Float32 at
224x224, cudnn.benchmark on (PyTorch's best eager setting), TF32 as asked for both convolutions and
matmuls. Timing: warm-up steps, then one pair of CUDA events around each step, the median.

  python3 tools/bench_torch.py --batches 1,32,64 --steps 20 --warmup 5 --tf32 1
      prints one JSON object per line: {"work": "train"|"infer", "batch": B, "ms": median,
      "peak_bytes": torch.cuda.max_memory_allocated() during those steps}
  python3 tools/bench_torch.py --loss-curve FILE
      FILE (written by `ladnn bench --loss-curve`) holds the initial weights ("model.<name>") and the
      batches ("batch<i>.images", ".covid", ".lesions", ".mask"); trains one step per batch from those
      weights and prints {"work": "loss_curve", "losses": [...]}.
"""
import argparse
import json
import statistics
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision


class LaDnn(nn.Module):
    def __init__(self, arch="densenet169"):
        super().__init__()
        net = getattr(torchvision.models, arch)(weights=None)
        self.features = net.features
        self.covid_head = nn.Linear(net.classifier.in_features, 1)
        self.lesion_head = nn.Linear(net.classifier.in_features, 5)

    def forward(self, x):
        f = F.adaptive_avg_pool2d(F.relu(self.features(x)), 1).flatten(1)
        return self.covid_head(f), self.lesion_head(f)


def loss_fn(covid, lesions, covid_y, lesion_y, mask, w_main=5.0):
    n = covid.shape[0]
    bc = F.binary_cross_entropy_with_logits(covid, covid_y, reduction="sum")
    bl = (F.binary_cross_entropy_with_logits(lesions, lesion_y, reduction="none") * mask).sum()
    return (w_main * bc + bl) / (6.0 * n)


def random_batch(b, gen, dev):
    x = torch.randn(b, 3, 224, 224, generator=gen).to(dev)
    cy = (torch.rand(b, 1, generator=gen) < 0.5).float().to(dev)
    ly = (torch.rand(b, 5, generator=gen) < 0.3).float().to(dev)
    m = (torch.rand(b, 1, generator=gen) < 0.5).float().to(dev)
    return x, cy, ly, m


def median_ms(fn, steps, warmup):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times), torch.cuda.max_memory_allocated()


def bench(args):
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    for b in [int(s) for s in args.batches.split(",") if s]:
        for work in args.work.split(","):
            torch.manual_seed(0)
            model = LaDnn(args.arch).to(dev)
            x, cy, ly, m = random_batch(b, gen, dev)
            if work == "train":
                model.train()
                opt = torch.optim.Adam(model.parameters(), lr=1e-4)

                def step():
                    c, l = model(x)
                    loss = loss_fn(c, l, cy, ly, m)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            else:
                model.eval()

                def step():
                    with torch.no_grad():
                        model(x)
            ms, peak = median_ms(step, args.steps, args.warmup)
            print(json.dumps({"work": work, "batch": b, "ms": ms, "peak_bytes": peak}), flush=True)
            del model, x
            torch.cuda.empty_cache()


def loss_curve(path, arch):
    from safetensors.torch import load_file

    t = load_file(path)
    dev = torch.device("cuda")
    model = LaDnn(arch)
    state = {k[len("model."):]: v for k, v in t.items() if k.startswith("model.")}
    model.load_state_dict(state, strict=True)
    model.to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    losses = []
    steps = int(t["steps"].item())
    nb = len([k for k in t if k.startswith("batch") and k.endswith(".images")])
    for i in range(steps):
        p = f"batch{i % nb}."
        x, cy, ly, m = (t[p + k].to(dev) for k in ("images", "covid", "lesions", "mask"))
        c, l = model(x)
        loss = loss_fn(c, l, cy, ly, m)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print(json.dumps({"work": "loss_curve", "losses": losses}), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="densenet169", choices=["densenet121", "densenet169", "densenet201"])
    p.add_argument("--batches", default="1,32,64")
    p.add_argument("--work", default="train,infer")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--tf32", type=int, default=1)
    p.add_argument("--loss-curve", default="")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("torch sees no CUDA device", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = bool(args.tf32)
    torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
    if args.loss_curve:
        loss_curve(args.loss_curve, args.arch)
    else:
        bench(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
