#!/usr/bin/env python3
"""Where DenseNet inference spends its convolution time, by LADNN_FUSED_CONV=auto's own timings.

With LADNN_CUDNN_LOG=1, Auto prints one line per forward shape it times:
  ladnn: conv2d_bn_eval x (N, C, H, W) w (K, C, R, S) pre P post Q: ours (ms) <name> <ms> ...;
         library <ms> ms -> ours <name> | library
(`pre`/`post`: 0 no BatchNorm, 1 BatchNorm, 2 BatchNorm-ReLU). This script takes the inference calls of
one batch size from such a log (`ladnn bench` output, e.g. device-check's ladnn_bench.log), and prints
each group's chosen time times its layer count:
- the bottleneck 1x1s (norm1-ReLU, conv, norm2-ReLU: pre 2 post 2), one shape per layer;
- the growth 3x3s (no BatchNorm: pre 0 post 0, K = the growth rate), one shape per dense block, counted
  once per layer of the block (--layers, DenseNet-169's 6,12,32,32 by default);
- the stem's 7x7 (post 2).
The transitions are not in it: their BatchNorm-ReLU and pooling run first, and their 1x1 then runs as a
plain convolution (a conv2d_forward line: cuDNN or cuBLAS).
With -v it lists every 3x3 and the stem: the chosen time, the library's, and the fastest mma and halo
forms (cuda/fused_conv_mma.cuh, cuda/fused_conv_halo.cuh; "-" where none was timed).

  python3 tools/auto_breakdown.py ladnn_bench.log --batch 32 [--layers 6,12,32,32] [-v]
"""
import argparse
import collections
import re
import sys

LINE = re.compile(r"^ladnn: conv2d_bn_eval x \((\d+), (\d+), (\d+), (\d+)\) w \((\d+), (\d+), (\d+), (\d+)\) "
                  r"pre (\d) post (\d): ours \(ms\)(.*); library ([0-9.]+) ms -> (.*)$")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--layers", default="6,12,32,32", help="dense layers per block, first block first")
    ap.add_argument("--growth", type=int, default=32, help="the growth rate (the 3x3s' output channels)")
    ap.add_argument("-v", action="store_true")
    a = ap.parse_args()
    layers = [int(v) for v in a.layers.split(",")]

    rows = []
    with open(a.log, errors="replace") as f:
        for line in f:
            m = LINE.match(line.strip())
            if not m:
                continue
            n, c, h, _w, k, _c2, r, _s, pre, post = map(int, m.groups()[:10])
            if n != a.batch:
                continue
            words = m.group(11).split()
            ours = {words[i]: float(words[i + 1]) for i in range(0, len(words) - 1, 2)}
            library, choice = float(m.group(12)), m.group(13).strip()
            chosen = library if choice == "library" else min(ours.values())
            def best(prefix):
                return min(((v, n_) for n_, v in ours.items() if n_.startswith(prefix)), default=(float("nan"), "-"))
            rows.append(dict(c=c, h=h, k=k, r=r, pre=pre, post=post, chosen=chosen, library=library,
                             choice=choice, mma=best("mma"), halo=best("halo")))

    # The growth 3x3s' map sizes, largest first, are the blocks in order.
    sizes = sorted({x["h"] for x in rows if x["r"] == 3 and x["k"] == a.growth and x["pre"] == 0}, reverse=True)
    per_block = dict(zip(sizes, layers))
    groups = collections.OrderedDict((g, [0.0, 0]) for g in ("1x1 (bottlenecks)", "3x3 (growth)",
                                                             "stem"))
    for x in rows:
        if x["r"] == 1 and x["pre"] == 2:
            g, count = "1x1 (bottlenecks)", 1
        elif x["r"] == 3 and x["k"] == a.growth and x["pre"] == 0 and x["post"] == 0:
            g, count = "3x3 (growth)", per_block.get(x["h"], 0)
        elif x["r"] == 7 and x["post"] == 2:
            g, count = "stem", 1
        else:
            continue  # training's plain forwards, other models' shapes
        groups[g][0] += x["chosen"] * count
        groups[g][1] += count
        if a.v and g != "1x1 (bottlenecks)":
            print(f"{x['r']}x{x['r']} {x['h']:>3}x{x['h']:<3} C {x['c']:>4} K {x['k']:>3} x{count:<2} "
                  f"chosen {x['chosen']:.4f} library {x['library']:.4f} best mma {x['mma'][1]} "
                  f"{x['mma'][0]:.4f} best halo {x['halo'][1]} {x['halo'][0]:.4f} -> {x['choice']}")
    if not rows:
        sys.exit(f"{a.log}: no conv2d_bn_eval choice lines at batch {a.batch} (run with LADNN_CUDNN_LOG=1)")
    print(f"batch {a.batch}: Auto's chosen time x layers (ms)")
    total = 0.0
    for g, (ms, count) in groups.items():
        print(f"  {g:<32} {ms:7.3f}  ({count} layers)")
        total += ms
    print(f"  {'sum':<32} {total:7.3f}")


if __name__ == "__main__":
    main()
