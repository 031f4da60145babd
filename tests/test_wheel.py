"""The package as a user installs it: a wheel built from the repository, installed into a fresh
virtual environment, run from a folder outside the checkout.

This is where ``tiltmatch demo`` and ``tiltmatch bench`` would fail if the library read
files from the repository (configs, recipes, ``benchmarks/``) instead of the package.
No network: the wheel is built without build isolation by the running environment's
setuptools, installed without dependencies, and the fresh environment borrows the
running one's third-party packages (torch, transformers, ...) through a ``.pth`` line
written after the install, so neither the repository's ``src`` nor an editable install of
it is visible there (checked: ``tiltmatch.__file__`` must lie in the fresh environment).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tiltmatch.experiments.bench import SIZES

REPO = Path(__file__).resolve().parents[1]


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{argv} failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """(the fresh environment's bin folder, the environment variables to run it with)."""
    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"  # fair to a small shared machine, and deterministic
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    source = root / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(REPO / "src", source / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    wheels = root / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        root,
        env,
    )
    (wheel,) = wheels.glob("tiltmatch-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], root, env)
    python = venv / "bin" / "python"
    _run(
        [*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], root, env
    )
    # Only now borrow the running environment's packages: a plain directory on sys.path
    # (its own .pth files, such as an editable install of this repository, are not read).
    purelib = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            root,
            env,
        ).strip()
    )
    borrowed = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (purelib / "borrowed_site_packages.pth").write_text("\n".join(sorted(borrowed)) + "\n")
    return venv / "bin", env


@pytest.mark.slow
def test_the_installed_package_is_the_wheel(installed, tmp_path: Path) -> None:
    bin_dir, env = installed
    where = _run(
        [str(bin_dir / "python"), "-c", "import tiltmatch; print(tiltmatch.__file__)"],
        tmp_path,
        env,
    )
    assert Path(where.strip()).is_relative_to(bin_dir.parent), where
    assert not Path(where.strip()).is_relative_to(REPO), where
    usage = _run([str(bin_dir / "tiltmatch"), "demo", "--help"], tmp_path, env)
    assert "tiltmatch demo" in usage and "--tiny" in usage


@pytest.mark.slow
def test_installed_demo_runs(installed, tmp_path: Path) -> None:
    bin_dir, env = installed
    out = _run(
        [str(bin_dir / "tiltmatch"), "demo", "--tiny", "--quiet", "--out", "demo"], tmp_path, env
    )
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    # the packaged config and the packaged base model were found outside the checkout
    assert report["config"]["dtm"]["a_end"] == 2.0
    assert Path(report["base_model"]).is_relative_to(bin_dir.parent)
    assert [r["a_after"] for r in report["history"]] == [1.0, 2.0]
    assert 0.0 < report["tv_noise_floor"] <= 1.0 and 0.0 <= report["base_reward"] <= 1.0
    assert "report:" in out and (tmp_path / "demo" / "report.md").is_file()


@pytest.mark.slow
def test_installed_bench_runs(installed, tmp_path: Path) -> None:
    bin_dir, env = installed
    argv = [str(bin_dir / "tiltmatch"), "bench", "--size", "micro", "--tasks", "maze", "countdown"]
    argv += ["--methods", "dtm", "rejection", "--out", "bench", "--bases", "bases", "--quiet"]
    _run(argv, tmp_path, env)
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert {(r["task"], r["method"]) for r in results} == {
        (task, method) for task in ("maze", "countdown") for method in ("dtm", "rejection")
    }
    assert all(r["rollouts"] == SIZES["micro"].budget for r in results)  # every method
    assert "Goal check" in (tmp_path / "bench" / "report.md").read_text()


@pytest.mark.slow
def test_the_installed_wheel_carries_the_test_sets_and_method(installed, tmp_path: Path) -> None:
    bin_dir, env = installed
    env = {k: v for k, v in env.items() if k != "TILTMATCH_DATA_DIR"}
    script = (
        "from tiltmatch.data import PACKAGED_METHOD, shared_data_dir\n"
        "from tiltmatch.tasks import get_task\n"
        "print(shared_data_dir())\n"
        "print(PACKAGED_METHOD.read_text().splitlines()[0])\n"
        "print(len(get_task('countdown', format='chat').examples('published')))\n"
    )
    where, method, rows = _run([str(bin_dir / "python"), "-c", script], tmp_path, env).split("\n")[
        :3
    ]
    assert Path(where).is_relative_to(bin_dir.parent), where
    assert method.startswith("#") and rows == "256"
