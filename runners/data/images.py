"""Image datasets of the vision-language tasks: the shipped shapes set the project draws
itself (shapes, counts, colours, with exact answers and captions) and a user's JSONL of
image path + question (+ answer) or image + caption.

The shipped set is `data/vlm.jsonl`, one record per image: what to draw (shape, colour,
count, a seed for the placement), one question with its exact answer, and a caption. The
images are drawn with PIL on first use into the model cache (`<data dir>/cache/vlm-images/`),
the same pixels on every machine (`python -m runners.data.images` rewrites the manifest).

A user file is JSONL, one object a line: `{"image": "cat.png", "question": "...", "answer":
"..."}` for vqa, `{"image": "cat.png", "caption": "..."}` for captioning (answer and caption
optional: without them the run is measured but not scored). A relative image path is read
from the file's directory. A malformed line is refused with its number.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import efficientllm_data

from runners.data import datafile
from runners.errors import BadInput

MANIFEST = "vlm.jsonl"
SHIPPED = f"shipped:{MANIFEST}"
IMAGE_SIDE = 224
"""Pixels per side of a shipped image."""
CACHE_DIR = "vlm-images"
CAPTION_PROMPT = "Describe the image in a few words."
"""The prompt of the captioning task."""
SHORT_ANSWER = " Answer with one word."
"""Appended to a VQA question, so exact match has a chance on real weights."""
MAX_DATASET_BYTES = 16 << 20

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220),
           "yellow": (235, 200, 20)}
COUNTS = ("one", "two", "three", "four")


@dataclass(frozen=True, slots=True)
class Item:
    """One image with its question and references."""

    image: str
    """Path of the image file (shipped ones: in the home cache once drawn)."""
    question: str | None
    answer: str | None
    """The exact answer of `question`; None: not scored."""
    caption: str | None
    """A reference caption; None: not scored."""
    line: int
    """Line of the record in its JSONL file."""
    draw: dict[str, Any] | None = None
    """What to draw (shipped set): shape, colour, count, seed."""


@dataclass(frozen=True, slots=True)
class ImageSet:
    source: str
    """`shipped:vlm.jsonl` or the user file's absolute path."""
    items: tuple[Item, ...]


# -- the shipped set --------------------------------------------------------------------------

def manifest_records() -> list[dict[str, Any]]:
    """The shipped set's records, generated: every shape x colour x count 1-3, questions
    turning over count, colour and shape."""
    records = []
    kinds = ("count", "colour", "shape")
    i = 0
    for shape in SHAPES:
        for colour in COLOURS:
            for count in (1, 2, 3):
                kind = kinds[i % 3]
                noun = shape if count == 1 else shape + "s"
                question, answer = {
                    "count": ("How many shapes are in the image?", str(count)),
                    "colour": ("What colour are the shapes?", colour),
                    "shape": ("What shape is shown?", shape),
                }[kind]
                records.append({
                    "id": f"shapes-{i:03d}", "image": f"shapes-{i:03d}.png",
                    "draw": {"shape": shape, "colour": colour, "count": count, "seed": 1000 + i},
                    "question": question, "answer": answer,
                    "caption": f"{COUNTS[count - 1]} {colour} {noun}"})
                i += 1
    return records


