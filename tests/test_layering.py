"""Who may import whom: the wire package is shared, the daemon and the CLI are apart.

The rule, read from the source (every import, at any depth, ``import`` and
``from ... import`` alike, relative ones resolved):

* ``mfa_cli`` (cli/mfa_cli) imports the wire package ``mfa_wire``, its own
  modules, click and the standard library, and nothing from ``mfad``: what the
  CLI needs of the daemon comes over the control socket (docs/protocol.md), and
  what both ends must agree on lives in ``mfa_wire``. The CLI then cannot come
  to depend on the daemon's internals, nor drift from its wire format.
* ``mfa_wire`` (shared/mfa_wire) imports only the standard library and itself:
  nothing from ``mfad`` or ``mfa_cli``, so both can import it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / "cli" / "mfa_cli"
WIRE = ROOT / "shared" / "mfa_wire"


def imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, module) for every import in ``path``, a module of ``package``; a relative
    import is resolved against the package (``from . import x`` is ``package.x``)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                if node.module:
                    found.append((node.lineno, f"{base}.{node.module}"))
                else:  # from . import x: x is a module of the package (or a name in it)
                    found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module or ""))
    return found


def top(module: str) -> str:
    return module.split(".")[0]


def sources(directory: Path) -> list[Path]:
    files = sorted(directory.rglob("*.py"))
    assert files, f"no Python files under {directory}"
    return files


@pytest.mark.parametrize("path", sources(CLI), ids=lambda p: p.name)
def test_the_cli_imports_nothing_from_the_daemon(path: Path) -> None:
    """No module of mfa_cli imports mfad or a submodule of it; the wire package is shared."""
    bad = [
        f"{path.name}:{line}: {module}"
        for line, module in imported_modules(path, "mfa_cli")
        if top(module) == "mfad"
    ]
    assert bad == []


@pytest.mark.parametrize("path", sources(WIRE), ids=lambda p: p.name)
def test_the_wire_package_imports_only_the_standard_library(path: Path) -> None:
    """mfa_wire imports itself and the standard library: not mfad, not mfa_cli, nothing
    installed beside them."""
    bad = [
        f"{path.name}:{line}: {module}"
        for line, module in imported_modules(path, "mfa_wire")
        if top(module) not in {"mfa_wire", "__future__"}
        and top(module) not in sys.stdlib_module_names
    ]
    assert bad == []


def test_the_import_reader_sees_every_form_of_import(tmp_path: Path) -> None:
    """The rule's reader itself: plain, dotted, from-, nested and relative imports."""
    source = tmp_path / "sample.py"
    source.write_text(
        "import os, mfad.store\n"
        "from mfad import errors\n"
        "def f():\n"
        "    from mfad.qrtext import render_qr\n"
        "from . import display\n"
        "from .client import DaemonClient\n"
    )
    assert [m for _, m in imported_modules(source, "mfa_cli")] == [
        "os",
        "mfad.store",
        "mfad",
        "mfa_cli.display",
        "mfa_cli.client",
        "mfad.qrtext",
    ]
