"""Does a NormFree / NormKeep network generalize to unseen eyes? A plain training loop and three
evaluations, for cheap diagnostic runs (one torch thread).

usage: python generalization_check.py [--subjects 100] [--caps 16] [--steps 400] [--std]
           [--opt sgd|adamw] [--lr 0.1] [--s 16] [--m 0] [--paradigm normfree] [--lazy] ...
       python generalization_check.py --baseline     # the non-learned features only

Trains the toy preset's network (IResNet-18, width 16, 48 px crops) + a margin head on
SUBJECTS training subjects x CAPS captures of the grid (each eye its own class; ``--caps 198``:
every capture), batch 64, linear warm-up over 5 % of the steps then cosine decay. ``--std``
standardizes every input (zero mean, spread 0.5), ``--lazy`` renders each batch afresh instead
of keeping the images. Prints the training loss (compare with ln(classes)), then d', FRR at
FAR 1e-3 and EER of all pairs (cosine of L2-normalized embeddings, the same crop function and
eval mode as ``IrisNet.embed``) on

* the network at initialization and after training, on 30 held-out subjects x 16 captures x 2
  eyes (all pairs; and frontal x frontal pairs only, gaze point 4);
* 20 *training* subjects, 960 random captures of their full grid (mostly not trained on):
  a gap between this and the held-out numbers means identities are memorised.

``--baseline`` scores the same held-out set with non-learned features instead: raw crop pixels,
oracle rubber-sheet pixels (cosine) and the classical iris code (oracle segmentation, 1 - HD).
"""

import argparse
import dataclasses
import math
import time

import torch
import torch.nn.functional as F

from facelab.core.recipe import HeadConfig, build_head
from facelab.immeriris.generator import OcularDataset
from facelab.immeriris.model import iris_crop, standardize, strip_input
from facelab.immeriris.train import RenderedEyes, preset

p = argparse.ArgumentParser()
p.add_argument("--subjects", type=int, default=100)
p.add_argument("--caps", type=int, default=16)
p.add_argument("--steps", type=int, default=400)
p.add_argument("--batch", type=int, default=64)
p.add_argument("--s", type=float, default=16.0)
p.add_argument("--m", type=float, default=0.0)
p.add_argument("--lr", type=float, default=0.1)
p.add_argument("--opt", default="sgd", choices=("sgd", "adamw"))
p.add_argument("--wd", type=float, default=5e-4)
p.add_argument("--paradigm", default="normfree")
p.add_argument("--backbone", default="r18")
p.add_argument("--width", type=int, default=16)
p.add_argument("--crop", type=int, default=48)
p.add_argument("--emb", type=int, default=128)
p.add_argument("--std", action="store_true")
p.add_argument("--lazy", action="store_true")
p.add_argument("--noaug", action="store_true")
p.add_argument("--baseline", action="store_true")
a = p.parse_args()
torch.set_num_threads(1)
cfg = preset("toy", a.paradigm)
m = cfg.model
m.base_width, m.backbone, m.crop_size, m.embedding_size = a.width, a.backbone, a.crop, a.emb
m.standardize = False  # applied here (nz) so that --std switches it
cfg.data.prerender = not a.lazy
gen = cfg.data.generator


def nz(x):
    return standardize(x) if a.std else x


def metrics(e, y, mask=None):
    s = e @ e.T
    same = y[:, None] == y[None]
    iu = torch.triu(torch.ones_like(same), 1).bool()
    if mask is not None:
        iu = iu & mask
    g, i = s[same & iu], s[~same & iu]
    dp = (g.mean() - i.mean()) / ((g.var() + i.var()) / 2).sqrt()
    thr = torch.quantile(i, 0.999)
    ts = torch.quantile(torch.cat([g, i]), torch.linspace(0, 1, 401))
    far = (i[None] >= ts[:, None]).float().mean(1)
    frr = (g[None] < ts[:, None]).float().mean(1)
    k = (far - frr).abs().argmin()
    eer = (far[k] + frr[k]) / 2
    return f"d' {dp:.2f} FRR@1e-3 {(g < thr).float().mean():.3f} EER {eer:.3f}"


te = OcularDataset(30, gen, seed=5, subject_offset=1_000_000, captures_per_subject=16)
frontal = te.metadata()["gaze_point"] == 4
fr_mask = frontal[:, None] & frontal[None]


