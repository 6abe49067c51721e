"""The layering check of `make lint` (tests/layering.py): it passes on the package, and it
finds what it must on a small package written to break each rule."""

from __future__ import annotations

from pathlib import Path

import layering


def write_package(root: Path, files: dict[str, str]) -> Path:
    """A package named pkg under root, from {'target/inject.py': source, ...}."""
    package = root / "pkg"
    for name, source in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        for folder in [package, *path.parent.relative_to(package).parents, path.parent]:
            (package / folder / "__init__.py").touch()
        path.write_text(source)
    return package


def test_the_package_keeps_its_layers() -> None:
    assert layering.problems() == []


def test_a_lower_layer_importing_a_higher_one_is_reported(tmp_path: Path) -> None:
    package = write_package(
        tmp_path,
        {
            "target/inject.py": "from pkg.state.snapshot import Snapshot\n",
            "state/snapshot.py": "Snapshot = object\n",
            "binary/elf.py": "def f():\n    import pkg.target.inject\n",
            "plan/planner.py": "from pkg.binary import elf\n",
        },
    )
    assert layering.problems(package) == [
        "pkg.binary.elf (binary) imports pkg.target.inject (target)",
        "pkg.target.inject (target) imports pkg.state.snapshot (state)",
    ]


def test_a_cycle_through_an_import_inside_a_function_is_reported(tmp_path: Path) -> None:
    package = write_package(
        tmp_path,
        {
            "ops/update.py": "from pkg.ops.guardian import Guardian\n",
            "ops/guardian.py": "Guardian = object\ndef rescue():\n    from .update import f\n",
        },
    )
    assert layering.problems(package) == ["import cycle: pkg.ops.guardian -> pkg.ops.update"]


def test_shared_modules_import_nothing_from_the_layers(tmp_path: Path) -> None:
    package = write_package(
        tmp_path,
        {"errors.py": "from pkg.binary.elf import x\n", "binary/elf.py": "x = 1\n"},
    )
    assert layering.problems(package) == ["pkg.errors (shared) imports pkg.binary.elf (binary)"]
