"""Read mg3d shards from Python (safetensors + torch), in the same order as the Rust loader.

    import mg3d_shards as m
    idx = m.load_index("work/demo/shards")
    for sample_numbers, batch in m.batches(idx, "train", seed=idx["seed"], epoch=0, batch_size=4):
        batch["volume"]  # torch.float16 (B, 1, D, H, W), values in [0, 1]

Only the plain shuffled order is ported (not the graph-neighbour sampler).
"""
import json
import os

M64 = (1 << 64) - 1


def _mix(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def epoch_order(n, seed, epoch):
    """The permutation of range(n) for (seed, epoch): SplitMix64-driven Fisher-Yates."""
    state = _mix(seed & M64) ^ _mix((epoch ^ 0x6D67336473686172) & M64)
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        state = (state + 0x9E3779B97F4A7C15) & M64
        j = (_mix(state) * (i + 1)) >> 64
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def load_index(shard_dir):
    with open(os.path.join(shard_dir, "index.json")) as f:
        idx = json.load(f)
    idx["_dir"] = shard_dir
    return idx


def read_samples(idx, split, sample_numbers):
    """Stacks the given samples of a split into one tensor per field (like a loader batch)."""
    import torch
    from safetensors.torch import load_file

    sp = idx["splits"][split]
    cache = {}
    rows = {f["name"]: [] for f in idx["fields"]}
    for s in sample_numbers:
        e = sp["samples"][s]
        if e["shard"] not in cache:
            cache[e["shard"]] = load_file(os.path.join(idx["_dir"], sp["shards"][e["shard"]]["file"]))
        t = cache[e["shard"]]
        for name in rows:
            rows[name].append(t[name][e["row"]])
    return {name: torch.stack(v) for name, v in rows.items()}


def batches(idx, split, seed, epoch, batch_size, rank=0, world=1, start=0, shuffle=True):
    """Yields (sample_numbers, batch) of one rank, like the Rust Loader without drop_last."""
    n = len(idx["splits"][split]["samples"])
    order = epoch_order(n, seed, epoch) if shuffle else list(range(n))
    rest = order[start:]
    chunks = [rest[i:i + batch_size] for i in range(0, len(rest), batch_size)]
    for c, chunk in enumerate(chunks):
        if c % world == rank:
            yield chunk, read_samples(idx, split, chunk)
