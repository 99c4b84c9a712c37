"""Artifacts shared by tests/aot and tests/ops (the aot backend): compiled once per session, in a
subprocess with TRITON_INTERPRET unset (tests/ops sets it process-wide, and interpreted kernels
cannot be lowered)."""

import os
import subprocess
import sys

import pytest


def compile_artifact(model: str, target: str, out, *extra) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    return subprocess.run([sys.executable, "-m", "lpm_compile", "--model", model, "--target", target,
                           "--out", str(out), *extra], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def artifact(tmp_path_factory):
    """artifact(target, model="tiny") -> path of a compiled artifact (cached per session)."""
    made = {}

    def get(target: str, model: str = "tiny"):
        if (target, model) not in made:
            out = tmp_path_factory.mktemp("aot") / f"{model}-{target}"
            r = compile_artifact(model, target, out)
            assert r.returncode == 0, f"compile failed:\n{r.stderr[-4000:]}"
            made[(target, model)] = (out, r.stderr)
        return made[(target, model)][0]
    get.log = lambda target, model="tiny": made[(target, model)][1]
    return get
