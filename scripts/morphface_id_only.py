"""MorphFace against its ID-only twin on the toy data (issue: "identity consistency within a
margin of the ID-only generator", "higher FR accuracy than the ID-only generator's dataset").

The twin is the same network, data, recipe, steps and seed without the style encoder
(``--no-use-style``). Both write a dataset of the same identities and size (the quick synthesis
suite's: 24 identities x 16 images, 10 DDIM steps, x0 clipping; MorphFace's styles from its
fitted prior); then

* identity consistency under a toy recognizer trained on the real styled toyfaces (core
  ``identity_consistency``: genuine minus impostor cosine, identification against the real
  images of the same identities);
* per-subject style statistics read from the images: a pose / expression regressor trained
  on the real styled toyfaces reads yaw, pitch and smile from every image; the ICC (between-
  subject share of the variance) of each dataset against the real data's;
* FRCSyn's toy protocol (``facelab.frcsyn.cross_dataset_table`` through the synthesis suite's
  recipe): AVG accuracy of a recognizer trained on each dataset, and real toyfaces of the same
  size as the baseline.

    facelab morphface train --preset toy --train.seed S --train.output-dir runs/mf-S
    facelab morphface train --preset toy --no-use-style --train.seed S --train.output-dir runs/mf-id-S
    uv run python scripts/morphface_id_only.py --morphface runs/mf-S/generator \\
        --id-only runs/mf-id-S/generator --seed S --workdir results/morphface-id-only-S

(seed 0's MorphFace is the package's shipped toy weights, ``facelab.morphface.bench.
TOY_WEIGHTS``, the default of ``--morphface``.) About 45 CPU-minutes per training (6,000 steps)
and 5 for this script, one thread.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--morphface", default=None, help="default: the package's shipped toy weights")
    p.add_argument("--id-only", required=True, help="generator folder trained with --no-use-style")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="results/morphface-id-only")
    args = p.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from facelab.benchmarks import family_synth
    from facelab.core.data.folders import IdentityFolderDataset
    from facelab.core.diffusion.metrics import identity_consistency
    from facelab.core.diffusion.toy import train_toy_recognizer
    from facelab.morphface.bench import TOY_INFO_FILE, generator_toy_style, write_toy_dataset
    from facelab.morphface.prior import subject_statistics
    from facelab.morphface.toy import REGRESSED, StyledToyFaces, train_style_regressor

    torch.set_num_threads(1)
    from facelab.morphface.bench import TOY_WEIGHTS

    morphface = Path(args.morphface) if args.morphface else TOY_WEIGHTS
    gens = {"MorphFace": morphface, "MorphFace ID-only": Path(args.id_only)}
    info = gens["MorphFace"] / TOY_INFO_FILE
    if not (gens["MorphFace ID-only"] / TOY_INFO_FILE).is_file():
        # the CLI writes no toy info; the twin was trained on the same toy data
        shutil.copy(info, gens["MorphFace ID-only"] / TOY_INFO_FILE)
    s = family_synth.settings("quick", args.seed)
    work = Path(args.workdir)
    datasets = {}
    for name, weights in gens.items():
        dest = work / "datasets" / name.replace(" ", "_")
        if not (dest / "manifest.json").is_file():
            write_toy_dataset(
                weights,
                dest,
                identities=s["identities"],
                images_per_identity=s["images_per_identity"],
                seed=args.seed,
                image_size=s["image_size"],
                num_steps=s["num_steps"],
                progress=False,
            )
        datasets[name] = dest

    doc = json.loads(info.read_text())
    toy = doc["contexts"]
    real_set = StyledToyFaces(  # the generators' training data (the toy preset's)
        s["identities"],
        int(doc["styles"]["images_per_identity"]),
        size=int(toy["image_size"]),
        seed=int(toy["toy_seed"]),
        difficulty=toy["toy_difficulty"],
        style=generator_toy_style(gens["MorphFace"]),
    )
    real = real_set.materialize(torch.float32)
    recognizer = train_toy_recognizer(real, real_set.labels, steps=300, seed=args.seed).eval()
    # per-subject style statistics read from the images: a regressor trained on the real set
    # reads yaw / pitch / smile; ICC = between-subject share of the variance
    regressor = train_style_regressor(
        real, real_set.regression_targets(), steps=400, seed=args.seed
    ).eval()

    def style_iccs(images, labels) -> dict[str, float]:
        with torch.no_grad():
            read = regressor(images)
        return {
            f"{n}_icc_read": subject_statistics(read[:, k], labels)["icc"]
            for k, n in enumerate(REGRESSED)
            if n in ("yaw", "pitch", "smile")
        }

    with torch.no_grad():
        ref = F.normalize(recognizer(real), dim=1)
    out: dict[str, dict[str, float]] = {}
    for name, folder in datasets.items():
        data = IdentityFolderDataset(folder)
        x, y = torch.stack([data[i][0] for i in range(len(data))]), data.labels
        if x.shape[-1] != real.shape[-1]:
            x = F.interpolate(x, size=real.shape[-2:], mode="bilinear", antialias=True)
        with torch.no_grad():
            e = F.normalize(recognizer(x), dim=1)
        c = identity_consistency(e, y, references=ref, reference_labels=real_set.labels)
        out[name] = {k: float(v) for k, v in c.items()} | style_iccs(x, torch.as_tensor(y))
    # the real data's own (the generators' training set, the same identities)
    out["real toyfaces"] = style_iccs(real, real_set.labels)
    table, _ = family_synth._score(datasets, s, work, False, None, None)
    rows, _ = family_synth._rows(table, {})
    for r in rows:
        out.setdefault(r["dataset"], {}).update({"frcsyn_avg": r["avg"], "gap": r["gap"]})
    (work / "result.json").write_text(json.dumps({"seed": args.seed, "results": out}, indent=2))
    for name, v in out.items():
        print(name, json.dumps({k: round(x, 4) for k, x in v.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
