"""`pip install .` must ship every package of the source tree (a missing one only shows on a station)."""

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_python_package_is_listed_for_installation():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for top in ("agent", "hal", "hil")
        for init in (REPO / top).rglob("__init__.py")
    }
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert "evse_board_configs" in listed  # the board-configs folder, for `evse demo` after `pip install .`
