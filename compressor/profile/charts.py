"""PNG pictures of profiles (pillow, as the prune and search reports draw theirs): time per layer as
horizontal bars, and accuracy against latency for the models of a run."""
from __future__ import annotations

from pathlib import Path


def _save(image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    image.save(tmp)
    tmp.replace(path)


def layer_chart(layers: list[dict], path: Path, title: str, top: int = 30) -> None:
    """The `top` slowest layers, slowest first: one bar each, its ms per inference and share."""
    from PIL import Image, ImageDraw

    rows = sorted(layers, key=lambda r: -r["ms"])[:top]
    total = sum(r["ms"] for r in layers) or 1.0
    longest = max((r["ms"] for r in rows), default=0.0) or 1.0
    bar_h, label_w, bar_w, pad = 16, 380, 400, 8
    image = Image.new("RGB", (label_w + bar_w + 170, pad * 3 + 20 + bar_h * max(1, len(rows))), "white")
    draw = ImageDraw.Draw(image)
    draw.text((pad, pad), title, fill="black")
    for i, r in enumerate(rows):
        y = pad * 2 + 20 + i * bar_h
        draw.text((pad, y + 2), f"{r['op']} {r['name']}"[:60], fill="black")
        width = max(1, int(bar_w * r["ms"] / longest))
        draw.rectangle([label_w, y + 2, label_w + width, y + bar_h - 2], fill=(70, 130, 180))
        draw.text((label_w + width + pad, y + 2), f"{r['ms']:.4f} ms ({r['ms'] / total:.0%})", fill="black")
    _save(image, path)


def tradeoff_chart(points: list[dict], path: Path, title: str, x_label: str, metric: str) -> None:
    """One dot per model ({"label", "time_vs_teacher", "metric"}), time on x (from 0), the metric on
    y, joined in the order given (teacher, intermediate, final); the last one red."""
    from PIL import Image, ImageDraw

    width, height, pad = 720, 420, 60
    xs, ys = [p["time_vs_teacher"] for p in points], [p["metric"] for p in points]
    x1, y0, y1 = max(xs) * 1.15, min(ys) - 0.01, max(ys) + 0.01
    sx, sy = (width - 2 * pad) / (x1 or 1), (height - 2 * pad) / ((y1 - y0) or 1)

    def at(p: dict) -> tuple[float, float]:
        return pad + p["time_vs_teacher"] * sx, height - pad - (p["metric"] - y0) * sy

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((pad, 10), title, fill="black")
    draw.line([(pad, height - pad), (width - pad, height - pad)], fill="black")
    draw.line([(pad, pad), (pad, height - pad)], fill="black")
    draw.text((pad, height - pad + 22), x_label, fill="black")
    draw.text((pad, height - pad + 4), "0", fill="black")
    draw.text((width - pad - 40, height - pad + 4), f"{x1:.3g}x", fill="black")
    draw.text((4, pad - 16), f"{metric} {y1:.4g}", fill="black")
    draw.text((4, height - pad - 12), f"{y0:.4g}", fill="black")
    line = [at(p) for p in points]
    if len(line) > 1:
        draw.line(line, fill=(170, 170, 170), width=1)
    for i, (p, (x, y)) in enumerate(zip(points, line)):
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(214, 39, 40) if i == len(points) - 1 else (70, 130, 180))
        draw.text((x + 6, y - 14), f"{p['label']} ({p['time_vs_teacher']:.2f}x, {p['metric']:.4g})", fill="black")
    _save(image, path)
