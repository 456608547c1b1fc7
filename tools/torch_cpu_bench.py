#!/usr/bin/python3
"""PyTorch CPU anchor for bench/conv2d_bench.cpp and bench/gemm_bench.cpp.

Times the same float32 passes under the same names: conv2d forward, backward-input and backward-weight
on DenseNet-169's layer shapes at batch 8 (aten::convolution_backward with one output mask, what
autograd calls), and square GEMM (torch.mm). Prints name, ms per call and GFLOP/s
(2 N K C R S P Q per conv pass, 2 n^3 per GEMM).

Run with Debian's torch:  /usr/bin/python3 tools/torch_cpu_bench.py [--threads 2] [--min-time 0.5]
"""
import argparse
import re
import time

import torch
import torch.nn.functional as F

BATCH = 8
# (kernel name, H=W, Cin, Cout, R=S, stride, pad) — the list in bench/conv2d_bench.cpp.
SHAPES = [
    ("1x1", 56, 128, 128, 1, 1, 0), ("1x1", 28, 256, 128, 1, 1, 0),
    ("1x1", 14, 640, 128, 1, 1, 0), ("1x1", 7, 1280, 128, 1, 1, 0),
    ("3x3", 56, 128, 32, 3, 1, 1), ("3x3", 28, 128, 32, 3, 1, 1),
    ("3x3", 14, 128, 32, 3, 1, 1), ("3x3", 7, 128, 32, 3, 1, 1),
    ("7x7s2", 224, 3, 64, 7, 2, 3),
]
GEMM_SIZES = [256, 512, 1024, 2048]


CLOCK = time.perf_counter


REPEATS = 1


def time_call(fn, min_time):
    """Seconds per call: warm up, then repeat until min_time has passed (at least 3 calls); with
    --repeats R, the fastest of R such measurements (on a shared machine the least disturbed one)."""
    fn()
    fn()
    best = float("inf")
    for _ in range(REPEATS):
        calls, start = 0, CLOCK()
        while True:
            fn()
            calls += 1
            elapsed = CLOCK() - start
            if elapsed >= min_time and calls >= 3:
                break
        best = min(best, elapsed / calls)
    return best


def conv_rows(min_time, pattern):
    g = torch.Generator().manual_seed(1)
    for pass_name in ("conv2d_fwd", "conv2d_bwd_input", "conv2d_bwd_weight"):
        for kernel, hw, cin, cout, r, stride, pad in SHAPES:
            name = f"{pass_name}/{kernel}/{hw}x{hw}/{cin}->{cout}"
            if not pattern.search(name):
                continue
            x = torch.rand(BATCH, cin, hw, hw, generator=g) * 2 - 1
            w = (torch.rand(cout, cin, r, r, generator=g) * 2 - 1) * 0.1
            y = F.conv2d(x, w, None, stride, pad)
            dy = torch.rand(y.shape, generator=g) * 2 - 1
            p, q = y.shape[2], y.shape[3]
            flops = 2.0 * BATCH * cout * cin * r * r * p * q
            if pass_name == "conv2d_fwd":
                fn = lambda: F.conv2d(x, w, None, stride, pad)
            else:
                mask = (True, False, False) if pass_name == "conv2d_bwd_input" else (False, True, False)
                fn = lambda: torch.ops.aten.convolution_backward(
                    dy, x, w, None, [stride, stride], [pad, pad], [1, 1], False, [0, 0], 1, mask)
            with torch.no_grad():
                sec = time_call(fn, min_time)
            yield name, sec, flops


def gemm_rows(min_time, pattern):
    g = torch.Generator().manual_seed(1)
    for n in GEMM_SIZES:
        if not pattern.search(f"gemm/torch/{n}"):
            continue
        a = torch.rand(n, n, generator=g) * 2 - 1
        b = torch.rand(n, n, generator=g) * 2 - 1
        with torch.no_grad():
            sec = time_call(lambda: torch.mm(a, b), min_time)
        yield f"gemm/torch/{n}", sec, 2.0 * n ** 3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds of timing per row (default 0.5)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with the process CPU clock instead of wall time (for a loaded machine; "
                         "GFLOP/s then means per CPU-second)")
    ap.add_argument("--filter", default="", help="only rows whose name matches this regex")
    ap.add_argument("--repeats", type=int, default=1,
                    help="measure each row this many times and keep the fastest (default 1)")
    args = ap.parse_args()
    global CLOCK, REPEATS
    REPEATS = max(1, args.repeats)
    if args.cpu_time:
        CLOCK = time.process_time
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"mkldnn {torch.backends.mkldnn.is_available()}, clock {'process CPU' if args.cpu_time else 'wall'}")
    print(f"{'name':45s} {'ms':>10s} {'GFLOP/s':>10s}")
    pattern = re.compile(args.filter)
    for rows in (conv_rows(args.min_time, pattern), gemm_rows(args.min_time, pattern)):
        for name, sec, flops in rows:
            print(f"{name:45s} {sec * 1e3:10.3f} {flops / sec / 1e9:10.1f}", flush=True)


if __name__ == "__main__":
    main()
