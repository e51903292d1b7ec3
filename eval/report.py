"""Evaluation result files, the per-run ``summary.md``, and side-by-side comparisons of runs.

Every suite run writes one ``OUT_DIR/<suite>.json`` (format ``unitok-eval/1``)::

    {"format": "unitok-eval/1", "suite": "image.reconstruction",
     "metrics": {"image.reconstruction/psnr": 21.6, ...},   # keys "<suite>/<metric>", numbers
     "checkpoint": {...}, "data": {...}, "protocol": {...}, "provenance": {...},
     "artifacts": {"grid": "image.reconstruction_grid.png"}}   # paths relative to OUT_DIR

Only ``suite`` and ``metrics`` are required. Files are strict JSON: a NaN metric is stored as ``null`` and read
back as ``float("nan")``. ``compare`` lines up several result directories (image and speech suites alike) in
``compare.md``, ``compare.json`` and one ``compare_<suite>.png`` bar chart per suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import numbers
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

FORMAT = "unitok-eval/1"
COMPARE_FORMAT = "unitok-eval-compare/1"  # deliberately not "unitok-eval/...": never read back as a result
SUMMARY_FILE = "summary.md"
COMPARE_JSON = "compare.json"
COMPARE_MD = "compare.md"
MISSING = "–"
_OPTIONAL_SECTIONS = ("checkpoint", "data", "protocol", "provenance", "artifacts")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")
_PERCENT_WORDS = ("top1", "top5", "acc")

# Which way is better, by metric name. A metric name ("psnr", "knn_top1", "mel_distance_mean") is split into
# words at "_", "-", "@" and "."; runs of words are looked up from the end of the name, longest first, so
# "si_sdr" and "mel_distance" match before "distance", and "latent_std" ends at "std". Words in no entry
# ("latent", "mean", "knn") are skipped: "mel_distance_mean" is a distance, "latent_mean" has no direction.
# A trailing sample count is ignored ("fid50k" is "fid").
_DIRECTION: dict[str, str | None] = {
    **dict.fromkeys(("top1", "top5", "acc", "accuracy", "precision", "recall"), "higher"),
    **dict.fromkeys(("psnr", "ssim", "ms_ssim", "si_sdr", "si_snr", "snr", "pesq", "stoi", "estoi"), "higher"),
    **dict.fromkeys(("sim", "similarity", "speaker_similarity", "mos", "utmos", "inception_score"), "higher"),
    **dict.fromkeys(("lpips", "fid", "rfid", "gfid", "kid", "wer", "cer", "mse", "mae", "rmse"), "lower"),
    **dict.fromkeys(("mel_distance", "stft_distance", "distance", "loss", "error"), "lower"),
    **dict.fromkeys(("std", "var", "variance", "min", "max", "norm", "kurtosis", "skew", "rank", "entropy"), None),
}


def metric_direction(key: str) -> str | None:
    """``"higher"`` or ``"lower"`` when that is better for the metric ``key`` (``<suite>/<metric>``), else None."""
    words = [w for w in re.split(r"[_\-@.\s]+", key.rsplit("/", 1)[-1].lower()) if w]
    for end in range(len(words), 0, -1):
        for start in range(end):
            name = "_".join(words[start:end])
            for candidate in (name, re.sub(r"\d+k?$", "", name)):
                if candidate in _DIRECTION:
                    return _DIRECTION[candidate]
    return None


def direction_arrow(key: str) -> str:
    """The arrow shown after a metric name: " ↑" (higher is better), " ↓" (lower is better) or ""."""
    return {"higher": " ↑", "lower": " ↓"}.get(metric_direction(key) or "", "")


def format_metric(key: str, value: Any) -> str:
    """Human form of one metric value: accuracies in [0, 1] as percentages, otherwise 4 significant digits."""
    if value is None:
        return MISSING
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    v = float(value)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    name = key.rsplit("/", 1)[-1].lower()
    if any(w in name for w in _PERCENT_WORDS) and 0.0 <= v <= 1.0:
        return f"{100 * v:.2f}%"
    if v == 0:
        return "0"
    if abs(v) >= 1e4:
        return f"{v:,.0f}"
    if abs(v) < 1e-3:
        return f"{v:.3e}"
    return f"{v:.{max(0, 3 - math.floor(math.log10(abs(v))))}f}"


# ---------------------------------------------------------------------------------------------- writing


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[str]:
    """A temporary path in ``path``'s directory; renamed onto ``path`` (after fsync) when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _atomic_write_text(path: Path, text: str) -> None:
    with _atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def _jsonable(obj: Any) -> Any:
    """``obj`` with paths as strings, numpy/torch scalars as numbers and non-finite floats as None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, set | frozenset):
        return sorted((_jsonable(v) for v in obj), key=str)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item") and callable(obj.item) and not isinstance(obj, str | bytes):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


_INF_TEXT = {math.inf: "inf", -math.inf: "-inf"}
_TEXT_INF = {text: value for value, text in _INF_TEXT.items()}


def _validated(result: dict) -> dict:
    """A normalised copy of ``result`` (format first, metrics as plain numbers); ValueError names the problem."""
    if not isinstance(result, dict):
        raise ValueError(f"a result must be a dict, got {type(result).__name__}")
    suite = result.get("suite")
    if not isinstance(suite, str) or not re.fullmatch(r"[A-Za-z0-9][\w.\-]*", suite):
        raise ValueError(f"result 'suite' must be a name such as 'image.knn' (usable as a file name), got {suite!r}")
    fmt = result.get("format", FORMAT)
    if not (isinstance(fmt, str) and fmt.startswith("unitok-eval/")):
        raise ValueError(f"result 'format' must start with 'unitok-eval/', got {fmt!r}")
    metrics = result.get("metrics")
    if not isinstance(metrics, dict):
        raise ValueError(f"result 'metrics' must be a dict of '{suite}/<metric>' -> number, got {metrics!r}")
    clean: dict[str, int | float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key.startswith(f"{suite}/") or key == f"{suite}/":
            raise ValueError(f"metric key {key!r} must look like '{suite}/<metric>'")
        if hasattr(value, "item") and callable(value.item):
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"metric {key!r} must be a number, got {type(value).__name__} {value!r}")
        if isinstance(value, numbers.Integral):
            clean[key] = int(value)
        else:  # +-inf is kept (e.g. the PSNR of a lossless reconstruction) and stored as "inf" / "-inf"
            clean[key] = float(value)
    for section in _OPTIONAL_SECTIONS:
        if result.get(section) is not None and not isinstance(result[section], dict):
            raise ValueError(f"result {section!r} must be a dict, got {type(result[section]).__name__}")
    rest = {k: v for k, v in result.items() if k not in ("format", "suite", "metrics")}
    return {"format": fmt, "suite": suite, "metrics": clean, **rest}


def write_result(out_dir: str | os.PathLike, result: dict) -> Path:
    """Validate ``result``, write ``OUT_DIR/<suite>.json`` atomically, and regenerate ``OUT_DIR/summary.md``.

    Args:
        out_dir: the evaluation output directory (created when missing).
        result: a result dict as described in the module docstring; it is not modified.

    Returns:
        The path of the JSON file.

    Raises:
        ValueError: the suite name, a metric key or a metric value is invalid (the message names it).
    """
    out = Path(out_dir)
    clean = _validated(result)
    record = _jsonable(clean)
    record["metrics"] = {k: _INF_TEXT.get(v, v) for k, v in clean["metrics"].items()}  # strict JSON has no inf
    record["metrics"] = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in record["metrics"].items()}
    text = json.dumps(record, indent=2, allow_nan=False) + "\n"  # serialise before touching the disk
    path = out / f"{clean['suite']}.json"
    _atomic_write_text(path, text)
    _atomic_write_text(out / SUMMARY_FILE, summary_markdown(load_results(out, strict=False), base_dir=out))
    return path


# ---------------------------------------------------------------------------------------------- reading


def _read_result_file(path: Path) -> dict | None:
    """The result in ``path``; None for a JSON file that is not a result; ValueError for a broken one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read it as JSON ({e})") from e
    if not isinstance(data, dict):
        return None
    fmt = data.get("format")
    claims = isinstance(fmt, str) and fmt.startswith("unitok-eval/")
    if not claims and not ("suite" in data and "metrics" in data):
        return None
    suite, metrics = data.get("suite"), data.get("metrics")
    if not isinstance(suite, str) or not suite:
        raise ValueError(f"{path}: result file has no valid 'suite' name (got {suite!r})")
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: result file has no 'metrics' dict (got {metrics!r})")
    clean = {}
    for key, value in metrics.items():
        full = key if key.startswith(f"{suite}/") else f"{suite}/{key}"
        if value is None:
            value = math.nan
        if isinstance(value, str) and value in _TEXT_INF:
            value = _TEXT_INF[value]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{path}: metric {key!r} is not a number ({value!r})")
        clean[full] = value
    return {**data, "metrics": clean}


