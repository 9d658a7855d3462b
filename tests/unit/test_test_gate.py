"""The test run itself: without its integration layer it says so and fails."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def _pytest(tmp_path, env_extra):
    # A copy of the real conftest beside one unit test and one netns test.
    (tmp_path / "unit").mkdir()
    (tmp_path / "netns").mkdir()
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "unit" / "test_a.py").write_text("def test_a():\n    pass\n")
    (tmp_path / "netns" / "test_b.py").write_text("def test_b():\n    pass\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTIER_")}
    env.update(env_extra)
    env["PYTHONPATH"] = f"{ROOT / 'deploy'}:{ROOT / 'tests'}"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )


def test_missing_integration_layer_fails_the_run(tmp_path):
    run = _pytest(tmp_path, {"PORTIER_TEST_FORCE_NO_NETNS": "1"})
    assert run.returncode != 0, run.stdout
    assert "INTEGRATION LAYER NOT RUN: 1 netns/system/fault tests" in run.stdout


def test_unit_only_is_an_explicit_choice(tmp_path):
    run = _pytest(tmp_path, {"PORTIER_TEST_FORCE_NO_NETNS": "1", "PORTIER_UNIT_ONLY": "1"})
    assert run.returncode == 0, run.stdout
    assert "unit tests only (PORTIER_UNIT_ONLY=1): 1 netns/system/fault tests not run" in (
        run.stdout
    )


def test_an_unprivileged_user_fails_the_run(tmp_path):
    # The real probe, as nobody: no root, no namespaces.
    tmp_path.chmod(0o777)
    for parent in tmp_path.parents:
        if parent == Path("/tmp"):
            break
        parent.chmod(parent.stat().st_mode | 0o005)
    run = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "true"],
        capture_output=True,
    )
    assert run.returncode == 0, "setpriv is needed for this test"
    tree = tmp_path / "tree"
    tree.mkdir()
    tree.chmod(0o777)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTIER_")}
    result = _pytest_as_nobody(tree, env)
    assert result.returncode != 0, result.stdout
    assert "INTEGRATION LAYER NOT RUN" in result.stdout


def _pytest_as_nobody(tree, env):
    (tree / "unit").mkdir()
    (tree / "netns").mkdir()
    (tree / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tree / "unit" / "test_a.py").write_text("def test_a():\n    pass\n")
    (tree / "netns" / "test_b.py").write_text("def test_b():\n    pass\n")
    for path in tree.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o777 if path.is_dir() else 0o666)
    env["PYTHONPATH"] = f"{ROOT / 'deploy'}:{ROOT / 'tests'}"
    env["HOME"] = str(tree)
    return subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(tree),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tree,
        timeout=120,
    )
