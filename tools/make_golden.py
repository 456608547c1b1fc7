#!/usr/bin/python3
"""Writes the golden fixtures of tests/golden_test.cpp: small PyTorch computations saved as safetensors.

Run with the Debian PyTorch (CPU): /usr/bin/python3 tools/make_golden.py [--out tests/golden]

Every case is one file, <case>.safetensors, holding the inputs, the upstream gradient ("dy"), the
outputs and the gradients PyTorch computes, all float32 (max-pool indices int64). Each file's
__metadata__ records the torch version, the case name, a one-line description and the op's parameters
as a JSON string ("params"), which the C++ test reads so the two sides cannot disagree on a stride.

Seeds are fixed and torch runs on one thread, so a rerun rewrites the same bytes. The files are written
with the small safetensors writer below (struct + json), so no extra pip package is needed.

For each case the script also reruns the computation in float64 and prints how far PyTorch's own
float32 result is from it under the test's metric (see golden_test.cpp): that is the float32 noise
floor, and tells whether the test's 1e-5 tolerance is reachable for that case.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

TORCH_VERSION = torch.__version__

# ---- a minimal safetensors writer -------------------------------------------------------------------
_DTYPES = {np.dtype("float32"): "F32", np.dtype("float64"): "F64", np.dtype("int64"): "I64"}


def write_safetensors(path, tensors, metadata):
    """tensors: list of (name, np.ndarray or torch.Tensor); metadata: dict str -> str."""
    header = {"__metadata__": metadata}
    blobs = []
    offset = 0
    for name, t in tensors:
        a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        a = np.array(a, order="C", copy=True)  # (np.ascontiguousarray would turn 0-d into 1-d)
        if a.dtype not in _DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {a.dtype}, not F32/F64/I64")
        raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _DTYPES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)  # data starts 8-byte aligned
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


# ---- the metric (same as golden_test.cpp) ------------------------------------------------------------
def worst_error(a, ref):
    """max_i |a_i - ref_i| / max(|ref_i|, rms(ref)); 0 for identical tensors."""
    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ref.size == 0:
        return 0.0
    rms = float(np.sqrt(np.mean(ref * ref)))
    denom = np.maximum(np.abs(ref), rms)
    diff = np.abs(a - ref)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(diff == 0, 0.0, diff / denom)
    return float(np.max(r))


def leaf(t, dt):
    """A fresh leaf copy of t in dtype dt that requires grad (never aliases t)."""
    return t.detach().to(dt).clone().requires_grad_()


class Case:
    """Collects the tensors of one case, then writes them and reports the float32 noise floor."""

    def __init__(self, name, description, params):
        self.name = name
        self.description = description
        self.params = params
        self.tensors = []
        self.noise = {}

    def add(self, name, t):
        if isinstance(t, torch.Tensor):
            t = t.detach()
            if t.dtype == torch.float64:
                t = t.float()
        self.tensors.append((name, t))

    def compare64(self, name, t32, t64):
        self.noise[name] = worst_error(t32.detach().double().numpy(), t64.detach().numpy())

    def write(self, out_dir):
        meta = {"torch_version": TORCH_VERSION, "case": self.name, "description": self.description,
                "params": json.dumps(self.params, sort_keys=True),
                "generator": "tools/make_golden.py"}
        path = os.path.join(out_dir, self.name + ".safetensors")
        write_safetensors(path, self.tensors, meta)
        worst = max(self.noise.values()) if self.noise else 0.0
        which = max(self.noise, key=self.noise.get) if self.noise else "-"
        print(f"{self.name:34s} {os.path.getsize(path):7d} B   f32-vs-f64 worst {worst:.2e} ({which})")
        return os.path.getsize(path)


# ---- cases ----------------------------------------------------------------------------------------------
def conv_case(name, seed, n, c, h, w, k, r, s, stride, pad, bias):
    torch.manual_seed(seed)
    x = torch.randn(n, c, h, w)
    wt = torch.randn(k, c, r, s) * (1.0 / (c * r * s) ** 0.5)
    b = torch.randn(k) if bias else None
    p, q = (h + 2 * pad[0] - r) // stride[0] + 1, (w + 2 * pad[1] - s) // stride[1] + 1
    dy = torch.randn(n, k, p, q)

    def fn(dt):
        xs = leaf(x, dt)
        ws = leaf(wt, dt)
        bs = leaf(b, dt) if b is not None else None
        y = F.conv2d(xs, ws, bs, stride=stride, padding=pad)
        y.backward(dy.to(dt))
        return y, xs.grad, ws.grad, (bs.grad if bs is not None else None)

    y, dx, dw, db = fn(torch.float32)
    y64, dx64, dw64, db64 = fn(torch.float64)
    cs = Case(name, f"conv2d x{tuple(x.shape)} w{tuple(wt.shape)} stride {stride} pad {pad} bias {bias}",
              {"stride": list(stride), "padding": list(pad), "bias": bias})
    cs.add("x", x); cs.add("weight", wt)
    if bias:
        cs.add("bias", b)
    cs.add("dy", dy); cs.add("y", y); cs.add("dx", dx); cs.add("dweight", dw)
    cs.compare64("y", y, y64); cs.compare64("dx", dx, dx64); cs.compare64("dweight", dw, dw64)
    if bias:
        cs.add("dbias", db)
        cs.compare64("dbias", db, db64)
    return cs


def batchnorm_train_case(name, seed, shape, momentum, eps):
    """Two training steps (fresh gradients each), then one eval step, all on the same parameters."""
    torch.manual_seed(seed)
    c = shape[1]
    gamma = torch.rand(c) + 0.5
    beta = torch.randn(c)
    rm0 = torch.randn(c) * 0.1
    rv0 = torch.rand(c) + 0.5
    xs = [torch.randn(*shape) * 2.0 + 0.5 for _ in range(3)]
    dys = [torch.randn(*shape) for _ in range(3)]

    def fn(dt):
        rm, rv = rm0.to(dt).clone(), rv0.to(dt).clone()
        outs = []
        for step in range(3):
            training = step < 2
            x = leaf(xs[step], dt)
            g = leaf(gamma, dt)
            bt = leaf(beta, dt)
            y = F.batch_norm(x, rm, rv, g, bt, training=training, momentum=momentum, eps=eps)
            y.backward(dys[step].to(dt))
            outs.append((y, x.grad, g.grad, bt.grad, rm.clone(), rv.clone()))
        return outs

    o32, o64 = fn(torch.float32), fn(torch.float64)
    cs = Case(name, f"batch_norm2d {tuple(shape)} momentum {momentum} eps {eps}: train step 1, train step 2, "
                    "then eval (step 3) with the running stats after step 2",
              {"momentum": momentum, "eps": eps})
    cs.add("gamma", gamma); cs.add("beta", beta); cs.add("running_mean0", rm0); cs.add("running_var0", rv0)
    for step in range(3):
        k = step + 1
        cs.add(f"x{k}", xs[step]); cs.add(f"dy{k}", dys[step])
        names = [f"y{k}", f"dx{k}", f"dgamma{k}", f"dbeta{k}", f"running_mean{k}", f"running_var{k}"]
        for i, nm in enumerate(names):
            if step == 2 and i >= 4:
                continue  # eval does not change the running stats
            cs.add(nm, o32[step][i])
            cs.compare64(nm, o32[step][i], o64[step][i])
    return cs


def maxpool_case(name, seed, shape, k, s, p, ceil_mode=False):
    torch.manual_seed(seed)
    x = torch.randn(*shape)  # continuous values: no ties (a tie would make the gradient's route arbitrary)

    def fn(dt):
        xs = leaf(x, dt)
        y, idx = F.max_pool2d(xs, k, s, p, ceil_mode=ceil_mode, return_indices=True)
        return xs, y, idx

    xs, y, idx = fn(torch.float32)
    dy = torch.randn(*y.shape)
    y.backward(dy)
    xs64, y64, _ = fn(torch.float64)
    y64.backward(dy.double())
    cs = Case(name, f"max_pool2d {tuple(shape)} kernel {k} stride {s} pad {p} ceil_mode {ceil_mode}",
              {"kernel": [k, k], "stride": [s, s], "padding": [p, p], "ceil_mode": ceil_mode})
    cs.add("x", x); cs.add("dy", dy); cs.add("y", y); cs.add("indices", idx.to(torch.int64)); cs.add("dx", xs.grad)
    cs.compare64("y", y, y64); cs.compare64("dx", xs.grad, xs64.grad)
    return cs


def avgpool_case(name, seed, shape, k, s, p, count_include_pad, ceil_mode=False):
    torch.manual_seed(seed)
    x = torch.randn(*shape)

    def fn(dt):
        xs = leaf(x, dt)
        y = F.avg_pool2d(xs, k, s, p, ceil_mode=ceil_mode, count_include_pad=count_include_pad)
        return xs, y

    xs, y = fn(torch.float32)
    dy = torch.randn(*y.shape)
    y.backward(dy)
    xs64, y64 = fn(torch.float64)
    y64.backward(dy.double())
    cs = Case(name, f"avg_pool2d {tuple(shape)} kernel {k} stride {s} pad {p} "
                    f"count_include_pad {count_include_pad} ceil_mode {ceil_mode}",
              {"kernel": [k, k], "stride": [s, s], "padding": [p, p], "ceil_mode": ceil_mode,
               "count_include_pad": count_include_pad})
    cs.add("x", x); cs.add("dy", dy); cs.add("y", y); cs.add("dx", xs.grad)
    cs.compare64("y", y, y64); cs.compare64("dx", xs.grad, xs64.grad)
    return cs


def adaptive_case(name, seed, shape, out_hw):
    torch.manual_seed(seed)
    x = torch.randn(*shape)
    xs = x.clone().requires_grad_()
    y = F.adaptive_avg_pool2d(xs, out_hw)
    dy = torch.randn(*y.shape)
    y.backward(dy)
    xs64 = x.double().requires_grad_()
    y64 = F.adaptive_avg_pool2d(xs64, out_hw)
    y64.backward(dy.double())
    cs = Case(name, f"adaptive_avg_pool2d {tuple(shape)} -> {out_hw}", {"output_size": list(out_hw)})
    cs.add("x", x); cs.add("dy", dy); cs.add("y", y); cs.add("dx", xs.grad)
    cs.compare64("y", y, y64); cs.compare64("dx", xs.grad, xs64.grad)
    return cs


def linear_case(name, seed, n, fin, fout, bias):
    torch.manual_seed(seed)
    x = torch.randn(n, fin)
    wt = torch.randn(fout, fin) / fin ** 0.5
    b = torch.randn(fout) if bias else None
    dy = torch.randn(n, fout)

    def fn(dt):
        xs = leaf(x, dt)
        ws = leaf(wt, dt)
        bs = leaf(b, dt) if bias else None
        y = F.linear(xs, ws, bs)
        y.backward(dy.to(dt))
        return y, xs.grad, ws.grad, (bs.grad if bias else None)

    r32, r64 = fn(torch.float32), fn(torch.float64)
    cs = Case(name, f"linear x({n}, {fin}) weight({fout}, {fin}) bias {bias}", {"bias": bias})
    cs.add("x", x); cs.add("weight", wt)
    if bias:
        cs.add("bias", b)
    cs.add("dy", dy)
    for i, nm in enumerate(["y", "dx", "dweight", "dbias"]):
        if nm == "dbias" and not bias:
            continue
        cs.add(nm, r32[i]); cs.compare64(nm, r32[i], r64[i])
    return cs


def bce_case(name, seed, shape, reduction, weight_shape):
    """weight_shape: None (no weight), or a shape broadcastable to `shape`."""
    torch.manual_seed(seed)
    x = torch.randn(*shape) * 3.0
    x.view(-1)[0] = 25.0   # large logits: the stable formula must not overflow
    x.view(-1)[1] = -30.0
    y = (torch.rand(*shape) > 0.5).float()
    y.view(-1)[2] = 0.3    # a soft label
    w = None
    if weight_shape is not None:
        w = torch.rand(*weight_shape) * 2.0
        w.view(-1)[-1] = 0.0  # a masked-out element (the lesion-label mask), still counted by Mean
    dy = torch.randn(*shape) if reduction == "none" else torch.tensor(0.7)

    def fn(dt):
        xs = leaf(x, dt)
        out = F.binary_cross_entropy_with_logits(xs, y.to(dt), weight=(w.to(dt) if w is not None else None),
                                                 reduction=reduction)
        out.backward(dy.to(dt))
        return out, xs.grad

    (o, dx), (o64, dx64) = fn(torch.float32), fn(torch.float64)
    cs = Case(name, f"binary_cross_entropy_with_logits x{tuple(shape)} weight "
                    f"{tuple(weight_shape) if weight_shape is not None else None} reduction {reduction}",
              {"reduction": reduction, "weight": weight_shape is not None})
    cs.add("x", x); cs.add("target", y)
    if w is not None:
        cs.add("weight", w)
    cs.add("dy", dy); cs.add("loss", o); cs.add("dx", dx)
    cs.compare64("loss", o, o64); cs.compare64("dx", dx, dx64)
    return cs


def optimizer_case(name, seed, make_opt, params_desc, frozen=False):
    """Two steps with given gradients. frozen: a third parameter that never has a gradient (skipped)."""
    torch.manual_seed(seed)
    shapes = [(4, 3), (3,)]
    p0 = [torch.randn(*s) for s in shapes]
    g1 = [torch.randn(*s) for s in shapes]
    g2 = [torch.randn(*s) for s in shapes]
    fz = torch.randn(2, 2)

    def fn(dt):
        ps = [p.to(dt).clone().requires_grad_() for p in p0]
        all_ps = ps + ([fz.to(dt).clone().requires_grad_()] if frozen else [])
        opt = make_opt(all_ps)
        after = []
        for gs in (g1, g2):
            for p, g in zip(ps, gs):
                p.grad = g.to(dt).clone()
            opt.step()
            after.append([p.detach().clone() for p in all_ps])
        return after, opt

    a32, opt32 = fn(torch.float32)
    a64, _ = fn(torch.float64)
    cs = Case(name, f"{params_desc}: two steps on params (4, 3) and (3,) with given gradients"
                    + (", plus a (2, 2) parameter without gradient" if frozen else ""),
              dict(make_opt.params, frozen=frozen))
    for i in range(len(shapes)):
        cs.add(f"param{i}", p0[i]); cs.add(f"grad{i}_step1", g1[i]); cs.add(f"grad{i}_step2", g2[i])
    if frozen:
        cs.add("param2", fz)
    for step, (ps32, ps64) in enumerate(zip(a32, a64), start=1):
        for i, (q32, q64) in enumerate(zip(ps32, ps64)):
            cs.add(f"param{i}_step{step}", q32)
            cs.compare64(f"param{i}_step{step}", q32, q64)
    # The optimizer state after step 2, under PyTorch's names ("0.exp_avg", "1.momentum_buffer", ...).
    for i, p in enumerate(opt32.param_groups[0]["params"][:2]):
        for k, v in opt32.state[p].items():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                cs.add(f"{i}.{k}", v)
    return cs


class OptSpec:
    def __init__(self, ctor, **params):
        self.ctor = ctor
        self.params = params

    def __call__(self, ps):
        kw = dict(self.params)
        if "beta1" in kw:
            kw["betas"] = (kw.pop("beta1"), kw.pop("beta2"))
        return self.ctor(ps, **kw)


# ---- the basic ops: elementwise, reductions, matmul, views, cat/split, dropout ----------------------------
def grad_case(name, description, params, inputs, fn):
    """inputs: list of (name, float32 tensor); fn(*leaves) -> one output. Runs fn in float32 and float64,
    backward with one random upstream gradient (drawn from the torch generator as the case left it), and
    stores the inputs, "dy", "y" and "d<input>" for every input."""
    def run(dt):
        leaves = [leaf(t, dt) for _, t in inputs]
        return leaves, fn(*leaves)

    l32, y32 = run(torch.float32)
    dy = torch.randn(y32.shape)  # (a 0-d output gets a 0-d dy)
    y32.backward(dy)
    l64, y64 = run(torch.float64)
    y64.backward(dy.double())
    cs = Case(name, description, params)
    for nm, t in inputs:
        cs.add(nm, t)
    cs.add("dy", dy); cs.add("y", y32); cs.compare64("y", y32, y64)
    for (nm, _), g32, g64 in zip(inputs, l32, l64):
        cs.add("d" + nm, g32.grad); cs.compare64("d" + nm, g32.grad, g64.grad)
    return cs


_BINARY = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}


def binary_case(name, seed, op, shape_a, shape_b):
    """op(a, b) with NumPy broadcasting; da and db are summed back to each input's shape."""
    torch.manual_seed(seed)
    a = torch.randn(*shape_a)
    b = torch.randn(*shape_b)
    if op == "div":  # denominators away from zero: |b| in [0.5, 2), either sign
        b = (torch.rand(*shape_b) * 1.5 + 0.5) * torch.where(b < 0, -1.0, 1.0)
    return grad_case(name, f"{op}(a{tuple(shape_a)}, b{tuple(shape_b)}) with broadcasting", {"op": op},
                     [("a", a), ("b", b)], _BINARY[op])


