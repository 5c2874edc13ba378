"""The floors are checked, not remembered: import-linter's contracts (pyproject.toml,
[tool.importlinter]) hold, and the same tool does see a broken floor when there is one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_projects_import_contracts_hold() -> None:
    result = lint_imports()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 4 kept, 0 broken." in result.stdout


def test_a_floor_read_upside_down_is_reported_broken(tmp_path: Path) -> None:
    """Control: with the floors in the wrong order the same tool must fail, naming an import
    that runs up (e.g. the CLI importing the flow), so the check above cannot pass by seeing
    no imports at all."""
    config = tmp_path / "upside-down.ini"
    config.write_text(
        "[importlinter]\n"
        "root_packages =\n    cli\n    flows\n    finetune_phi\n"
        "[importlinter:contract:upside-down]\n"
        "name = upside down\n"
        "type = layers\n"
        "layers =\n    finetune_phi\n    flows\n    cli\n"
    )
    result = lint_imports("--config", str(config))
    assert result.returncode == 1, result.stdout
    assert "BROKEN" in result.stdout and "cli.run -> flows.finetune" in result.stdout