def report(tag, e, y):
    print(f"[{tag}] all: {metrics(e, y)} | frontal x frontal: {metrics(e, y, fr_mask)}")


if a.baseline:
    from facelab.immeriris.gabor import IrisEncoder
    from facelab.immeriris.hamming import hamming_matrix
    from facelab.immeriris.normalize import rubber_sheet
    from facelab.immeriris.segment import oracle_segmentation

    b = te.render_truth(torch.arange(len(te)))
    y = te.labels
    for c in (48, 96):
        x = iris_crop(b.images, b.iris, c).flatten(1)
        report(f"raw crop {c} px, cosine", F.normalize(x - x.mean(1, keepdim=True), dim=1), y)
    seg = oracle_segmentation(b)
    st = rubber_sheet(b.images, seg.pupil, seg.iris, seg.valid)
    x = (st.image * st.mask).flatten(1)
    report("oracle strip pixels, cosine", F.normalize(x - x.mean(1, keepdim=True), dim=1), y)
    t = IrisEncoder().encode(st.image, st.mask)
    hd = torch.as_tensor(hamming_matrix(t.codes, t.masks, t.codes, t.masks).distances)
    sim = 1 - torch.nan_to_num(hd, nan=0.5)
    same = y[:, None] == y[None]
    iu = torch.triu(torch.ones_like(same), 1).bool()
    for tag, mk in (("all", iu), ("frontal x frontal", iu & fr_mask)):
        g, i = sim[same & mk], sim[~same & mk]
        dp = (g.mean() - i.mean()) / ((g.var() + i.var()) / 2).sqrt()
        frr = (g < torch.quantile(i, 0.999)).float().mean()
        print(f"[iris code, oracle seg.] {tag}: d' {dp:.2f} FRR@1e-3 {frr:.3f}")
    raise SystemExit

ds = OcularDataset(a.subjects, gen, seed=0, captures_per_subject=a.caps)
torch.manual_seed(0)
net = cfg.model.build()
head = build_head(HeadConfig(s=a.s, m=a.m), net.embedding_size, ds.num_classes)
t0 = time.process_time()
data = RenderedEyes(ds, net, cfg.data)
td = RenderedEyes(te, net, dataclasses.replace(cfg.data, prerender=True))
print(f"render {time.process_time() - t0:.0f} CPU s, {len(data)} images, {ds.num_classes} classes")
report("init, held-out", net.embed_inputs(nz(td.inputs(torch.arange(len(td)), False))), td.labels)
params = list(net.parameters()) + list(head.parameters())
if a.opt == "sgd":
    opt = torch.optim.SGD(params, lr=a.lr, momentum=0.9, weight_decay=a.wd)
else:
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=a.wd)
warm = max(1, a.steps // 20)
sched = torch.optim.lr_scheduler.LambdaLR(
    opt,
    lambda i: min(1, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, a.steps) / a.steps)),
)
t0 = time.process_time()
g = torch.Generator().manual_seed(0)
ema = 0.0
for i in range(a.steps):
    idx = torch.randint(len(data), (a.batch,), generator=g)
    out = head(net(nz(data.inputs(idx, augment=not a.noaug))), data.labels[idx])
    loss = F.cross_entropy(out.logits, out.targets)
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    ema = loss.item() if i == 0 else 0.95 * ema + 0.05 * loss.item()
    if i % max(1, a.steps // 5) == 0 or i == a.steps - 1:
        print(f"step {i} loss (ema) {ema:.3f} ln(classes) {math.log(ds.num_classes):.2f}")
print(f"train {time.process_time() - t0:.0f} CPU s")
report("held-out", net.embed_inputs(nz(td.inputs(torch.arange(len(td)), False))), td.labels)
trs = OcularDataset(20, gen, seed=0)  # training subjects 0-19 (in every run), full grid
idx = torch.randperm(len(trs), generator=torch.Generator().manual_seed(1))[:960]
b = trs.render_truth(idx)
if a.paradigm == "normfree":
    x = iris_crop(b.images, b.iris, a.crop, m.crop_margin)
else:
    x = strip_input(b.images, b.pupil, b.iris, m.strip_size)
print("[training subjects, other captures] all:", metrics(net.embed_inputs(nz(x)), trs.labels[idx]))
