"""The 3DMM interface, style parameter files and their bad inputs."""

import numpy as np
import pytest
import torch

from facelab.core.errors import FacelabError, FormatError, NonFiniteError, RangeError, ShapeError
from facelab.morphface.geometry import axis_angle_to_matrix, euler_to_matrix
from facelab.morphface.morphable import MorphableModel
from facelab.morphface.params import StyleLayout, StyleParams, load_params


def tiny_model(nv=5, ks=3, ke=2, ka=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        mean_shape=torch.randn(nv, 3, generator=g),
        shape_basis=torch.randn(nv, 3, ks, generator=g),
        expression_basis=torch.randn(nv, 3, ke, generator=g),
        faces=torch.tensor([[0, 1, 2], [1, 3, 2], [2, 3, 4]]),
        albedo_mean=torch.rand(nv, 3, generator=g),
        albedo_basis=0.1 * torch.randn(nv, 3, ka, generator=g),
        landmarks=torch.tensor([0, 4]),
    )


def test_vertices_and_albedo_are_the_linear_model():
    arrays = tiny_model()
    m = MorphableModel(**arrays)
    s, e, a = torch.randn(4, 3), torch.randn(4, 2), torch.randn(4, 1)
    want = (
        arrays["mean_shape"].numpy()[None]
        + np.einsum("vck,bk->bvc", arrays["shape_basis"].numpy(), s.numpy())
        + np.einsum("vck,bk->bvc", arrays["expression_basis"].numpy(), e.numpy())
    )
    np.testing.assert_allclose(m.vertices(s, e).numpy(), want, atol=1e-5)
    alb = arrays["albedo_mean"].numpy()[None] + np.einsum(
        "vck,bk->bvc", arrays["albedo_basis"].numpy(), a.numpy()
    )
    np.testing.assert_allclose(m.albedo(a).numpy(), np.clip(alb, 0, 1), atol=1e-6)
    # the flat (3V, K) layout of BFM / FLAME files is accepted
    flat = dict(arrays, shape_basis=arrays["shape_basis"].reshape(15, 3))
    torch.testing.assert_close(MorphableModel(**flat).vertices(s, e), m.vertices(s, e))
    # the expression's own displacement, and its per-mode scale from a per-vertex loop
    np.testing.assert_allclose(
        m.expression_offsets(e).numpy(),
        m.vertices(s, e).numpy() - m.vertices(s, None).numpy(),
        atol=1e-5,
    )
    basis = arrays["expression_basis"].numpy()
    largest = [max(np.linalg.norm(basis[v, :, k]) for v in range(5)) for k in range(2)]
    assert m.expression_scale == pytest.approx(float(np.mean(largest)), rel=1e-6)


def test_save_load_roundtrip_safetensors_and_npz(tmp_path):
    m = MorphableModel(**tiny_model(), name="tiny")
    back = MorphableModel.load(m.save(tmp_path / "m.safetensors"))
    npz = tmp_path / "m.npz"
    np.savez(npz, **{k: v.numpy() for k, v in tiny_model().items()})
    for other in (back, MorphableModel.load(npz)):
        for k, v in m.tensors().items():
            torch.testing.assert_close(other.tensors()[k], v)


def test_procedural_head_is_a_closed_outward_mesh(head):
    v, f = head.mean_shape.double(), head.faces
    tri = v[f]
    # a closed, consistently oriented surface has positive signed volume and every edge twice
    vol = (tri[:, 0] * torch.linalg.cross(tri[:, 1], tri[:, 2], dim=-1)).sum() / 6
    assert vol > 0
    edges = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    directed = set(map(tuple, edges.tolist()))
    assert len(directed) == edges.shape[0]  # no directed edge repeats
    assert all((b, a) in directed for a, b in directed)  # each has its twin
    # bases move the surface (smile lifts the mouth corners: y up)
    assert head.num_shape == 10 and head.num_expression == 4
    lm = head.landmarks
    e = torch.zeros(1, 4)
    e[0, 0] = 1.0
    lift = head.vertices(None, e)[0, lm[3:5], 1] - head.mean_shape[lm[3:5], 1]
    assert (lift > 0).all()


