"""Store benchmark: bulk insert paths, and the TUI's run list over a large database.

Run: `.venv/bin/python benchmarks/bench_store.py [--samples 20000] [--runs 10000]
[--samples-per-run 1000]`. It works in a temporary dir and prints a short table.

(a) Inserting N samples row by row (executemany) against the Arrow path `Store.ingest` uses.
(b) A database of 10,000 runs and 10,000,000 samples, generated inside DuckDB with range()
    (no Python loops), then `Store.list_runs(limit=200)` timed in a fresh process (first call,
    fresh connection; the OS page cache is warm, as right after the build) and warm in this
    one, with a few other reads the TUI makes.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from efficientllm_tui.store.bundle import RunBundle  # noqa: E402
from efficientllm_tui.store.db import Store  # noqa: E402
from efficientllm_tui.store.schema import METRIC_DIRECTIONS  # noqa: E402
from profiling.sample import FIELD_NAMES, Sample  # noqa: E402

T0_NS = 1_800_000_000_000_000_000


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _samples(n: int) -> list[Sample]:
    return [
        Sample(
            t_ns=T0_NS + i * 100_000_000,
            host="bench",
            device=f"gpu{i % 2}",
            source="nvml",
            mem_used_bytes=10**9 + i,
            mem_total_bytes=80 * 10**9,
            util_pct=90.0,
            sm_active_pct=55.5,
            power_w=300.0 + i % 50,
            sm_clock_mhz=1980.0,
            temp_c=60.0,
        )
        for i in range(n)
    ]


def bench_insert(tmp: Path, n: int) -> list[tuple[str, str]]:
    """executemany vs the Arrow path, both inserting the same N samples."""
    samples = _samples(n)
    rows = [("r", *(getattr(s, f) for f in FIELD_NAMES)) for s in samples]
    slow = Store(tmp / "executemany.duckdb")
    with slow.connect():  # schema first, so only the insert is timed
        pass

    def row_by_row() -> None:
        with slow.connect() as con:
            marks = ", ".join("?" * (1 + len(FIELD_NAMES)))
            con.execute("BEGIN TRANSACTION")
            con.executemany(f"INSERT INTO samples VALUES ({marks})", rows)
            con.execute("COMMIT")

    fast = Store(tmp / "arrow.duckdb")
    with fast.connect():
        pass
    bundle = RunBundle(run={"run_id": "r", "status": "ok"}, samples=samples)
    t_many, _ = _timed(row_by_row)
    t_arrow, _ = _timed(lambda: fast.ingest(bundle))
    assert slow.stats()["rows"]["samples"] == fast.stats()["rows"]["samples"] == n
    return [
        (f"insert {n:,} samples: executemany", f"{t_many:.3f} s"),
        (f"insert {n:,} samples: Store.ingest (Arrow)", f"{t_arrow:.3f} s"),
        ("  ratio executemany / Arrow", f"{t_many / t_arrow:.0f}x"),
    ]


_RUN_ID = (
    "strftime(TIMESTAMPTZ '2027-01-01 00:00:00+00' + to_minutes(({i}) * 7), '%Y%m%d-%H%M%S')"
    " || '-' || printf('%04x', ({i}) % 65536) || '-tiny-' || "
    "(['fp32', 'bf16', 'fp16', 'int8', 'int4'])[({i}) % 5 + 1]"
)


def build_big(path: Path, n_runs: int, per_run: int) -> list[tuple[str, str]]:
    """10k runs, 10M samples, 10 metrics and 20 steps a run, generated with range()."""
    store = Store(path)
    metrics = list(METRIC_DIRECTIONS)
    t = time.perf_counter()
    with store.connect() as con:
        con.execute(f"""
INSERT INTO runs (run_id, family, technique, model, group_name, device, seed, batch_size,
                  status, simulated, weights, params, created_at, started_at, ended_at, host)
SELECT {_RUN_ID.format(i="i")}, 'inference', (['fp32', 'bf16', 'fp16', 'int8', 'int4'])[i % 5 + 1],
       (['tiny', 'qwen2.5-0.5b'])[i % 2 + 1], 'bit_width', 'cuda:0', 0, 1,
       CASE WHEN i % 50 = 0 THEN 'failed' ELSE 'ok' END, false, 'random', '{{}}',
       TIMESTAMPTZ '2027-01-01 00:00:00+00' + to_minutes(i * 7),
       TIMESTAMPTZ '2027-01-01 00:00:00+00' + to_minutes(i * 7),
       TIMESTAMPTZ '2027-01-01 00:05:00+00' + to_minutes(i * 7), 'bench'