_UNARY = {"add_scalar": lambda x, s: x + s, "mul_scalar": lambda x, s: x * s, "pow_scalar": lambda x, s: x.pow(s),
          "neg": lambda x, s: -x, "exp": lambda x, s: torch.exp(x), "log": lambda x, s: torch.log(x),
          "sigmoid": lambda x, s: torch.sigmoid(x), "relu": lambda x, s: torch.relu(x)}


def unary_case(name, seed, op, scalar, make_x, x_desc):
    """One-input op (scalar: its scalar argument or None); make_x() draws x after the seed is set."""
    torch.manual_seed(seed)
    x = make_x()
    return grad_case(name, f"{op}{'' if scalar is None else f'(s={scalar})'} on x{tuple(x.shape)}: {x_desc}",
                     {"op": op, "scalar": scalar}, [("x", x)], lambda t: _UNARY[op](t, scalar))


def with_values(x, values):
    """x with its first elements (row-major) replaced by `values`."""
    x = x.clone()
    x.view(-1)[:len(values)] = torch.tensor(values, dtype=x.dtype)
    return x


def reduction_case(name, seed, op, shape, dims, keepdim):
    """sum or mean over all elements (dims None: a 0-d result) or over `dims` (keepdim or not)."""
    torch.manual_seed(seed)
    x = torch.randn(*shape)
    f = torch.sum if op == "sum" else torch.mean
    fn = (lambda t: f(t)) if dims is None else (lambda t: f(t, dim=dims, keepdim=keepdim))
    what = "all elements" if dims is None else f"dims {dims} keepdim {keepdim}"
    return grad_case(name, f"{op} of x{tuple(shape)} over {what}", {"op": op, "dims": dims, "keepdim": keepdim},
                     [("x", x)], fn)