@pytest.mark.parametrize(
    "change, err, match",
    [
        ({"shape_basis": torch.randn(4, 3, 3)}, ShapeError, "shape_basis"),
        ({"expression_basis": torch.randn(5, 2, 2)}, ShapeError, "expression_basis"),
        ({"faces": torch.tensor([[0, 1, 5]])}, RangeError, r"\[0, 5\)"),
        ({"faces": torch.tensor([[0, -1, 2]])}, RangeError, "indices"),
        ({"landmarks": torch.tensor([9])}, RangeError, "landmarks"),
        ({"mean_shape": torch.full((5, 3), float("nan"))}, NonFiniteError, "mean_shape"),
    ],
)
def test_bad_3dmm(change, err, match):
    with pytest.raises(err, match=match):
        MorphableModel(**(tiny_model() | change))


def test_bad_3dmm_files(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, mean_shape=np.zeros((5, 3)), faces=np.zeros((1, 3), dtype=np.int64))
    with pytest.raises(FormatError, match="missing"):
        MorphableModel.load(bad)
    obj = tmp_path / "obj.npz"
    np.savez(obj, mean_shape=np.array([{"a": 1}], dtype=object))
    with pytest.raises(FormatError):  # pickled objects are refused, never executed
        MorphableModel.load(obj)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a file")
    with pytest.raises(FormatError):
        MorphableModel.load(junk)


def random_params(n=6, layout=None, seed=0):
    layout = layout or StyleLayout(3, 2, 1)
    g = torch.Generator().manual_seed(seed)
    return StyleParams(
        shape=torch.randn(n, layout.num_shape, generator=g),
        expression=torch.randn(n, layout.num_expression, generator=g),
        pose=0.3 * torch.randn(n, 3, generator=g),
        camera=torch.rand(n, 3, generator=g),
        light=torch.randn(n, 27, generator=g),
        albedo=torch.randn(n, layout.num_albedo, generator=g),
    )


def test_params_vector_roundtrip_and_file(tmp_path):
    p = random_params()
    vec = p.to_vector()
    assert vec.shape == (6, p.layout.dim) and p.layout.dim == 3 + 2 + 3 + 3 + 27 + 1
    back = p.layout.split(vec)
    torch.testing.assert_close(back.to_vector(), vec)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    q, lab, info = load_params(p.save(tmp_path / "p.safetensors", labels))
    torch.testing.assert_close(q.to_vector(), vec)
    assert torch.equal(lab, labels) and info["pose_convention"] == "euler"


def test_deca_style_npz_with_axis_angle_pose(tmp_path):
    p = random_params()
    aa = 0.4 * torch.randn(6, 3, dtype=torch.float64)
    jaw = torch.randn(6, 3)
    f = tmp_path / "deca.npz"
    np.savez(
        f,
        shape=p.shape.numpy(),
        exp=p.expression.numpy(),
        cam=p.camera.numpy(),
        pose=torch.cat([aa.float(), jaw], 1).numpy(),
        tex=p.albedo.numpy(),
        pose_convention=np.array("axis-angle"),
    )
    q, lab, _info = load_params(f)
    assert lab is None
    torch.testing.assert_close(q.expression, p.expression)
    torch.testing.assert_close(q.albedo, p.albedo)
    # the Euler angles give back the same rotation as the rotation vectors
    torch.testing.assert_close(
        euler_to_matrix(q.pose.double()), axis_angle_to_matrix(aa), atol=1e-5, rtol=0
    )
    # 3DDFA's 3 x 4 camera matrix with a scale
    m = torch.cat([2.5 * euler_to_matrix(p.pose.double()), torch.randn(6, 3, 1).double()], 2)
    g = tmp_path / "3ddfa.npz"
    np.savez(
        g,
        shape=p.shape.numpy(),
        expression=p.expression.numpy(),
        camera=p.camera.numpy(),
        pose=m.reshape(6, 12).numpy(),
        pose_convention=np.array("matrix"),
    )
    r, _, _ = load_params(g)
    torch.testing.assert_close(r.pose, p.pose, atol=1e-5, rtol=0)


