"""The Flower app (ServerApp = active party, ClientApps = passive parties) over Flower's
message format, in one process (no network, no Ray)."""

import math

import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict

from facelab.core.errors import RangeError
from facelab.vflafe import AlignmentError, ProtocolError, embedding_epsilon
from facelab.vflafe.flower import AppConfig, client_app, run_local, task_identity


def test_the_app_trains_a_vfl_model_without_dp():
    """Calibration (2 epochs = 12 rounds), seeds 0-2: 0.944 / 0.923 / 0.930 with one thread
    and the same with two."""
    outcome, grid = run_local(AppConfig(mode="none", epochs=2, seed=0))
    assert outcome.accuracy > 0.85
    assert len(outcome.step_times) == 2 * (426 // 64)
    assert outcome.epoch_losses[1] < outcome.epoch_losses[0]
    assert math.isinf(outcome.epsilon)
    assert grid.bytes_sent > 2 * 12 * 64 * 16 * 4  # at least the embeddings and gradients


def test_the_app_runs_dp_with_label_protection_and_reports_opacus_epsilon():
    cfg = AppConfig(
        mode="afe",
        epochs=1,
        noise_multiplier=3.0,
        grad_clip_norm=0.05,
        grad_noise_multiplier=1.0,
        noise_seed=1,
    )
    outcome, _ = run_local(cfg)
    assert outcome.epsilon == embedding_epsilon(noise_multiplier=3.0, releases=1, delta=1e-5)
    assert 0.0 <= outcome.accuracy <= 1.0


def test_a_party_with_misaligned_ids_answers_with_an_alignment_error():
    cfg = AppConfig()
    ctx = Context(1, 1000, {"party-id": 0}, RecordDict(), cfg.to_run_config())
    train, test = cfg.data()
    wrong = torch.cat([train.ids[:-1], torch.tensor([10_000])])
    ids = ArrayRecord({"train": Array(wrong.numpy()), "test": Array(test.ids.numpy())})
    with task_identity(1, 1):
        reply = client_app(Message(RecordDict({"ids": ids}), 1000, "query.hello"), ctx)
    assert reply.has_error()
    assert reply.error.reason.startswith("AlignmentError") and "1 missing" in reply.error.reason

    from facelab.vflafe.flower import _check_replies

    with pytest.raises(AlignmentError, match="1 missing"):
        _check_replies([reply], 1, "hello")


def test_bad_node_and_run_configs():
    with pytest.raises(ProtocolError, match="party-id"):
        run_local(AppConfig(epochs=1), node_configs={1000: {"party-id": 0}, 1001: {"party-id": 5}})
    with pytest.raises(RangeError, match="clip_norm"):
        AppConfig(clip_norm=0.0)
