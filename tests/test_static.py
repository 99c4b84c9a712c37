"""Static check of the project's Python: no name is used that is never defined. Code that only a
GPU, a production-size preset or a rare branch reaches can hide such a bug from every other test
(an AOT compile of the production presets raised NameError that way); pyflakes finds it without
running anything. Unused imports and the like are not failures here."""

from __future__ import annotations

from pathlib import Path

import pytest

pyflakes_api = pytest.importorskip("pyflakes.api")
from pyflakes import messages  # noqa: E402
from pyflakes.reporter import Reporter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FATAL = (messages.UndefinedName, messages.UndefinedLocal, messages.UndefinedExport)


class _Collect(Reporter):
    def __init__(self):
        self.found = []

    def flake(self, message):
        if isinstance(message, FATAL):
            self.found.append(f"{message.filename}:{message.lineno}: {message.message % message.message_args}")

    def syntaxError(self, filename, msg, lineno, offset, text):
        self.found.append(f"{filename}:{lineno}: syntax error: {msg}")

    def unexpectedError(self, filename, msg):
        self.found.append(f"{filename}: {msg}")


def test_no_undefined_names():
    rep = _Collect()
    files = [p for d in ("lpm_rt", "compile", "csrc_triton", "scripts", "tests", "bench")
             for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 100
    for p in files:
        pyflakes_api.checkPath(str(p), rep)
    assert not rep.found, "\n".join(rep.found)
