"""``unitok-train RECIPE [key=value ...]``: train a tokenizer from a recipe (YAML) with dot-list overrides.

Writes ``run_dir/`` with ``config.yaml`` (the resolved configuration), ``git.txt`` (the code's git SHA),
``metrics.jsonl``, ``checkpoints/`` and, at the end, ``model/`` (``save_pretrained``). Re-running the same
command resumes from the last checkpoint. Multi-GPU / multi-node: launch through ``torchrun``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from unitok.config import ConfigError, build_config, parse_dotlist, to_dict
from unitok.engine.optim import OptimConfig
from unitok.engine.trainer import TrainConfig
from unitok.losses.compose import ComposerConfig

EXAMPLES = """examples:
  unitok-train recipes/debug/ae_tiny.yaml
  unitok-train recipes/debug/ae_tiny.yaml train.steps=50 run_dir=runs/try optim.lr=5e-4
  torchrun --nproc-per-node 8 -m unitok.train recipes/image/vtp_b_f16d64.yaml \
      'data.params.shards=/data/shards/{00000..01023}.tar'
"""


@dataclass
class ModelSpec:
    """A preset name from ``unitok.list_models()`` and configuration overrides."""

    name: str = "unitok_tiny_img_p16_d8"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class ComponentSpec:
    """A registry name and its keyword arguments."""

    name: str = ""
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    run_dir: str = "runs/debug"
    model: ModelSpec = field(default_factory=ModelSpec)
    task: ComponentSpec = field(default_factory=lambda: ComponentSpec(name="autoencoder"))
    data: ComponentSpec = field(default_factory=lambda: ComponentSpec(name="toy_shapes"))
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    losses: ComposerConfig = field(default_factory=ComposerConfig)


def load_run_config(recipe: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Recipe YAML + dot-list overrides -> :class:`RunConfig` (strict)."""
    path = Path(recipe)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} does not exist")
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
    return build_config(RunConfig, data, parse_dotlist(overrides or []))


def git_sha() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def build_task(cfg: RunConfig):
    """The task of a configuration (its model freshly initialised with the run's seed)."""
    import torch

    import unitok
    from unitok.registry import TASKS

    torch.manual_seed(cfg.train.seed)
    model = unitok.create_model(cfg.model.name, **cfg.model.overrides)
    return TASKS.get(cfg.task.name)(cfg, model, cfg.task.params)


def build_run(cfg: RunConfig, info=None):
    """(trainer, task) for a configuration."""
    from unitok.engine.distributed import DistInfo
    from unitok.engine.trainer import Trainer
    from unitok.registry import DATASETS

    info = info or DistInfo()
    task = build_task(cfg)
    dataset, collate = DATASETS.get(cfg.data.name)(cfg.data.params, split="train")
    trainer = Trainer(task, dataset, collate, cfg.optim, cfg.train, cfg.run_dir, info)
    return trainer, task


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="unitok-train", description=__doc__, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("recipe", help="recipe YAML (see recipes/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=100")
    args = p.parse_args(argv)
    try:
        cfg = load_run_config(args.recipe, args.overrides)
    except (ConfigError, FileNotFoundError) as e:
        print(f"unitok-train: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    from unitok.engine.distributed import cleanup, init_distributed

    info = init_distributed(cfg.train.device)
    run_dir = Path(cfg.run_dir)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(to_dict(cfg)), run_dir / "config.yaml")
        (run_dir / "git.txt").write_text(git_sha() + "\n")
    try:
        trainer, task = build_run(cfg, info)
        report = trainer.fit()
        weights = trainer.export_state_dict()  # every rank takes part (FSDP gathers the shards)
        if info.is_main:
            task.export_model().save_pretrained(run_dir / "model", state_dict=weights)
            print(f"done: step {trainer.state.step}, loss {report.get('loss', float('nan')):.4f}; "
                  f"model in {run_dir / 'model'}, metrics in {run_dir / 'metrics.jsonl'}")  # fmt: skip
    finally:
        cleanup()


if __name__ == "__main__":
    main()