FROM range({n_runs}) t(i)""")
        con.execute(
            f"""
INSERT INTO metrics
SELECT {_RUN_ID.format(i="i")}, m.name, (hash(i, m.name) % 1000) / 1000.0, '', 'bench'
FROM range({n_runs}) t(i), (SELECT unnest(?::VARCHAR[]) AS name) m""",
            [metrics],
        )
        con.execute(f"""
INSERT INTO steps (run_id, step, phase, t_ns, latency_s, tokens)
SELECT {_RUN_ID.format(i="k // 20")}, (k % 20)::INTEGER, 'measure',
       {T0_NS} + k * 1000000, 0.01 + (k % 7) / 1000.0, 32
FROM range({n_runs * 20}) t(k)""")
        t_meta = time.perf_counter() - t
        t = time.perf_counter()
        # Samples in run order, as ingest writes them: each run's rows are contiguous.
        con.execute(f"""
INSERT INTO samples
SELECT {_RUN_ID.format(i=f"k // {per_run}")}, {T0_NS} + k * 100000000, 'bench',
       'gpu0', 'nvml', 1000000000 + k % 1000, 80000000000, 90.0, 55.0 + k % 40, NULL, NULL,
       300.0 + k % 50, 1980.0, 60.0, NULL, NULL
FROM range({n_runs * per_run}) t(k)""")
    t_samples = time.perf_counter() - t
    stats = store.stats()
    return [
        (f"build: {n_runs:,} runs + metrics + steps (SQL)", f"{t_meta:.2f} s"),
        (f"build: {stats['rows']['samples']:,} samples (SQL range())", f"{t_samples:.2f} s"),
        ("database file", f"{stats['file_bytes'] / 2**20:.0f} MiB"),
    ]


_COLD = """
import sys, time
t = time.perf_counter()
from efficientllm_tui.store.db import Store
t_import = time.perf_counter() - t
t = time.perf_counter()
rows = Store(sys.argv[1]).list_runs(limit=200)
print(t_import, time.perf_counter() - t, len(rows))
"""


def bench_reads(path: Path, per_run: int) -> list[tuple[str, str]]:
    out = subprocess.run(
        [sys.executable, "-c", _COLD, str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.split()
    t_import, t_cold, n = float(out[0]), float(out[1]), int(out[2])
    rows = Store(path).stats()["rows"]
    n_runs, n_samples = rows["runs"], rows["samples"]
    assert n == min(200, n_runs)
    store = Store(path)

    def best(fn: Callable[[], Any], repeat: int = 5) -> float:
        return statistics.median(_timed(fn)[0] for _ in range(repeat))

    run_id = store.list_runs(limit=1, offset=n_runs // 2)[0]["run_id"]
    res: list[tuple[str, str]] = [
        ("list_runs(limit=200), cold process, first call", f"{t_cold:.3f} s"),
        ("  (import of efficientllm_tui.store.db in that process)", f"{t_import:.3f} s"),
        ("list_runs(limit=200), warm, median of 5", f"{best(store.list_runs):.3f} s"),
        (
            "list_runs(order_by='it', limit=200), median",
            f"{best(lambda: store.list_runs(order_by='it')):.3f} s",
        ),
        ("get_run(id), median", f"{best(lambda: store.get_run(run_id)):.3f} s"),
        (
            f"samples(id) -> {per_run:,} of {n_samples:,} rows, median",
            f"{best(lambda: store.samples(run_id)):.3f} s",
        ),
        ("leaderboard() over every run, median", f"{best(store.leaderboard, 3):.3f} s"),
        ("stats() (count(*) of every table), median", f"{best(store.stats):.3f} s"),
    ]
    extra = RunBundle(run={"run_id": "extra", "status": "ok"}, samples=_samples(20_000))
    res.append(
        ("ingest 20k-sample run into the big DB", f"{_timed(lambda: store.ingest(extra))[0]:.3f} s")
    )
    res.append(
        (
            "re-ingest the same run (delete + insert)",
            f"{_timed(lambda: store.ingest(extra))[0]:.3f} s",
        )
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=20_000, help="rows for the insert comparison")
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--samples-per-run", type=int, default=1_000)
    args = ap.parse_args()
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench_store-") as tmp:
        rows += bench_insert(Path(tmp), args.samples)
        big = Path(tmp) / "big.duckdb"
        rows += build_big(big, args.runs, args.samples_per_run)
        rows += bench_reads(big, args.samples_per_run)
    width = max(len(k) for k, _ in rows)
    print(f"{'measurement':<{width}}  result")
    print(f"{'-' * width}  ------")
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
