"""The package's layers: the core's tests run without the doors' and stores' libraries,
and no module imports a layer above its own.

Layers, lowest first: settings, logs and mountinfo (nothing of the package) < core < stores <
fuse and http (neither imports the other, nor stores) < testing (nothing but settings
and mountinfo)
< the program: mount, cli, status, __main__, bench.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import streamfs_fuse

PACKAGE = Path(streamfs_fuse.__file__).parent
TESTS = Path(__file__).resolve().parents[1]

#: What each layer may import of the package, besides itself.
MAY_IMPORT = {
    "settings": set(),
    "logs": set(),
    "mountinfo": set(),
    "core": {"settings", "logs"},
    "stores": {"settings", "logs", "core"},
    "fuse": {"settings", "logs", "core"},
    "http": {"settings", "logs", "core"},
    "testing": {"settings", "mountinfo"},
}
PROGRAM = {"__init__", "__main__", "mount", "cli", "status", "bench"}

#: Libraries that only the doors and stores need: the core runs without them.
DOOR_AND_STORE_LIBRARIES = ("pyfuse3", "h11", "coredis", "prometheus_client")


def layer_of(module: str) -> str:
    """The layer of ``streamfs_fuse.X[.…]``: X, a package or a top-level module."""
    return module.split(".")[1] if "." in module else "__init__"


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import of the package in ``path``, lazy ones too."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            if node.module:
                found.append((node.lineno, name))
            else:  # "from .. import mount": the names are modules
                found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.startswith("streamfs_fuse.")]


def test_no_module_imports_a_higher_layer():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = layer_of(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        assert here in MAY_IMPORT or here in PROGRAM, f"{path} is in no layer: add it to MAY_IMPORT"
        if here in PROGRAM:
            continue
        for line, name in imported_modules(path):
            there = layer_of(name)
            if there != here and there not in MAY_IMPORT[here]:
                violations.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({here}) imports {name}")
    assert not violations, "imports against the layers:\n" + "\n".join(violations)


def test_the_harness_imports_neither_pyfuse3_nor_pytest():
    """Checked in a fresh interpreter: the benchmark imports it without either."""
    code = ("import sys, streamfs_fuse.testing; "
            "print(' '.join(m for m in ('pyfuse3', 'pytest') + %r if m in sys.modules))"
            % (DOOR_AND_STORE_LIBRARIES,))
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.split()
    assert loaded == []


def test_core_tests_pass_without_the_door_and_store_libraries():
    """``pytest tests/core`` in an interpreter where importing pyfuse3, h11, coredis or
    prometheus_client fails, as if they were not installed."""
    code = ("import sys; sys.modules.update(dict.fromkeys(%r)); import pytest; "
            "sys.exit(pytest.main(sys.argv[1:]))" % (DOOR_AND_STORE_LIBRARIES,))
    result = subprocess.run(
        [sys.executable, "-c", code, str(TESTS / "core"), "--ignore", __file__,
         "-q", "-p", "no:cacheprovider"],
        cwd=TESTS.parent, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]
