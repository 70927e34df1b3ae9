"""The ImmerIris speed rows: the columns of the speed table, and the compared sides do equal work
(the per-pair numpy reference gives the library's distances on the benchmark's codes)."""

import torch

from facelab.benchmarks.immeriris_bench import _codes, run_immeriris_bench
from facelab.benchmarks.speed import COLUMNS
from facelab.immeriris.hamming import hamming_matrix, reference_hamming_distance


def test_reference_gives_the_library_distances_on_bench_codes():
    a, ma = _codes(3, 0)
    b, mb = _codes(4, 1)
    m = hamming_matrix(a, ma, b, mb).distances
    for i in range(3):
        for j in range(4):
            ref = reference_hamming_distance(
                a[i].numpy(), ma[i].numpy(), b[j].numpy(), mb[j].numpy()
            )
            assert abs(float(m[i, j]) - float(ref)) < 1e-12


def test_small_rows_have_the_columns_and_positive_rates():
    threads = torch.get_num_threads()
    rows = run_immeriris_bench(small=True)
    assert torch.get_num_threads() == threads  # restored
    assert len(rows) == 5
    for r in rows:
        assert list(r) == COLUMNS
        assert r["ours/s"] > 0 and r["reference/s"] > 0
    # the all-vs-all matrix is the row the goal is about; even small it beats the loop
    assert rows[0]["speedup"] > 5
