"""How what several ranks of one run measured becomes the run's numbers (runners.distributed
starts the ranks; the rules are listed in its module docstring and in COMBINE_RULES)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from runners.protocol import Metric, RunResult

RATE_METRICS = frozenset({"tokens_per_s", "samples_per_s", "tt", "st"})
"""Per-rank rates whose run value is every rank's work over the longest rank's window."""
MEAN_METRICS = frozenset({"loss", "eval_loss", "eval_ppl"})
MAX_METRICS = frozenset({"peak_allocated_gib", "peak_reserved_gib"})
ENERGY_SUMMED = ("energy_j", "aec_w")
LATENCY_METRICS = {"al_s": "mean", "al_p50_s": "p50", "al_p90_s": "p90", "al_p99_s": "p99"}

COMBINE_RULES = {
    "step": "latency_s: the slowest rank's; tokens, samples: summed; loss: mean",
    "tokens_per_s, samples_per_s, tt, st": "every rank's tokens over the longest window",
    "mfu": "every rank's model FLOP/s over world_size x the device peak",
    "al_s": "mean over measured steps of the slowest rank's step latency",
    "energy_j, aec_w": "summed over the run's distinct devices (per device: *_<device>)",
    "j_per_token": "summed energy over every rank's tokens",
    "peak_*_gib": "the largest rank's (per device: *_<device>)",
    "loss, eval_loss, eval_ppl": "mean over ranks",
    "amu, pcu": "per device and the mean over devices (at ingest, from the samples)",
}


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def merge_step(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One step event from every rank's (see the module docstring)."""
    out = dict(parts[0])
    latencies = [_num(p.get("latency_s")) for p in parts]
    known = [x for x in latencies if x is not None]
    out["latency_s"] = max(known) if known else None
    out["rank_latency_s"] = latencies
    for key in ("tokens", "samples", "target_tokens"):
        values = [p.get(key) for p in parts]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            out[key] = sum(values)
    losses = [_num(p.get("loss")) for p in parts]
    if all(x is not None for x in losses):
        out["loss"] = sum(losses) / len(losses)  # type: ignore[arg-type]
    return out



def _value(metric: Metric | None) -> float | None:
    return metric.value if metric is not None else None

def merge_window(parts: Sequence[Mapping[str, Any]], sample_devices: Sequence[str]
                 ) -> dict[str, Any]:
    """One window event from every rank's: the span of all, energy over distinct devices."""
    out = dict(parts[0])
    t0s = [int(p["t0_ns"]) for p in parts if isinstance(p.get("t0_ns"), int)]
    t1s = [int(p["t1_ns"]) for p in parts if isinstance(p.get("t1_ns"), int)]
    if t0s and t1s:
        out["t0_ns"], out["t1_ns"] = min(t0s), max(t1s)
    per_device = _per_device([_num(p.get("energy_j")) for p in parts], sample_devices)
    out["energy_j_per_device"] = per_device
    values = list(per_device.values())
    out["energy_j"] = sum(values) if values and all(v is not None for v in values) else None
    if len(set(sample_devices)) > 1:
        out["device"] = ",".join(sorted(set(sample_devices)))
    return out


def _per_device(values: Sequence[float | None], sample_devices: Sequence[str]
                ) -> dict[str, float | None]:
    """The first rank's value of each distinct device (ranks sharing a device read the same
    counter: counting it twice would double the energy)."""
    out: dict[str, float | None] = {}
    for i, value in enumerate(values):
        dev = sample_devices[i] if i < len(sample_devices) else f"rank{i}"
        out.setdefault(dev, value)
    return out


