"""``unitok-eval``: run evaluation suites on a tokenizer checkpoint, list them, compare results side by side.

    unitok-eval list [-v]
    unitok-eval SUITE[,SUITE...] --ckpt PATH [--data PATH] [--out DIR] [options] [key=value ...]
    unitok-eval compare RESULT_DIR... [--out DIR] [--labels a,b]

Each suite writes ``OUT/<suite>.json`` (metric keys ``<suite>/<metric>``, with the checkpoint, data, protocol
settings and git SHA) and refreshes ``OUT/summary.md``. Data-parallel: ``torchrun --nproc-per-node G -m
unitok.eval.cli SUITE ...`` (every rank evaluates its share; results are reduced over all samples).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

EXAMPLES = """examples:
  unitok-eval list -v
  unitok-eval image.zeroshot --ckpt ckpts/vtp-l-f16d64 --data /data/imagenet            # val split
  unitok-eval image.reconstruction --ckpt ckpts/vtp-l-f16d64 --data /data/imagenet --batch-size 50 \\
      fid_weights=/weights/pt_inception-2015-12-05-6726825d.pth lpips_weights=/weights/vgg16-397923af.pth
  unitok-eval image.linear_probe,image.knn --ckpt runs/vtp_b --data /data/imagenet epochs=10
  unitok-eval image.latent_stats --ckpt ckpts/vtp-l-f16d64 --data /data/imagenet store_in_checkpoint=true
  torchrun --nproc-per-node 8 -m unitok.eval.cli image.reconstruction --ckpt ckpts/vtp-l-f16d64 --data /data/imagenet
  python -m unitok.modalities.image.toy data/toy       # the embedded shapes as an ImageFolder tree
  unitok-eval image.zeroshot --ckpt outputs/demo/vtp/model --data data/toy
  unitok-eval compare eval_results/vtp eval_results/ae_only --out eval_results/compare
