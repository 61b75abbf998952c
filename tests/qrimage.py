"""Turn a QR code captured as terminal text back into an image, and decode it with zbarimg.

This plays the part of the terminal and of the phone: each character cell is
one module wide and two modules high, a glyph's ink is the terminal's
foreground colour and everything else its background. The decoder is Debian's
zbarimg (zbar-tools), an implementation independent of the one that drew the code.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from PIL import Image

QR_CHARS = frozenset(" \u2580\u2584\u2588")
INK_CHARS = frozenset("\u2580\u2584\u2588")

# Which halves of a cell each glyph inks: (upper, lower).
_HALVES = {
    " ": (False, False),
    "\u2580": (True, False),
    "\u2584": (False, True),
    "\u2588": (True, True),
}

DARK = 0
LIGHT = 255


def extract_qr(text: str) -> list[str]:
    """The lines of ``text`` that draw the QR code: the longest run of block-character lines.

    Blank lines at the edges are left out; they are terminal background either
    way and the image gets a margin of background around the code.
    """
    best: list[str] = []
    run: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line and set(line) <= QR_CHARS and set(line) & INK_CHARS:
            run.append(line)
            continue
        if line and set(line) <= QR_CHARS:
            # A line of spaces inside the code (inverted quiet zone or a blank row).
            if run:
                run.append(line)
            continue
        while run and not set(run[-1]) & INK_CHARS:
            run.pop()
        if len(run) > len(best):
            best = run
        run = []
    if not best:
        raise ValueError("no QR code drawn in block characters found in the text")
    return best


def to_image(lines: list[str], light_background: bool = False, scale: int = 4) -> Image.Image:
    """Draw the lines as a terminal would: ink in the foreground colour, ``scale`` px a module.

    ``light_background=False`` is light text on a dark background.
    """
    ink, paper = (DARK, LIGHT) if light_background else (LIGHT, DARK)
    margin = 4  # modules of terminal background around the text, as on a screen
    columns = max(len(line) for line in lines)
    width = (columns + 2 * margin) * scale
    height = (2 * len(lines) + 2 * margin) * scale
    image = Image.new("L", (width, height), paper)
    for y, line in enumerate(lines):
        for x, char in enumerate(line):
            for half, inked in enumerate(_HALVES[char]):
                if inked:
                    left = (margin + x) * scale
                    top = (margin + 2 * y + half) * scale
                    image.paste(ink, (left, top, left + scale, top + scale))
    return image


def decode(text: str, light_background: bool = False) -> str:
    """Decode the QR code drawn in ``text`` as zbarimg reads it from the terminal's picture."""
    image = to_image(extract_qr(text), light_background=light_background)
    with tempfile.TemporaryDirectory(prefix="qrimage-") as tmp:
        path = Path(tmp) / "qr.png"
        image.save(path)
        result = subprocess.run(
            ["zbarimg", "--raw", "-q", str(path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    if result.returncode != 0:
        raise ValueError(f"zbarimg could not decode the code (exit {result.returncode})")
    return result.stdout.removesuffix("\n")
