"""The Pareto front of the scored candidates (higher score, lower cost), as rows and a PNG plot."""
from __future__ import annotations

from pathlib import Path

from .outcome import Candidate


def pareto_front(candidates: list[Candidate], cost: str) -> list[Candidate]:
    """The candidates no other beats on both score and `cost` (a Candidate field), cheapest first."""
    known = sorted((c for c in candidates if getattr(c, cost) is not None), key=lambda c: (getattr(c, cost), -c.score))
    front, best = [], float("-inf")
    for c in known:
        if c.score > best:
            front.append(c)
            best = c.score
    return front


def plot_front(candidates: list[Candidate], front: list[Candidate], chosen: Candidate, cost: str, label: str,
               path: Path, title: str) -> None:
    """Every candidate grey, the front blue and joined, the chosen one red; cost on x, score on y."""
    from PIL import Image, ImageDraw

    width, height, pad = 640, 420, 50
    points = [c for c in candidates if getattr(c, cost) is not None]
    xs, ys = [float(getattr(c, cost)) for c in points], [c.score for c in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = (width - 2 * pad) / ((x1 - x0) or 1)
    sy = (height - 2 * pad) / ((y1 - y0) or 1)

    def at(c: Candidate) -> tuple[float, float]:
        return pad + (float(getattr(c, cost)) - x0) * sx, height - pad - (c.score - y0) * sy

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((pad, 10), title, fill="black")
    draw.line([(pad, height - pad), (width - pad, height - pad)], fill="black")
    draw.line([(pad, pad), (pad, height - pad)], fill="black")
    draw.text((width // 2 - 40, height - pad + 18), label, fill="black")
    draw.text((pad, height - pad + 4), f"{x0:.3g}", fill="black")
    draw.text((width - pad - 40, height - pad + 4), f"{x1:.3g}", fill="black")
    draw.text((4, pad - 14), f"score {y1:.3g}", fill="black")
    draw.text((4, height - pad - 12), f"{y0:.3g}", fill="black")
    for c in points:
        x, y = at(c)
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(170, 170, 170))
    line = [at(c) for c in front]
    if len(line) > 1:
        draw.line(line, fill=(70, 130, 180), width=2)
    for x, y in line:
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(70, 130, 180))
    if getattr(chosen, cost) is not None:
        x, y = at(chosen)
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], outline=(214, 39, 40), width=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    image.save(tmp)
    tmp.replace(path)