def test_bad_params(tmp_path):
    p = random_params()
    with pytest.raises(NonFiniteError, match="pose"):
        StyleParams(**(vars(p) | {"pose": torch.full((6, 3), float("nan"))}))
    with pytest.raises(ShapeError, match="27"):
        StyleParams(**(vars(p) | {"light": torch.zeros(6, 20)}))
    with pytest.raises(ShapeError, match="rows"):
        StyleParams(**(vars(p) | {"camera": torch.zeros(5, 3)}))
    f = tmp_path / "nan.npz"
    np.savez(
        f,
        shape=np.full((2, 3), np.nan),
        expression=np.zeros((2, 2)),
        pose=np.zeros((2, 3)),
        camera=np.zeros((2, 3)),
    )
    with pytest.raises(NonFiniteError):
        load_params(f)
    f2 = tmp_path / "conv.npz"
    np.savez(
        f2,
        shape=np.zeros((2, 3)),
        expression=np.zeros((2, 2)),
        pose=np.zeros((2, 3)),
        camera=np.zeros((2, 3)),
        pose_convention=np.array("quaternion"),
    )
    with pytest.raises(FacelabError, match="pose_convention"):
        load_params(f2)
    f3 = tmp_path / "rows.npz"
    np.savez(
        f3,
        shape=np.zeros((2, 3)),
        expression=np.zeros((3, 2)),
        pose=np.zeros((2, 3)),
        camera=np.zeros((2, 3)),
    )
    with pytest.raises(ShapeError, match="rows"):
        load_params(f3)


def test_bfm_mat_converter(tmp_path):
    from scipy.io import savemat

    from facelab.morphface.converters import bfm_from_mat

    a = tiny_model()
    nv = 5
    # the Deep3DFaceRecon layout: flat (3V,) xyz-interleaved arrays, 1-based indices, 0..255 tex
    flat = {
        "meanshape": a["mean_shape"].numpy().reshape(1, -1),
        "idBase": a["shape_basis"].numpy().reshape(nv * 3, -1),
        "exBase": a["expression_basis"].numpy().reshape(nv * 3, -1),
        "meantex": 255 * a["albedo_mean"].numpy().reshape(1, -1),
        "texBase": 255 * a["albedo_basis"].numpy().reshape(nv * 3, -1),
        "tri": a["faces"].numpy() + 1,
        "keypoints": (a["landmarks"].numpy() + 1).reshape(1, -1),
    }
    savemat(tmp_path / "bfm.mat", flat)
    raw = bfm_from_mat(tmp_path / "bfm.mat", normalize=False)
    ref = MorphableModel(**a)
    s, e = torch.randn(2, 3), torch.randn(2, 2)
    torch.testing.assert_close(raw.vertices(s, e), ref.vertices(s, e))
    torch.testing.assert_close(raw.albedo_mean, ref.albedo_mean)
    assert torch.equal(raw.landmarks, ref.landmarks)
    # faces: the same triangles, oriented so their normals sum towards +z
    assert {frozenset(t) for t in raw.faces.tolist()} == {frozenset(t) for t in a["faces"].tolist()}
    tri = raw.mean_shape[raw.faces]
    n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    assert n[:, 2].sum() > 0
    norm = bfm_from_mat(tmp_path / "bfm.mat")
    ys = norm.mean_shape[:, 1]
    assert float(ys.max() - ys.min()) == pytest.approx(2.0)
    savemat(tmp_path / "bad.mat", {"meanshape": flat["meanshape"]})
    with pytest.raises(FormatError, match="missing BFM"):
        bfm_from_mat(tmp_path / "bad.mat")