def matmul_case(name, seed, m, k, n):
    torch.manual_seed(seed)
    a = torch.randn(m, k)
    b = torch.randn(k, n) / k ** 0.5
    return grad_case(name, f"matmul a({m}, {k}) b({k}, {n})", {}, [("a", a), ("b", b)], torch.matmul)


def view_case(name, seed, shape, params):
    """params: {"op": "flatten", "start", "end"} or {"op": "reshape", "shape"} (one size may be -1)."""
    torch.manual_seed(seed)
    x = torch.randn(*shape)
    if params["op"] == "flatten":
        fn = lambda t: torch.flatten(t, params["start"], params["end"])
        what = f"flatten(start {params['start']}, end {params['end']})"
    else:
        fn = lambda t: t.reshape(params["shape"])
        what = f"reshape to {tuple(params['shape'])}"
    return grad_case(name, f"{what} of x{tuple(shape)}", params, [("x", x)], fn)


def cat_case(name, seed, shapes, dim):
    torch.manual_seed(seed)
    parts = [(f"part{i}", torch.randn(*s)) for i, s in enumerate(shapes)]
    return grad_case(name, f"cat of {[tuple(s) for s in shapes]} along dim {dim}", {"dim": dim, "parts": len(shapes)},
                     parts, lambda *ps: torch.cat(ps, dim))


