"""What every benchmark script records beside its figures: the machine, its load, the versions."""

from __future__ import annotations

import json
import os
import platform
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine(load_before: tuple[float, float, float], packages: tuple[str, ...] = ("tensorflow",)) -> dict:
    """CPU count, Python and package versions, and the load average before and after the runs."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            **{name: version(name) for name in packages},
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def write_json(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def find_export(path: Path) -> Path:
    """The export folder holding ``tfrec_retrieve`` (``path`` as given or under the repository)."""
    from tfrec.errors import TfrecError

    for candidate in (path, ROOT / path):
        if (candidate / "tfrec_retrieve").is_dir():
            return candidate.resolve()
    raise TfrecError(f"{path} holds no tfrec_retrieve model: run `make demo` (or `tfrec run`) first, or pass --export")
