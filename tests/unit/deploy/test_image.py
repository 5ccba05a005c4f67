"""The image's build inputs: it installs the fast and eval extras at the pinned versions, every
pin meets pyproject.toml's range, and the license is the one the metadata names."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
CONSTRAINTS = ROOT / "deploy" / "docker" / "constraints.txt"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: The extras the image installs besides the runtime dependencies.
IMAGE_EXTRAS = ("fast", "eval")


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version and " " not in line, f"not a pin: {line!r}"
        key = canonicalize_name(name)
        assert key not in found, f"pinned twice: {name}"
        found[key] = version
    return found


def test_the_image_installs_the_extras_at_the_pinned_versions() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^COPY [^\n]*deploy/docker/constraints\.txt", text, re.MULTILINE)
    assert re.search(r"^COPY [^\n]*\bLICENSE\b", text, re.MULTILINE)  # license-files needs it
    extras = ",".join(IMAGE_EXTRAS)
    assert f'pip install --constraint constraints.txt ".[{extras}]"' in text
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert {"!LICENSE", "!deploy/docker/constraints.txt"} <= set(ignored)


def test_every_dependency_of_the_image_is_pinned_within_its_range() -> None:
    project = PYPROJECT["project"]
    wanted = list(project["dependencies"])
    for extra in IMAGE_EXTRAS:
        wanted += project["optional-dependencies"][extra]
    pinned = pins()
    for raw in wanted:
        req = Requirement(raw)
        version = pinned.get(canonicalize_name(req.name))
        assert version is not None, f"{req.name} is not pinned"
        assert req.specifier.contains(version, prereleases=True), f"{req.name}=={version}: {req}"
    # The pins are the whole environment (transitive dependencies too), not just these.
    assert len(pinned) > len(wanted)


def test_the_eval_extra_holds_what_the_plots_hint_names() -> None:
    extra = PYPROJECT["project"]["optional-dependencies"]["eval"]
    assert "matplotlib" in [Requirement(r).name for r in extra]
    hint = (ROOT / "consumer" / "tools" / "plots.py").read_text()
    assert "modstream[eval]" in hint


def test_the_license_is_apache_2_0_as_the_metadata_says() -> None:
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    requires = PYPROJECT["build-system"]["requires"]
    setuptools = next(Requirement(r) for r in requires if r.startswith("setuptools"))
    assert not setuptools.specifier.contains("76.9")  # an SPDX license string needs 77
