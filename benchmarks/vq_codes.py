"""Do the tiny image tokenizers keep an image's 2-D structure? Code entropy of the sample set's images.

For each VQ family's tiny preset, the sample set's images (orchestrator/data/sample.py) are coded twice: by
the VQ as the real class draws it at the preset's seed, and by the same VQ after ``localize`` (what the
presets use, orchestrator/backbones/local_vq.py). For each, plug-in estimates of the code entropy on held-out
images (counts from the other images, add-0.1 smoothing over the 256 codes): with no context, given the left
neighbour, given the one above. A local code is predictable from its neighbours; a drawn VQ's is not.

    python benchmarks/vq_codes.py            # writes benchmarks/results/vq_codes.json (or --out)
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTEXTS = {
    "none": lambda g, i, j: 0,
    "left": lambda g, i, j: int(g[i, j - 1]) if j else -1,
    "above": lambda g, i, j: int(g[i - 1, j]) if i else -1,
}


def entropy(train: list, held: list, context, alpha: float = 0.1, codebook: int = 256) -> float:
    """Nats per code of ``held`` under code counts per context taken on ``train``."""
    counts: dict = {}
    for g in train:
        for i in range(g.shape[0]):
            for j in range(g.shape[1]):
                counts.setdefault(context(g, i, j), Counter())[int(g[i, j])] += 1
    total = n = 0
    for g in held:
        for i in range(g.shape[0]):
            for j in range(g.shape[1]):
                c = counts.get(context(g, i, j), Counter())
                total -= math.log((c[int(g[i, j])] + alpha) / (sum(c.values()) + alpha * codebook))
                n += 1
    return total / n


def main() -> None:
    import sys

    sys.path.insert(0, str(ROOT))
    import torch
    from PIL import Image

    from orchestrator.backbones import get_backbone
    from orchestrator.backbones.vq import TINY_VQ_SEED
    from orchestrator.data.sample import write_sample

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=400, help="sample images coded (the last 15%% held out)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/vq_codes.json"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        write_sample(Path(d), per_domain=60)
        files = sorted(Path(d, "images").rglob("*.png"))
        random.Random(0).shuffle(files)
        images = [Image.open(f).convert("RGB") for f in files[: args.images]]
    cut = int(len(images) * 0.85)
    rows = []
    for family in ("chameleon", "emu3", "janus"):
        spec = get_backbone(family)
        torch.manual_seed(TINY_VQ_SEED)
        drawn = spec.vq_module(spec.model_class(spec.random_config())).eval()
        for name, vq in (("drawn", drawn), ("local", spec.vq)):
            spec.__dict__["vq"] = vq
            with torch.no_grad():
                grids = [spec.image_codes(*spec.preprocess(im)).numpy() for im in images]
            row = {"family": family, "vq": name, "distinct_codes": len({int(c) for g in grids for c in g.ravel()})}
            row.update({f"H_{k}": entropy(grids[:cut], grids[cut:], f) for k, f in CONTEXTS.items()})
            rows.append(row)
        del spec.__dict__["vq"]
    print(f"{'family':10s} {'vq':6s} {'codes':>5s} {'H':>6s} {'H|left':>7s} {'H|above':>8s}   (nats per code)")
    for r in rows:
        print(f"{r['family']:10s} {r['vq']:6s} {r['distinct_codes']:5d} {r['H_none']:6.2f} {r['H_left']:7.2f} {r['H_above']:8.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"images": len(images), "held_out": len(images) - cut, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
