"""The commands a scheduler runs against a served export, each in its own process as a scheduler starts
it (``python -m tfrec.app.cli``): a new version (``tfrec export --force``), and removing or restoring
products (``tfrec index --export --remove / --restore``). Shared by ``kill.py`` and ``soak.py --swap``."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from benchlib import ROOT


class Commands:
    """``export``, ``remove`` and ``restore`` of ``removed`` on the export folder ``export``.

    Args:
        export: the export folder changed (a copy: never the one a real server serves).
        model: the trained model folder ``tfrec export`` reads.
        index: its ScaNN index folder.
        config: the config ``tfrec export`` reads (the model folder's ``config.yaml``).
        removed: the item ids removed and restored.
    """

    def __init__(self, export: Path, model: Path, index: Path, config: Path, removed: list[str]):
        cli = [sys.executable, "-m", "tfrec.app.cli"]
        self.argv = {
            "export": [*cli, "export", "--config", str(config), "--model", str(model), "--index", str(index),
                       "--output", str(export), "--force", "-q"],
            "remove": [*cli, "index", "--export", str(export), "--remove", ",".join(removed), "-q"],
            "restore": [*cli, "index", "--export", str(export), "--restore", ",".join(removed), "-q"],
        }

    def start(self, name: str, log) -> subprocess.Popen:
        """Starts command ``name``, its output going to the open file ``log``."""
        return subprocess.Popen(self.argv[name], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    def run(self, name: str, log) -> tuple[int, float]:
        """Runs command ``name`` to its end: its exit code and seconds."""
        started = time.monotonic()
        code = self.start(name, log).wait()
        return code, time.monotonic() - started

    def described(self) -> dict[str, str]:
        return {name: " ".join(argv[1:]) for name, argv in self.argv.items()}


def newest_on_disk(export: Path) -> int:
    """The highest version number of any model in ``export``."""
    return max(int(v.name) for m in export.iterdir() if m.is_dir() and not m.name.startswith(".")
               for v in m.iterdir() if v.name.isdigit())


def model_paths(model: Path, index: Path) -> tuple[Path, Path]:
    """``model`` and ``index`` as given, or under the repository."""
    return tuple(p if p.is_absolute() or p.exists() else ROOT / p for p in (model, index))
