#!/usr/bin/python3
"""Writes a PyTorch state dict as safetensors, with the tensor names ladnn uses (torchvision's).

    /usr/bin/python3 tools/export_torchvision.py --arch densenet169 --random --seed 0 out.safetensors
    /usr/bin/python3 tools/export_torchvision.py --state-dict my_model.pth out.safetensors

--random builds torchvision's model with its own random initialisation (the golden tests use this);
--state-dict converts a saved state dict (a torch.save'd dict, or a whole model). Legacy DenseNet
names ("norm.1", "conv.2") are renamed to the current ones ("norm1", "conv2"), as torchvision's own
loader does. Only the Python standard library, numpy and torch are needed.
"""
import argparse
import json
import os
import re
import struct
import sys

import numpy as np
import torch

_DTYPES = {np.dtype("float32"): "F32", np.dtype("float64"): "F64", np.dtype("int64"): "I64"}
_LEGACY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def write_safetensors(path, tensors, metadata):
    """tensors: list of (name, torch.Tensor or np.ndarray); written to path.tmp then renamed."""
    header = {"__metadata__": {k: str(v) for k, v in metadata.items()}}
    blobs, offset = [], 0
    for name, t in tensors:
        a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        a = np.array(a, order="C", copy=True)
        if a.dtype not in _DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {a.dtype}; only float32/float64/int64 are written")
        raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def rename_legacy(name):
    m = _LEGACY.match(name)
    return m.group(1) + m.group(2) if m else name


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--random", action="store_true", help="torchvision's model with random weights")
    src.add_argument("--state-dict", metavar="FILE", help="a torch.save'd state dict or model")
    ap.add_argument("--arch", default="densenet169", help="torchvision model name (with --random)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("out")
    args = ap.parse_args()

    if args.random:
        import torchvision
        torch.manual_seed(args.seed)
        state = getattr(torchvision.models, args.arch)().state_dict()
    else:
        obj = torch.load(args.state_dict, map_location="cpu")
        state = obj.state_dict() if hasattr(obj, "state_dict") else obj
    tensors = [(rename_legacy(k), v) for k, v in state.items()]
    write_safetensors(args.out, tensors, {"source": args.state_dict or f"torchvision {args.arch} random seed {args.seed}",
                                          "torch": torch.__version__})
    print(f"wrote {len(tensors)} tensors to {args.out}")


if __name__ == "__main__":
    sys.exit(main())
