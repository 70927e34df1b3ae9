"""The tokenizer recipe under `accelerate launch` with 2 CPU processes (gloo): the GAN's
one-backward update and the histogram loss under DDP; both ranks end with the same weights."""

import json
import re
from pathlib import Path

from facelab.core.train.launch import launch_cpu

HERE = Path(__file__).parent


def test_two_process_training(tmp_path):
    proc = launch_cpu(
        HERE / "_ddp_train_script.py", str(tmp_path), hf_home=tmp_path / "hf", timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the two ranks share one stdout pipe: under load one rank's line can land before the other's
    # newline ("...e+02RANK-CHECKSUM 1 ..."), so the number is matched by its own characters
    sums = dict(re.findall(r"RANK-CHECKSUM (\d) ([-+]?\d\.\d{12}e[-+]\d+)", proc.stdout))
    assert set(sums) == {"0", "1"} and sums["0"] == sums["1"], proc.stdout[-2000:]
    doc = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert doc["steps"] == 2 and {"hist", "g_adv", "d", "res"} <= set(doc["losses"])
