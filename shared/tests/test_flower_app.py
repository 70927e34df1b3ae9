"""The Flower app project writer: what ``flwr run`` reads back (checked with tomllib)."""

import tomllib
from importlib.metadata import version

import pytest

from facelab.core.errors import FacelabError
from facelab.core.flower_app import toml_value, write_flower_app


def test_project_round_trips_through_a_toml_parser(tmp_path):
    rc = {
        "name": 'a "quoted" \\ value',
        "flag": True,
        "off": False,
        "count": 7,
        "negative": -1,
        "rate": 1e-05,
        "half": 0.5,
    }
    out = write_flower_app(
        tmp_path / "app",
        distribution="facelab-core",
        server_app="pkg.mod:server_app",
        client_app="pkg.mod:client_app",
        run_config=rc,
        description='an "app"',
    )
    doc = tomllib.loads((out / "pyproject.toml").read_text())
    assert doc["tool"]["flwr"]["app"]["config"] == rc
    assert [type(v) for v in doc["tool"]["flwr"]["app"]["config"].values()] == [
        type(v) for v in rc.values()
    ]
    assert doc["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "pkg.mod:server_app",
        "clientapp": "pkg.mod:client_app",
    }
    assert doc["project"]["name"] == "facelab-core-app"
    assert doc["project"]["version"] == version("facelab-core")
    assert doc["project"]["description"] == 'an "app"'
    assert "facelab-core" in doc["project"]["dependencies"]


def test_bad_values_and_references_are_refused(tmp_path):
    with pytest.raises(FacelabError, match="finite"):
        toml_value(float("nan"))
    with pytest.raises(TypeError, match="list"):
        toml_value([1, 2])
    with pytest.raises(FacelabError, match="module:object"):
        write_flower_app(
            tmp_path / "x",
            distribution="facelab-core",
            server_app="pkg.mod.server_app",
            client_app="pkg.mod:client_app",
            run_config={},
            description="",
        )
    assert not (tmp_path / "x").exists()
