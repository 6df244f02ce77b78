"""The trainer shared by all tasks: the paper's recipes (§4.1), checkpoints, resume, DDP.

It talks to a task only through :class:`tdaf.engine.task.Task` (data, model, losses,
evaluator) and knows nothing else about it.

A baseline and its TDAF model train with the very same code and settings (§4.1:
"trained with identical optimization scheme following He et al. 2016"): SGD with
momentum 0.9, weight decay 1e-4, learning rate ``lr * batch / lr_batch`` (0.1 x
batch/256 for ImageNet) under a step or cosine schedule, Kaiming-initialised models
(the builders initialise convs with ``kaiming_normal_``).

What a long run needs:
  * the data order and every random augmentation are functions of (seed, epoch, image)
    and the global RNGs are re-seeded from (seed, epoch) at each epoch start, so a run
    resumed from ``last.pt`` ends with exactly the weights of an uninterrupted run;
  * ``best.pt`` on a new best of the task's main metric, then ``last.pt`` every epoch,
    both written atomically (temporary file + rename) by rank 0 only, with the run's
    whole history inside, so ``metrics.csv`` can always be rebuilt from ``last.pt``;
  * a non-finite loss stops the run before the weights are touched, naming the epoch and
    step; non-finite weights, BatchNorm statistics or validation loss at the end of an
    epoch stop it before anything is saved. Either way the checkpoints of the last good
    epoch stay as they were and the run exits with an error;
  * bf16 or fp16 autocast (fp16 with a ``GradScaler``), gradient clipping, an exponential
    moving average of the weights (timm's ``ModelEmaV3``; then the EMA weights are the
    ones evaluated and saved), channels-last and ``torch.compile`` as options;
  * data-parallel training over processes started by ``torchrun`` (DDP, gloo on CPU,
    NCCL on GPU). ``batch_size`` is the global batch; :class:`~tdaf.data.GlobalBatchSampler`
    splits it so N processes see the same groups of images as one process accumulating
    N micro-batches.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data import GlobalBatchSampler, ShardSampler
from ..errors import UserError
from ..layers.anar import ANAR
from ..io.files import atomic_save, atomic_write_text, clean_stale_temporaries, deferred_interrupts, ensure_writable_dir
from ..io.progress import progress_bar
from ..r2dns import overlap_flows
from .checkpoint import architecture, build_from_spec, checkpoint_payload, load_checkpoint, state_dict_mismatch
from .config import TrainConfig
from .distributed import DistEnv, all_reduce_sum, broadcast_buffers, setup, teardown
from .evaluate import UnreadableInputError, autocast, check_skipped, evaluate
from .init_from import init_from
from .monitor import AttentionMonitor, attention_line, start_from_state
from .preflight import check_batch_norm_batch, check_run_inputs, same_file
from .resources import cpu_plan, loader_workers
from .runlog import RunLog
from .task import Task, TaskData, task_for_config, with_task_defaults

__all__ = [
    "Trainer", "TrainingDiverged", "NonFiniteLossError", "lr_at", "rng_state", "set_rng_state", "seed_everything",
    "train", "RUN_FILES",
]

log = logging.getLogger("tdaf.train")

# What a run writes in its --out folder (removed by --overwrite before a new run starts).
RUN_FILES = ("best.pt", "last.pt", "metrics.csv", "config.yaml", "tb")


class TrainingDiverged(RuntimeError):
    """The run produced non-finite numbers (loss, gradients, weights, statistics or
    validation loss); it stopped before saving them, and the last good checkpoints stay."""


NonFiniteLossError = TrainingDiverged  # the name of earlier releases


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), Python's ``random`` and numpy's global generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, 0x7DAF]).generate_state(1, np.uint32)[0])


def rng_state() -> dict[str, Any]:
    """Every global RNG state as tensors and plain numbers (``weights_only``-loadable)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based): linear warm-up, then step
    decay by ``gamma`` at each milestone epoch, cosine to zero, or constant."""
    base = cfg.base_lr
    warm = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warm:
        return base * (step + 1) / warm
    if cfg.schedule == "constant":
        return base
    if cfg.schedule == "step":
        epoch = step // steps_per_epoch
        return base * cfg.gamma ** sum(epoch >= m for m in cfg.step_milestones())
    total = cfg.epochs * steps_per_epoch
    return 0.5 * base * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def _nonfinite(named: Any) -> list[str]:
    """Names of floating-point tensors holding NaN or infinity."""
    return [n for n, t in named if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _short(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


class Trainer:
    """Trains ``task``'s model on the configured data (see the module doc).

    ``fit()`` returns ``{"history": [per-epoch metrics], "steps": [(epoch, loss) per optimizer
    step of this run], "best_metric", "best_epoch", "last", "best", "out", "meta",
    "model_kwargs"}``. The task defaults to the one the config names (``cfg.task``).
    """

    def __init__(self, cfg: TrainConfig, task: Task | None = None) -> None:
        self.task: Task = task if task is not None else task_for_config(cfg)
        self.cfg = with_task_defaults(cfg, self.task)

    # ------------------------------------------------------------------ set-up
    def fit(self) -> dict[str, Any]:
        self.task.check_config(self.cfg)
        env = setup(self.cfg.device)
        try:
            return self._fit(env)
        finally:
            if env.distributed:
                teardown()

    def _workers(self, env: DistEnv, data: TaskData) -> int:
        return loader_workers(self.cfg.workers, env.device.type, world_size=env.world_size, in_memory=data.in_memory)

    def _loader(self, dataset: Dataset, env: DistEnv, **kwargs: Any) -> DataLoader:
        workers = self._workers(env, self.data)
        return DataLoader(dataset, num_workers=workers, collate_fn=self.data.collate,
                          pin_memory=env.device.type == "cuda", prefetch_factor=4 if workers else None, **kwargs)

    def _prepare_out(self, env: DistEnv) -> Path:
        """Check the output folder before any work: writable, no other run's checkpoint
        (unless ``overwrite``), no temporaries of a killed save."""
        out = Path(self.cfg.out).expanduser()
        if env.is_main:
            check_run_inputs(out, self.cfg)
            ensure_writable_dir(out, "--out")
            for stale in clean_stale_temporaries(out):
                log.info("removed %s, left by an interrupted save", stale)
            resumed_here = self.cfg.resume and any(same_file(self.cfg.resume, out / n) for n in ("last.pt", "best.pt"))
            if self.cfg.resume and not resumed_here and (out / "last.pt").exists() and not self.cfg.overwrite:
                raise UserError(
                    f"--out: {out} already holds a checkpoint (last.pt) of another run than --resume "
                    f"{self.cfg.resume}; resume into that run's own folder (leave out --out), choose another "
                    f"--out, or pass --overwrite to replace its files")
            if not self.cfg.resume and (out / "last.pt").exists():
                if not self.cfg.overwrite:
                    raise UserError(
                        f"--out: {out} already holds a checkpoint (last.pt) of another run; continue it with "
                        f"--resume {out / 'last.pt'}, or pass --overwrite to start over in this folder"
                    )
                # Start over for real: an interrupted new run must not leave the old run's
                # checkpoints beside its own config and log.
                removed = [name for name in RUN_FILES if (out / name).exists()]
                for name in removed:
                    shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
                log.info("--overwrite: removed the previous run's %s from %s", ", ".join(removed), out)
            atomic_write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False), out / "config.yaml")
        return out

    def _param_groups(self, model: nn.Module) -> Any:
        """``model.parameters()``, or, where the attention has its own learning-rate multiplier
        or weight decay, or BatchNorm affines and biases are not decayed, one group per
        (weight decay, lr multiplier) with ``lr_scale`` set (applied at every step)."""
        cfg = self.cfg
        if cfg.attention_lr_scale == 1.0 and cfg.attention_weight_decay is None and cfg.decay_norm_and_bias:
            return model.parameters()
        attention = {id(p) for m in model.modules() if isinstance(m, ANAR) for p in m.parameters()}
        groups: dict[tuple[float, float], list[nn.Parameter]] = {}
        for name, p in model.named_parameters():
            is_attention = id(p) in attention
            decay = cfg.attention_weight_decay if is_attention and cfg.attention_weight_decay is not None \
                else cfg.weight_decay
            if not cfg.decay_norm_and_bias and (p.ndim <= 1 or name.endswith(".bias")):
                decay = 0.0  # timm's param_groups_weight_decay rule: 1-D tensors and biases
            groups.setdefault((decay, cfg.attention_lr_scale if is_attention else 1.0), []).append(p)
        return [dict(params=ps, weight_decay=wd, lr_scale=scale) for (wd, scale), ps in groups.items()]

    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        cfg = self.cfg
        params = self._param_groups(model)
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=cfg.base_lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
        cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        return cls(params, lr=cfg.base_lr, weight_decay=cfg.weight_decay)

    def _memory_format(self) -> torch.memory_format:
        if not self.cfg.channels_last:
            return torch.contiguous_format
        return torch.channels_last_3d if self.task.input_dims() == 3 else torch.channels_last

    def _fit(self, env: DistEnv) -> dict[str, Any]:
        cfg, task = self.cfg, self.task
        if not env.is_main:
            log.setLevel(logging.WARNING)
        if env.is_main and cfg.resume:
            ensure_writable_dir(Path(cfg.out).expanduser(), "--out")  # before minutes of data loading
        seed_everything(cfg.seed)
        data = task.build_data(cfg)
        self.data, self.meta = data, dict(data.meta)
        where = cfg.data_dir or data.data_dir  # recorded absolute: tdaf eval finds the data from anywhere
        if where is not None:
            self.meta["data_dir"] = str(Path(where).expanduser().resolve())
        sampler = GlobalBatchSampler(len(data.train), cfg.batch_size, env.world_size, env.rank, cfg.accum_steps,
                                     seed=cfg.seed)
        built = task.build_model(cfg, data.meta)
        model = built.model
        if cfg.init_from and not cfg.resume:  # (a resumed run's weights replace them)
            init_from(model, cfg.init_from, task, cfg.attention_init)
        model.to(env.device)
        check_batch_norm_batch(model, data.train, data.collate, task, sampler.micro_batch,
                               env.world_size * cfg.accum_steps, cfg.batch_size, env.device)
        if cfg.channels_last:
            model.to(memory_format=self._memory_format())
        if cfg.overlap_flows:
            overlap_flows(model)
        optimizer = self._optimizer(model)
        # fp16 needs loss scaling (bf16 does not); a disabled scaler is a pass-through.
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.amp and cfg.amp_dtype == "fp16")
        self.ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay is not None else None
        start_epoch, best, best_epoch, history = 0, None, 0, []
        self._resumed_start: dict[str, torch.Tensor] | None = None
        if cfg.resume:
            start_epoch, best, best_epoch, history = self._resume(model, optimizer, built.name, built.kwargs)
        out = self._prepare_out(env)
        # Built before the first step: its start maps are the gates of the untrained model
        # (a resumed run reads them from its checkpoint).
        self.monitor = (AttentionMonitor(task, data, model, env.device, start_from_state(self._resumed_start),
                                         self._memory_format())
                        if cfg.attention_monitor and env.is_main else None)
        self.model, self.optimizer, self.model_name, self.model_kwargs = model, optimizer, built.name, built.kwargs
        self.out, self.env, self.sampler = out, env, sampler
        train_model: nn.Module = model
        if env.distributed:
            train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
        if cfg.compile:
            train_model = torch.compile(train_model)
        val_loader = self._loader(data.val, env, batch_size=max(1, cfg.batch_size // env.world_size),
                                  sampler=ShardSampler(len(data.val), env.world_size, env.rank))
        runlog = RunLog(out, history, start_epoch * sampler.steps, cfg.tensorboard) if env.is_main else None
        self.runlog = runlog
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        plan = cpu_plan(self._workers(env, data), env.device.type, world_size=env.world_size,
                        threads_given=cfg.threads is not None)
        if env.is_main:
            log.info("%s: %s", env.device, plan)
            log.info("training %s (%s params) on %s: %d train / %d val %s, %s, "
                     "%d processes x %d micro-batches of %d = global batch %d, lr %.4g, %d epochs -> %s",
                     cfg.model, f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M", cfg.data,
                     len(data.train), len(data.val), data.unit, data.description, env.world_size, cfg.accum_steps,
                     sampler.micro_batch, cfg.batch_size, cfg.base_lr, cfg.epochs, out)
        if start_epoch >= cfg.epochs:
            log.info("the checkpoint has %d epochs of %d: nothing to do (raise --epochs to continue)",
                     start_epoch, cfg.epochs)
        epoch_times: list[float] = []
        self.step_losses: list[tuple[float, float]] = []
        main_key = task.main_metric
        try:
            for epoch in range(start_epoch, cfg.epochs):
                t0 = time.perf_counter()
                train = self._train_epoch(train_model, epoch)
                broadcast_buffers(model)
                if self.ema is not None:
                    broadcast_buffers(self.ema.module)
                val: dict[str, Any] | None = None
                if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                    val = evaluate(self._eval_model(), val_loader, env.device, task, amp=cfg.amp, amp_dtype=cfg.amp_dtype,
                                   channels_last=cfg.channels_last, strict=cfg.strict,
                                   progress=None if cfg.progress and env.is_main else False,
                                   desc=f"val {epoch + 1}")  # bars on a terminal only, as training's
                if val and val["skipped"] and env.is_main:
                    log.warning("epoch %d: skipped %d unreadable validation %s (e.g. %s)", epoch + 1,
                                val["skipped"], data.unit, ", ".join(val.get("skipped_examples", [])))
                self._check_finite(self._eval_model(), val, epoch + 1)
                if self.ema is not None:
                    self._check_finite(model, None, epoch + 1)
                improved = val is not None and task.better(float(val[main_key]), best)
                if improved:
                    best, best_epoch = float(val[main_key]), epoch + 1
                epoch_times.append(time.perf_counter() - t0)
                row = self._row(epoch + 1, train, val, epoch_times[-1], best)
                picture = None
                if self.monitor is not None and self.monitor.active:
                    attention, picture = self.monitor.epoch(self._eval_model(), model)
                    row.update(attention)
                history.append(row)
                if env.is_main:
                    self._save(out, epoch + 1, val, best, best_epoch, history, improved)
                    assert runlog is not None
                    runlog.epoch(row, history, (epoch + 1) * sampler.steps)
                    if picture is not None:
                        runlog.image("attention/maps", picture, (epoch + 1) * sampler.steps)
                    self._log_epoch(row, epoch_times, cfg.epochs - epoch - 1)
                    if picture is not None:
                        log.info("%s", attention_line(row))
        finally:
            if runlog is not None:
                runlog.close()
        if env.is_main and history:
            kept = [str(out / n) for n in ("last.pt", "best.pt") if (out / n).exists()]
            log.info("done: best val %s %.4f at epoch %d; checkpoints %s", task.labels.get(main_key, main_key),
                     math.nan if best is None else best, best_epoch, ", ".join(kept))
        return {"history": history, "steps": self.step_losses,
                "best_metric": -math.inf if best is None else best, "best_epoch": best_epoch, "out": out,
                "last": out / "last.pt", "best": out / "best.pt", "meta": data.meta, "model_kwargs": built.kwargs}

    def _eval_model(self) -> nn.Module:
        """The weights that are evaluated and saved: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def _row(self, epoch: int, train: dict[str, Any], val: dict[str, Any] | None, seconds: float,
             best: float | None) -> dict[str, Any]:
        """One line of ``metrics.csv``: train_*, val_* (NaN on epochs without validation), best_*."""
        task = self.task
        keys = task.log_metrics if task.log_metrics is not None else tuple(
            k for k in (val or {}) if k not in ("images", "skipped", "skipped_examples")) or (task.main_metric,)
        row: dict[str, Any] = {"epoch": epoch, "lr": train["lr"], "train_loss": train["loss"]}
        row.update({f"train_{k}": train[k] for k in task.train_metrics})
        row.update({f"val_{k}": float(val[k]) if val else math.nan for k in keys})
        row.update(images_per_s=train["images_per_s"], epoch_time_s=seconds,
                   skipped=train["skipped"] + (val["skipped"] if val else 0))
        row[f"best_{task.main_metric}"] = math.nan if best is None else best
        return row

    def _resume(self, model: nn.Module, optimizer: torch.optim.Optimizer, name: str,
                kwargs: dict[str, Any]) -> tuple[int, float | None, int, list[dict[str, Any]]]:
        cfg = self.cfg
        ckpt = load_checkpoint(cfg.resume, "--resume")
        if "optimizer" not in ckpt or "epoch" not in ckpt:
            raise UserError(f"--resume: {cfg.resume} holds weights but no training state (optimizer, epoch)")
        spec = ckpt["model"]
        saved_task = ckpt.get("task", self.task.name)
        if saved_task != self.task.name:
            raise UserError(f"--resume: {cfg.resume} is a {saved_task} checkpoint; this run's task is {self.task.name}")
        if spec["name"] != name or (spec.get("kwargs", {}) != kwargs and
                                    architecture(build_from_spec(spec, "meta")) != architecture(model)):
            raise UserError(
                f"--resume: {cfg.resume} holds {spec['name']} {spec.get('kwargs')}, but this run builds "
                f"{name} {kwargs}; a resumed run keeps the architecture of the run that wrote it"
            )
        if ckpt.get("meta", {}).get("data") != cfg.data:
            raise UserError(f"--resume: {cfg.resume} was trained on {ckpt.get('meta', {}).get('data')!r}, "
                            f"this run uses --data {cfg.data}")
        problems = state_dict_mismatch(model.state_dict(), ckpt["state_dict"])
        if problems:
            raise UserError(f"--resume: {cfg.resume}: weights do not fit {name} {kwargs}: {problems}")
        saved = ckpt.get("config", {})
        recipe_keys = ("epochs", "batch_size", "lr", "lr_batch", "momentum", "weight_decay", "schedule",
                       "milestones", "gamma", "warmup_epochs", "seed", "recipe", "input_size", "train_subset",
                       "optimizer")
        changed = [f"{k} {saved.get(k)!r} -> {getattr(cfg, k)!r}" for k in recipe_keys
                   if k in saved and saved[k] != getattr(cfg, k)]
        if changed:
            log.warning("resuming with a changed recipe (%s): the result will differ from an uninterrupted run",
                        "; ".join(changed))
        model.load_state_dict(ckpt.get("train_state_dict", ckpt["state_dict"]))
        optimizer.load_state_dict(ckpt["optimizer"])
        if self.ema is not None:
            if "train_state_dict" not in ckpt:
                raise UserError(f"--resume: {cfg.resume} was trained without --ema-decay; resume it without it")
            self.ema.module.load_state_dict(ckpt["state_dict"])
        elif "train_state_dict" in ckpt:
            raise UserError(f"--resume: {cfg.resume} was trained with an EMA of the weights; give --ema-decay "
                            f"{ckpt.get('config', {}).get('ema_decay')} to resume it")
        if "scaler" in ckpt and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])
        self._resumed_start = ckpt.get("attention_start")
        log.info("resumed from %s after epoch %d", cfg.resume, ckpt["epoch"])
        best = ckpt.get("best_metric")
        return int(ckpt["epoch"]), None if best is None else float(best), int(ckpt.get("best_epoch", 0)), \
            list(ckpt.get("history", []))

    # ------------------------------------------------------------------ training
    def _train_epoch(self, train_model: nn.Module, epoch: int) -> dict[str, Any]:
        cfg, env, task = self.cfg, self.env, self.task
        sampler, steps, accum = self.sampler, self.sampler.steps, cfg.accum_steps
        sampler.set_epoch(epoch)
        if hasattr(self.data.train, "set_epoch"):
            self.data.train.set_epoch(epoch)
        torch.manual_seed(_epoch_seed(cfg.seed, epoch))  # dropout and any other draw: f(seed, epoch)
        loader = self._loader(self.data.train, env, batch_sampler=sampler)
        train_model.train()
        fmt = self._memory_format()
        ddp = isinstance(_ddp_of(train_model), nn.parallel.DistributedDataParallel)
        keys = task.train_metrics
        # [loss * n, n, non-finite flag, *sums]: one all-reduce per micro-batch
        sums = torch.zeros(2 + len(keys), dtype=torch.float64, device=env.device)
        step_sums = torch.zeros(2, dtype=torch.float64, device=env.device)
        skipped, lr, examples = 0, 0.0, []
        # a bar on a terminal, a few plain lines in a log file (the epoch line follows anyway)
        bar = progress_bar(steps, f"epoch {epoch + 1}/{cfg.epochs}", "step",
                           enabled=None if cfg.progress and env.is_main else False)
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        for i, (inputs, targets, bad) in enumerate(loader):
            micro, step_in_epoch = i % accum, i // accum
            step = epoch * steps + step_in_epoch
            if micro == 0:
                lr = lr_at(cfg, step, steps)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
            check_skipped(bad, cfg.strict)
            skipped += len(bad)
            examples += bad[: max(0, 3 - len(examples))]
            if inputs is None:
                raise UnreadableInputError(f"every {self.data.unit[:-1] if self.data.unit.endswith('s') else 'item'} "
                                           f"of a training batch is unreadable (e.g. {bad[0]}); check the data folder")
            inputs, targets = task.move(inputs, targets, env.device, fmt)
            last_micro = micro == accum - 1
            with (_ddp_of(train_model).no_sync() if ddp and not last_micro else nullcontext()):
                with autocast(env.device, cfg.amp, cfg.amp_dtype):
                    result = task.training_step(train_model, inputs, targets)
                value = result.loss.detach().double()
                n = torch.tensor(float(result.count), dtype=torch.float64, device=env.device)
                local = torch.stack([value * n, n, (~torch.isfinite(value)).double(),
                                     *(result.sums[k].detach().double() for k in keys)])
                all_reduce_sum(local)  # every process stops together on a non-finite loss
                if local[2].item() > 0:
                    raise TrainingDiverged(self._nonfinite_message(f"training loss is {value.item()}", epoch,
                                                                   step_in_epoch))
                self.scaler.scale(result.loss / accum).backward()
            if last_micro:
                if cfg.clip_grad_norm is not None:
                    self.scaler.unscale_(self.optimizer)
                    norm = torch.nn.utils.clip_grad_norm_(train_model.parameters(), cfg.clip_grad_norm)
                    # With fp16 loss scaling an overflow is expected now and then: the scaler skips that step.
                    if not torch.isfinite(norm) and not self.scaler.is_enabled():
                        raise TrainingDiverged(self._nonfinite_message(f"gradient norm is {norm.item()}", epoch,
                                                                       step_in_epoch))
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema is not None:
                    self.ema.update(_unwrap(train_model), step=step + 1)
            sums += torch.cat([local[:2], local[3:]])
            step_sums += local[:2]
            if last_micro:
                self.step_losses.append((epoch + (step_in_epoch + 1) / steps, (step_sums[0] / step_sums[1]).item()))
                step_sums.zero_()
                elapsed = time.perf_counter() - t0
                bar.update(1)
                bar.set_postfix(loss=f"{sums[0].item() / sums[1].item():.4f}", lr=f"{lr:.3g}",
                                img_s=f"{sums[1].item() / elapsed:.1f}", refresh=False)
                if self.runlog is not None and (step + 1) % cfg.log_every == 0:
                    self.runlog.scalar("train/step_loss", sums[0].item() / sums[1].item(), step + 1)
                    self.runlog.scalar("train/step_lr", lr, step + 1)
        bar.close()
        elapsed = time.perf_counter() - t0
        skipped_total = torch.tensor([float(skipped)], dtype=torch.float64, device=env.device)
        all_reduce_sum(skipped_total)
        if skipped_total.item() and env.is_main:
            log.warning("epoch %d: skipped %d unreadable training %s (e.g. %s)", epoch + 1,
                        int(skipped_total.item()), self.data.unit, ", ".join(examples) or "on other processes")
        loss_sum, n, *extra = sums.tolist()
        return {"loss": loss_sum / n, **{k: v / n for k, v in zip(keys, extra)}, "lr": lr,
                "images_per_s": n / elapsed, "skipped": int(skipped_total.item())}

    def _kept(self, epoch: int) -> str:
        last = self.out / "last.pt"
        return (f"the last good checkpoint {last} (epoch {epoch}) is kept" if last.exists() and epoch > 0
                else "no checkpoint had been written yet")

    def _nonfinite_message(self, what: str, epoch: int, step: int) -> str:
        return (f"{what} at epoch {epoch + 1}, step {step + 1}/{self.sampler.steps}; stopped before updating the "
                f"weights, and {self._kept(epoch)}. Try a lower --lr, --warmup-epochs, --clip-grad-norm, "
                f"or without --amp")

    def _check_finite(self, model: nn.Module, val: dict[str, Any] | None, epoch: int) -> None:
        """Stop before saving an epoch whose weights, statistics or validation loss are not finite."""
        problems = []
        bad_params = _nonfinite(model.named_parameters())
        bad_buffers = _nonfinite(model.named_buffers())
        if bad_params:
            problems.append(f"{len(bad_params)} weight tensors are non-finite ({_short(bad_params)})")
        if bad_buffers:
            problems.append(f"{len(bad_buffers)} buffers (BatchNorm statistics) are non-finite ({_short(bad_buffers)})")
        if val is not None and "loss" in val and not math.isfinite(val["loss"]):
            problems.append(f"the validation loss is {val['loss']}")
        if problems:
            raise TrainingDiverged(
                f"the model diverged in epoch {epoch}: {'; '.join(problems)}. Stopped before saving epoch {epoch}; "
                f"{self._kept(epoch - 1)}. Try a lower --lr, --warmup-epochs or --clip-grad-norm")

    # ------------------------------------------------------------------ output
    def _save(self, out: Path, epochs_done: int, val: dict[str, Any] | None, best: float | None,
              best_epoch: int, history: list[dict[str, Any]], improved: bool) -> None:
        """``best.pt`` first, then ``last.pt``: a kill between the two leaves ``last.pt`` at the
        previous epoch, and resuming from it redoes this epoch and writes ``best.pt`` again."""
        cfg = self.cfg
        metrics = {k: v for k, v in history[-1].items() if k != "epoch"}
        if val:
            metrics.update({k: v for k, v in val.items() if k != "skipped_examples"})
        meta = {**self.meta, "epoch": epochs_done, "metrics": metrics, "model_name": self.model_name}
        extra: dict[str, Any] = {}
        if self.ema is not None:  # the EMA weights are the model; the raw ones continue training
            extra["train_state_dict"] = _unwrap(self.model).state_dict()
        if self.scaler.is_enabled():
            extra["scaler"] = self.scaler.state_dict()
        if self.monitor is not None and self.monitor.active:
            extra["attention_start"] = self.monitor.start_state()
        payload = checkpoint_payload(
            self.model_name, self.model_kwargs, _unwrap(self._eval_model()).state_dict(), meta, **extra,
            optimizer=self.optimizer.state_dict(),
            scheduler={"name": cfg.schedule, "step": epochs_done * self.sampler.steps,
                       "steps_per_epoch": self.sampler.steps},
            epoch=epochs_done, best_metric=best, best_epoch=best_epoch, main_metric=self.task.main_metric,
            rng=rng_state(), config=cfg.to_dict(), history=list(history), task=self.task.name,
        )
        with deferred_interrupts():
            if improved:
                atomic_save(payload, out / "best.pt")
            atomic_save(payload, out / "last.pt")

    def _log_epoch(self, row: dict[str, Any], times: list[float], remaining: int) -> None:
        eta = sum(times) / len(times) * remaining
        label = self.task.labels.get
        train = " ".join(f"{label(k[6:], k[6:])} {v:.4f}" for k, v in row.items() if k.startswith("train_"))
        vals = [(k[4:], v) for k, v in row.items() if k.startswith("val_")]
        val = (" | val " + " ".join(f"{label(k, k)} {v:.4f}" for k, v in vals)
               if vals and not all(math.isnan(v) for _, v in vals) else "")
        log.info("epoch %d/%d: train %s%s | %.1f %s/s, %s, run ETA %s", row["epoch"], self.cfg.epochs, train, val,
                 row["images_per_s"], self.data.unit, _hms(row["epoch_time_s"]), _hms(eta))


def _ddp_of(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train(cfg: TrainConfig | dict[str, Any], task: Task | None = None) -> dict[str, Any]:
    """Train from a :class:`TrainConfig` (or a dict of its keys); see :class:`Trainer`."""
    if isinstance(cfg, dict):
        cfg = TrainConfig.from_dict(cfg)
    return Trainer(cfg, task).fit()