def combine_results(results: Sequence[RunResult], sample_devices: Sequence[str],
                    measured_latency_s: Sequence[float], extra_info: Mapping[str, Any]
                    ) -> RunResult:
    """The run's result from every rank's (rank 0's first); rules in the module docstring."""
    first = results[0]
    if any(r.status != "ok" for r in results):
        bad = next(r for r in results if r.status != "ok")
        return replace(bad, run_id=first.run_id)
    n = len(results)
    seconds = [_num(r.info.get("measure_s")) for r in results]
    longest = max((s for s in seconds if s is not None), default=None)
    by_name = [{m.name: m for m in r.metrics} for r in results]
    stats = _latency_stats(measured_latency_s)
    out: list[Metric] = []
    for metric in first.metrics:
        name = metric.name
        values = [_value(d.get(name)) for d in by_name]
        value: float | None = metric.value
        if name in RATE_METRICS or name == "mfu":
            work = [v * s for v, s in zip(values, seconds, strict=True)
                    if v is not None and s is not None]
            value = (sum(work) / longest / (n if name == "mfu" else 1)
                     if len(work) == n and longest else None)
        elif name in MEAN_METRICS:
            known = [v for v in values if v is not None]
            value = sum(known) / len(known) if len(known) == n else None
        elif name in MAX_METRICS:
            known = [v for v in values if v is not None]
            value = max(known) if known else None
            out += _device_metrics(metric, values, sample_devices)
        elif name in ENERGY_SUMMED:
            per = _per_device(values, sample_devices)
            known = [v for v in per.values() if v is not None]
            value = sum(known) if len(known) == len(per) else None
            out += _device_metrics(metric, values, sample_devices)
        elif name == "j_per_token":
            value = None
        elif name in LATENCY_METRICS and stats is not None:
            value = stats[LATENCY_METRICS[name]]
        out.append(replace(metric, value=value, note=metric.note if value is None else None,
                           source=metric.source if value is not None or metric.value is None
                           else "none"))
    out = _j_per_token(out, results, seconds)
    info = {**first.info, **extra_info, "combine": COMBINE_RULES,
            "rank_measure_s": seconds,
            "rank_metrics": {name: [_value(d.get(name))
                                    for d in by_name]
                             for name in sorted(RATE_METRICS | MAX_METRICS | {"energy_j"})
                             if name in by_name[0]}}
    return replace(first, metrics=tuple(_explained(out)), info=info)


def _latency_stats(latencies: Sequence[float]) -> dict[str, float | None] | None:
    if not latencies:
        return None
    from profiling import metrics as pm

    return pm.latency_stats(list(latencies))


def _device_metrics(metric: Metric, values: Sequence[float | None],
                    sample_devices: Sequence[str]) -> list[Metric]:
    """`<name>_<device>` for each distinct device of a multi-device run."""
    per = _per_device(values, sample_devices)
    if len(per) < 2:
        return []
    return [Metric(f"{metric.name}_{dev}", value, metric.unit,
                   metric.source if value is not None else "none",
                   None if value is not None else (metric.note or "not measured on " + dev))
            for dev, value in per.items()]


def _j_per_token(metrics: list[Metric], results: Sequence[RunResult],
                 seconds: Sequence[float | None]) -> list[Metric]:
    """j_per_token = the summed energy over every rank's tokens."""
    energy = next((m for m in metrics if m.name == "energy_j"), None)
    tokens = 0.0
    for r, s in zip(results, seconds, strict=True):
        rate = r.metric("tokens_per_s")
        if rate is None or s is None:
            tokens = 0.0
            break
        tokens += rate * s
    out = []
    for m in metrics:
        if m.name == "j_per_token":
            value = energy.value / tokens if energy is not None and energy.value is not None \
                and tokens > 0 else None
            m = replace(m, value=value, source=energy.source if value is not None and energy
                        else "none", note=None if value is not None else (
                            (energy.note if energy is not None else None)
                            or "no energy reading over the run's devices"))
        out.append(m)
    return out


def _explained(metrics: Sequence[Metric]) -> list[Metric]:
    return [m if m.value is not None else Metric(m.name, None, m.unit, "none",
                                                 m.note or "not measured on every rank")
            for m in metrics]


