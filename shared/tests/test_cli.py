import pytest

from facelab.core import cli
from facelab.core.errors import RangeError


def test_help_lists_installed_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "version" in out and "selfcheck" in out


def test_unknown_command_names_the_valid_ones(capsys):
    assert cli.main(["nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'nope'" in err and "version" in err


def test_version_lists_core(capsys):
    assert cli.main(["version"]) == 0
    out = capsys.readouterr().out
    assert "facelab-core 0.1" in out


def test_selfcheck_passes(capsys):
    assert cli.main(["selfcheck"]) == 0
    assert "checks passed" in capsys.readouterr().out


def test_lazy_exports_resolve():
    import facelab.core as core
    import facelab.core.data as data

    for name in core.__all__:
        assert getattr(core, name) is not None, name
    for name in data.__all__:
        assert getattr(data, name) is not None, name


class _EntryPoint:
    def __init__(self, fn):
        self.fn = fn

    def load(self):
        return self.fn


@pytest.fixture
def fake_command(monkeypatch):
    def install(exc):
        def run(argv):
            raise exc

        monkeypatch.setattr(cli, "discover_commands", lambda: {"boom": _EntryPoint(run)})

    return install


@pytest.mark.parametrize(
    "exc",
    [
        RangeError("alpha: expected a value in (0, 1], got 1.5"),
        FileNotFoundError("model: /no/such/dir is not a directory"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_2(fake_command, capsys, monkeypatch, exc):
    monkeypatch.delenv("FACELAB_TRACEBACK", raising=False)
    fake_command(exc)
    assert cli.main(["boom", "--x"]) == 2
    err = capsys.readouterr().err
    assert err == f"facelab boom: error: {exc}\n"
    monkeypatch.setenv("FACELAB_TRACEBACK", "1")  # the traceback on request
    with pytest.raises(type(exc)):
        cli.main(["boom"])


def test_other_errors_keep_their_traceback(fake_command):
    fake_command(ZeroDivisionError("a bug"))
    with pytest.raises(ZeroDivisionError):
        cli.main(["boom"])
    fake_command(ValueError("not a facelab error"))
    with pytest.raises(ValueError):
        cli.main(["boom"])
