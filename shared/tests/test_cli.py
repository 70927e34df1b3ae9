from facelab.core import cli


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