def _flame_dict(head):
    """A FLAME-like dict (the keys of generic_model.pkl) around a small closed head mesh."""
    import scipy.sparse as sp

    g = np.random.default_rng(0)
    v = head.mean_shape.numpy().astype(np.float64)
    nv = v.shape[0]
    return {
        "v_template": v,
        "shapedirs": g.normal(size=(nv, 3, 5)) * 0.01,  # 3 identity + 2 expression modes
        "f": head.faces.numpy().astype(np.uint32),
        "J_regressor": sp.csc_matrix(g.random((5, nv)) * (g.random((5, nv)) < 0.1)),
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "weights": g.random((nv, 5)),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_flame_pkl_converter_reads_plain_arrays(tmp_path, protocol):
    import pickle

    from facelab.morphface.converters import flame_from_pkl
    from facelab.morphface.procedural import procedural_3dmm

    head = procedural_3dmm(rings=6, segments=8)
    d = _flame_dict(head)
    d["f"] = d["f"][:, [0, 2, 1]]  # stored inside-out: the converter turns them outwards
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps(d, protocol=protocol))
    m = flame_from_pkl(path, num_shape=3, normalize=False)
    assert (m.num_shape, m.num_expression, m.num_albedo) == (3, 2, 0)
    # vertices == v_template + shapedirs . [shape, expression] (numpy reference)
    s, e = np.array([[0.5, -1.0, 2.0]]), np.array([[1.5, -0.5]])
    want = d["v_template"] + d["shapedirs"] @ np.concatenate([s, e], 1)[0]
    got = m.vertices(torch.tensor(s, dtype=torch.float32), torch.tensor(e, dtype=torch.float32))
    np.testing.assert_allclose(got[0].numpy(), want, rtol=1e-5, atol=1e-5)
    assert {frozenset(t) for t in m.faces.tolist()} == {frozenset(t) for t in d["f"].tolist()}
    tri = m.mean_shape.double()[m.faces]
    assert float((tri[:, 0] * torch.linalg.cross(tri[:, 1], tri[:, 2], dim=-1)).sum()) > 0
    norm = flame_from_pkl(path, num_shape=3)
    ys = norm.mean_shape[:, 1]
    assert float(ys.max() - ys.min()) == pytest.approx(2.0)
    with pytest.raises(FormatError, match="num_shape"):
        flame_from_pkl(path, num_shape=5)


def test_flame_pkl_refuses_anything_else(tmp_path, monkeypatch):
    import os
    import pickle
    import sys
    import types

    from facelab.morphface.converters import flame_from_pkl, safe_load_pickle
    from facelab.morphface.procedural import procedural_3dmm

    sentinel = tmp_path / "keep.txt"
    sentinel.write_text("x")

    class Evil:
        def __reduce__(self):
            return (os.remove, (str(sentinel),))

    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({"v_template": Evil()}, protocol=2))
    with pytest.raises(FormatError, match=r"asks for (posix|os|nt)\.remove"):
        flame_from_pkl(bad)
    assert sentinel.exists()  # nothing ran
    # chumpy objects (the original FLAME release): named, with what to do
    chumpy, ch = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = x

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    ch.Ch, chumpy.ch = Ch, ch
    monkeypatch.setitem(sys.modules, "chumpy", chumpy)
    monkeypatch.setitem(sys.modules, "chumpy.ch", ch)
    d = _flame_dict(procedural_3dmm(rings=6, segments=8))
    d["shapedirs"] = Ch(d["shapedirs"])
    (tmp_path / "chumpy.pkl").write_bytes(pickle.dumps(d, protocol=2))
    monkeypatch.delitem(sys.modules, "chumpy.ch")
    with pytest.raises(FormatError, match=r"chumpy\.ch\.Ch.*re-save the file"):
        flame_from_pkl(tmp_path / "chumpy.pkl")
    # a dict without FLAME's arrays, a non-dict, a truncated file
    (tmp_path / "nokeys.pkl").write_bytes(pickle.dumps({"f": np.zeros((1, 3))}))
    with pytest.raises(FormatError, match="missing FLAME arrays"):
        flame_from_pkl(tmp_path / "nokeys.pkl")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(FormatError, match="expected a dict"):
        flame_from_pkl(tmp_path / "list.pkl")
    (tmp_path / "cut.pkl").write_bytes(pickle.dumps(d | {"shapedirs": np.ones(3)})[:40])
    with pytest.raises(FormatError, match="not a readable"):
        safe_load_pickle(tmp_path / "cut.pkl")


def test_convert_cli_flame(tmp_path, capsys):
    import pickle

    from facelab.morphface.cli import main
    from facelab.morphface.procedural import procedural_3dmm

    d = _flame_dict(procedural_3dmm(rings=6, segments=8))
    (tmp_path / "flame.pkl").write_bytes(pickle.dumps(d, protocol=2))
    out = tmp_path / "flame.safetensors"
    argv = ["convert", "--flame", str(tmp_path / "flame.pkl"), "--out", str(out)]
    assert main([*argv, "--num-shape", "4"]) == 0
    m = MorphableModel.load(out)
    assert (m.num_shape, m.num_expression) == (4, 1) and "4 shape / 1 expression" in (
        capsys.readouterr().out
    )
    with pytest.raises(FormatError, match="exactly one of --bfm"):
        main(["convert", "--out", str(out)])