def load_results(out_dir: str | os.PathLike, *, strict: bool = True) -> dict[str, dict]:
    """All result files in ``out_dir`` by suite name, sorted by suite.

    JSON files that are not results (no ``unitok-eval/`` format and no suite + metrics, or ``compare.json``)
    are ignored. Metric keys without the ``<suite>/`` prefix get it; ``null`` metrics become NaN.

    Args:
        out_dir: a directory written by ``write_result``.
        strict: raise on a broken result file; when False, warn and skip it.

    Raises:
        FileNotFoundError: ``out_dir`` is not a directory.
        ValueError: (strict) a result file is malformed; the message names the file.
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise FileNotFoundError(f"result directory {out} does not exist")
    found: dict[str, tuple[Path, dict]] = {}
    for path in sorted(out.glob("*.json")):
        if path.name == COMPARE_JSON or not path.is_file():
            continue
        try:
            result = _read_result_file(path)
            if result is None:
                continue
            suite, canonical = result["suite"], f"{result['suite']}.json"
            if suite in found and canonical not in (path.name, found[suite][0].name):
                raise ValueError(f"{path} and {found[suite][0]} both hold results of suite {suite!r}")
            if suite not in found or path.name == canonical:  # <suite>.json wins over a renamed copy
                found[suite] = (path, result)
        except ValueError as e:
            if strict:
                raise
            warnings.warn(f"skipping a broken result file: {e}", stacklevel=2)
    return {suite: found[suite][1] for suite in sorted(found)}


# ---------------------------------------------------------------------------------------------- summary


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict with dotted keys."""
    if not isinstance(d, dict):
        return {prefix: d} if prefix else {}
    flat: dict[str, Any] = {}
    for k, v in d.items():
        flat.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return flat


