import numpy as np
import pytest
import torch

from facelab.core.errors import RangeError, ShapeError, UnknownNameError
from facelab.vflafe import AlignmentError, align, breast_cancer, digits, load, toyfaces


def test_align_reorders_a_shuffled_party_to_the_active_order():
    active = torch.tensor([10, 3, 7, 42, 5])
    perm = torch.tensor([3, 0, 4, 1, 2])
    party_ids = active[perm]
    rows = party_ids.float().unsqueeze(1) * torch.ones(1, 3)  # row content = its id
    got = align(active, party_ids, rows)
    assert torch.equal(got[:, 0].long(), active)


@pytest.mark.parametrize(
    ("party_ids", "msg"),
    [
        ([10, 3, 7, 42], "1 missing"),
        ([10, 3, 7, 42, 5, 99], "1 extra"),
        ([10, 3, 7, 42, 6], "1 missing .* and 1 extra"),
        ([10, 3, 7, 42, 42], "repeated"),
    ],
)
def test_align_rejects_ids_that_do_not_match(party_ids, msg):
    active = torch.tensor([10, 3, 7, 42, 5])
    p = torch.tensor(party_ids)
    with pytest.raises(AlignmentError, match=msg):
        align(active, p, torch.zeros(len(p), 2))


def test_rows_of_finds_ids_and_rejects_unknown_ones():
    train, _ = breast_cancer()
    pick = train.ids[[5, 0, 17]]
    assert train.rows_of(pick).tolist() == [5, 0, 17]
    with pytest.raises(AlignmentError, match="unknown"):
        train.rows_of(torch.tensor([10_000]))


def test_breast_cancer_blocks_and_per_party_standardization():
    from sklearn.datasets import load_breast_cancer

    train, test = breast_cancer(parties=3)
    assert [s for s in train.feature_shapes] == [(10,), (10,), (10,)]
    assert len(train) + len(test) == 569 and train.num_classes == 2
    assert set(train.ids.tolist()).isdisjoint(test.ids.tolist())
    for x in train.parties:  # standardized on the party's own training rows
        assert torch.allclose(x.mean(0), torch.zeros(10), atol=1e-4)
    x, y = load_breast_cancer(return_X_y=True)
    i = int(train.ids[0])
    assert int(train.labels[0]) == y[i]
    # party 1 holds columns 10..19 (standardized): the ordering of a column's values is kept
    col = x[train.ids.numpy(), 12]
    assert np.array_equal(
        np.argsort(col, kind="stable"), np.argsort(train.parties[1][:, 2].numpy(), kind="stable")
    )


def test_digits_parties_hold_image_column_blocks():
    from sklearn.datasets import load_digits

    train, _ = digits(parties=2)
    images = load_digits().images / 16.0
    i = int(train.ids[3])
    left = train.parties[0][3].reshape(8, 4).numpy()
    right = train.parties[1][3].reshape(8, 4).numpy()
    np.testing.assert_allclose(left, images[i][:, :4], rtol=1e-6)
    np.testing.assert_allclose(right, images[i][:, 4:], rtol=1e-6)


def test_toyfaces_parties_hold_horizontal_bands():
    train, test = toyfaces(parties=2, num_identities=4, images_per_identity=4, size=32)
    assert train.feature_shapes == [(3, 16, 32), (3, 16, 32)]
    assert train.num_classes == 4 and len(train) + len(test) == 16
    assert float(train.parties[0].abs().max()) <= 1.0


def test_bad_loader_arguments():
    with pytest.raises(RangeError, match="parties"):
        breast_cancer(parties=0)
    with pytest.raises(RangeError, match="parties"):
        digits(parties=9)
    with pytest.raises(ShapeError, match="multiple of parties"):
        toyfaces(parties=3, num_identities=2, images_per_identity=2, size=32)
    with pytest.raises(UnknownNameError, match="dataset"):
        load("mnist")
