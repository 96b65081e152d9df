"""The one catalog of metrics: name, label, unit, direction, the paper's name, headline order.

Why one place: tables, charts, the leaderboard's directions, the `run_metrics` view's
columns, the screens' labels and docs/metrics.md all describe the same numbers; each reads
them from here, so adding a metric means adding one entry (a test holds the runners' units
and docs/metrics.md to it). Stdlib only, in `profiling` so that runners and the app can
both import it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MetricInfo:
    """What one stored metric is."""

    name: str
    """Id in the DB, the CLI and `--json` (`al_s`)."""
    label: str
    """Short label as the paper and the screens print it (`AL`)."""
    unit: str
    """The unit, one spelling everywhere (`s`, `tokens/s`, `fraction`, `GiB`, `W`, `J`)."""
    higher_is_better: bool | None = None
    """Ranking direction on the leaderboard; None: not ranked."""
    paper: str | None = None
    """The paper's rank column it feeds (`AMU` ... `MCR`, `performance`); None: ours only."""
    headline: bool = False
    """One of the paper's headline metrics: shown first, charted by default."""
    column: bool = False
    """A column of the `run_metrics` view (one row a run)."""
    listed: bool = False
    """Shown in run lists (`runs`, the Runs screen)."""
    short_unit: str | None = None
    """A narrower unit for tight tables (`tok/s`); None: `unit`."""
    doc: str = ""
    """One line: what it is (docs/metrics.md has the exact definitions)."""


SUITE_TASKS = ("ellm_boolean_expressions", "ellm_multistep_arithmetic", "ellm_word_sorting",
               "ellm_dyck_languages", "ellm_object_counting", "ellm_date_arithmetic")
"""The shipped quality suite's tasks (runners.techniques.tasks.TASKS; a test keeps them equal).
Other lm-eval tasks store `acc_<task>` too, unknown to the catalog; `acc_<task>_stderr` is
each one's standard error."""


def _m(name: str, label: str, unit: str, **kw: object) -> MetricInfo:
    return MetricInfo(name, label, unit, **kw)  # type: ignore[arg-type]


