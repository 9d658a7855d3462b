"""The sans-I/O core never pulls in the CLI or the control client (nor any process shell).

Each core module is imported in a fresh interpreter and the modules it loaded are looked
at: what an import graph holds is only seen from a clean start.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import portier

CORE_DIR = Path(portier.__file__).parent
# Beside the core, and kept apart from it (they do I/O).
NOT_CORE = {"config", "control", "ctl", "__init__"}
CORE = sorted(p.stem for p in CORE_DIR.glob("*.py") if p.stem not in NOT_CORE)
FORBIDDEN = ("portier.ctl", "portier.control", "portier.config", "zmq", "asyncio", "socket")


def loaded_by(module: str) -> list[str]:
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_the_core_is_what_it_says():
    assert {"engine", "frame", "replication", "schema", "answers", "validation"} <= set(CORE)


@pytest.fixture(scope="module")
def baseline() -> set[str]:
    """What importing the package itself loads (its version lookup, the interpreter's)."""
    return set(loaded_by("portier"))


@pytest.mark.parametrize("name", CORE)
def test_a_core_module_imports_no_cli_and_no_io(name, baseline):
    modules = loaded_by(f"portier.{name}")
    assert f"portier.{name}" in modules
    added = set(modules) - baseline
    pulled = sorted(
        m
        for m in added
        if m in FORBIDDEN or m.startswith(("portier.workers", "portier.supervisor", "zmq."))
    )
    assert not pulled, f"portier.{name} imports {pulled}"


def test_the_check_sees_an_import_of_the_cli(baseline):
    assert "portier.ctl" in set(loaded_by("portier.ctl")) - baseline
