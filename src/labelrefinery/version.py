"""The package version, and the code version a run directory records."""

from __future__ import annotations

import subprocess
from pathlib import Path

__version__ = "0.1.0"


def code_version() -> str:
    """Package version plus the git commit of the source tree when it is a checkout, e.g. ``0.1.0+gcaa0cc3``
    (``.dirty`` added when the checkout has uncommitted changes)."""
    here = Path(__file__).parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = sha and subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=here, capture_output=True,
                                       text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", ""
    return f"{__version__}+g{sha}{'.dirty' if dirty else ''}" if sha else __version__
