"""MorphFace's style-control claim at test size, on the toy generators this package ships.

The generator (``bench.TOY_WEIGHTS``): the ``toy`` preset (32 px styled toyfaces, 24 identities
x 40 images, the procedural 3DMM; the renderings as style tokens *and* pixel-aligned at the
denoiser's input; the ID vector dropped in half of the steps; 6,000 steps of 16, training seed
0), float16 on disk. ``uv run python scripts/make_toy_weights.py --generators morphface
--force`` remakes it (about 2,500 CPU-s).

Measurement (``bench.style_response``): 32 held-out real styled toyfaces images each give an
identity (its ID vector), a style (the image's own 3DMM parameters) and a noise seed. The yaw
(then the pitch) of the style is moved by -d/2 and +d/2 (d = its standard deviation over the
real images: 14.7 / 6.7 degrees) and both are sampled from the same noise (10 DDIM steps, the
generator's guidance defaults); a pose / expression regressor trained on the other real images
reads the attributes back. ``gain`` = mean (read(+) - read(-)) / d (1 = the images follow the
request exactly; the same network without style gives identical images: 0), ``positive`` = the
share of requests that moved the requested way. Identity: closed-set identification (24
identities, chance 0.042) of the images sampled with their own style and of the same network
and noise without style (null tokens, zero maps: the network sampled as an ID-only generator),
by a toy recognizer trained on the real images.

Claims checked: (1) style control: a requested yaw or pitch moves the generated head the
requested way, by a sizable fraction of the request, with little effect on the other attribute;
(2) identity with the style stays within IDENTITY_MARGIN of the ID-only sampling of the same
network (the README compares against the separately trained ID-only twin as well).

A second training seed of the same preset (not shipped; README) passes the same thresholds on
measurement seeds 0 / 1 / 2: yaw gain 0.46 / 0.28 / 0.29 (positive 0.84 / 0.81 / 0.78), pitch
0.42 / 0.42 / 0.36 (0.91 / 1.00 / 0.91), crosstalk 0.01-0.13, identification 0.750 / 0.656 /
0.469 with the own style against 0.531 / 0.406 / 0.438 without.

Calibration (the weights are fixed, so what another machine changes is the float rounding of
sampling and of the regressor / recognizer training; measurement seeds 0-4 on one torch thread
and seed 0 on two stand for it): yaw gain 0.19-0.39, positive 0.75-0.81; pitch gain
0.34-0.51, positive 0.78-0.94; crosstalk 0.02-0.11; identification with the own style
0.500-0.750, without style 0.438-0.719 (no-style minus styled: -0.22 to -0.03). Two threads on
seed 0 gave the one-thread pose numbers to the digit (the recognizer: 0.750 / 0.719 against
0.750 / 0.562). Asserted (seed 0): gain > 0.10 (yaw) / 0.15 (pitch), positive > 0.65 / 0.70,
crosstalk < 0.25, identification > 0.25 (chance 0.042) and no more than IDENTITY_MARGIN = 0.10
below the ID-only sampling. A generator that ignores the style gives gain 0 (identical images):
the earlier 1,500-step tokens-only weights measure yaw / pitch gain 0.001 / 0.000 with
positive 0.62 / 0.66 (noise signs) on seed 0, so the gain is what fails a generator without
style control. About 55 CPU-s.

Expression is not asserted on this generator: its paired smile / mouth / brow gain is about 0
(README: at the default toy styles an expression change barely changes a 32 px image). It is
asserted on the second shipped generator, ``bench.TOY_EXPRESSION_WEIGHTS`` (the
``toy-expression`` preset: the same recipe on styled toyfaces whose expression varies mostly
within a subject, mouth opening and brow raise about three times wider; training seed 0,
float16; ``packages/morphface/scripts/make_expression_weights.py``). A requested mouth opening
(d = 0.69) moves the generated mouth: gain 0.134 / 0.054 / 0.135 / 0.113 / 0.106, positive
0.94 / 0.78 / 0.81 / 0.78 / 0.81, crosstalk 0.016-0.032 on measurement seeds 0-4 (one torch
thread, the shipped float16 weights; the float32 run gave seeds 1-2 to within 0.001); seed 0
on two threads gives the one-thread numbers to the digit. Asserted (seed 0, no recognizer,
about 20-30 CPU-s): gain > 0.03 (MOUTH_MIN_GAIN), positive > 0.65, crosstalk < 0.25; the
smallest measured values are 0.054 and 0.78. Smile and brow raise do not follow on it either
(gain 0.002-0.018) and are not asserted.
"""

import pytest

from facelab.morphface.bench import TOY_EXPRESSION_WEIGHTS, TOY_WEIGHTS, style_response

NUM_REQUESTS = 32
DDIM_STEPS = 10
MIN_GAIN = {"yaw": 0.10, "pitch": 0.15}
MIN_POSITIVE = {"yaw": 0.65, "pitch": 0.70}
MAX_CROSSTALK = 0.25
MIN_IDENTIFICATION = 0.25
IDENTITY_MARGIN = 0.10
MOUTH_MIN_GAIN = 0.03
MOUTH_MIN_POSITIVE = 0.65


@pytest.fixture(scope="module")
def response():
    return style_response(
        str(TOY_WEIGHTS),
        attributes=("yaw", "pitch"),
        num_requests=NUM_REQUESTS,
        num_steps=DDIM_STEPS,
        seed=0,
    )


@pytest.mark.parametrize("attribute", ["yaw", "pitch"])
def test_a_requested_pose_moves_the_generated_head(response, attribute):
    r = response[attribute]
    assert r["gain"] > MIN_GAIN[attribute], r
    assert r["positive"] > MIN_POSITIVE[attribute], r
    assert r["crosstalk"] < MAX_CROSSTALK, r


def test_identity_within_the_stated_margin_of_id_only_sampling(response):
    ident = response["identity"]
    styled = ident["generated"]["identification_accuracy"]
    null = ident["no_style"]["identification_accuracy"]
    assert styled > MIN_IDENTIFICATION, (styled, null)
    assert null - styled < IDENTITY_MARGIN, (styled, null)


def test_a_requested_mouth_opening_moves_the_generated_mouth():
    r = style_response(
        str(TOY_EXPRESSION_WEIGHTS),
        attributes=("mouth_open",),
        num_requests=NUM_REQUESTS,
        num_steps=DDIM_STEPS,
        seed=0,
        recognizer_steps=0,
    )["mouth_open"]
    assert r["gain"] > MOUTH_MIN_GAIN, r
    assert r["positive"] > MOUTH_MIN_POSITIVE, r
    assert r["crosstalk"] < MAX_CROSSTALK, r