def draw(spec: dict[str, Any], side: int = IMAGE_SIDE) -> Any:
    """The image a shipped record describes: `count` shapes of one colour on white, placed
    in distinct cells of a 2 x 2 grid by the record's seed."""
    from PIL import Image, ImageDraw

    rng = random.Random(int(spec["seed"]))
    image = Image.new("RGB", (side, side), (255, 255, 255))
    pen = ImageDraw.Draw(image)
    cell = side // 2
    colour = COLOURS[spec["colour"]]
    for k in rng.sample(range(4), int(spec["count"])):
        x0, y0 = (k % 2) * cell, (k // 2) * cell
        r = rng.randint(cell // 4, cell * 3 // 8)
        cx = x0 + cell // 2 + rng.randint(-(cell // 2 - r), cell // 2 - r)
        cy = y0 + cell // 2 + rng.randint(-(cell // 2 - r), cell // 2 - r)
        box = (cx - r, cy - r, cx + r, cy + r)
        if spec["shape"] == "circle":
            pen.ellipse(box, fill=colour)
        elif spec["shape"] == "square":
            pen.rectangle(box, fill=colour)
        else:
            pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return image


def _shipped(home: Path | None) -> ImageSet:
    from runners.models.weights import cache_root

    try:
        cache = cache_root(home) / CACHE_DIR
    except ValueError:  # no data dir: the user's cache
        cache = Path.home() / ".cache" / "efficientllm" / CACHE_DIR
    items = []
    for number, line in enumerate(efficientllm_data.read_text(MANIFEST).splitlines(), 1):
        rec = json.loads(line)
        path = cache / rec["image"]
        if not path.is_file():
            cache.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            draw(rec["draw"]).save(tmp, format="PNG")
            tmp.replace(path)
        items.append(Item(str(path), rec["question"], rec["answer"], rec["caption"], number,
                          rec["draw"]))
    return ImageSet(SHIPPED, tuple(items))


# -- a user's file ----------------------------------------------------------------------------

def _item(line: str, number: int, label: str, base: Path, check_image: bool) -> Item:
    where = f"dataset {label!r}: line {number}"
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise BadInput(f"{where}: not JSON ({e.msg})") from None
    if not isinstance(rec, dict):
        raise BadInput(f"{where}: expected an object with image and question or caption")
    image = rec.get("image")
    if not isinstance(image, str) or not image.strip():
        raise BadInput(f"{where}: needs an image path (\"image\": \"path.png\")")
    fields = {k: rec.get(k) for k in ("question", "answer", "caption")}
    for key, value in fields.items():
        if value is not None and not isinstance(value, str | int | float):
            raise BadInput(f"{where}: {key} must be text")
    if fields["question"] is None and fields["caption"] is None:
        raise BadInput(f"{where}: needs a question (vqa) or a caption (captioning)")
    path = Path(image).expanduser()
    path = path if path.is_absolute() else base / path
    if check_image and not path.is_file():
        raise BadInput(f"{where}: image {image!r} is not a readable file")
    text = {k: None if v is None else str(v) for k, v in fields.items()}
    return Item(str(path), text["question"], text["answer"], text["caption"], number)


def check_head(dataset: str) -> None:
    """The launcher's cheap look: the file's first lines are image records whose images
    exist; BadInput names the first bad line."""
    if dataset == SHIPPED:
        return
    path = datafile.existing(dataset, MAX_DATASET_BYTES)
    for number, line in datafile.head_lines(path, dataset):
        _item(line, number, dataset, path.parent, check_image=True)


def load(dataset: str | None, home: Path | None = None) -> ImageSet:
    """The shipped shapes set (dataset None or `shipped:vlm.jsonl`) or a user's JSONL."""
    if dataset is None or dataset == SHIPPED:
        return _shipped(home)
    path = datafile.existing(dataset, MAX_DATASET_BYTES)
    items = [_item(line, number, dataset, path.parent, check_image=True)
             for number, line in datafile.head_lines(path, dataset, limit=1 << 30)]
    return ImageSet(str(path.resolve()), tuple(items))


def for_task(images: ImageSet, task: str) -> tuple[Item, ...]:
    """The items a task can run: vqa needs a question; captioning takes every image.
    BadInput when none fits."""
    items = tuple(i for i in images.items if task != "vqa" or i.question is not None)
    if not items:
        raise BadInput(f"dataset {images.source!r} has no records with a question for vqa")
    return items


def prompt(item: Item, task: str) -> str:
    """The text prompt of an item under `task`."""
    if task == "vqa":
        return f"{item.question}{SHORT_ANSWER}"
    return CAPTION_PROMPT


def open_images(items: Sequence[Item], source: str) -> list[Any]:
    """The items' images as RGB PIL images; BadInput naming the line of one that is not
    an image."""
    from PIL import Image, UnidentifiedImageError

    out = []
    for item in items:
        try:
            with Image.open(item.image) as im:
                out.append(im.convert("RGB"))
        except (OSError, UnidentifiedImageError) as e:
            raise BadInput(f"dataset {source!r}: line {item.line}: cannot read image "
                           f"{item.image!r} ({type(e).__name__})") from None
    return out


def normalise(text: str) -> str:
    """An answer as exact match compares it: lower case, no surrounding punctuation or
    articles, number words as digits."""
    words = [w.strip(".,!?;:'\"()") for w in text.lower().split()]
    words = [w for w in words if w and w not in ("a", "an", "the")]
    digits = {w: str(i + 1) for i, w in enumerate(COUNTS)}
    return " ".join(digits.get(w, w) for w in words)


def exact_match(prediction: str, answer: str) -> bool:
    """VQA exact match: the normalised prediction equals the normalised answer, or its first
    word does (a model that answers and goes on talking is still right)."""
    pred, want = normalise(prediction), normalise(answer)
    return pred == want or (bool(pred) and pred.split()[0] == want)


if __name__ == "__main__":
    target = Path(__file__).resolve().parents[2] / "data" / MANIFEST
    target.write_text("".join(json.dumps(r) + "\n" for r in manifest_records()),
                      encoding="utf-8")
    print(f"wrote {target}")