def split_case(name, seed, shape, sizes, dim, used):
    """torch.split(x, sizes, dim); backward from the pieces in `used` only (dy<i> each), so the slices of
    the unused pieces get a zero gradient."""
    torch.manual_seed(seed)
    x = torch.randn(*shape)

    def run(dt):
        xs = leaf(x, dt)
        return xs, torch.split(xs, sizes, dim)

    xs, ys = run(torch.float32)
    dys = [torch.randn(ys[i].shape) for i in used]
    torch.autograd.backward([ys[i] for i in used], dys)
    xs64, ys64 = run(torch.float64)
    torch.autograd.backward([ys64[i] for i in used], [d.double() for d in dys])
    cs = Case(name, f"split of x{tuple(shape)} into {sizes} along dim {dim}, backward from pieces {used}",
              {"sizes": sizes, "dim": dim, "used": used})
    cs.add("x", x)
    for i, d in zip(used, dys):
        cs.add(f"dy{i}", d)
    for i, (y, y64) in enumerate(zip(ys, ys64)):
        cs.add(f"y{i}", y); cs.compare64(f"y{i}", y, y64)
    cs.add("dx", xs.grad); cs.compare64("dx", xs.grad, xs64.grad)
    return cs


def dropout_case(name, seed, shape, p, training):
    """F.dropout(x, p, training). PyTorch's generator is not ladnn's, so for 0 < p < 1 in training the test
    compares properties, not values (see golden_test.cpp); p = 0, p = 1 and eval are deterministic. The
    float64 reference reuses PyTorch's mask: x / (1 - p) where kept."""
    torch.manual_seed(seed)
    x = torch.randn(*shape)
    dy = torch.randn(*shape)
    xs = leaf(x, torch.float32)
    y = F.dropout(xs, p, training=training)
    y.backward(dy)
    kept = y != 0
    x64 = x.double()
    if not training or p == 0.0:
        y64 = x64
    elif p == 1.0:
        y64 = torch.zeros_like(x64)
    else:
        y64 = torch.where(kept, x64 / (1.0 - p), torch.zeros_like(x64))
    n = x.numel()
    cs = Case(name, f"dropout x{tuple(shape)} p {p} training {training}: PyTorch kept {int(kept.sum())} of {n}",
              {"p": p, "training": training, "seed": seed})
    cs.add("x", x); cs.add("dy", dy); cs.add("y", y); cs.add("dx", xs.grad)
    cs.compare64("y", y, y64)
    return cs


