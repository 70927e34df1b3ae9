"""Run by test_ddp.py under `accelerate launch` with 2 CPU processes: the toy tokenizer recipe
with the histogram loss, the residual module and the GAN from step 0."""

import dataclasses
import os
import sys

import torch

from facelab.core.train.launch import end_distributed
from facelab.glotok.histogram import TeacherHistogram
from facelab.glotok.train import presets, toy_model_config, train

out = sys.argv[1]
torch.set_num_threads(1)
teacher = f"{out}/teacher-rank{os.environ.get('RANK', '0')}.safetensors"
TeacherHistogram(torch.full((40,), 1 / 40), 40, 190.125, "uniform").save(teacher)
r = presets()["toy"]
r.model = toy_model_config(
    base_channels=8,
    z_channels=8,
    semantic_codes=16,
    visual_codes=16,
    residual_width=16,
    residual_heads=2,
)
r.data = dataclasses.replace(r.data, toy_identities=4, toy_images_per_identity=4)
r.loss = dataclasses.replace(r.loss, perceptual="none", disc_start=0, disc_channels=8)
r.teacher = dataclasses.replace(r.teacher, histogram=teacher)
r.train = dataclasses.replace(
    r.train, output_dir=f"{out}/run", max_steps=2, batch_size=4, progress=False
)
r.eval_images = 8
res = train(r)
total = sum(
    float(v.double().sum()) for v in res.model.state_dict().values() if v.is_floating_point()
)
print(f"RANK-CHECKSUM {os.environ.get('RANK', '0')} {total:.12e}")
end_distributed()
