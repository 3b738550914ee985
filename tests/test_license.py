"""The MIT LICENSE is in the repository and declared for the sdist and the
wheel (fast checks of the packaging metadata; tests/test_wheel.py, slow,
checks the built archives)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_license_file_is_mit():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 microgpt_c developers" in text
    assert "WITHOUT WARRANTY OF ANY KIND" in text


def test_pyproject_ships_the_license_in_the_wheel():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^license = "MIT"$', text, re.M)
    assert re.search(r'^license-files = \[[^\]]*"LICENSE"[^\]]*\]$', text, re.M)


def test_manifest_ships_the_license_in_the_sdist():
    lines = (ROOT / "MANIFEST.in").read_text(encoding="utf-8").splitlines()
    includes = [line.split()[1:] for line in lines if line.startswith("include ")]
    assert any("LICENSE" in names for names in includes)
