import math

import numpy as np
import torch

from facelab.morphface.geometry import (
    axis_angle_to_matrix,
    euler_to_matrix,
    matrix_to_euler,
    project,
)


def rot(axis, a):
    c, s = math.cos(a), math.sin(a)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def test_euler_convention_and_roundtrip():
    pose = torch.tensor([[0.3, -0.2, 0.5], [-1.0, 0.7, -2.0]], dtype=torch.float64)
    r = euler_to_matrix(pose).numpy()
    for k, (yaw, pitch, roll) in enumerate(pose.tolist()):
        # pitch > 0 tilts the face up: rotation about x by -pitch in a right-handed frame
        want = rot("z", roll) @ rot("x", -pitch) @ rot("y", yaw)
        np.testing.assert_allclose(r[k], want, atol=1e-12)
    torch.testing.assert_close(matrix_to_euler(torch.tensor(r)), pose)


def test_axis_angle_matches_matrix_exponential():
    v = torch.tensor([[0.2, -0.5, 0.9], [1e-6, 0.0, 2e-6], [0.0, 0.0, 0.0]], dtype=torch.float64)
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    k = torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).view(-1, 3, 3)
    torch.testing.assert_close(axis_angle_to_matrix(v), torch.linalg.matrix_exp(k))


def test_pose_directions_on_screen():
    nose = torch.tensor([[[0.0, 0.0, 1.0]]])
    cam = torch.tensor([[1.0, 0.0, 0.0]])
    centre = 16.0

    def px(pose):
        s, _ = project(nose, torch.tensor([pose]), cam, (32, 32))
        return s[0, 0]

    assert px([0.3, 0.0, 0.0])[0] > centre  # yaw > 0: nose to image right
    assert px([0.0, 0.3, 0.0])[1] < centre  # pitch > 0: nose up (screen y is down)
    top = torch.tensor([[[0.0, 1.0, 0.0]]])
    s, _ = project(top, torch.tensor([[0.0, 0.0, 0.3]]), cam, (32, 32))
    assert s[0, 0, 0] < centre  # roll > 0: counter-clockwise, the top goes left
