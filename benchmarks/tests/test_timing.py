import math
import time

from facelab.benchmarks.speed import COLUMNS
from facelab.benchmarks.timing import interleaved_cpu_times, speed_row


def test_interleaved_cpu_times_alternates_and_times_each_function():
    calls: list[str] = []

    def busy(name, seconds):
        def f():
            calls.append(name)
            t0 = time.process_time()
            while time.process_time() - t0 < seconds:
                pass

        return f

    fast, slow = interleaved_cpu_times([busy("a", 0.002), busy("b", 0.02)], repeat=3, warmup=1)
    assert calls == ["a", "b"] * 4  # one warm-up turn, then three timed turns, in alternation
    assert 0.002 <= fast < slow and slow >= 0.02


def test_speed_row_has_the_speed_columns_and_the_ratio():
    row = speed_row("b", "ours", "ref", 30.0, 10.0, "n")
    assert set(COLUMNS) <= set(row) and row["speedup"] == 3.0
    assert math.isnan(speed_row("b", "o", "r", 1.0, 0.0, "")["speedup"])
