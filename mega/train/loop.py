"""The training loop every stage shares.

A stage hands the loop its modules, named parameter groups, a dataset and its loss; the loop
owns everything else: the step schedule and the learning-rate schedule, batches (a DataLoader
with workers and prefetch; the samples of a step are a function of the seed and the step), the
seed, resuming, the non-finite guard, progress, ``loss.csv`` and its plot, and atomic
checkpoints. Each stage works in a folder of its own (``<run>/<stage>/``), so no two stages
share a checkpoint or a loss log.

Work folder:
    checkpoint.pt   modules, optimizer, step and the settings' fingerprint, every
                    ``checkpoint_every`` steps and at the end (atomic); a rerun resumes from it
    loss.csv        every loss term at every step (rows past the checkpoint are dropped on resume)
    loss.png        the curves, at the end
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, Protocol, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from mega.data.cache import MemoryCachedDataset
from mega.data.gaussian_avatars import collate_samples, to_device
from mega.errors import ConfigError, TrainingError
from mega.report.training_figure import write_loss_figure
from mega.train.checkpoint import CsvLog, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

OnSettingsChange = Literal["fail", "restart"]


@dataclass
class ParameterGroup:
    """A named set of parameters with its own learning rate; frozen groups stay out of the
    optimizer and get no gradients."""

    name: str
    params: list[nn.Parameter]
    lr: float
    trainable: bool = True
    lr_final_ratio: float | None = None
    """This group's own decay (see :attr:`LoopSettings.lr_final_ratio`); None = the loop's."""


@dataclass(frozen=True)
class LoopSettings:
    steps: int
    batch_size: int
    seed: int
    checkpoint_every: int
    lr_final_ratio: float = 1.0
    """Every rate decays exponentially to this fraction of itself at the last step (1 = constant)."""
    data_workers: int = 0
    """DataLoader worker processes; 0 decodes in this process and keeps samples in a memory cache."""
    cache_mb: int = 0
    """With no workers, decoded samples kept in memory up to this size."""


class Stage(Protocol):
    """What a stage gives the loop."""

    name: str
    """Label of the progress bar and the loss figure."""
    loss_terms: Sequence[str]
    """Unweighted terms, in the order of loss.csv's columns."""
    extra_columns: Sequence[str]
    """Values logged beside the losses (e.g. a training PSNR)."""

    def modules(self) -> dict[str, nn.Module]:
        """The state a checkpoint holds, by name."""

    def parameter_groups(self) -> list[ParameterGroup]:
        ...

    def step(self, batch: dict) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """(weighted total, unweighted terms, extra values) of one batch already on the device."""

    # Optional:
    #   begin_step(step: int) -> None             before the step's forward (e.g. raise an SH degree)
    #   after_backward(step: int, optimizer) -> bool
    #       after the gradients are in and checked, before the update; may replace parameters
    #       (densification) through the optimizer's named groups, and says whether it did.


@dataclass
class LoopResult:
    steps_done: int
    seconds: float
    """Training time across interruptions."""
    seconds_this_run: float
    finished: bool
    started_at: int = 0
    """The step this run resumed from (0 for a fresh one)."""


class StepBatches(Sampler[list[int]]):
    """The batches of steps ``start .. end - 1``: each epoch a fresh permutation that depends on
    (seed, epoch) alone, so a resumed run draws exactly the batches of the uninterrupted one."""

    def __init__(self, start: int, end: int, n_samples: int, batch_size: int, seed: int):
        self.start, self.end, self.n, self.batch_size, self.seed = start, end, n_samples, batch_size, seed

    def __len__(self) -> int:
        return max(self.end - self.start, 0)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.end):
            yield batch_indices(step, self.n, self.batch_size, self.seed)


def batch_indices(step: int, n_samples: int, batch_size: int, seed: int) -> list[int]:
    """The samples of ``step``: the step's slice of its epoch's permutation (incomplete last
    batches are dropped)."""
    batch_size = min(batch_size, n_samples)
    per_epoch = n_samples // batch_size
    epoch, position = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_samples, generator=generator)
    return order[position * batch_size:(position + 1) * batch_size].tolist()


