"""MONAI SwinViT reference for crates/mg3d-train/tests/swin.rs.

usage: swin_reference.py make DIR CASES_JSON   # random weights, inputs, MONAI outputs, names
       swin_reference.py check DIR CASES_JSON  # Rust's exports load strictly into MONAI, unchanged

CASES_JSON is a list of {"cfg": SwinConfig as JSON, "input": [D, H, W], "seed": int}.
Case i writes DIR/case{i}_weights.safetensors (the SwinViT state_dict under "swinViT." plus a
decoder tensor that a loader must ignore), DIR/case{i}_io.safetensors ("input", "out0".."out4"),
DIR/case{i}_names.txt (state_dict "name shape dtype" lines). `check` reads DIR/case{i}_export.safetensors.
"""

import json
import sys

import torch
from monai.networks.nets.swin_unetr import SwinTransformer
from safetensors.torch import load_file, save_file


def build(cfg):
    return SwinTransformer(
        in_chans=cfg["in_chans"],
        embed_dim=cfg["embed_dim"],
        window_size=(cfg["window"],) * 3,
        patch_size=(cfg["patch"],) * 3,
        depths=tuple(cfg["depths"]),
        num_heads=tuple(cfg["heads"]),
        mlp_ratio=cfg["mlp_ratio"],
        qkv_bias=True,
        downsample=cfg.get("downsample", "merging"),
    ).eval()


def randomize(model):
    # Default init keeps linears/convs random; make the bias tables and norms non-trivial too so
    # that every parameter (and the -100 shift mask) changes the outputs.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.normal_(0.0, 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "norm" in name and name.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))


def make(d, cases):
    for i, case in enumerate(cases):
        torch.manual_seed(case["seed"])
        model = build(case["cfg"])
        randomize(model)
        sd = model.state_dict()
        with open(f"{d}/case{i}_names.txt", "w") as f:
            for k, v in sd.items():
                f.write(f"{k} {'x'.join(map(str, v.shape))} {str(v.dtype).replace('torch.', '')}\n")
        weights = {"swinViT." + k: v.contiguous() for k, v in sd.items()}
        weights["decoder1.conv_block.conv1.conv.weight"] = torch.randn(4, 4, 3, 3, 3)
        save_file(weights, f"{d}/case{i}_weights.safetensors")
        x = torch.randn(1, case["cfg"]["in_chans"], *case["input"])
        with torch.no_grad():
            outs = model(x, normalize=True)
        io = {"input": x}
        io.update({f"out{k}": o.contiguous() for k, o in enumerate(outs)})
        save_file(io, f"{d}/case{i}_io.safetensors")
    print(json.dumps({"ok": True, "cases": len(cases)}))


def check(d, cases):
    results = []
    for i, case in enumerate(cases):
        exported = load_file(f"{d}/case{i}_export.safetensors")
        original = load_file(f"{d}/case{i}_weights.safetensors")
        sd = {k[len("swinViT."):]: v for k, v in exported.items() if k.startswith("swinViT.")}
        model = build(case["cfg"])
        model.load_state_dict(sd, strict=True)  # raises on any missing/unexpected name or shape
        diff = 0.0
        for k, v in model.state_dict().items():
            o = original["swinViT." + k]
            assert v.dtype == o.dtype, (k, v.dtype, o.dtype)
            diff = max(diff, (v.double() - o.double()).abs().max().item())
        results.append({"keys": len(sd), "max_diff": diff})
    print(json.dumps({"ok": True, "results": results}))


if __name__ == "__main__":
    mode, d, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    {"make": make, "check": check}[mode](d, cases)
