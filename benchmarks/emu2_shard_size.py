"""Bytes per image in Emu2 shards: why they hold PNGs of the resized image, not pixel tensors or references.

Emu2 embeds images inside the model (EVA-CLIP -> 8 x 8 pooled embeddings), so its shards must carry the
pixels. Candidates, per image at the visual encoder's input size S x S (448 for BAAI/Emu2, 32 for tiny):

- ``png``: the resized RGB image, PNG (lossless: training normalises exactly these pixels) -- what we store
- ``uint8`` / ``bf16`` / ``fp32``: a raw (3, S, S) tensor (uint8 before normalisation, or normalised)
- ``reference``: the source path / URI only (the source image must then be readable from every training
  node, and is decoded and resized again every epoch)

Measured on the bundled sample set's images (drawn shapes: they compress very well) and on uniform
noise (incompressible: PNG's worst case). Writes benchmarks/results/emu2_shard_size.json.

    python benchmarks/emu2_shard_size.py              # S = 448 and 32
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.backbones.emu2 import Emu2Spec  # noqa: E402
from orchestrator.data.sample import write_sample  # noqa: E402


def sizes_at(images: list[tuple[str, Image.Image]], side: int) -> dict:
    png = [len(Emu2Spec.png(im.convert("RGB").resize((side, side), Image.BICUBIC))) for _, im in images]
    ref = [len(path.encode()) for path, _ in images]
    n = 3 * side * side
    return {"png_median": int(statistics.median(png)), "png_max": max(png), "uint8": n, "bf16": 2 * n, "fp32": 4 * n,
            "reference_median": int(statistics.median(ref))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sides", type=int, nargs="+", default=[448, 32])
    ap.add_argument("--per-domain", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "emu2_shard_size.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_sample(Path(tmp) / "sample", per_domain=args.per_domain)
        paths = sorted((Path(tmp) / "sample" / "images").rglob("*.png"))
        sample = [(f"s3://bucket/leafinstruct/images/{p.parent.name}/{p.name}", Image.open(p).convert("RGB")) for p in paths]
    rng = np.random.default_rng(0)
    noise = [(f"s3://bucket/noise/{i}.png", Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)))
             for i in range(4)]
    rows = []
    for side in args.sides:
        for name, images in (("sample set", sample), ("uniform noise", noise)):
            rows.append({"side": side, "images": name, "n": len(images), **sizes_at(images, side)})
    head = f"{'S':>4} {'images':<14} {'n':>4} {'png med':>9} {'png max':>9} {'uint8':>9} {'bf16':>9} {'fp32':>9} {'ref':>5}"
    print(head)
    for r in rows:
        print(f"{r['side']:>4} {r['images']:<14} {r['n']:>4} {r['png_median']:>9,} {r['png_max']:>9,} {r['uint8']:>9,} "
              f"{r['bf16']:>9,} {r['fp32']:>9,} {r['reference_median']:>5}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
