"""The shipped config and the README say what the code does.

etc/mfad.yaml shows every setting commented out at its default ("#key: value",
a hash directly before the key; explanations are "# text"), so removing those
hashes must give a file mfad accepts and that means exactly the built-in
defaults. The README names every setting, every `mfa` command and exit code,
and its first two commands are the ones CI runs.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import socket
from pathlib import Path

import pytest
import yaml

from mfa_cli.audit import audit
from mfa_cli.errors import EXIT_CODES
from mfa_cli.main import cli
from mfad import config
from mfad.policy import RULES, Action

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "etc" / "mfad.yaml"
README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"

# "#key" with the hash directly before it, at any indentation: a setting to uncomment.
SETTING = re.compile(r"^(\s*)#(?=[A-Za-z_])")
HOSTNAME_PLACEHOLDER = "<hostname>"


def uncommented(text: str) -> str:
    """The shipped file with every setting switched on, explanations left as comments."""
    return "\n".join(SETTING.sub(r"\1", line) for line in text.splitlines()) + "\n"


def shipped_keys(text: str) -> set[str]:
    """Dotted names of the settings the uncommented file gives values to."""
    keys = set()
    for key, value in yaml.safe_load(text).items():
        if key in config._SECTIONS and isinstance(value, dict):
            keys |= {f"{key}.{name}" for name in value}
        else:
            keys.add(key)
    return keys


def test_shipped_config_as_shipped_is_valid_and_means_the_defaults() -> None:
    """The file install.sh copies to /etc/mfad sets nothing (every setting is commented out),
    and mfad accepts it as its built-in defaults."""
    text = SHIPPED.read_text()

    assert yaml.safe_load(text) is None
    assert config.parse(text, str(SHIPPED)) == config.Config()


def test_every_setting_is_in_the_shipped_config_commented_out_at_its_default() -> None:
    """Uncommenting every "#key: value" line of etc/mfad.yaml gives a file that names each
    setting mfad knows, no other, and mfad reads it as exactly its built-in defaults (the
    issuer, whose default is the host name, is shown as a placeholder)."""
    text = uncommented(SHIPPED.read_text())

    assert shipped_keys(text) == set(config._SCHEMA)
    parsed = config.parse(text, f"{SHIPPED} uncommented")
    assert parsed.totp.issuer == HOSTNAME_PLACEHOLDER
    parsed = dataclasses.replace(
        parsed, totp=dataclasses.replace(parsed.totp, issuer=socket.gethostname())
    )
    assert parsed == config.Config()


def test_every_setting_is_named_in_the_readme() -> None:
    """Each setting appears in the README as `section.key` (or `key` at the top level)."""
    readme = README.read_text()

    missing = [key for key in config._SCHEMA if f"`{key}`" not in readme]

    assert missing == []


def _commands_of_first_shell_block(markdown: str) -> list[str]:
    block = re.search(r"```sh\n(.*?)```", markdown, re.S)
    assert block is not None, "the README has no ```sh block"
    lines = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def test_readme_starts_with_the_install_and_test_commands_ci_runs() -> None:
    """The README's first two commands install and test; CI runs the same test command,
    and every script command CI runs is one of those two."""
    install, test = _commands_of_first_shell_block(README.read_text())[:2]
    ci_commands = [
        line.strip()
        for line in CI.read_text().splitlines()
        if line.strip().startswith("bash scripts/")
    ]

    assert install == "bash scripts/install.sh"
    assert test == "bash scripts/test.sh"
    assert test in ci_commands
    assert set(ci_commands) <= {install, test}
    for command in (install, test):
        assert (ROOT / shlex.split(command)[1]).is_file()


@pytest.mark.parametrize("code", [int(m) for m in re.findall(r"^\s+(\d+)\s", EXIT_CODES, re.M)])
def test_every_exit_code_of_mfa_is_in_the_readme(code: int) -> None:
    """Each exit code `mfa --help` lists has a row in the README's table of exit codes."""
    assert re.search(rf"^\| {code} \|", README.read_text(), re.M)


def test_every_mfa_command_is_in_the_readme() -> None:
    """Each command `mfa --help` lists (and each `mfa audit` subcommand) is named in the
    README, so an administrator reading it learns of every one."""
    readme = README.read_text()
    names = [f"mfa {name}" for name in cli.commands]
    names += [f"mfa audit {name}" for name in audit.commands]

    assert [name for name in names if name not in readme] == []


def test_the_readme_precedence_table_is_the_one_policy_applies() -> None:
    """README's "Who must give a code" table lists exactly policy.RULES, in order, with the
    same words, result and recorded reason: the precedence is written down once in code
    and the documentation cannot drift from it."""
    words = {
        Action.SKIP: "skip",
        Action.REFUSE: "refused",
        Action.CODE: "code asked for",
        Action.ENROL: "must enrol",
    }
    readme = (ROOT / "README.md").read_text()
    table = readme.split("| # | rule | result | reason recorded |", 1)[1].split("\n\n", 1)[0]
    rows = [line.split(" | ") for line in table.strip().splitlines()[1:]]
    documented = [(row[1], row[2], row[3].strip(" |`")) for row in rows]
    assert documented == [(r.when, words[r.action], r.reason) for r in RULES]


def test_the_config_reference_is_the_one_the_schema_and_shipped_file_give() -> None:
    """docs/config.md is exactly what scripts/config_reference.py makes of the schema and
    etc/mfad.yaml (run it again after changing either), and every setting in it says what
    it takes, its default and what it does."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "config_reference", ROOT / "scripts" / "config_reference.py"
    )
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert (ROOT / "docs" / "config.md").read_text() == generator.reference(), (
        "docs/config.md is stale: .venv/bin/python scripts/config_reference.py > docs/config.md"
    )
    explained = generator.explanations(SHIPPED.read_text())
    assert [key for key in config._SCHEMA if not explained.get(key, ([], ""))[0]] == []
    assert [
        key for key, (_, check) in config._SCHEMA.items() if generator.takes(check) == "any value"
    ] == []
