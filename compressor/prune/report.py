"""The prune pass's report: what each unit group kept, as rows and as a PNG bar chart."""
from __future__ import annotations

from pathlib import Path

import torch

from .structure import Structure


def kept_table(structure: Structure, keep: dict[str, torch.Tensor]) -> list[dict]:
    return [{"group": g.name, "kind": g.kind, "layer": g.layer, "size": g.size, "kept": int(keep[g.name].sum())}
            for g in structure.groups]


def kept_chart(rows: list[dict], path: Path, title: str) -> None:
    """Horizontal bars, one per group: the kept units over the group's size."""
    from PIL import Image, ImageDraw

    bar_h, label_w, bar_w, pad = 16, 360, 420, 8
    height = pad * 3 + 20 + bar_h * len(rows)
    image = Image.new("RGB", (label_w + bar_w + 120, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((pad, pad), title, fill="black")
    colors = {"channels": (70, 130, 180), "heads": (214, 96, 77), "ffn_dims": (120, 170, 90), "hidden": (150, 110, 190)}
    for i, r in enumerate(rows):
        y = pad * 2 + 20 + i * bar_h
        draw.text((pad, y + 2), f"{r['group'][:52]} ({r['kind']})", fill="black")
        draw.rectangle([label_w, y + 2, label_w + bar_w, y + bar_h - 2], outline=(200, 200, 200))
        width = int(bar_w * r["kept"] / max(1, r["size"]))
        if width:
            draw.rectangle([label_w, y + 2, label_w + width, y + bar_h - 2], fill=colors.get(r["kind"], (128, 128, 128)))
        draw.text((label_w + bar_w + pad, y + 2), f"{r['kept']}/{r['size']}", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    image.save(tmp)
    tmp.replace(path)