def _short(value: Any, limit: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _elapsed(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return str(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def _samples(data: dict) -> str:
    n = data.get("num_samples")
    return f"{n:,}" if isinstance(n, int) and not isinstance(n, bool) else (MISSING if n is None else str(n))


def _link(path: str, base_dir: Path | None) -> str:
    if base_dir is not None and os.path.isabs(path):
        path = os.path.relpath(path, base_dir)
    return quote(path.replace(os.sep, "/"), safe="/:.-_~")


def _provenance_line(prov: dict) -> str:
    parts = []
    if prov.get("git_sha"):
        parts.append(f"git `{str(prov['git_sha'])[:12]}`")
    for name in ("unitok_version", "torch"):
        if prov.get(name):
            parts.append(f"{name.split('_')[0]} {prov[name]}")
    if prov.get("device"):
        ws = prov.get("world_size")
        parts.append(f"{prov['device']}" + (f" × {ws}" if ws not in (None, 1) else ""))
    if prov.get("elapsed_s") is not None:
        parts.append(f"took {_elapsed(prov['elapsed_s'])}")
    if prov.get("created"):
        parts.append(str(prov["created"]))
    return " · ".join(parts)


def _suite_section(suite: str, result: dict, base_dir: Path | None, show_checkpoint: bool) -> list[str]:
    lines = [f"## {suite}", "", "| metric | value |", "|---|---:|"]
    for key in sorted(result["metrics"]):
        lines.append(
            f"| {_cell(key.split('/', 1)[1])}{direction_arrow(key)} | {format_metric(key, result['metrics'][key])} |"
        )
    lines.append("")
    data = result.get("data") or {}
    if data:
        where = f"`{data['path']}`" if data.get("path") else "data"
        split = f" (split {data['split']})" if data.get("split") else ""
        lines += [f"- Data: {where}{split}, {_samples(data)} samples"]
    ckpt = result.get("checkpoint") or {}
    if show_checkpoint and ckpt:
        lines.append(f"- Checkpoint: {ckpt.get('name', MISSING)} at `{ckpt.get('path', MISSING)}`")
    flat = _flatten(result.get("protocol") or {})
    if flat:
        shown = ", ".join(f"{k}={_short(v)}" for k, v in list(flat.items())[:10])
        more = f" (+{len(flat) - 10} more in `{suite}.json`)" if len(flat) > 10 else ""
        lines.append(f"- Protocol: {shown}{more}")
    prov = result.get("provenance") or {}
    if _provenance_line(prov):
        lines.append(f"- Provenance: {_provenance_line(prov)}")
    if prov.get("command"):
        lines.append(f"- Command: `{prov['command']}`")
    artifacts = {k: v for k, v in (result.get("artifacts") or {}).items() if isinstance(v, str)}
    if artifacts:
        lines.append("- Artifacts: " + ", ".join(f"[{_cell(k)}]({_link(v, base_dir)})" for k, v in artifacts.items()))
    lines.append("")
    for name, path in artifacts.items():
        if path.lower().endswith(_IMAGE_SUFFIXES):
            lines += [f"![{suite} {name}]({_link(path, base_dir)})", ""]
    return lines


def summary_markdown(results: dict[str, dict], base_dir: str | os.PathLike | None = None) -> str:
    """The human summary of one evaluation directory: checkpoint, then one metric table per suite.

    Args:
        results: suite -> result, as returned by ``load_results``.
        base_dir: the directory the markdown will live in; absolute artifact paths are linked relative to it.
    """
    base = Path(base_dir) if base_dir is not None else None
    checkpoints = {str(c.get("path") or c.get("name")) for r in results.values() if (c := r.get("checkpoint"))}
    ckpt = next((r["checkpoint"] for r in results.values() if r.get("checkpoint")), {})
    title = ckpt.get("name") or (Path(ckpt["path"]).name if ckpt.get("path") else None) or "evaluation"
    lines = [f"# Evaluation summary: {title}", ""]
    if ckpt:
        kind = ", ".join(str(ckpt[k]) for k in ("model_type", "kind") if ckpt.get(k))
        lines += [f"Checkpoint: `{ckpt.get('path', MISSING)}`" + (f" ({kind})" if kind else ""), ""]
    if len(checkpoints) > 1:
        lines += [f"> **Warning:** these results come from {len(checkpoints)} different checkpoints.", ""]
    suites = ", ".join(results) or "none yet"
    lines += [f"Suites: {suites}. ↑ higher is better, ↓ lower is better.", ""]
    for suite, result in results.items():
        lines += _suite_section(suite, result, base, show_checkpoint=len(checkpoints) > 1)
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------- comparison


def _checkpoint(run: dict[str, dict]) -> dict:
    return next((r["checkpoint"] for r in run.values() if r.get("checkpoint")), {})


def _run_labels(dirs: list[Path], runs: list[dict[str, dict]], labels: Sequence[str] | None) -> list[str]:
    """Given labels, else checkpoint names, else directory names; clashes get the directory name, then a count."""
    if labels is not None:
        if len(labels) != len(dirs):
            raise ValueError(f"got {len(labels)} labels for {len(dirs)} result directories")
        base = [str(label) for label in labels]
        if not all(base):
            raise ValueError(f"labels must not be empty, got {list(labels)}")
    else:
        base = [_checkpoint(run).get("name") or d.resolve().name for run, d in zip(runs, dirs, strict=True)]
    base = [
        f"{b} ({d.resolve().name})" if base.count(b) > 1 and b != d.resolve().name else b
        for b, d in zip(base, dirs, strict=True)
    ]
    out: list[str] = []
    for b in base:
        label, n = b, 1
        while label in out:
            n += 1
            label = f"{b}-{n}"
        out.append(label)
    return out


def _settings(result: dict) -> dict[str, Any]:
    flat = _flatten(result.get("protocol") or {})
    data = result.get("data") or {}
    flat.update({f"data.{k}": data.get(k) for k in ("num_samples", "split") if k in data})
    return flat


def _protocol_differences(labels: list[str], runs: list[dict[str, dict]]) -> dict[str, dict[str, dict]]:
    """suite -> setting -> label -> value, for settings that differ between runs of the same suite."""
    diffs: dict[str, dict[str, dict]] = {}
    for suite in sorted({s for run in runs for s in run}):
        having = [(label, _settings(run[suite])) for label, run in zip(labels, runs, strict=True) if suite in run]
        if len(having) < 2:
            continue
        for key in sorted({k for _, s in having for k in s}):
            values = {label: s.get(key) for label, s in having}
            if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) > 1:
                diffs.setdefault(suite, {})[key] = values
    return diffs


def best_labels(key: str, values: dict[str, Any]) -> set[str]:
    """The labels holding the best value of metric ``key`` (empty without a direction or two finite values)."""
    direction = metric_direction(key)
    finite = {k: float(v) for k, v in values.items() if isinstance(v, int | float) and math.isfinite(v)}
    if direction is None or len(finite) < 2:
        return set()
    best = (max if direction == "higher" else min)(finite.values())
    return {k for k, v in finite.items() if v == best}


def _suite_of(key: str) -> str:
    return key.split("/", 1)[0]


def _compare_markdown(report: dict, runs: list[dict[str, dict]]) -> str:
    labels = [r["label"] for r in report["runs"]]
    lines = ["# Evaluation comparison", "", "Runs:"]
    for r in report["runs"]:
        path = r["checkpoint"].get("path")
        lines.append(f"- **{_cell(r['label'])}**: `{r['dir']}`" + (f", checkpoint `{path}`" if path else ""))
    lines += ["", f"**Bold**: best in the row (↑ higher is better, ↓ lower is better); {MISSING}: not measured.", ""]
    by_suite: dict[str, list[str]] = {}
    for key in report["metrics"]:
        by_suite.setdefault(_suite_of(key), []).append(key)
    for suite, keys in by_suite.items():
        lines += [f"## {suite}", "", "| metric | " + " | ".join(map(_cell, labels)) + " |"]
        lines.append("|---|" + "---:|" * len(labels))
        for key in keys:
            values = report["metrics"][key]
            best = best_labels(key, values)
            cells = []
            for label in labels:
                value = values.get(label, MISSING)  # NaN is None in the JSON-ready report
                text = value if value == MISSING else format_metric(key, math.nan if value is None else value)
                cells.append(f"**{text}**" if label in best else text)
            lines.append(f"| {_cell(key.split('/', 1)[1])}{direction_arrow(key)} | " + " | ".join(cells) + " |")
        lines.append("")
        for label, run in zip(labels, runs, strict=True):
            if suite in run:
                result = run[suite]
                path = (result.get("checkpoint") or {}).get("path")
                where = f", checkpoint `{path}`" if path else ""
                lines.append(f"- {_cell(label)}: {_samples(result.get('data') or {})} samples{where}")
        diffs = report["protocol_differences"].get(suite)
        if diffs:
            parts = [
                f"`{k}` ({', '.join(f'{lb}={_short(v, 24)}' for lb, v in vals.items())})" for k, vals in diffs.items()
            ]
            lines += ["", f"> **Warning:** the runs of {suite} used different settings: " + "; ".join(parts)]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def compare(
    result_dirs: Sequence[str | os.PathLike],
    labels: Sequence[str] | None = None,
    out_dir: str | os.PathLike | None = None,
    plots: bool = True,
) -> dict:
    """Line up the results of several evaluation directories, one column per run.

    Args:
        result_dirs: directories written by ``write_result`` (image and speech suites may be mixed).
        labels: one column label per directory; default: the checkpoint name, else the directory name.
        out_dir: where to write ``compare.md``, ``compare.json`` and ``compare_<suite>.png``; nothing written if None.
        plots: write the per-suite bar charts (skipped with a notice when matplotlib is missing).

    Returns:
        The ``compare.json`` content: ``runs`` (label, dir, checkpoint), ``metrics`` (key -> label -> value, NaN as
        None, runs without the metric left out), ``protocol_differences`` (suite -> setting -> label -> value),
        ``plots`` (the chart file names written into ``out_dir``).

    Raises:
        FileNotFoundError: a directory does not exist.
        ValueError: a directory holds no results, a result file is broken, or the label count is wrong.
    """
    dirs = [Path(d) for d in result_dirs]
    if not dirs:
        raise ValueError("give at least one result directory")
    runs = []
    for d in dirs:
        run = load_results(d)
        if not run:
            raise ValueError(f"{d} holds no evaluation results (no <suite>.json written by unitok-eval)")
        runs.append(run)
    names = _run_labels(dirs, runs, labels)
    keys = sorted({k for run in runs for r in run.values() for k in r["metrics"]}, key=lambda k: k.split("/", 1))
    metrics = {
        k: {
            lb: run[_suite_of(k)]["metrics"][k]
            for lb, run in zip(names, runs, strict=True)
            if _suite_of(k) in run and k in run[_suite_of(k)]["metrics"]
        }
        for k in keys
    }
    report = {
        "format": COMPARE_FORMAT,
        "runs": [
            {"label": lb, "dir": str(d.resolve()), "checkpoint": _checkpoint(run)}
            for lb, d, run in zip(names, dirs, runs, strict=True)
        ],
        "metrics": metrics,
        "protocol_differences": _protocol_differences(names, runs),
        "plots": [],
    }
    report = _jsonable(report)
    if out_dir is not None:
        out = Path(out_dir)
        if plots:
            from unitok.eval.plots import plot_comparison

            report["plots"] = [p.name for p in plot_comparison(report, out)]
        _atomic_write_text(out / COMPARE_MD, _compare_markdown(report, runs))
        _atomic_write_text(out / COMPARE_JSON, json.dumps(report, indent=2, allow_nan=False) + "\n")
    return report


_EXAMPLES = """examples:
  # two image tokenizers side by side (labels default to the checkpoint names)
  unitok-eval compare runs/vtp_l/eval runs/ae_only/eval --out reports/vtp_vs_ae

  # image and speech suites of three checkpoints in one report, with your own column labels
  unitok-eval compare eval/base eval/large eval/speech_v2 --labels base,large,speech --out reports/all

  # tables only (stdout, compare.md, compare.json), no charts
  unitok-eval compare eval/a eval/b --no-plots
"""


def compare_main(argv: list[str] | None = None) -> int:
    """``unitok-eval compare RESULT_DIR... [--out DIR] [--labels a,b] [--no-plots]``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="unitok-eval compare",
        description="Compare evaluation results of several runs side by side: prints a markdown table and writes "
        "compare.md, compare.json and one bar chart per suite (compare_<suite>.png). The best value of each "
        "metric is bold (or highlighted), following whether higher or lower is better.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("result_dirs", nargs="+", metavar="RESULT_DIR", help="an OUT_DIR written by unitok-eval")
    parser.add_argument("--out", default="./eval_compare", help="output directory (default: %(default)s)")
    parser.add_argument(
        "--labels", help="comma-separated column labels, one per RESULT_DIR (default: checkpoint names)"
    )
    parser.add_argument("--no-plots", action="store_true", help="do not write the per-suite bar charts")
    args = parser.parse_args(argv)
    labels = [s.strip() for s in args.labels.split(",")] if args.labels is not None else None
    try:
        missing = [d for d in args.result_dirs if not Path(d).is_dir()]
        if missing:
            raise FileNotFoundError(f"result directory not found: {', '.join(missing)}")
        report = compare(args.result_dirs, labels=labels, out_dir=args.out, plots=not args.no_plots)
    except (FileNotFoundError, ValueError) as e:
        print(f"unitok-eval compare: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    print((out / COMPARE_MD).read_text(encoding="utf-8"))
    files = [COMPARE_MD, COMPARE_JSON, *report["plots"]]
    print(f"Wrote {len(files)} files to {out}: {', '.join(files)}")
    return 0
