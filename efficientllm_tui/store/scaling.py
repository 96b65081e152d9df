"""Scaling efficiency of a multi-device run, worked out from the store when it is read.

Why at read time: the one-device run it is measured against may be stored before or after
it (or deleted), so nothing is frozen into the run's own rows. The rule: against the latest
`ok` run of the same family, technique, model, batch size (per device), sequence length,
parameters, device kind (GPU name or cpu) and simulated flag on one device, efficiency =
tokens_per_s(N devices) / (N x tokens_per_s(1 device)): weak scaling, each device keeping
its own batch, as DDP and FSDP2 runs do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_SQL = """
SELECT b.run_id, bm.value AS base_tps, m.value AS tps, r.world_size
FROM runs r
JOIN metrics m ON m.run_id = r.run_id AND m.name = 'tokens_per_s'
JOIN runs b ON b.family = r.family AND b.technique = r.technique AND b.model = r.model
  AND b.batch_size = r.batch_size AND b.seq_len = r.seq_len
  AND coalesce(b.params::VARCHAR, '') = coalesce(r.params::VARCHAR, '')
  AND coalesce(b.gpu_name, CASE WHEN b.device LIKE 'cuda%' THEN 'gpu' ELSE 'cpu' END)
    = coalesce(r.gpu_name, CASE WHEN r.device LIKE 'cuda%' THEN 'gpu' ELSE 'cpu' END)
  AND coalesce(b.simulated, false) = coalesce(r.simulated, false)
  AND coalesce(b.world_size, 1) = 1 AND b.status = 'ok'
JOIN metrics bm ON bm.run_id = b.run_id AND bm.name = 'tokens_per_s'
WHERE r.run_id = ? AND coalesce(r.world_size, 1) > 1
  AND m.value IS NOT NULL AND bm.value IS NOT NULL AND bm.value > 0
ORDER BY b.started_at DESC NULLS LAST, b.run_id DESC
LIMIT 1
"""


@dataclass(frozen=True, slots=True)
class Scaling:
    """A multi-device run against the same workload on one device."""

    run_id: str
    world_size: int
    tokens_per_s: float
    """The run's throughput over all its devices."""
    base_run_id: str
    """The one-device run compared against."""
    base_tokens_per_s: float
    speedup: float
    """tokens_per_s / base_tokens_per_s."""
    efficiency: float
    """speedup / world_size (1.0: perfect weak scaling)."""


def scaling(store: Any, run_id: str) -> Scaling | None:
    """The run's scaling against its one-device twin; None for a one-device run or when
    no twin is stored (or either throughput is unknown)."""
    rows = store.query(_SQL, params=[run_id]).rows
    if not rows:
        return None
    base_id, base_tps, tps, world = rows[0]
    speedup = float(tps) / float(base_tps)
    return Scaling(run_id, int(world), float(tps), str(base_id), float(base_tps), speedup,
                   speedup / int(world))
