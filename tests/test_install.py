"""What `pip install` gets: this project under a name free on PyPI, and a wheel that works on its own.

`tokenmeter` and `tokenmeter-cli` on PyPI are unrelated projects, so the distribution is
`tokenmeter-otel` (the import package and the command stay `tokenmeter`). Every install line in
the docs must name it, and until it is published, say where pip finds the wheel (`make dist`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = "tokenmeter-otel"
# `pip install ...` lines (in shell blocks and in backticks) that name something to install.
PIP_INSTALL = re.compile(r"pip install ([^`\n]+)")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_distribution_is_named_so_that_pip_installs_this_project() -> None:
    project = _pyproject()["project"]
    assert project["name"] == DISTRIBUTION
    self_references = [spec for extra in project["optional-dependencies"].values() for spec in extra
                       if spec.split("[")[0] in ("tokenmeter", DISTRIBUTION)]  # fmt: skip
    assert self_references and all(spec.startswith(f"{DISTRIBUTION}[") for spec in self_references)


def test_every_install_line_in_the_docs_installs_this_project() -> None:
    lines = [(path.name, match.group(1)) for path in _doc_files()
             for match in PIP_INSTALL.finditer(path.read_text(encoding="utf-8"))]  # fmt: skip
    ours = [(name, line) for name, line in lines if "tokenmeter" in line]
    assert len(ours) >= 8, ours  # README, instrumentation, serve, storage, chatchat, quotas
    wrong = [(name, line) for name, line in ours
             if f"'{DISTRIBUTION}[" not in line or "--find-links" not in line]  # fmt: skip
    assert not wrong, f"install lines that would fetch another project or nothing from PyPI: {wrong}"


def test_install_hints_in_messages_name_this_distribution() -> None:
    hints = [(path.relative_to(ROOT), line.strip()) for path in sorted((ROOT / "tokenmeter").rglob("*.py"))
             for line in path.read_text(encoding="utf-8").splitlines() if "tokenmeter[" in line]  # fmt: skip
    assert not hints, f"hints that name PyPI's unrelated `tokenmeter`: {hints}"


def _build_wheel(into: Path) -> Path:
    # No build isolation: the test extra brings setuptools and wheel, so nothing is downloaded.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(into), str(ROOT)], check=True, cwd=into)  # fmt: skip
    (wheel,) = into.glob("tokenmeter_otel-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The wheel, installed alone into a directory that stands first on the path (not the checkout)."""
    workdir = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(workdir)
    site = workdir / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                    str(wheel)], check=True)  # fmt: skip
    return wheel, site


def _run_installed(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(
        [sys.executable, *args], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_wheel_is_this_project_with_the_files_its_commands_read(installed_wheel: tuple[Path, Path]) -> None:
    wheel, site = installed_wheel
    version = _pyproject()["project"]["version"]
    assert wheel.name == f"tokenmeter_otel-{version}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("tokenmeter/catalog/models.yaml", "tokenmeter/demo/policy.yaml", "tokenmeter/web/static/index.html",
                   "tokenmeter/store/sql/0001_otel_tables.sql"):  # fmt: skip
        assert needed in names
    found = _run_installed(site, site.parent, "-c", "import importlib.metadata as m, tokenmeter; "
                           "print(tokenmeter.__file__); print(m.version('tokenmeter-otel'))")  # fmt: skip
    module_file, installed_version = found.stdout.split()
    assert Path(module_file).is_relative_to(site) and installed_version == version


def test_the_installed_wheel_migrates_a_store_and_counts_with_its_catalog(installed_wheel: tuple[Path, Path]) -> None:
    _, site = installed_wheel
    store = site.parent / "chdb"
    migrated = _run_installed(site, site.parent, "-m", "tokenmeter.cli", "db", "migrate",
                              "--clickhouse-url", f"chdb://{store}")  # fmt: skip
    assert migrated.returncode == 0, migrated.stderr
    sql_files = sorted(path.name for path in (ROOT / "tokenmeter/store/sql").glob("*.sql"))
    assert json.loads(migrated.stdout)["applied"] == sql_files
    counted = _run_installed(site, site.parent, "-m", "tokenmeter.cli", "count", "--model", "qwen-max",
                             "--text", "你好，世界")  # fmt: skip
    assert counted.returncode == 0, counted.stderr
    assert json.loads(counted.stdout) | {"tokenizer": None} == {
        "model": "qwen-max",
        "tokens": 3,
        "source": "tokenizer",
        "tokenizer": None,
    }
