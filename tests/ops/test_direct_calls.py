"""Eager launchers skip the custom-op dispatcher: its first call imports torch._dynamo, whose
imports led the profile of the 7.4 s an artifact session took to open on an H200 (about 5.5 s
cumulative). What still goes through the op: a
dispatch mode (the launch counter sees every op), and inputs that require grad (the op has no
backward, so it raises instead of dropping the gradient)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import lpm_rt.ops as ops
from lpm_rt.benchmark.launches import LaunchCounter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

OPEN_A_SESSION = """
import json, sys
import lpm_rt
from lpm_rt.assets import default_character
from lpm_rt.config import RuntimeConfig
av = lpm_rt.load("tiny", runtime=RuntimeConfig(ops_backend="triton"))
before = "torch._dynamo" in sys.modules
sess = av.open_session(references=default_character(av.spec.height, av.spec.width), prompt="calm", seed=0)
print(json.dumps(dict(before=before, after="torch._dynamo" in sys.modules)))
"""


def test_opening_a_triton_session_does_not_import_dynamo():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", OPEN_A_SESSION], env=env, capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == dict(before=False, after=False)


def _case():
    x = torch.randn(1, 3, 32)
    return x, torch.zeros(1, 1, 32), torch.zeros(1, 1, 32)


def test_dispatch_modes_and_gradients_still_see_the_op(triton_backend):
    x, shift, scale = _case()
    with torch.no_grad():
        eager = ops.norm_modulate(x, shift, scale)
        with LaunchCounter() as lc:
            counted = ops.norm_modulate(x, shift, scale)
    assert lc.ops == ["lpm_rt::norm_modulate"]
    assert torch.equal(eager, counted)
    y = ops.norm_modulate(x.requires_grad_(), shift, scale)
    assert y.requires_grad
    with pytest.raises(RuntimeError, match="no autograd formula"):
        y.sum().backward()
