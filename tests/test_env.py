"""Environment variables (issue 28): every one curator reads is in the documented table,
each bad value is one line naming the variable, checked once when a command starts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from curator import env
from curator.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "environment.md"
CURATOR = Path(env.__file__).resolve().parent


def test_every_variable_curator_reads_is_in_the_table():
    read = set()
    for path in CURATOR.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        read |= set(re.findall(r"environ(?:\.get)?[\[(]\s*\"([A-Z_]+)\"", text))
        read |= set(re.findall(r"envvar=\"([A-Z_]+)\"", text))
        read |= set(re.findall(r"(?:seconds|folder)\(\"([A-Z_]+)\"", text))
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", DOC.read_text(), re.M))
    assert read <= set(env.VARIABLES) == documented


@pytest.mark.parametrize("value", ["abc", "-5", "nan"])
@pytest.mark.parametrize("name", ["CURATOR_APP_LOCK_TIMEOUT", "CURATOR_LOCK_TIMEOUT",
                                  "CURATOR_RAY_TIMEOUT"])
def test_a_bad_number_of_seconds_is_one_line_naming_the_variable(monkeypatch, name, value,
                                                                  tmp_path):
    monkeypatch.setenv(name, value)
    r = CliRunner().invoke(main, ["selections", "--store", str(tmp_path / "s")])
    assert r.exit_code == 1
    assert r.output == (f"error: {name} must be a non-negative number of seconds, "
                        f"got {value!r}\n")


def test_a_cache_that_is_a_file_is_one_line(monkeypatch, tmp_path):
    (tmp_path / "cache").write_text("a file")
    monkeypatch.setenv("CURATOR_CACHE", str(tmp_path / "cache"))
    r = CliRunner().invoke(main, ["selections", "--store", str(tmp_path / "s")])
    assert r.exit_code == 1
    assert r.output == (f"error: CURATOR_CACHE must name a folder, but it is a file "
                        f"({tmp_path / 'cache'})\n")
    monkeypatch.setenv("CURATOR_CACHE", str(tmp_path / "cache" / "below"))
    with pytest.raises(env.EnvError, match="but .*cache is a file"):
        env.cache_root()


def test_the_app_says_a_bad_app_lock_timeout_in_one_line(monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    app = CURATOR / "app" / "streamlit_app.py"
    monkeypatch.setenv("CURATOR_STORE", str(tmp_path / "s"))
    monkeypatch.setenv("CURATOR_APP_LOCK_TIMEOUT", "abc")
    at = AppTest.from_file(str(app), default_timeout=60).run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "CURATOR_APP_LOCK_TIMEOUT must be a non-negative number of seconds, got 'abc'"]
