"""QR codes as plain text, for terminals reached over SSH.

OpenSSH strips escape sequences from PAM messages, so colours and cursor moves
are out: the code is drawn with the space and three block characters only, two
module rows per text line (``▀`` upper, ``▄`` lower, ``█`` both, space neither).

Polarity: the default assumes light text on a dark background, the usual SSH
terminal, so a *light* module (including the quiet zone) is a block and a dark
module is a space. ``invert=True`` is for dark-on-light terminals. A scanner
needs the light quiet zone around the code, which is why it is drawn, not left
to the terminal background.
"""

from __future__ import annotations

import qrcode
import qrcode.constants

MAX_COLUMNS = 80
"""The code should fit a classic terminal; the border shrinks before that is exceeded."""

QUIET_ZONE = 4
"""ISO/IEC 18004 asks for four modules of quiet zone."""

MIN_QUIET_ZONE = 2
"""Phone scanners still read a code with two; below that they start to fail."""

_BLOCKS = {
    (False, False): " ",
    (True, False): "\u2580",  # ▀ upper half
    (False, True): "\u2584",  # ▄ lower half
    (True, True): "\u2588",  # █ full block
}


def _matrix(uri: str) -> list[list[bool]]:
    """The module matrix without border, True for a dark module.

    Level M survives a smudged screen better; level L is the fallback that
    keeps long URIs (long issuer or account names) within MAX_COLUMNS.
    """
    levels = (qrcode.constants.ERROR_CORRECT_M, qrcode.constants.ERROR_CORRECT_L)
    matrix: list[list[bool]] = []
    for level in levels:
        code = qrcode.QRCode(version=None, error_correction=level, border=0)
        code.add_data(uri.encode("utf-8"))
        code.make(fit=True)
        matrix = [[bool(module) for module in row] for row in code.get_matrix()]
        if len(matrix) + 2 * QUIET_ZONE <= MAX_COLUMNS:
            break
    return matrix


def render_qr(uri: str, invert: bool = False) -> str:
    """Render ``uri`` as a QR code made of Unicode half blocks, lines joined by newlines.

    Every line has the same width (the matrix plus its quiet zone); there is no
    trailing newline and no escape sequence.
    """
    matrix = _matrix(uri)
    size = len(matrix)
    border = max(MIN_QUIET_ZONE, min(QUIET_ZONE, (MAX_COLUMNS - size) // 2))
    width = size + 2 * border

    def drawn(row: int, col: int) -> bool:
        """Whether the module at (row, col) of the bordered code gets ink (a block)."""
        if not (0 <= row < width):
            # The half line below an odd-sized code is terminal background, never ink.
            return False
        r, c = row - border, col - border
        dark = 0 <= r < size and 0 <= c < size and matrix[r][c]
        return dark if invert else not dark

    lines = []
    for top in range(0, width, 2):
        lines.append("".join(_BLOCKS[drawn(top, col), drawn(top + 1, col)] for col in range(width)))
    return "\n".join(lines)
