"""The text QR code (mfad.qrtext.render_qr) as a phone sees it on a terminal.

Each rendering is drawn back into a picture the way a terminal shows it and
decoded by zbarimg, so these tests check what a scanner reads, not how the
matrix was built.
"""

from __future__ import annotations

import pyotp
import pytest
import qrimage

from mfad.qrtext import MAX_COLUMNS, QUIET_ZONE, render_qr

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"

URIS = {
    "typical": pyotp.TOTP(SECRET).provisioning_uri(name="alice", issuer_name="pam-mfa db1"),
    "non-ascii-and-spaces": pyotp.TOTP(SECRET).provisioning_uri(
        name="José Müller@exämple.com", issuer_name="Société Générale — IT Ops"
    ),
    "long": pyotp.TOTP(SECRET, digits=8, interval=60).provisioning_uri(
        name="ünïcødé user with a rather long account name@host-with-a-long-name.example.org",
        issuer_name="Ополчение Ñandú 東京 operations, building 7 / floor 3",
    ),
}


@pytest.mark.parametrize("invert", [False, True], ids=["dark-terminal", "light-terminal"])
@pytest.mark.parametrize("uri", URIS.values(), ids=URIS.keys())
def test_rendered_uri_decodes_back_exactly(uri: str, invert: bool) -> None:
    """A scanner reads back exactly the URI that was rendered, in the polarity it was drawn for.

    The default is for light text on a dark background; ``invert`` for dark on light.
    """
    text = render_qr(uri, invert=invert)

    assert qrimage.decode(text, light_background=invert) == uri


@pytest.mark.parametrize("uri", URIS.values(), ids=URIS.keys())
def test_rendering_is_plain_text_of_matrix_width(uri: str) -> None:
    """The code is spaces and half blocks only (no ESC, which OpenSSH strips), every line
    as wide as the bordered matrix, two module rows per line, within 80 columns."""
    for invert in (False, True):
        text = render_qr(uri, invert=invert)
        lines = text.split("\n")

        assert "\x1b" not in text
        assert set(text) <= {" ", "▀", "▄", "█", "\n"}
        width = len(lines[0])
        assert all(len(line) == width for line in lines)
        assert len(lines) == (width + 1) // 2
        assert width <= MAX_COLUMNS


def test_dark_terminal_quiet_zone_is_drawn() -> None:
    """On a dark terminal the quiet zone is drawn as light blocks, four modules wide, because
    the terminal background around it is dark and a scanner needs the light margin."""
    lines = render_qr(URIS["typical"]).split("\n")

    width = len(lines[0])
    quiet = "█" * QUIET_ZONE

    assert lines[0] == lines[1] == "█" * width
    assert all(line.startswith(quiet) and line.endswith(quiet) for line in lines[:-1])
    assert lines[-2] == "█" * width


def test_invert_swaps_ink_and_background() -> None:
    """``invert`` draws a block exactly where the default draws a space (except the half line
    below an odd-sized code, which is terminal background in both)."""
    swap = str.maketrans({"█": " ", " ": "█", "▀": "▄", "▄": "▀"})
    normal = render_qr(URIS["typical"]).split("\n")
    inverted = render_qr(URIS["typical"], invert=True).split("\n")

    assert [line.translate(swap) for line in normal[:-1]] == inverted[:-1]
    # The last line carries only its upper module row.
    assert set(normal[-1]) <= {"▀", " "} and set(inverted[-1]) <= {"▀", " "}
    assert all((a == "▀") != (b == "▀") for a, b in zip(normal[-1], inverted[-1], strict=True))
