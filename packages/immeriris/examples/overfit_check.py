"""Overfit / held-out check of the NormFree (or NormKeep) toy network with a plain loop.

usage: python overfit_check.py SUBJECTS CAPTURES STEPS S M LR [PARADIGM WIDTH OPTIMIZER]

Trains the toy preset's network + a margin head (ArcFace, scale S, angular margin M) on SUBJECTS
training subjects x CAPTURES captures (each eye its own class), batch 64, SGD (momentum 0.9,
weight decay 5e-4) or AdamW, linear warm-up over 5 % of the steps then cosine decay, one torch
thread. Prints the training loss (compare it with ln(2 * SUBJECTS)) and the batch accuracy, then
d' and FRR at FAR 1e-3 on 20 held-out subjects x 12 captures (all pairs, cosine similarity).
"""

import math
import sys
import time

import torch
import torch.nn.functional as F

from facelab.core.recipe import HeadConfig
from facelab.immeriris.generator import OcularDataset
from facelab.immeriris.train import RenderedEyes, build_head, preset

torch.set_num_threads(1)
nsub = int(sys.argv[1])
caps = int(sys.argv[2])
steps = int(sys.argv[3])
s = float(sys.argv[4])
m = float(sys.argv[5])
lr = float(sys.argv[6])
par = sys.argv[7] if len(sys.argv) > 7 else "normfree"
width = int(sys.argv[8]) if len(sys.argv) > 8 else 16
opt_name = sys.argv[9] if len(sys.argv) > 9 else "sgd"
cfg = preset("toy", par)
cfg.model.base_width = width
ds = OcularDataset(nsub, cfg.data.generator, seed=0, captures_per_subject=caps)
torch.manual_seed(0)
net = cfg.model.build()
head = build_head(HeadConfig(s=s, m=m), net.embedding_size, ds.num_classes)
t = time.process_time()
data = RenderedEyes(ds, net, cfg.data)
print(
    "render",
    time.process_time() - t,
    "n",
    len(data),
    "classes",
    ds.num_classes,
    "x stats",
    data.inputs(torch.arange(64)).mean().item(),
    data.inputs(torch.arange(64)).std().item(),
)
params = list(net.parameters()) + list(head.parameters())
opt = (
    torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    if opt_name == "sgd"
    else torch.optim.AdamW(params, lr=lr, weight_decay=5e-4)
)
warm = max(1, steps // 20)
sched = torch.optim.lr_scheduler.LambdaLR(
    opt, lambda i: min(1, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps))
)
t = time.process_time()
g = torch.Generator().manual_seed(0)
for i in range(steps):
    idx = torch.randint(len(data), (64,), generator=g)
    x = data.inputs(idx)
    y = data.labels[idx]
    emb = net(x)
    out = head(emb, y)
    loss = F.cross_entropy(out.logits, out.targets)
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    if i % max(1, steps // 10) == 0 or i == steps - 1:
        with torch.no_grad():
            acc = (
                (
                    F.linear(
                        F.normalize(emb),
                        F.normalize(head.weight),
                    ).argmax(1)
                    == y
                )
                .float()
                .mean()
                .item()
            )
        print(
            f"step {i} loss {loss.item():.3f} acc {acc:.2f} cpu {time.process_time() - t:.0f}",
            flush=True,
        )
# held-out eval
te = OcularDataset(20, cfg.data.generator, seed=5, subject_offset=100000, captures_per_subject=12)
td = RenderedEyes(te, net, cfg.data)
e = net.embed_inputs(td.inputs(torch.arange(len(td)), augment=False))
y = td.labels
S = e @ e.T
same = y[:, None] == y[None]
iu = torch.triu(torch.ones_like(same), 1).bool()
gen = S[same & iu]
imp = S[~same & iu]
dp = (gen.mean() - imp.mean()) / ((gen.var() + imp.var()) / 2).sqrt()
thr = torch.quantile(imp, 0.999)
frr = (gen < thr).float().mean()
print(f"heldout d' {dp:.2f} FRR@1e-3 {frr:.3f} gen {gen.mean():.2f} imp {imp.mean():.2f}")
