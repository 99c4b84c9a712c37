"""Benchmarks: kernels (GPU timings) and end-to-end streaming."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["git_state"]


def git_state(path=None) -> dict:
    """The code a result was measured on: ``git_sha`` (HEAD) and ``git_dirty`` (whether tracked
    files differ from it; then ``git_changes`` lists them, at most 50), so a figure taken on
    uncommitted code is labelled as such. None for each when git is unavailable or ``path`` (by
    default this package's checkout) is not in a repository."""
    here = Path(path or Path(__file__).resolve().parent)

    def git(*args):
        try:
            r = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout if r.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    changes = None if status is None else [line[3:] for line in status.splitlines() if line.strip()]
    out = dict(git_sha=sha.strip() if sha else None, git_dirty=None if changes is None else bool(changes))
    if changes:
        out["git_changes"] = changes[:50]
    return out
