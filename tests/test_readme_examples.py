"""The README's runnable examples run as written."""

from __future__ import annotations

import pathlib

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def readme_block(name: str) -> str:
    """The python block that follows `<!-- readme-example: NAME -->` in the README."""
    marker = f"<!-- readme-example: {name} -->\n```python\n"
    text = README.read_text()
    if marker not in text:
        pytest.fail(f"README.md has no example marked {name!r}")
    return text.split(marker, 1)[1].split("```", 1)[0]


def test_sample_inside_the_users_jit(capsys):
    exec(compile(readme_block("sample-in-jit"), "README.md:sample-in-jit", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("(4, 16) ["), printed
