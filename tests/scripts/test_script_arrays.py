"""scripts/*.sh run under ``set -u``, where bash older than 4.4 (CentOS 7 ships 4.2) takes the expansion of an
array with no elements, ``"${A[@]}"`` or ``${A[*]}``, for an unbound variable and stops the script. Every array
expansion is written ``${A[@]+"${A[@]}"}`` (or ``${A[*]+${A[*]}}``), which every bash expands to nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUARDED = re.compile(r'\$\{(\w+)\[([@*])\]\+"?\$\{\1\[\2\]\}"?\}')
EXPANSION = re.compile(r"\$\{\w+\[[@*]\]\}")


@pytest.mark.parametrize("script", sorted((ROOT / "scripts").glob("*.sh")), ids=lambda p: p.name)
def test_array_expansions_survive_an_empty_array_on_old_bash(script: Path) -> None:
    code = [line for line in script.read_text().splitlines() if not line.lstrip().startswith("#")]
    bare = [line.strip() for line in code if EXPANSION.search(GUARDED.sub("", line))]
    assert not bare, f"{script.name}: unguarded array expansion in {bare}"