"""


def _suites():
    from unitok.registry import SUITES

    return SUITES


def list_suites(verbose: bool = False) -> str:
    """One line per registered suite (with its settings and defaults when ``verbose``)."""
    registry = _suites()
    lines = []
    for name in registry.names():
        suite = registry.get(name)
        lines.append(f"{name:26s} {suite.summary}")
        if verbose:
            for f in dataclasses.fields(suite.config):
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                lines.append(f"    {f.name}={default!r}")
    return "\n".join(lines)


def _split_overrides(suites: list, overrides: list[str]) -> list[dict[str, Any]]:
    """``key=value`` (or ``suite.key=value``) -> per-suite override dicts; a key no selected suite has is an error."""
    from unitok.config import ConfigError, parse_dotlist

    per_suite: list[dict[str, Any]] = [{} for _ in suites]
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r}")
        key, _ = item.split("=", 1)
        targets = [i for i, s in enumerate(suites) if key.startswith(s.name + ".")]
        if targets:
            key = key[len(suites[targets[0]].name) + 1 :]
        else:
            targets = [i for i, s in enumerate(suites) if key in {f.name for f in dataclasses.fields(s.config)}]
        if not targets:
            valid = sorted({f.name for s in suites for f in dataclasses.fields(s.config)})
            raise ConfigError(f"no selected suite has a setting {key!r}; valid: {', '.join(valid)}")
        value = parse_dotlist([f"{key}={item.split('=', 1)[1]}"])
        for i in targets:
            per_suite[i].update(value)
    return per_suite


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unitok-eval", description=__doc__, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("suite", help="suite name(s), comma-separated (see `unitok-eval list`), or list / compare")
    p.add_argument("overrides", nargs="*", help="protocol settings key=value (or suite.key=value)")
    p.add_argument("--ckpt", required=True, help="pretrained dir, unitok-train run dir or checkpoints/step_*.pt")
    p.add_argument("--data", default=None, help="ImageFolder tree or a folder with train/ and val/")
    p.add_argument("--out", default=None, help="result directory (default: eval_results/<checkpoint name>)")
    p.add_argument("--batch-size", type=int, default=50, help="per-rank batch size (default 50, as VTP's tools)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="DataLoader workers per rank")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto: bf16 autocast on CUDA, fp32 on CPU")  # fmt: skip
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--max-samples", type=int, default=None, help="a fixed random subset per split (seed 0)")
    p.add_argument("--chunk-size", type=int, default=1000, help="samples per resumable cache file")
    p.add_argument("--cache-dir", default=None, help="feature cache (default OUT/cache)")
    p.add_argument("--no-progress", action="store_true")
    return p


def _provenance(ctx, elapsed: float) -> dict[str, Any]:
    import torch

    import unitok
    from unitok.train import git_sha

    return {
        "git_sha": git_sha(), "unitok_version": unitok.__version__, "torch": torch.__version__,
        "device": str(ctx.device), "world_size": ctx.dist.world_size, "bf16": ctx.bf16,
        "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "elapsed_s": round(elapsed, 2), "command": shlex.join(["unitok-eval", *sys.argv[1:]]),
    }  # fmt: skip


def run_suites(args: argparse.Namespace) -> list[Path]:
    """Load the checkpoint once, run every named suite, write one result file per suite (main rank)."""
    from unitok.config import build_config
    from unitok.engine.distributed import init_distributed
    from unitok.eval.checkpoints import load_checkpoint_for_eval
    from unitok.eval.context import EvalContext, EvalOptions
    from unitok.eval.report import write_result

    registry = _suites()
    suites = [registry.get(name) for name in args.suite.split(",")]
    configs = [build_config(s.config, o) for s, o in zip(suites, _split_overrides(suites, args.overrides), strict=True)]
    for suite in suites:
        if suite.needs_data and args.data is None:
            raise ValueError(f"{suite.name} needs --data (an ImageFolder tree or a folder with train/ and val/)")
    options = EvalOptions(batch_size=args.batch_size, num_workers=args.workers, precision=args.precision,
                          max_samples=args.max_samples, chunk_size=args.chunk_size, cache_dir=args.cache_dir,
                          progress=not args.no_progress)  # fmt: skip
    dist = init_distributed(args.device)
    ckpt = load_checkpoint_for_eval(args.ckpt)
    ckpt.model.to(dist.device).eval().requires_grad_(False)
    out = Path(args.out) if args.out else Path("eval_results") / ckpt.name
    ctx = EvalContext(ckpt=ckpt, data=args.data, out_dir=out, options=options, dist=dist)
    written = []
    for suite, cfg in zip(suites, configs, strict=True):
        ctx.log(f"[{suite.name}] {ckpt.name} ({ckpt.path})")
        start = time.perf_counter()
        result = suite.run(ctx, cfg)
        if dist.is_main:
            record = {
                "format": "unitok-eval/1", "suite": suite.name,
                "metrics": {f"{suite.name}/{k}": v for k, v in result.metrics.items()},
                "checkpoint": ckpt.describe(), "data": result.data,
                "protocol": {**dataclasses.asdict(cfg), **result.details.pop("protocol", {})},
                "provenance": _provenance(ctx, time.perf_counter() - start),
                "artifacts": result.artifacts, **({"details": result.details} if result.details else {}),
            }  # fmt: skip
            written.append(write_result(out, record))
            for key, value in record["metrics"].items():
                print(f"  {key:40s} {value:.6g}", flush=True)
        ctx.barrier()
    if dist.is_main:
        print(f"results in {out} (summary.md)")
    return written


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "list":
        p = argparse.ArgumentParser(prog="unitok-eval list", description="List the registered evaluation suites.")
        p.add_argument("-v", "--verbose", action="store_true", help="also show every setting and its default")
        print(list_suites(p.parse_args(argv[1:]).verbose))
        return 0
    if argv and argv[0] == "compare":
        from unitok.eval.report import compare_main

        return compare_main(argv[1:])
    args = _parser().parse_intermixed_args(argv)
    from unitok.config import ConfigError
    from unitok.engine.distributed import cleanup

    try:
        run_suites(args)
    except (ConfigError, KeyError, ValueError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"unitok-eval: error: {msg}", file=sys.stderr)
        return 2
    finally:
        cleanup()
    return 0


def entry() -> None:
    """Console-script entry point."""
    raise SystemExit(main())


if __name__ == "__main__":
    entry()
