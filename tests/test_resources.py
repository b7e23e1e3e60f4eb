"""Every bundled resource says where it comes from, with public sources only: a reader of
the wheel or of a fresh clone can follow each one (a URL, a paper), never a path on the
machine it was written on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

RESOURCES = Path(__file__).resolve().parents[1] / "pixelplay_lib" / "resources"
FILES = sorted(p.name for p in RESOURCES.iterdir() if p.is_file() and p.name != "PROVENANCE.md")
# Files whose data format has no comment syntax: their provenance is in PROVENANCE.md.
NO_HEADER = {"awa2_class_attributes.csv", "awa2_predicates.txt"}
# A local path: "/work/...", "~/...", "file://", a "shared/reference" folder, "C:\".
LOCAL_PATH = re.compile(r"(^|[\s(\"'`])(/[A-Za-z]|~/)|file://|shared/reference|[A-Z]:\\")


def provenance_text(name: str) -> str:
    """The lines that say where `name` comes from: its comment header, or for a file
    without one, PROVENANCE.md."""
    if name in NO_HEADER:
        return (RESOURCES / "PROVENANCE.md").read_text(encoding="utf-8")
    lines = (RESOURCES / name).read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines if line.startswith("#"))


def test_every_resource_is_in_the_provenance_index() -> None:
    index = (RESOURCES / "PROVENANCE.md").read_text(encoding="utf-8")
    assert len(FILES) >= 5
    for name in FILES:
        assert f"| `{name}` |" in index, f"PROVENANCE.md does not list {name}"


@pytest.mark.parametrize("name", [*FILES, "PROVENANCE.md"])
def test_provenance_names_public_sources_only(name: str) -> None:
    text = provenance_text(name) if name != "PROVENANCE.md" else (
        RESOURCES / name).read_text(encoding="utf-8")
    assert "provenance" in text.lower(), f"{name}: no provenance lines"
    urls = re.findall(r"[\w+.-]+://[^\s)]+", text)
    assert urls and all(u.startswith("https://") for u in urls), (name, urls)
    local = [m.group(0) for m in LOCAL_PATH.finditer(text)]
    assert not local, f"{name}: provenance points at local paths {local}"