def steps_per_epoch(n_samples: int, batch_size: int) -> int:
    return max(n_samples // min(batch_size, n_samples), 1)


def pick_device(device: str | torch.device) -> torch.device:
    """``auto`` (CUDA where torch sees a GPU, else the CPU), or the device named, checked: a
    name torch does not know, or a GPU this machine does not have, is a :class:`ConfigError`."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        picked = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device {device!r}: not a device torch knows; use auto, cpu, cuda or cuda:N") from None
    if picked.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {device}: torch sees no CUDA GPU on this machine "
                              f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use --device cpu "
                              f"or auto")
        if picked.index is not None and picked.index >= count:
            raise ConfigError(f"--device {device}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    return picked


def settings_changes(saved: dict, now: dict, resumable: set[str], defaults: dict | None = None) -> list[str]:
    """'key: old → new' for every setting that differs and is not allowed to. A key that ``saved``
    lacks and ``defaults`` holds is a setting added since the checkpoint was written: it counts as
    having had its default, the behaviour every new setting defaults to."""
    saved = {**(defaults or {}), **saved}
    keys = sorted(set(saved) | set(now))
    return [f"{k}: {saved.get(k)!r} → {now.get(k)!r}" for k in keys if k not in resumable and saved.get(k) != now.get(k)]


def _first_non_finite_gradient(named: list[tuple[str, nn.Parameter]]) -> str | None:
    for name, p in named:
        if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
            return name
    return None


def train(stage: Stage, dataset: Dataset, work_dir: str | Path, settings: LoopSettings, fingerprint: dict,
          device: torch.device, resumable: set[str] = frozenset(), progress: bool = True, restart: bool = False,
          on_settings_change: OnSettingsChange = "fail", stop_after: int | None = None,
          batch_to_device: Callable[[dict, torch.device], dict] = to_device,
          fingerprint_defaults: dict | None = None) -> LoopResult:
    """Train ``stage`` for ``settings.steps`` steps (or resume), writing into ``work_dir``.

    ``fingerprint`` describes the settings the result depends on; a checkpoint written under a
    different fingerprint (ignoring the ``resumable`` keys) is refused (``"fail"``) or discarded
    with a warning (``"restart"``). ``fingerprint_defaults`` (the stage's settings' defaults)
    stand in for the keys of settings added since a checkpoint was written, so that such a
    checkpoint still resumes. ``stop_after`` ends the run after that many steps with only the
    checkpoint written, as an interruption would (tests use it).
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = work_dir / "checkpoint.pt"
    modules = stage.modules()

    # Modules load before the optimizer is built: a stage whose parameters change size (the
    # hair's densification) takes the checkpoint's sizes first.
    start = 0
    state = None
    if checkpoint_path.is_file() and not restart:
        state = load_checkpoint(checkpoint_path, device)
    groups = stage.parameter_groups()
    trainable = [g for g in groups if g.trainable and g.params]
    full_fingerprint = {**fingerprint, "trainable_groups": [g.name for g in trainable]}
    if state is not None:
        changes = settings_changes(state.get("fingerprint", {}), full_fingerprint, set(resumable),
                                   fingerprint_defaults)
        if changes and on_settings_change == "fail":
            raise TrainingError(f"{checkpoint_path} was written with other settings or inputs ({'; '.join(changes)}); "
                                f"delete it or pass --restart to start over")
        if changes:
            log.warning("settings changed since %s (%s): starting over", checkpoint_path, "; ".join(changes))
            state = None
        else:
            for name, module in modules.items():
                module.load_state_dict(state["modules"][name])
            groups = stage.parameter_groups()  # the loaded parameters
            trainable = [g for g in groups if g.trainable and g.params]
    fingerprint = full_fingerprint
    for group in groups:
        for p in group.params:
            p.requires_grad_(group.trainable)
    if not trainable:
        raise TrainingError(f"stage '{stage.name}': every parameter group is frozen; nothing to train")
    optimizer = torch.optim.Adam([{"name": g.name, "params": g.params, "lr": g.lr} for g in trainable], eps=1e-15)
    base_lrs = [g.lr for g in trainable]
    final_ratios = [settings.lr_final_ratio if g.lr_final_ratio is None else g.lr_final_ratio for g in trainable]
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        log.info("resuming %s from step %d", checkpoint_path, start)
    del state

    def named_trainable() -> list[tuple[str, nn.Parameter]]:
        return [(f"{module_name}.{n}", p) for module_name, module in modules.items()
                for n, p in module.named_parameters() if p.requires_grad]

    named = named_trainable()
    columns = ["total", *stage.loss_terms, *stage.extra_columns, "seconds"]
    csv_log = CsvLog(work_dir / "loss.csv", columns, resume_step=start if start else None)
    last_good = (f"The last good checkpoint is {checkpoint_path} (step {start})." if start
                 else "No checkpoint was written yet.")

    def checkpoint(step: int) -> None:
        save_checkpoint(checkpoint_path, {"step": step, "modules": {k: m.state_dict() for k, m in modules.items()},
                                          "optimizer": optimizer.state_dict(), "fingerprint": fingerprint})
        csv_log.flush()

    end = settings.steps if stop_after is None else min(settings.steps, stop_after)
    # More workers than cores only contend with the training threads.
    workers = min(settings.data_workers, max(len(os.sched_getaffinity(0)) - 1, 0))
    source = dataset if workers > 0 else MemoryCachedDataset(dataset, settings.cache_mb * 2**20)
    loader = DataLoader(source, batch_sampler=StepBatches(start, end, len(dataset), settings.batch_size, settings.seed),
                        num_workers=workers, collate_fn=collate_samples, pin_memory=device.type == "cuda",
                        prefetch_factor=2 if workers > 0 else None, persistent_workers=False)
    # In a log file (a workflow job) a line every 30 s, not a redraw per step.
    bar = tqdm(total=settings.steps, initial=start, desc=f"train {stage.name}", unit="it", disable=not progress,
               dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30.0)
    for module in modules.values():
        module.train()
    t0 = time.perf_counter()
    # Training time across interruptions: what the log had reached at the checkpoint.
    elapsed_before = float(csv_log.last_row["seconds"]) if csv_log.last_row else 0.0
    trainable_params = [p for g in optimizer.param_groups for p in g["params"]]
    begin_step = getattr(stage, "begin_step", None)
    after_backward = getattr(stage, "after_backward", None)
    step = start
    for step, batch in enumerate(loader, start=start):
        # The rate and the random state are functions of the step alone, so a resumed run follows
        # the same schedule.
        progress_fraction = step / max(settings.steps - 1, 1)
        for group, base, ratio in zip(optimizer.param_groups, base_lrs, final_ratios):
            group["lr"] = base * ratio ** progress_fraction
        torch.manual_seed(settings.seed * 1_000_003 + step)
        if begin_step is not None:
            begin_step(step)
        batch = batch_to_device(batch, device)
        total, terms, extras = stage.step(batch)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        # One host synchronisation per step: the logged values and one finiteness flag over
        # every gradient.
        grads = [p.grad for p in trainable_params if p.grad is not None]
        grad_norm = torch.stack(torch._foreach_norm(grads)).sum() if grads else total.new_zeros(())
        values = torch.stack([total.detach(), *(v.detach().to(total.dtype) for v in terms.values()),
                              *(v.detach().to(total.dtype) for v in extras.values()), grad_norm]).tolist()
        logged = dict(zip(["total", *terms, *extras], values[:-1]))
        for name in [*terms, "total"]:
            if not math.isfinite(logged[name]):
                raise TrainingError(f"step {step + 1}: loss '{name}' is {logged[name]}; stopped. {last_good}")
        if not math.isfinite(values[-1]):
            name = _first_non_finite_gradient(named) or "a parameter"
            raise TrainingError(f"step {step + 1}: the gradient of '{name}' is not finite; stopped. {last_good}")
        if after_backward is not None and after_backward(step + 1, optimizer):
            trainable_params = [p for g in optimizer.param_groups for p in g["params"]]
            named = named_trainable()
        optimizer.step()

        csv_log.write(step + 1, {**logged, "seconds": elapsed_before + time.perf_counter() - t0})
        bar.update()
        if (step + 1) % 10 == 0:
            bar.set_postfix(loss=f"{logged['total']:.4f}")
        if (step + 1) % settings.checkpoint_every == 0 or step + 1 == end:
            checkpoint(step + 1)
            last_good = f"The last good checkpoint is {checkpoint_path} (step {step + 1})."
    bar.close()
    csv_log.close()
    seconds_this_run = time.perf_counter() - t0
    finished = end >= settings.steps
    if finished:
        write_loss_figure(work_dir / "loss.csv", work_dir / "loss.png", f"{stage.name} training")
    for module in modules.values():
        module.eval()
    return LoopResult(steps_done=end, seconds=elapsed_before + seconds_this_run, seconds_this_run=seconds_this_run,
                      finished=finished, started_at=start)


__all__ = ["LoopSettings", "ParameterGroup", "Stage", "LoopResult", "train", "batch_indices", "steps_per_epoch",
           "to_device", "pick_device", "StepBatches"]