def all_cases():
    cs = []
    # conv2d: odd sizes, batch 1 and 2, with and without bias, asymmetric stride/pad.
    cs.append(conv_case("conv2d_3x3_s1_p1_bias", 101, 2, 3, 7, 9, 4, 3, 3, (1, 1), (1, 1), True))
    cs.append(conv_case("conv2d_1x1_nobias_b1", 102, 1, 5, 6, 5, 3, 1, 1, (1, 1), (0, 0), False))
    cs.append(conv_case("conv2d_7x7_s2_p3_nobias", 103, 2, 3, 13, 11, 4, 7, 7, (2, 2), (3, 3), False))
    cs.append(conv_case("conv2d_7x7_s2_p3_bias_b1", 104, 1, 2, 10, 9, 3, 7, 7, (2, 2), (3, 3), True))
    cs.append(conv_case("conv2d_3x2_s21_p10_bias", 105, 2, 2, 8, 7, 3, 3, 2, (2, 1), (1, 0), True))
    # batchnorm2d: train, train, eval.
    cs.append(batchnorm_train_case("batchnorm2d_b2", 201, (2, 3, 5, 7), 0.1, 1e-5))
    cs.append(batchnorm_train_case("batchnorm2d_b1_m03_eps1e-3", 202, (1, 4, 3, 5), 0.3, 1e-3))
    # max_pool2d
    cs.append(maxpool_case("max_pool2d_k3_s2_p1", 301, (2, 3, 9, 9), 3, 2, 1))
    cs.append(maxpool_case("max_pool2d_k2_s2_odd", 302, (1, 2, 8, 7), 2, 2, 0))
    cs.append(maxpool_case("max_pool2d_k3_s2_p1_ceil", 303, (1, 2, 6, 6), 3, 2, 1, ceil_mode=True))
    # avg_pool2d
    cs.append(avgpool_case("avg_pool2d_k2_s2", 401, (2, 3, 8, 7), 2, 2, 0, True))
    cs.append(avgpool_case("avg_pool2d_k3_s1_p1_incpad", 402, (2, 2, 5, 6), 3, 1, 1, True))
    cs.append(avgpool_case("avg_pool2d_k3_s1_p1_excpad", 402, (2, 2, 5, 6), 3, 1, 1, False))
    cs.append(avgpool_case("avg_pool2d_k3_s2_p1_ceil_excpad", 403, (1, 2, 6, 6), 3, 2, 1, False, ceil_mode=True))
    cs.append(avgpool_case("avg_pool2d_k3_s2_p1_ceil_incpad", 403, (1, 2, 6, 6), 3, 2, 1, True, ceil_mode=True))
    # adaptive_avg_pool2d
    cs.append(adaptive_case("adaptive_avg_pool2d_7to1", 501, (2, 3, 7, 7), (1, 1)))
    cs.append(adaptive_case("adaptive_avg_pool2d_7to3", 502, (2, 3, 7, 7), (3, 3)))
    cs.append(adaptive_case("adaptive_avg_pool2d_5x7to3x2", 503, (1, 2, 5, 7), (3, 2)))
    # linear
    cs.append(linear_case("linear_bias", 601, 5, 7, 4, True))
    cs.append(linear_case("linear_nobias_b1", 602, 1, 6, 3, False))
    # bce_with_logits
    cs.append(bce_case("bce_with_logits_weight_none", 701, (4, 6), "none", (4, 6)))
    cs.append(bce_case("bce_with_logits_weight_mean", 701, (4, 6), "mean", (4, 6)))
    cs.append(bce_case("bce_with_logits_weight_sum", 701, (4, 6), "sum", (4, 6)))
    cs.append(bce_case("bce_with_logits_noweight_mean", 702, (3, 5), "mean", None))
    cs.append(bce_case("bce_with_logits_bcastweight_sum", 703, (3, 5), "sum", (1, 5)))
    # optimizers
    cs.append(optimizer_case("adam_wd", 801, OptSpec(torch.optim.Adam, lr=1e-2, beta1=0.9, beta2=0.999,
                                                     eps=1e-8, weight_decay=0.1),
                             "Adam lr 1e-2 betas (0.9, 0.999) eps 1e-8 weight_decay 0.1", frozen=True))
    cs.append(optimizer_case("adamw", 802, OptSpec(torch.optim.AdamW, lr=1e-2, beta1=0.9, beta2=0.99,
                                                   eps=1e-6, weight_decay=0.05),
                             "AdamW lr 1e-2 betas (0.9, 0.99) eps 1e-6 weight_decay 0.05"))
    cs.append(optimizer_case("sgd_nesterov_wd", 803, OptSpec(torch.optim.SGD, lr=0.1, momentum=0.9,
                                                             dampening=0.0, weight_decay=1e-2, nesterov=True),
                             "SGD lr 0.1 momentum 0.9 nesterov weight_decay 1e-2", frozen=True))
    cs.append(optimizer_case("sgd_momentum_dampening", 804, OptSpec(torch.optim.SGD, lr=0.05, momentum=0.8,
                                                                    dampening=0.3, weight_decay=0.0,
                                                                    nesterov=False),
                             "SGD lr 0.05 momentum 0.8 dampening 0.3 (first step ignores dampening)"))
    # add/sub/mul/div: same shape, and the broadcasts of a bias ((N,C,H,W) with (1,C,1,1); (N,K) with (K))
    # and a per-channel scale ((C,1,1)), with either side broadcast.
    nchw = (2, 3, 4, 5)
    cs.append(binary_case("add_same", 901, "add", nchw, nchw))
    cs.append(binary_case("add_nchw_1c11", 902, "add", nchw, (1, 3, 1, 1)))
    cs.append(binary_case("add_nk_k", 903, "add", (5, 7), (7,)))
    cs.append(binary_case("sub_same", 904, "sub", nchw, nchw))
    cs.append(binary_case("sub_nchw_c11", 905, "sub", nchw, (3, 1, 1)))
    cs.append(binary_case("sub_k_nk", 906, "sub", (7,), (5, 7)))
    cs.append(binary_case("mul_same", 907, "mul", nchw, nchw))
    cs.append(binary_case("mul_nchw_c11", 908, "mul", nchw, (3, 1, 1)))
    cs.append(binary_case("mul_1c11_nchw", 909, "mul", (1, 3, 1, 1), nchw))
    cs.append(binary_case("mul_n1_1k", 910, "mul", (4, 1), (1, 6)))
    cs.append(binary_case("div_same", 911, "div", nchw, nchw))
    cs.append(binary_case("div_nchw_1c11", 912, "div", nchw, (1, 3, 1, 1)))
    cs.append(binary_case("div_nk_k", 913, "div", (5, 7), (7,)))
    cs.append(binary_case("div_c11_nchw", 914, "div", (3, 1, 1), nchw))
    # one-input ops
    shp = (3, 4, 5)
    signed = lambda: torch.randn(*shp) * 2.0
    positive = lambda: torch.rand(*shp) * 2.0 + 0.5
    away = lambda: (torch.rand(*shp) * 1.5 + 0.5) * torch.where(torch.randn(*shp) < 0, -1.0, 1.0)
    cs.append(unary_case("add_scalar", 1001, "add_scalar", 0.75, signed, "randn * 2"))
    cs.append(unary_case("mul_scalar", 1002, "mul_scalar", -1.5, signed, "randn * 2"))
    cs.append(unary_case("neg", 1003, "neg", None, signed, "randn * 2"))
    cs.append(unary_case("pow_scalar_2", 1004, "pow_scalar", 2.0, signed, "randn * 2"))
    cs.append(unary_case("pow_scalar_3", 1005, "pow_scalar", 3.0, signed, "randn * 2"))
    cs.append(unary_case("pow_scalar_0p5", 1006, "pow_scalar", 0.5, positive, "in [0.5, 2.5)"))
    cs.append(unary_case("pow_scalar_m1p5", 1007, "pow_scalar", -1.5, positive, "in [0.5, 2.5)"))
    cs.append(unary_case("pow_scalar_m2", 1008, "pow_scalar", -2.0, away, "|x| in [0.5, 2), either sign"))
    # exp and log: a narrow range, where the metric holds every element to 1e-5 relative, and a wide one (the
    # largest elements dominate rms there, so it mostly checks that nothing overflows or turns NaN).
    cs.append(unary_case("exp", 1009, "exp", None, lambda: torch.rand(*shp) * 4.0 - 2.0, "in [-2, 2)"))
    cs.append(unary_case("exp_wide", 1013, "exp", None,
                         lambda: with_values(torch.randn(*shp) * 3.0, [20.0, -30.0, 60.0, -100.0]),
                         "randn * 3 and 20, -30, 60, -100 (exp(-100) underflows float32)"))
    cs.append(unary_case("log", 1010, "log", None, lambda: torch.rand(*shp) * 4.5 + 0.5, "in [0.5, 5)"))
    cs.append(unary_case("log_wide", 1014, "log", None, lambda: 10.0 ** (torch.rand(*shp) * 6.0 - 3.0),
                         "log-uniform in [1e-3, 1e3)"))
    big = [17.0, -17.0, 30.0, -30.0, 90.0, -90.0, 1000.0, -1000.0]
    cs.append(unary_case("sigmoid", 1011, "sigmoid", None, lambda: with_values(torch.randn(*shp) * 3.0, big),
                         "randn * 3 and +-17, +-30, +-90, +-1000 (exp overflows float32 beyond 88.7)"))
    cs.append(unary_case("relu", 1012, "relu", None,
                         lambda: with_values(torch.randn(*shp), [0.0, 0.0, -0.0, 1e-30, -1e-30]),
                         "randn, exact zeros (gradient 0 there, as PyTorch) and +-1e-30"))
    # sum and mean: all elements (0-d), one axis, several axes, negative axis, keepdim.
    cs.append(reduction_case("sum_all", 1101, "sum", nchw, None, False))
    cs.append(reduction_case("sum_dim1", 1102, "sum", nchw, [1], False))
    cs.append(reduction_case("sum_dims023_keepdim", 1103, "sum", nchw, [0, 2, 3], True))
    cs.append(reduction_case("sum_dimm1_keepdim", 1104, "sum", nchw, [-1], True))
    cs.append(reduction_case("mean_all", 1105, "mean", nchw, None, False))
    cs.append(reduction_case("mean_dim0", 1106, "mean", nchw, [0], False))
    cs.append(reduction_case("mean_dim1_keepdim", 1107, "mean", nchw, [1], True))
    cs.append(reduction_case("mean_dims23", 1108, "mean", nchw, [2, 3], False))
    # matmul: small, batch 1, K = 1 (an outer product), K beyond one 256-deep GEMM slice.
    cs.append(matmul_case("matmul_5x7x3", 1201, 5, 7, 3))
    cs.append(matmul_case("matmul_1x6x4", 1202, 1, 6, 4))
    cs.append(matmul_case("matmul_4x1x3", 1203, 4, 1, 3))
    cs.append(matmul_case("matmul_13x300x11", 1204, 13, 300, 11))
    # flatten/reshape (DenseNet's classifier input is flatten(x, 1) of (N, C, 1, 1))
    cs.append(view_case("flatten_1", 1301, nchw, {"op": "flatten", "start": 1, "end": -1}))
    cs.append(view_case("flatten_1_2", 1302, nchw, {"op": "flatten", "start": 1, "end": 2}))
    cs.append(view_case("flatten_0", 1303, nchw, {"op": "flatten", "start": 0, "end": -1}))
    cs.append(view_case("flatten_1_b1_c11", 1304, (1, 5, 1, 1), {"op": "flatten", "start": 1, "end": -1}))
    cs.append(view_case("reshape_m1", 1305, nchw, {"op": "reshape", "shape": [6, -1]}))
    # cat and split along channels (DenseNet joins feature maps with cat(..., 1)), and one along the last dim.
    cs.append(cat_case("cat_c_3parts", 1401, [(2, 4, 3, 3), (2, 2, 3, 3), (2, 5, 3, 3)], 1))
    cs.append(cat_case("cat_c_b1_2parts", 1402, [(1, 3, 2, 4), (1, 6, 2, 4)], 1))
    cs.append(cat_case("cat_lastdim", 1403, [(2, 3), (2, 4)], -1))
    cs.append(split_case("split_c_3", 1411, (2, 11, 3, 3), [4, 2, 5], 1, [0, 1, 2]))
    cs.append(split_case("split_c_unused", 1412, (1, 7, 2, 3), [3, 1, 3], 1, [0, 2]))
    # dropout: statistical for 0 < p < 1 (4096 elements), exact for p = 0, p = 1 and eval.
    cs.append(dropout_case("dropout_p0p3", 1501, (2, 8, 16, 16), 0.3, True))
    cs.append(dropout_case("dropout_p0p5", 1502, (2, 8, 16, 16), 0.5, True))
    cs.append(dropout_case("dropout_p1", 1503, (2, 3, 4), 1.0, True))
    cs.append(dropout_case("dropout_p0", 1504, (2, 3, 4), 0.0, True))
    cs.append(dropout_case("dropout_eval", 1505, (2, 3, 4), 0.5, False))
    return cs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                                  "golden"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    total = 0
    cases = all_cases()
    for c in cases:
        total += c.write(args.out)
    print(f"{len(cases)} fixtures, {total} bytes in {os.path.normpath(args.out)}")
    if total > 1 << 20:
        print("error: the fixtures exceed 1 MiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
