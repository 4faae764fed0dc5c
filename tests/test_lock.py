"""The lock (requirements.lock) that `make setup` installs from: complete, exact, and within
the ranges pyproject.toml declares; in the venv `make setup` built, what is installed."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def _lock() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and re.fullmatch(r"[A-Za-z0-9_.\-]+", name) and version, line
        pins[canonicalize_name(name)] = version
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in ("dev", "train", "ray"):
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


def test_lock_pins_every_declared_dependency_within_its_range():
    pins = _lock()
    assert "curator" not in pins  # the project itself is installed editable, not locked
    for req in _declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is declared but not locked"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), (
            f"locked {req.name}=={pins[name]} is outside pyproject's {req.specifier}")


def test_lock_pins_torch_to_the_makefile_version_without_a_local_label():
    """torch==X matches X+cpu and X+cu124 alike; a local label would force one build."""
    torch_version = re.search(r"^TORCH_VERSION \?= (\S+)$",
                              (ROOT / "Makefile").read_text(), re.M).group(1)
    assert _lock()["torch"] == torch_version


def test_setup_installs_from_the_lock_and_rebuilds_when_it_changes():
    makefile = (ROOT / "Makefile").read_text()
    stamp_rule = re.search(r"^\$\(STAMP\): (.*)$", makefile, re.M).group(1).split()
    assert "$(LOCK)" in stamp_rule
    assert "-c $(CONSTRAINTS) -e '.[$(EXTRAS)]'" in makefile


@pytest.mark.skipif(Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(),
                    reason="checks the venv `make setup` built (this is another environment)")
def test_the_make_venv_has_exactly_the_locked_versions():
    import sysconfig

    pins = _lock()
    wrong = {}
    # site-packages only: once something has imported setuptools, its vendored packages
    # (setuptools/_vendor: jaraco.*, an older packaging, ...) are on sys.path too
    for dist in metadata.distributions(path=[sysconfig.get_paths()["purelib"]]):
        name = canonicalize_name(dist.metadata["Name"])
        if name == "curator":
            continue
        want = pins.get(name)
        have = Version(dist.version)
        # torch may be a user's own CUDA build (setup keeps it): compare without the label.
        if want is None or Version(want).public != have.public:
            wrong[name] = (want, dist.version)
    assert not wrong, f"installed (locked, installed) differ: {wrong}"
