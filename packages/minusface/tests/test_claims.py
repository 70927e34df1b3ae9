"""The paper's claims on toyfaces, with the toy preset (tiny models, one shared training run).

One session fixture runs the recipe (``train``) with the ``toy`` preset: stage 1, stage 2 and
the RGB ArcFace baseline through core's recipe with the same data, backbone, head and stage-2
schedule. The tests compare MinusFace with that baseline, with chance and with attacks and
images computed here, never with numbers taken from the package.
"""

import dataclasses

import pytest

from facelab.core.data.toyfaces import ToyFaces
from facelab.core.privacy import AttackConfig, InversionAttack, identity_leakage, psnr, ssim
from facelab.core.recipe import TOY_HELDOUT_OFFSET, build_eval_sets, evaluate_sets
from facelab.minusface import MinusFaceClient, MinusFacePipeline, minusface_presets, train
from facelab.minusface.protocol import to_model_input


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory):
    toy = minusface_presets()["toy"]

    def quiet(stage):
        return dataclasses.replace(stage, progress=False, save_on_exit=False, checkpoint_every=None)

    cfg = dataclasses.replace(
        toy,
        output_dir=str(tmp_path_factory.mktemp("minusface-toy")),
        stage1=quiet(toy.stage1),
        stage2=quiet(toy.stage2),
        evaluate=False,  # verified below, MinusFace and the baseline alike
        baseline=True,
    )
    result = train(cfg)
    return {
        "cfg": cfg,
        "generator": result.generator.eval(),
        "recognizer": result.recognizer.eval(),
        "baseline": result.baseline.model.eval(),
    }


@pytest.fixture(scope="session")
def faces(toy_run):
    """Faces of people outside the training and verification sets (the toy preset's nuisance)."""
    difficulty = toy_run["cfg"].data.toy_difficulty
    victims = ToyFaces(
        16, 4, size=32, seed=11, identity_offset=3 * TOY_HELDOUT_OFFSET, difficulty=difficulty
    )
    adversary = ToyFaces(
        40, 4, size=32, seed=12, identity_offset=4 * TOY_HELDOUT_OFFSET, difficulty=difficulty
    )
    return {
        "victims": victims.render(slice(None)),
        "adversary": adversary.render(slice(None)),
    }


def observe(generator, images, *, shuffle, seed):
    """What the server receives, as the attack's input: X_p (or d(r) without shuffling)."""
    client = MinusFaceClient(generator, seed=seed, shuffle=shuffle)
    return to_model_input(client.protect(images))


def test_stage2_recognizer_is_well_above_chance_and_near_the_baseline(toy_run):
    (heldout,) = build_eval_sets(toy_run["cfg"].data)  # identities never seen in training
    pipe = MinusFacePipeline(toy_run["generator"], toy_run["recognizer"], seed=0)
    acc = evaluate_sets(pipe, [heldout], flip=False)[heldout.name].accuracy
    base = evaluate_sets(toy_run["baseline"], [heldout], flip=False)[heldout.name].accuracy
    p_same = float(heldout.issame.float().mean())
    chance = max(p_same, 1 - p_same)  # always answering the majority label
    print(f"MinusFace {acc:.3f}, RGB baseline {base:.3f}, chance {chance:.3f}")
    # measured: 0.768 vs 0.920 here; 0.77-0.84 over other stage-1/stage-2 seeds, baselines
    # 0.92-0.94: at this budget (200 stage-2 steps) the recognizer of protected images, which
    # must become invariant to the random permutations, is still ~0.1-0.15 behind (README)
    assert base > chance + 0.3  # the baseline itself learned
    assert acc > chance + 0.22  # well above chance
    assert base - acc < 0.2  # most of the baseline's margin over chance is kept


def test_protected_images_look_unlike_the_faces(toy_run, faces):
    x = faces["victims"]
    xp = observe(toy_run["generator"], x, shuffle=True, seed=1)
    unshuffled = observe(toy_run["generator"], x, shuffle=False, seed=1)
    # a reference for "unlike this face": another person's face (the next identity's image)
    other = x.roll(4, dims=0)
    s_xp = float(ssim(xp, x).mean())
    s_plain = float(ssim(unshuffled, x).mean())
    s_other = float(ssim(other, x).mean())
    print(f"SSIM to the face: X_p {s_xp:.3f}, d(r) {s_plain:.3f}, another face {s_other:.3f}")
    assert s_xp < 0.2
    assert s_xp < s_other  # X_p resembles the face less than a stranger's face does
    assert s_plain > s_xp + 0.3  # the residue itself still shows the face: the shuffle hides it


def test_inversion_from_protected_images_is_clearly_worse_than_without_shuffling(toy_run, faces):
    gen, victims, adversary = toy_run["generator"], faces["victims"], faces["adversary"]
    recognizer = toy_run["baseline"]  # independent of MinusFace: RGB ArcFace
    scores = {}
    for name, shuffle in (("shuffled", True), ("unshuffled", False)):
        attack = InversionAttack(AttackConfig(width=8, depth=2), seed=0, device="cpu")
        attack.fit(
            observe(gen, adversary, shuffle=shuffle, seed=2),
            adversary,
            steps=60,
            batch_size=32,
            lr=3e-3,
        )
        rec = attack.reconstruct(observe(gen, victims, shuffle=shuffle, seed=3))
        scores[name] = {
            "ssim": float(ssim(rec, victims).mean()),
            "psnr": float(psnr(rec, victims).mean()),
            "leakage": float(identity_leakage(recognizer, victims, rec).mean()),
        }
    # the no-information attack: the adversary's mean face
    mean = adversary.mean(0, keepdim=True).expand_as(victims).contiguous()
    scores["mean face"] = {
        "ssim": float(ssim(mean, victims).mean()),
        "psnr": float(psnr(mean, victims).mean()),
        "leakage": float(identity_leakage(recognizer, victims, mean).mean()),
    }
    print({k: {m: round(v, 3) for m, v in s.items()} for k, s in scores.items()})
    shuf, plain, mean = scores["shuffled"], scores["unshuffled"], scores["mean face"]
    assert shuf["ssim"] < plain["ssim"] - 0.25
    assert shuf["psnr"] < plain["psnr"] - 4.0
    assert shuf["leakage"] < plain["leakage"] - 0.15
    # and from X_p the attack recovers little of the face's appearance beyond the mean face
    # (identity leakage stays above the mean face's, measured 0.32 vs 0.06: X_p is made to be
    # recognizable, and the attack's blurry silhouettes carry some of that)
    assert shuf["ssim"] < mean["ssim"] + 0.1
    assert shuf["psnr"] < mean["psnr"] + 2.0
    # the unshuffled attack did learn (so the comparison means something)
    assert plain["ssim"] > mean["ssim"] + 0.25
