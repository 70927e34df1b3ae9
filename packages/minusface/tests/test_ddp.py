"""Multi-process training: every rank takes the L1 term on its own batch (no all-gather)."""

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from facelab.core.train.launch import launch_cpu

HERE = Path(__file__).parent


def _script():
    spec = importlib.util.spec_from_file_location("_ddp_l1_script", HERE / "_ddp_l1_script.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_two_processes_take_the_l1_gradient_of_the_global_mean(tmp_path):
    proc = launch_cpu(HERE / "_ddp_l1_script.py", str(tmp_path), hf_home=tmp_path / "hf")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = load_file(str(tmp_path / "ddp.safetensors"))

    # one process, the same 8 samples in one batch
    script = _script()
    _, before, after = script.generator_after_one_step(
        script.make_config(str(tmp_path / "single"), batch_size=8)
    )
    moved = 0.0
    for k, v in after.items():
        torch.testing.assert_close(ddp[f"before.{k}"], before[k])
        step_ddp = ddp[f"before.{k}"] - ddp[f"after.{k}"]
        step_one = before[k] - v
        # an all-gathered, world-size-scaled L1 (the reference) would make step_ddp = 2 x step_one
        torch.testing.assert_close(step_ddp, step_one, rtol=1e-3, atol=1e-7)
        moved = max(moved, float(step_one.abs().max()))
    assert moved > 1e-4  # the step is not trivially zero
