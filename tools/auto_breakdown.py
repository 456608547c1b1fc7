#!/usr/bin/env python3
"""Where DenseNet inference spends its convolution time, by LADNN_FUSED_CONV=auto's own timings.

With LADNN_CUDNN_LOG=1, Auto prints one line per forward shape it times:
  ladnn: conv2d_bn_eval x (N, C, H, W) w (K, C, R, S) pre P post Q: ours (ms) <name> <ms> ...;
         library <ms> ms -> ours <name> | library
(`pre`/`post`: 0 no BatchNorm, 1 BatchNorm, 2 BatchNorm-ReLU; 3 and 4 the same given a training forward's
saved statistics, a folded norm1). This script takes the inference calls of
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

With --training it does the same for a training step's three convolution passes (the forward of
conv2d_bn_eval with no BatchNorms or conv2d_forward, conv2d_backward_input, conv2d_backward_weight): each
shape's chosen time (ours or the library's, as Auto logged it) times its layer count (the growth 3x3s once
per layer of their block, every other shape once: shapes that coincide, such as the first transition's
1x1 and a dense layer's at 28x28, are counted once), by pass, window and map size. With -v it lists the
growth 3x3s' data passes (the chosen time, the library's, the fastest wmma, mma and halo forms: the last
two on the rotated copy of the weight) and weight gradients: the chosen time, the library's, and the
fastest wmma ("tc") and halo forms,
and the 1x1s' per map size: the sums of the chosen, the library's and the fastest pw (mma.sync) times.

  python3 tools/auto_breakdown.py ladnn_bench.log --batch 64 --training [-v] [--fold]

With --fold, conv1's lines with a folded norm1 (LADNN_NORM1_FOLD=1: "pre 4", the forward and the weight
gradient; a bench --variants row times them) stand in for the plain ones of the same shape: the folded
weight gradient only where the forward chose ours (Auto charges each forward path the weight gradient it
leaves, "then after ours <ms>, after the library <ms> ms"; -v lists those sums).
"""
import argparse
import collections
import re
import sys

LINE = re.compile(r"^ladnn: conv2d_bn_eval x \((\d+), (\d+), (\d+), (\d+)\) w \((\d+), (\d+), (\d+), (\d+)\) "
                  r"pre (\d) post (\d): ours \(ms\)(.*); library ([0-9.]+) ms -> (.*)$")


X_SHAPE = re.compile(r" x \((\d+), (\d+), (\d+), (\d+)\)")  # (a backward weight line: dy, w, then x)
W_SHAPE = re.compile(r" w \((\d+), (\d+), (\d+), (\d+)\)")
PASSES = {"conv2d_bn_eval": "forward", "conv2d_forward": "forward", "conv2d_backward_input": "backward data",
          "conv2d_backward_weight": "backward weight"}


