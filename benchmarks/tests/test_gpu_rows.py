"""``python -m facelab.benchmarks.gpu_rows`` (the GPU check's benchmark rows)."""

from pathlib import Path

import pytest

from facelab.benchmarks import gpu_rows


def test_cuda_bench_names_the_modules_with_cuda_rows():
    """CUDA_BENCH (what the GPU check runs by default) is every <method>_bench module whose
    source has a CUDA path, so a module that gains GPU rows is not left out of the check."""
    here = Path(gpu_rows.__file__).parent
    with_cuda = sorted(
        p.stem.removesuffix("_bench") for p in here.glob("*_bench.py") if "cuda" in p.read_text()
    )
    assert with_cuda == sorted(gpu_rows.CUDA_BENCH)
    assert sorted(gpu_rows.cpu_bench() + list(gpu_rows.CUDA_BENCH)) == sorted(
        p.stem.removesuffix("_bench") for p in here.glob("*_bench.py")
    )


def test_resolve_imports_every_producer_and_runs_none(capsys):
    assert gpu_rows.main(["--resolve", "--all-bench"]) == 0
    out = capsys.readouterr().out.splitlines()
    labels = [line.split(":")[0].removeprefix("-- ") for line in out]
    assert sorted(labels) == sorted(set(gpu_rows.producers(True)) - set(gpu_rows.CORE))
    assert all(line.endswith("resolved (not run)") for line in out), out


def test_rows_are_printed_with_their_producer(capsys):
    assert gpu_rows.main(["--small", "--only", "codec"]) == 0
    out = capsys.readouterr().out.splitlines()
    n = len(out) - 1  # 4 CPU rows, and one more on CUDA
    assert n >= 4 and out[-1].startswith(f"-- codec: {n} rows,"), out
    assert all(line.startswith("codec compact encode") and " | x" in line for line in out[:n])


def test_unknown_producer_is_bad_input(capsys):
    with pytest.raises(SystemExit) as exc:
        gpu_rows.main(["--only", "nonesuch"])
    assert exc.value.code == 2
    assert "gpu_rows: error: --only: unknown producer(s) ['nonesuch']" in capsys.readouterr().err