CATALOG: tuple[MetricInfo, ...] = (
    # -- the paper's headline metrics, in the order its tables print them ---------------------
    _m("amu", "AMU", "fraction", higher_is_better=False, paper="AMU", headline=True,
       column=True, listed=True,
       doc='time-weighted mean device memory in use / device total over the measured window'),
    _m("pcu", "PCU", "fraction", higher_is_better=True, paper="PCU", headline=True,
       column=True, listed=True,
       doc='time-weighted mean SM activity (GPM, else NVML utilization; CPU: process CPU %)'),
    _m("al_s", "AL", "s", higher_is_better=False, paper="AL", headline=True, column=True,
       listed=True,
       doc='mean latency of one measured iteration (training step or inference request)'),
    _m("tt", "TT", "tokens/param/s", higher_is_better=True, paper="TT", headline=True,
       column=True, listed=True, short_unit="tok/param/s",
       doc='pretraining: trained tokens / (total params x measured seconds)'),
    _m("st", "ST", "samples/param/s", higher_is_better=True, paper="ST", headline=True,
       column=True, listed=True, short_unit="smp/param/s",
       doc='fine-tuning: trained samples / (base-model params x measured seconds)'),
    _m("it", "IT", "tokens/s", higher_is_better=True, paper="IT", headline=True, column=True,
       listed=True, short_unit="tok/s",
       doc='inference: generated tokens / measured seconds'),
    _m("aec_w", "AEC", "W", higher_is_better=False, paper="AEC", headline=True, column=True,
       listed=True,
       doc='energy-counter delta over the window / window seconds'),
    _m("mcr", "MCR", "ratio", higher_is_better=True, paper="MCR", headline=True, column=True,
       listed=True,
       doc='compression ratio x quality ratio against the uncompressed reference (real weights)'),
    _m("eval_ppl", "PPL", "ppl", higher_is_better=False, paper="performance", headline=True,
       column=True, listed=True,
       doc='perplexity on the held-out text (real weights, or a pretrained model)'),
    _m("quality", "quality", "fraction", higher_is_better=True, paper="performance",
       headline=True, column=True, listed=True,
       doc='mean accuracy over the --set quality tasks (lm-eval); MCR uses it when scored'),
    _m("loss", "loss", "nats/token", higher_is_better=False, paper="performance",
       headline=True, column=True, listed=True,
       doc='training loss at the end of the measured window'),
    # -- memory --------------------------------------------------------------------------------
    _m("amu_gib", "AMU", "GiB", column=True, listed=True,
       doc='time-weighted mean device memory in use'),
    _m("peak_allocated_gib", "peak alloc", "GiB", column=True,
       doc='torch CUDA allocator peak (CUDA only)'),
    _m("peak_reserved_gib", "peak reserved", "GiB", column=True,
       doc='torch CUDA allocator reserved peak (CUDA only)'),
    _m("peak_rss_gib", "peak RSS", "GiB",
       doc='peak resident memory of the runner process'),
    _m("sample_coverage", "coverage", "fraction",
       doc="fraction of the window covered by the device's samples (gaps not bridged)"),
    # -- latency -------------------------------------------------------------------------------
    _m("al_p50_s", "AL p50", "s", column=True,
       doc='median iteration latency'),
    _m("al_p90_s", "AL p90", "s", column=True,
       doc='90th percentile iteration latency'),
    _m("al_p99_s", "AL p99", "s", column=True,
       doc='99th percentile iteration latency'),
    _m("ttft_s", "TTFT", "s", column=True, listed=True,
       doc='time to first token: prefill plus the first generated token, mean over requests'),
    _m("ttft_p50_s", "TTFT p50", "s",
       doc='median TTFT'),
    _m("ttft_p90_s", "TTFT p90", "s",
       doc='90th percentile TTFT'),
    _m("ttft_p99_s", "TTFT p99", "s",
       doc='99th percentile TTFT'),
    _m("tpot_s", "TPOT", "s", column=True,
       doc='time per output token after the first: (latency - TTFT) / (new tokens - 1)'),
    _m("tpot_p50_s", "TPOT p50", "s",
       doc='median TPOT'),
    _m("tpot_p90_s", "TPOT p90", "s",
       doc='90th percentile TPOT'),
    _m("tpot_p99_s", "TPOT p99", "s",
       doc='99th percentile TPOT'),
    # -- throughput ----------------------------------------------------------------------------
    _m("tokens_per_s", "tokens/s", "tokens/s", column=True, short_unit="tok/s",
       doc='tokens processed per second in the window (generated or trained)'),
    _m("samples_per_s", "samples/s", "samples/s", short_unit="smp/s",
       doc='samples processed per second in the window'),
    _m("prefill_tokens_per_s", "prefill tok/s", "tokens/s", short_unit="tok/s",
       doc='prompt tokens per second of the prefill'),
    _m("decode_tokens_per_s", "decode tok/s", "tokens/s", short_unit="tok/s",
       doc='tokens per second of decode after the first token'),
    _m("roofline_fraction", "roofline", "fraction",
       doc='decode tokens/s over the memory-bandwidth roofline (bandwidth / weight bytes)'),
    _m("mfu", "MFU", "fraction", column=True,
       doc='model FLOPs per second / measured dense bf16 peak'),
    # -- energy --------------------------------------------------------------------------------
    _m("energy_j", "energy", "J", column=True, listed=True,
       doc='energy-counter delta over the measured window'),
    _m("energy_integral_j", "energy (power integral)", "J", column=True,
       doc='cross-check: integral of the sampled power over the window'),
    _m("j_per_token", "J/token", "J/token", column=True,
       doc='energy_j / tokens'),
    _m("prefill_energy_j", "prefill energy", "J",
       doc="energy of the measured requests' prefills, replayed alone"),
    _m("prefill_j_per_token", "prefill J/token", "J/token",
       doc='prefill energy / prompt tokens'),
    _m("decode_energy_j", "decode energy", "J",
       doc='energy_j - prefill_energy_j'),
    _m("decode_j_per_token", "decode J/token", "J/token",
       doc='decode energy / decoded tokens'),
    # -- size and quality ----------------------------------------------------------------------
    _m("total_params", "params", "params", column=True,
       doc='parameters of the model (fine-tuning: the base model, adapters not counted)'),
    _m("trainable_params", "trainable", "params", column=True,
       doc='parameters the optimizer updates'),
    _m("adapted_params", "params + adapters", "params",
       doc="parameters of the model with the method's adapters"),
    _m("active_params", "active params", "params",
       doc='parameters one token passes through (MoE: the routed experts only)'),
    _m("weight_bytes", "weights", "bytes",
       doc="bytes the model's tensors store (packed data and scales when quantized)"),
    _m("reference_weight_bytes", "reference weights", "bytes",
       doc='bytes of the uncompressed reference MCR compares against'),
    _m("compression_ratio", "compression", "ratio",
       doc='reference bytes / weight bytes'),
    _m("reference_ppl", "reference PPL", "ppl",
       doc='perplexity of the uncompressed reference on the same text'),
    _m("base_quality", "base quality", "fraction", column=True,
       doc='fine-tuning: the same mean accuracy of the base model before training (cached)'),
    *(_m(f"acc_{task}", task.removeprefix("ellm_").replace("_", " "), "fraction",
         paper="performance", doc=f"accuracy on the shipped suite's {task} (lm-eval)")
      for task in SUITE_TASKS),
    # -- vision-language (inference --set task=vqa|captioning) --------------------------------
    _m("vision_encode_s", "vision encode", "s",
       doc='vision tower + projector time inside the prefill, synchronised, mean over requests'),
    _m("vision_ttft_fraction", "vision share of TTFT", "fraction",
       doc='vision_encode_s / ttft_s: the share of the time to first token spent on the image'),
    _m("image_tokens_per_request", "image tokens", "tokens",
       doc='prompt tokens the images of one request become (every image of the batch)'),
    _m("images_per_s", "images/s", "images/s", short_unit="img/s",
       doc='image + prompt pairs answered per second in the measured window'),
    _m("vqa_accuracy", "VQA acc", "fraction",
       doc='VQA exact match over the items with an answer (real weights)'),
    _m("caption_bleu", "caption BLEU", "BLEU",
       doc='corpus BLEU (sacrebleu, 0-100) of the captions against the references (real weights)'),
    _m("eval_loss", "eval loss", "nats/token",
       doc='loss on the held-out data'),
    _m("aux_loss", "MoE aux loss", "ratio",
       doc='mean MoE load-balancing loss'),
)
"""Every metric efficientllm stores, the paper's headline metrics first."""

