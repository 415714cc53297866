"""A deterministic LeafInstruct-format sample set, drawn with PIL (images follow the text), and a fuzz set.

``write_sample(dir)`` writes five domains in both accepted shapes and three file formats:

| domain        | file                | shape        | record                                                     |
|---------------|---------------------|--------------|------------------------------------------------------------|
| howto         | howto.jsonl         | segments     | instruction -> 3 steps, each text + picture so far         |
| storytelling  | storytelling.jsonl  | placeholders | first panel -> two more panels (text + image each)         |
| editing       | editing.parquet     | segments     | image + "change the red circle to blue" -> edited image    |
| vqa           | vqa.jsonl           | segments     | image + "how many squares?" -> "There are 3 squares."      |
| generation    | generation.json     | placeholders | "draw a green triangle on a yellow background" -> image    |

``write_fuzz(dir)`` mixes good records with malformed ones of many kinds and returns what each line
should become, for tests. Nothing is downloaded.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "blue": (40, 70, 220), "green": (40, 170, 60), "orange": (245, 150, 30),
          "purple": (140, 60, 180), "black": (20, 20, 20), "yellow": (240, 220, 40), "white": (250, 250, 250),
          "grey": (150, 150, 150), "pink": (240, 140, 180), "sky": (170, 210, 250), "lawn": (30, 110, 40)}
SHAPES = ("square", "circle", "triangle")
DOMAINS = ("howto", "storytelling", "editing", "vqa", "generation")
SIZE = (64, 64)


def draw_shape(d: ImageDraw.ImageDraw, shape: str, box, color) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        d.ellipse(box, fill=color)
    elif shape == "triangle":
        d.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=color)
    else:
        d.rectangle(box, fill=color)


class _Writer:
    def __init__(self, root: Path, domain: str):
        self.root, self.domain = root, domain
        (root / "images" / domain).mkdir(parents=True, exist_ok=True)

    def save(self, image: Image.Image, name: str) -> str:
        rel = f"images/{self.domain}/{name}.png"
        image.save(self.root / rel, optimize=False)
        return rel


def _t(text: str) -> dict:
    return {"type": "text", "text": text}


def _i(path: str) -> dict:
    return {"type": "image", "image": path}


def _howto_pictures(rng: random.Random, wall: str, roof: str, door: str) -> list[Image.Image]:
    bg = rng.choice(["white", "sky"])
    x0, y0 = rng.randint(8, 18), rng.randint(28, 34)
    x1, y1 = x0 + rng.randint(26, 36), min(56, y0 + rng.randint(18, 24))
    im = Image.new("RGB", SIZE, COLORS[bg])
    d = ImageDraw.Draw(im)
    draw_shape(d, "square", (x0, y0, x1, y1), COLORS[wall])
    steps = [im.copy()]
    d.polygon([(x0 - 4, y0), ((x0 + x1) // 2, 4), (x1 + 4, y0)], fill=COLORS[roof])
    steps.append(im.copy())
    cx = (x0 + x1) // 2
    d.rectangle((0, y1, SIZE[0], SIZE[1]), fill=COLORS["lawn"])
    d.ellipse((42, 0, 64, 22), fill=COLORS["yellow"])
    d.rectangle((cx - 4, y1 - 14, cx + 4, y1), fill=COLORS[door])
    return steps + [im]


def _distinct(images: list[Image.Image], min_distance: int = 8) -> bool:
    from .images import hamming, phash

    h = [phash(im) for im in images]
    return all(hamming(h[i], h[j]) >= min_distance for j in range(len(h)) for i in range(j))


def howto(rng: random.Random, w: _Writer, rid: str) -> dict:
    wall, roof, door = rng.sample(["red", "blue", "green", "orange", "purple", "pink"], 3)
    steps = [f"Step 1: draw a {wall} square for the walls.", f"Step 2: put a {roof} triangle on top as the roof.",
             f"Step 3: add a {door} door, a green lawn in front and a yellow sun in the sky."]
    pictures = _howto_pictures(rng, wall, roof, door)
    while not _distinct(pictures):  # steps must look different (the pipeline rejects near-duplicates)
        pictures = _howto_pictures(rng, wall, roof, door)
    out = []
    for k, (text, im) in enumerate(zip(steps, pictures)):
        out += [_t(text), _i(w.save(im, f"{rid}_{k}"))]
    return {"id": rid, "domain": "howto", "instruction": f"Explain how to draw a {wall} house with a {roof} roof, "
            "with a picture after each step.", "input": [], "output": out}


def storytelling(rng: random.Random, w: _Writer, rid: str) -> dict:
    ball, bg = rng.choice(["red", "blue", "orange", "purple", "black"]), rng.choice(["green", "yellow", "grey", "sky"])
    r, y = rng.randint(5, 11), rng.randint(18, 44)
    xs = (rng.randint(10, 20), rng.randint(40, 56), rng.randint(76, 86))
    ground = (rng.randint(80, 140), rng.randint(50, 90), rng.randint(20, 60))
    paths = []
    for k, x in enumerate(xs):
        im = Image.new("RGB", (96, 64), COLORS[bg])
        d = ImageDraw.Draw(im)
        d.rectangle((0, y + r, 95, 63), fill=ground)
        d.ellipse((x - r, y - r, x + r, y + r), fill=COLORS[ball])
        paths.append(w.save(im, f"{rid}_{k}"))
    return {"id": rid, "task_name": "storytelling", "instruction": "Continue the story with two more panels.",
            "context": f"A {ball} ball rests at the left of a {bg} field. <image>",
            "output": "It starts to roll and reaches the middle. <image> Finally it stops at the right edge. <image>",
            "images": paths}


def _scene(rng: random.Random, n: int):
    """n shapes at distinct, non-overlapping cells of a 3 x 3 grid: [(shape, color, box)]."""
    cells = rng.sample(range(9), n)
    out = []
    for c in cells:
        x, y = 4 + (c % 3) * 20, 4 + (c // 3) * 20
        out.append((rng.choice(SHAPES), rng.choice(["red", "blue", "green", "orange", "purple"]), (x, y, x + 15, y + 15)))
    return out


def _render(scene, bg="white") -> Image.Image:
    im = Image.new("RGB", SIZE, COLORS[bg])
    d = ImageDraw.Draw(im)
    for shape, color, box in scene:
        draw_shape(d, shape, box, COLORS[color])
    return im


def editing(rng: random.Random, w: _Writer, rid: str) -> dict:
    scene = _scene(rng, rng.randint(2, 4))
    k = rng.randrange(len(scene))
    shape, old, box = scene[k]
    new = rng.choice([c for c in ("red", "blue", "green", "orange", "purple", "black") if c != old])
    edited = [*scene[:k], (shape, new, box), *scene[k + 1 :]]
    return {"id": rid, "domain": "editing", "instruction": f"Change the {old} {shape} to {new}.",
            "input": [_i(w.save(_render(scene), f"{rid}_src"))], "output": [_i(w.save(_render(edited), f"{rid}_out"))]}


def vqa(rng: random.Random, w: _Writer, rid: str) -> dict:
    scene = _scene(rng, rng.randint(2, 6))
    shape = rng.choice([s for s, _, _ in scene])
    n = sum(s == shape for s, _, _ in scene)
    answer = f"There {'is' if n == 1 else 'are'} {n} {shape}{'' if n == 1 else 's'} in the picture."
    return {"id": rid, "domain": "vqa", "instruction": f"How many {shape}s are in the picture?",
            "input": [_i(w.save(_render(scene), f"{rid}_q"))], "output": [_t(answer)]}


def generation(rng: random.Random, w: _Writer, rid: str) -> dict:
    shape = rng.choice(SHAPES)
    color, bg = rng.sample(["red", "blue", "green", "orange", "purple", "yellow", "white", "black"], 2)
    s = rng.randint(24, 44)
    x, y = rng.randint(2, 62 - s), rng.randint(2, 62 - s)
    im = Image.new("RGB", SIZE, COLORS[bg])
    draw_shape(ImageDraw.Draw(im), shape, (x, y, x + s, y + s), COLORS[color])
    return {"id": rid, "task_name": "generation", "instruction": f"Draw a {color} {shape} on a {bg} background.",
            "context": "", "output": "<image>", "images": [], "output_images": [w.save(im, rid)]}


MAKERS = {"howto": howto, "storytelling": storytelling, "editing": editing, "vqa": vqa, "generation": generation}
FILES = {"howto": "howto.jsonl", "storytelling": "storytelling.jsonl", "editing": "editing.parquet",
         "vqa": "vqa.jsonl", "generation": "generation.json"}


def make_records(root: Path, domain: str, n: int, seed: int = 0, prefix: str = "") -> list[dict]:
    rng = random.Random(f"{seed}-{domain}")
    w = _Writer(root, domain)
    return [MAKERS[domain](rng, w, f"{prefix}{domain}-{i:05d}") for i in range(n)]


def write_sample(out_dir: str | Path, per_domain: int = 60, seed: int = 0, fmt: str = "native") -> dict[str, int]:
    """Write the sample set (``per_domain`` records in each of five domains); returns records per file.
    ``fmt``: native (our two shapes, as tabled above), or the same records as ``sharegpt`` or ``messages``
    conversations (formats.py), their parquet file with the images embedded as HF-datasets structs
    ``{"bytes", "path"}``: every format gives the same shards."""
    from .formats import CONVERSATIONS, to_conversation

    if fmt != "native" and fmt not in CONVERSATIONS:
        raise ValueError(f"format {fmt!r}: native, {', '.join(CONVERSATIONS)}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    counts = {}
    for domain, name in FILES.items():
        records = make_records(root, domain, per_domain, seed)
        if fmt != "native":
            records = [to_conversation(r, fmt) for r in records]
            if name.endswith(".parquet"):
                for r in records:
                    r["images"] = [{"bytes": (root / p).read_bytes(), "path": p} for p in r["images"]]
        path = root / name
        if name.endswith(".parquet"):
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(records), path, row_group_size=max(1, per_domain // 2))
        elif name.endswith(".json"):
            path.write_text(json.dumps(records, indent=1))
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in records))
        counts[name] = len(records)
    return counts
