"""Several pictures as one, for model families that take a single picture per prompt.

IconQA's image-choice questions (the question's picture and one per choice), and any record with
several pictures, reach a family such as LLaVA-1.5 tiled: the pictures side by side in one row,
each scaled to a common height, each under a strip with its number (1, 2, 3... in the sample's
order, the numbers questions and options use: ``image 2``). Families whose processors take
several pictures (``ModelFamily.multi_image``) get them one by one unless ``data.multi_image=tile``.
"""

from __future__ import annotations

from PIL import Image, ImageDraw

MODES = ("auto", "tile")  # auto: several pictures where the family takes them, tiled where not
GAP = 4  # pixels between panels
LABEL_HEIGHT = 12  # the strip each panel's number is written in


def tiled(pictures: list[Image.Image], height: int | None = None) -> Image.Image:
    """``pictures`` in one row, each scaled to ``height`` (default: the tallest one's) and numbered
    from 1 in a strip above it, on white."""
    height = height or max(p.height for p in pictures)
    panels = [p.resize((max(1, round(p.width * height / p.height)), height)) for p in pictures]
    width = sum(p.width for p in panels) + GAP * (len(panels) - 1)
    out = Image.new("RGB", (width, height + LABEL_HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    x = 0
    for number, panel in enumerate(panels, start=1):
        draw.text((x + 2, 0), str(number), fill=(0, 0, 0))
        out.paste(panel, (x, LABEL_HEIGHT))
        x += panel.width + GAP
    return out