BY_NAME: dict[str, MetricInfo] = {m.name: m for m in CATALOG}

THROUGHPUT = {"inference": "it", "finetuning": "st", "pretraining": "tt"}
"""The family's throughput metric (IT, ST or TT)."""


def info(name: str) -> MetricInfo | None:
    """The catalog entry of a metric; None for a name it does not know."""
    return BY_NAME.get(name)


STDERR_SUFFIX = "_stderr"
"""A metric's standard error is stored as `<metric>_stderr` (lm-eval's accuracies)."""


def describe(name: str) -> MetricInfo | None:
    """The catalog entry of a metric, or one derived from the catalog for the names it
    stores by pattern: `acc_<task>` of any lm-eval task (its accuracy, a fraction) and
    `<metric>_stderr` (the standard error of a known metric, in its unit, labelled `± label`).
    None for a name it cannot describe."""
    known = BY_NAME.get(name)
    if known is not None:
        return known
    if name.endswith(STDERR_SUFFIX):
        base = describe(name.removesuffix(STDERR_SUFFIX))
        if base is not None:
            return MetricInfo(name, f"± {base.label}", base.unit, short_unit=base.short_unit,
                              doc=f"standard error of {base.name}")
        return None
    if name.startswith("acc_") and len(name) > 4:
        task = name.removeprefix("acc_")
        return MetricInfo(name, task.removeprefix("ellm_").replace("_", " "), "fraction",
                          paper="performance", doc=f"accuracy on the lm-eval task {task}")
    return None


def directions() -> dict[str, bool]:
    """Ranked metrics and their direction (True: higher is better), in headline order."""
    return {m.name: m.higher_is_better for m in CATALOG if m.higher_is_better is not None}


def columns() -> tuple[str, ...]:
    """The metric columns of the `run_metrics` view, in catalog order."""
    return tuple(m.name for m in CATALOG if m.column)


def listed() -> tuple[str, ...]:
    """The metric columns of run lists, in catalog order."""
    return tuple(m.name for m in CATALOG if m.listed)


def headline(family: str | None = None) -> tuple[str, ...]:
    """The paper's headline metrics of a family (its one throughput metric), in order;
    every family's throughput metric when `family` is None."""
    others = set(THROUGHPUT.values()) - {THROUGHPUT.get(family or "", "")}
    return tuple(m.name for m in CATALOG if m.headline
                 and not (family is not None and m.name in others))


def ordered(names: list[str] | tuple[str, ...] | set[str],
            family: str | None = None) -> list[str]:
    """`names` with the family's headline metrics first, then catalog order, then unknown
    names alphabetically."""
    first = [n for n in headline(family) if n in names]
    rank = {m.name: i for i, m in enumerate(CATALOG)}
    rest = sorted((n for n in names if n not in first),
                  key=lambda n: (n not in rank, rank.get(n, 0), n))
    return first + rest


def label(name: str, *, with_unit: bool = True, short: bool = True) -> str:
    """`AEC W` for `aec_w` (`AL s`, `IT tok/s`); fractions and ratios carry no unit; the raw
    name for metrics the catalog cannot describe (`describe`)."""
    m = describe(name)
    if m is None:
        return name
    unit = (m.short_unit or m.unit) if short else m.unit
    if not with_unit or unit in ("fraction", "ratio", "ppl", "") or unit == m.label:
        return m.label
    return f"{m.label} {unit}"


CATALOG_BEGIN = "<!-- metric catalog: generated from profiling/metric_catalog.py -->"
CATALOG_END = "<!-- end of metric catalog -->"


def markdown_table() -> str:
    """The catalog as the Markdown table docs/metrics.md carries (between CATALOG_BEGIN and
    CATALOG_END; a test keeps the two equal: `python -m profiling.metric_catalog` prints it)."""
    rows = ["| name | label | unit | ranked | paper | what |", "|---|---|---|---|---|---|"]
    for m in CATALOG:
        ranked = "-" if m.higher_is_better is None else (
            "higher is better" if m.higher_is_better else "lower is better")
        rows.append(f"| `{m.name}` | {m.label} | {m.unit} | {ranked} | {m.paper or '-'} "
                    f"| {m.doc} |")
    return "\n".join([CATALOG_BEGIN, *rows, CATALOG_END])


if __name__ == "__main__":
    print(markdown_table())