def training(a, layers):
    """--training: each (pass, shape)'s chosen time at a.batch, from the lines that offer ours (their
    choice) or else the library's own line (cuDNN or cuBLAS, whichever it chose)."""
    chosen, library_only, details, folded_chosen, folded_forward_ours = {}, {}, {}, {}, {}
    details_mma = {}
    with open(a.log, errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("ladnn: conv2d"):
                continue
            op = line.split()[1]
            mx, mw = X_SHAPE.search(line), W_SHAPE.search(line)
            if op not in PASSES or not mx or not mw:
                continue
            n, c, h, _w = map(int, mx.groups())
            k, _c2, r, _s = map(int, mw.groups())
            if n != a.batch:
                continue
            # A folded norm1 (LADNN_NORM1_FOLD=1): conv1's forward and weight gradient with the batch form of
            # the pre BatchNorm, "pre 3" or "pre 4". With --fold they replace the plain lines of the same
            # shape; without, they are left out.
            folded = bool(re.search(r" pre [34]\b", line))
            if folded and not a.fold:
                continue
            if op == "conv2d_bn_eval" and not (re.search(r"pre 0 post 0", line) or (folded and "post 0" in line)):
                continue  # inference's fused BatchNorms
            stride = re.search(r"stride (\d+)x", line)
            key = (PASSES[op], r, h, c, k, int(stride.group(1)) if stride else 1)
            choice = line.rsplit("->", 1)[-1].strip()
            if ": ours (ms)" in line:
                words = line.split(": ours (ms)")[1].split(";")[0].split()
                ours = {}
                for i in range(0, len(words) - 1, 2):
                    ours[words[i]] = min(float(words[i + 1]), ours.get(words[i], float("inf")))
                library = float(re.search(r"library ([0-9.]+) ms", line).group(1))
                name = choice.split()[-1]
                (folded_chosen if folded else chosen)[key] = library if choice.startswith("lib") else ours[name]
                if folded:
                    if op == "conv2d_bn_eval":
                        folded_forward_ours[key[1:]] = not choice.startswith("lib")
                        then = re.search(r"then after ours ([0-9.]+), after the library ([0-9.]+) ms", line)
                        if a.v and then:
                            print(f"folded conv1 {h:>3}x{h:<3} C {c:>4} K {k:>3}: forward ours "
                                  f"{min(ours.values(), default=float('nan')):.4f} + weight gradient "
                                  f"{float(then.group(1)):.4f}, library {library:.4f} + "
                                  f"{float(then.group(2)):.4f} -> {choice}")
                    continue
                best = lambda pre: min(((v, n_) for n_, v in ours.items() if n_.startswith(pre)),
                                       default=(float("nan"), "-"))
                details[key] = (chosen[key], library, best("tc"), best("halo"), choice, best("pw"))
                details_mma[key] = best("mma")
            else:
                t = re.search(r"cuBLAS GEMM ([0-9.]+) ms", line) if choice == "cuBLAS" else \
                    re.search(r"([0-9.]+) ms(?:;[^;]*)? -> cuDNN", line)
                if t:
                    library_only[key] = float(t.group(1))
    for key, t in library_only.items():
        chosen.setdefault(key, t)
    # A folded conv1's weight gradient with the pre runs only where its forward chose ours (the library's
    # forward leaves the map, and the plain gradient's line stands). Auto times it either way since the
    # forward's choice counts it ("then after ours").
    chosen.update({key: t for key, t in folded_chosen.items()
                   if key[0] != "backward weight" or folded_forward_ours.get(key[1:], True)})
    if not chosen:
        sys.exit(f"{a.log}: no convolution choice lines at batch {a.batch} (run with LADNN_CUDNN_LOG=1)")
    sizes = sorted({key[2] for key in chosen if key[1] == 3 and key[4] == a.growth}, reverse=True)
    per_block = dict(zip(sizes, layers))
    groups = collections.defaultdict(lambda: [0.0, 0])
    pointwise = collections.defaultdict(lambda: [0.0, 0.0, 0.0, 0, 0])  # chosen, library, best pw, ours, n
    for key, t in chosen.items():
        pas, r, h, c, k, stride = key
        growth = r == 3 and k == a.growth and stride == 1
        count = per_block.get(h, 0) if growth else 1
        g = (pas, f"{r}x{r}" + (" growth" if growth else ""), h)
        groups[g][0] += t * count
        groups[g][1] += count
        if pas == "backward weight" and r == 1 and key in details:
            ch, lib, _tc, _halo, choice, pw = details[key]
            row = pointwise[h]
            row[0] += ch
            row[1] += lib
            row[2] += pw[0] if pw[0] == pw[0] else lib  # (no pw form timed: the library's)
            row[3] += not choice.startswith("lib")
            row[4] += 1
        if a.v and growth and pas == "backward data" and key in details:
            ch, lib, tc, halo, choice, _pw = details[key]
            mma = details_mma.get(key, (float("nan"), "-"))
            print(f"dgrad 3x3 {h:>3}x{h:<3} C {c:>4} K {k:>3} x{count:<2} chosen {ch:.4f} library {lib:.4f} "
                  f"best tc {tc[1]} {tc[0]:.4f} best mma {mma[1]} {mma[0]:.4f} best halo {halo[1]} {halo[0]:.4f} "
                  f"-> {choice}")
        if a.v and growth and pas == "backward weight" and key in details:
            ch, lib, tc, halo, choice, _pw = details[key]
            print(f"wgrad 3x3 {h:>3}x{h:<3} C {c:>4} K {k:>3} x{count:<2} chosen {ch:.4f} library {lib:.4f} "
                  f"best tc {tc[1]} {tc[0]:.4f} best halo {halo[1]} {halo[0]:.4f} -> {choice}")
    if a.v:
        for h, (ch, lib, pw, ours, n) in sorted(pointwise.items(), reverse=True):
            print(f"wgrad 1x1 {h:>3}x{h:<3} {n:>2} shapes: chosen {ch:.3f} library {lib:.3f} best pw {pw:.3f} "
                  f"(ours chosen in {ours})")
    print(f"batch {a.batch}, training: Auto's chosen time x layers (ms), by pass, window and input map size")
    total = 0.0
    for pas in ("forward", "backward data", "backward weight"):
        sub = 0.0
        for (p_, win, h), (ms, count) in sorted(groups.items(), key=lambda kv: (kv[0][1], -kv[0][2])):
            if p_ != pas:
                continue
            print(f"  {pas:<16} {win:<10} {h:>4}  {ms:7.3f}  ({count})")
            sub += ms
        print(f"  {pas:<16} {'all':<10} {'':>4}  {sub:7.3f}")
        total += sub
    print(f"  {'sum':<33} {total:7.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--layers", default="6,12,32,32", help="dense layers per block, first block first")
    ap.add_argument("--growth", type=int, default=32, help="the growth rate (the 3x3s' output channels)")
    ap.add_argument("--training", action="store_true", help="a training step's three passes")
    ap.add_argument("--fold", action="store_true",
                    help="with --training: conv1's folded-norm1 lines (LADNN_NORM1_FOLD=1) instead of the plain ones")
    ap.add_argument("-v", action="store_true")
    a = ap.parse_args()
    layers = [int(v) for v in a.layers.split(",")]
    if a.training:
        return training(a, layers)

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
