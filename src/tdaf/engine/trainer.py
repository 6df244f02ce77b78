"""The trainer shared by all tasks: the paper's recipes (§4.1), checkpoints, resume, DDP.

A baseline and its TDAF model train with the very same code and settings (§4.1:
"trained with identical optimization scheme following He et al. 2016"): SGD with
momentum 0.9, weight decay 1e-4, learning rate ``lr * batch / lr_batch`` (0.1 x
batch/256 for ImageNet) under a step or cosine schedule, Kaiming-initialised models
(the builders initialise convs with ``kaiming_normal_``).

What a long run needs:
  * the data order and every random augmentation are functions of (seed, epoch, image)
    and the global RNGs are re-seeded from (seed, epoch) at each epoch start, so a run
    resumed from ``last.pt`` ends with exactly the weights of an uninterrupted run;
  * ``last.pt`` every epoch and ``best.pt`` on a new best top-1, both written atomically
    (temporary file + rename) by rank 0 only;
  * a non-finite loss stops the run before the weights are touched, naming the epoch and
    step, and leaves the checkpoints of the last good epoch in place;
  * bf16 autocast, channels-last and ``torch.compile`` as options;
  * data-parallel training over processes started by ``torchrun`` (DDP, gloo on CPU,
    NCCL on GPU). ``batch_size`` is the global batch; :class:`~tdaf.data.GlobalBatchSampler`
    splits it so N processes see the same groups of images as one process accumulating
    N micro-batches.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import GlobalBatchSampler, ShardSampler, build_datasets, collate_skip
from ..data.loading import TransformedDataset
from .checkpoint import atomic_save, checkpoint_payload, load_checkpoint
from .config import TrainConfig
from .distributed import DistEnv, all_reduce_sum, broadcast_buffers, setup, teardown
from .evaluate import UnreadableImageError, autocast, check_skipped, evaluate
from .runlog import RunLog
from .tasks import ClassificationTask, Task

__all__ = ["Trainer", "NonFiniteLossError", "lr_at", "rng_state", "set_rng_state", "seed_everything", "train"]

log = logging.getLogger("tdaf.train")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped before updating the weights."""


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


class Trainer:
    """Trains ``task``'s model on the configured data (see the module doc).

    ``fit()`` returns ``{"history": [per-epoch metrics], "steps": [(epoch, loss) per optimizer
    step of this run], "best_metric", "best_epoch", "last", "best", "out", "info", "model_kwargs"}``. The task defaults to :class:`ClassificationTask`.
    """

    def __init__(self, cfg: TrainConfig, task: Task | None = None) -> None:
        self.cfg = cfg
        self.task: Task = task if task is not None else ClassificationTask(cfg.label_smoothing)

    # ------------------------------------------------------------------ set-up
    def fit(self) -> dict[str, Any]:
        env = setup(self.cfg.device)
        try:
            return self._fit(env)
        finally:
            if env.distributed:
                teardown()

    def _workers(self, env: DistEnv) -> int:
        if self.cfg.workers is not None:
            return self.cfg.workers
        if self.cfg.data == "digits":
            return 0  # in memory: worker start-up would cost more than the augmentation
        return max(1, min(8, (os.cpu_count() or 2) // env.world_size - 1))

    def _loader(self, dataset: TransformedDataset, env: DistEnv, **kwargs: Any) -> DataLoader:
        workers = self._workers(env)
        return DataLoader(dataset, num_workers=workers, collate_fn=collate_skip,
                          pin_memory=env.device.type == "cuda", prefetch_factor=4 if workers else None, **kwargs)

    def _prepare_out(self, env: DistEnv) -> Path:
        out = Path(self.cfg.out).expanduser()
        if env.is_main:
            if not self.cfg.resume and (out / "last.pt").exists() and not self.cfg.overwrite:
                raise ValueError(
                    f"--out: {out} already holds a checkpoint (last.pt) of another run; continue it with "
                    f"--resume {out / 'last.pt'}, or pass --overwrite to start over in this folder"
                )
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        return out

    def _fit(self, env: DistEnv) -> dict[str, Any]:
        cfg = self.cfg
        if not env.is_main:
            log.setLevel(logging.WARNING)
        seed_everything(cfg.seed)
        train_set, val_set, info = build_datasets(
            cfg.data, cfg.data_dir, input_size=cfg.input_size, recipe=cfg.recipe, seed=cfg.seed,
            train_subset=cfg.train_subset, val_subset=cfg.val_subset,
        )
        self.info = info
        sampler = GlobalBatchSampler(len(train_set), cfg.batch_size, env.world_size, env.rank, cfg.accum_steps,
                                     seed=cfg.seed)
        model, kwargs = self.task.build_model(cfg, len(info.class_names))
        model.to(env.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.base_lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
        start_epoch, best, best_epoch, history = 0, -math.inf, 0, []
        if cfg.resume:
            start_epoch, best, best_epoch, history = self._resume(model, optimizer, kwargs)
        out = self._prepare_out(env)
        self.model, self.optimizer, self.model_kwargs, self.out, self.env = model, optimizer, kwargs, out, env
        self.train_set, self.sampler = train_set, sampler
        train_model: nn.Module = model
        if env.distributed:
            train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
        if cfg.compile:
            train_model = torch.compile(train_model)
        val_loader = self._loader(val_set, env, batch_size=max(1, cfg.batch_size // env.world_size),
                                  sampler=ShardSampler(len(val_set), env.world_size, env.rank))
        runlog = RunLog(out, start_epoch, start_epoch * sampler.steps, cfg.tensorboard) if env.is_main else None
        self.runlog = runlog
        if env.is_main:
            log.info("training %s (%s params) on %s: %d train / %d val images, %d classes, %dx%d, "
                     "%d processes x %d micro-batches of %d = global batch %d, lr %.4g, %d epochs -> %s",
                     cfg.model, f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M", cfg.data,
                     len(train_set), len(val_set), len(info.class_names), info.input_size[1], info.input_size[2],
                     env.world_size, cfg.accum_steps, sampler.micro_batch, cfg.batch_size, cfg.base_lr,
                     cfg.epochs, out)
        if start_epoch >= cfg.epochs:
            log.info("the checkpoint has %d epochs of %d: nothing to do (raise --epochs to continue)",
                     start_epoch, cfg.epochs)
        epoch_times: list[float] = []
        self.step_losses: list[tuple[float, float]] = []
        try:
            for epoch in range(start_epoch, cfg.epochs):
                t0 = time.perf_counter()
                train = self._train_epoch(train_model, epoch, start_epoch)
                broadcast_buffers(model)
                val: dict[str, Any] | None = None
                if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                    val = evaluate(model, val_loader, env.device, self.task, amp=cfg.amp,  # type: ignore[arg-type]
                                   channels_last=cfg.channels_last, strict=cfg.strict,
                                   progress=cfg.progress and env.is_main, desc=f"val {epoch + 1}")
                if val and val["skipped"] and env.is_main:
                    log.warning("epoch %d: skipped %d unreadable validation images (e.g. %s)", epoch + 1,
                                val["skipped"], ", ".join(val.get("skipped_examples", [])))
                metric = val[self.task.main_metric] if val else math.nan
                improved = val is not None and metric > best
                if improved:
                    best, best_epoch = metric, epoch + 1
                epoch_times.append(time.perf_counter() - t0)
                row = {
                    "epoch": epoch + 1, "lr": train["lr"], "train_loss": train["loss"], "train_top1": train["top1"],
                    "val_loss": val["loss"] if val else math.nan, "val_top1": val["top1"] if val else math.nan,
                    "val_top5": val["top5"] if val else math.nan, "images_per_s": train["images_per_s"],
                    "epoch_time_s": epoch_times[-1], "skipped": train["skipped"] + (val["skipped"] if val else 0),
                    "best_top1": best if best > -math.inf else math.nan,
                }
                history.append(row)
                if env.is_main:
                    self._save(out, epoch + 1, row, val, best, best_epoch, history, improved)
                    assert runlog is not None
                    runlog.epoch(row, (epoch + 1) * sampler.steps)
                    self._log_epoch(row, epoch_times, cfg.epochs - epoch - 1)
        finally:
            if runlog is not None:
                runlog.close()
        if env.is_main and history:
            log.info("done: best val top-1 %.4f at epoch %d; checkpoints %s, %s", best, best_epoch,
                     out / "last.pt", out / "best.pt")
        return {"history": history, "steps": self.step_losses, "best_metric": best, "best_epoch": best_epoch,
                "out": out,
                "last": out / "last.pt", "best": out / "best.pt", "info": info, "model_kwargs": kwargs}

    def _resume(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                kwargs: dict[str, Any]) -> tuple[int, float, int, list[dict[str, Any]]]:
        cfg = self.cfg
        ckpt = load_checkpoint(cfg.resume, "--resume")
        spec = ckpt["model"]
        if spec["name"] != cfg.model or spec.get("kwargs", {}) != kwargs:
            raise ValueError(
                f"--resume: {cfg.resume} holds {spec['name']} {spec.get('kwargs')}, but this run builds "
                f"{cfg.model} {kwargs}; give the same --model/--flows/--anar as the run that wrote it"
            )
        if ckpt.get("meta", {}).get("data") != cfg.data:
            raise ValueError(f"--resume: {cfg.resume} was trained on {ckpt.get('meta', {}).get('data')!r}, "
                             f"this run uses --data {cfg.data}")
        if "optimizer" not in ckpt or "epoch" not in ckpt:
            raise ValueError(f"--resume: {cfg.resume} holds weights but no training state (optimizer, epoch)")
        saved = ckpt.get("config", {})
        recipe_keys = ("epochs", "batch_size", "lr", "lr_batch", "momentum", "weight_decay", "schedule",
                       "milestones", "gamma", "warmup_epochs", "seed", "recipe", "input_size", "train_subset")
        changed = [f"{k} {saved.get(k)!r} -> {getattr(cfg, k)!r}" for k in recipe_keys
                   if k in saved and saved[k] != getattr(cfg, k)]
        if changed:
            log.warning("resuming with a changed recipe (%s): the result will differ from an uninterrupted run",
                        "; ".join(changed))
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])
        log.info("resumed from %s after epoch %d", cfg.resume, ckpt["epoch"])
        best = ckpt.get("best_metric")
        return int(ckpt["epoch"]), -math.inf if best is None else float(best), int(ckpt.get("best_epoch", 0)), \
            list(ckpt.get("history", []))

    # ------------------------------------------------------------------ training
    def _train_epoch(self, train_model: nn.Module, epoch: int, start_epoch: int) -> dict[str, Any]:
        cfg, env, task = self.cfg, self.env, self.task
        sampler, steps, accum = self.sampler, self.sampler.steps, cfg.accum_steps
        sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        torch.manual_seed(_epoch_seed(cfg.seed, epoch))  # dropout and any other draw: f(seed, epoch)
        loader = self._loader(self.train_set, env, batch_sampler=sampler)
        train_model.train()
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        ddp = isinstance(_ddp_of(train_model), nn.parallel.DistributedDataParallel)
        sums = torch.zeros(3, dtype=torch.float64, device=env.device)
        step_sums = torch.zeros(2, dtype=torch.float64, device=env.device)
        skipped, lr, examples = 0, 0.0, []
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
                   disable=not (cfg.progress and env.is_main), dynamic_ncols=True, leave=False)
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        for i, (x, y, bad) in enumerate(loader):
            micro, step_in_epoch = i % accum, i // accum
            step = epoch * steps + step_in_epoch
            if micro == 0:
                lr = lr_at(cfg, step, steps)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
            check_skipped(bad, cfg.strict)
            skipped += len(bad)
            examples += bad[: max(0, 3 - len(examples))]
            if x is None:
                raise UnreadableImageError(f"every image of a training batch is unreadable (e.g. {bad[0]}); "
                                           f"check the data folder")
            x = x.to(env.device, non_blocking=True).contiguous(memory_format=fmt)
            y = y.to(env.device, non_blocking=True)
            last_micro = micro == accum - 1
            with (_ddp_of(train_model).no_sync() if ddp and not last_micro else nullcontext()):
                with autocast(env.device, cfg.amp):
                    out = train_model(x)
                loss = task.loss(out, y)
                value = loss.detach().double()
                local = torch.stack([
                    value * y.numel(),
                    (out.detach().argmax(dim=1) == y).sum().double(),
                    torch.tensor(float(y.numel()), dtype=torch.float64, device=env.device),
                    (~torch.isfinite(value)).double(),
                ])
                all_reduce_sum(local)  # every process stops together on a non-finite loss
                if local[3].item() > 0:
                    raise NonFiniteLossError(self._nonfinite_message(value.item(), epoch, step_in_epoch, start_epoch))
                (loss / accum).backward()
            if last_micro:
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            sums += local[:3]
            step_sums += local[[0, 2]]
            if last_micro:
                self.step_losses.append((epoch + (step_in_epoch + 1) / steps, (step_sums[0] / step_sums[1]).item()))
                step_sums.zero_()
                elapsed = time.perf_counter() - t0
                bar.update(1)
                bar.set_postfix(loss=f"{sums[0].item() / sums[2].item():.4f}", lr=f"{lr:.3g}",
                                img_s=f"{sums[2].item() / elapsed:.1f}", refresh=False)
                if self.runlog is not None and (step + 1) % cfg.log_every == 0:
                    self.runlog.scalar("train/step_loss", sums[0].item() / sums[2].item(), step + 1)
                    self.runlog.scalar("train/step_lr", lr, step + 1)
        bar.close()
        elapsed = time.perf_counter() - t0
        skipped_total = torch.tensor([float(skipped)], dtype=torch.float64, device=env.device)
        all_reduce_sum(skipped_total)
        if skipped_total.item() and env.is_main:
            log.warning("epoch %d: skipped %d unreadable training images (e.g. %s)", epoch + 1,
                        int(skipped_total.item()), ", ".join(examples) or "on other processes")
        loss_sum, hits, n = sums.tolist()
        return {"loss": loss_sum / n, "top1": hits / n, "lr": lr, "images_per_s": n / elapsed,
                "skipped": int(skipped_total.item())}

    def _nonfinite_message(self, value: float, epoch: int, step: int, start_epoch: int) -> str:
        last = self.out / "last.pt"
        kept = (f"the last good checkpoint {last} (epoch {epoch}) is kept" if last.exists() and epoch > 0
                else "no checkpoint had been written yet")
        return (f"training loss is {value} at epoch {epoch + 1}, step {step + 1}/{self.sampler.steps}; "
                f"stopped before updating the weights, and {kept}. Try a lower --lr, --warmup-epochs, "
                f"or without --amp")

    # ------------------------------------------------------------------ output
    def _save(self, out: Path, epochs_done: int, row: dict[str, Any], val: dict[str, Any] | None, best: float,
              best_epoch: int, history: list[dict[str, Any]], improved: bool) -> None:
        cfg = self.cfg
        metrics = {k: v for k, v in row.items() if k != "epoch"}
        if val:
            metrics.update({k: v for k, v in val.items() if k in ("top1", "top5", "loss", "images")})
        meta = {**self.info.meta(), "epoch": epochs_done, "metrics": metrics, "model_name": cfg.model}
        payload = checkpoint_payload(
            cfg.model, self.model_kwargs, _unwrap(self.model).state_dict(), meta,
            optimizer=self.optimizer.state_dict(),
            scheduler={"name": cfg.schedule, "step": epochs_done * self.sampler.steps,
                       "steps_per_epoch": self.sampler.steps},
            epoch=epochs_done, best_metric=None if best == -math.inf else best, best_epoch=best_epoch,
            rng=rng_state(), config=cfg.to_dict(), history=list(history), task=self.task.name,
        )
        atomic_save(payload, out / "last.pt")
        if improved:
            atomic_save(payload, out / "best.pt")

    def _log_epoch(self, row: dict[str, Any], times: list[float], remaining: int) -> None:
        eta = sum(times) / len(times) * remaining
        val = (f" | val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.4f} top-5 {row['val_top5']:.4f}"
               if not math.isnan(row["val_top1"]) else "")
        log.info("epoch %d/%d: train loss %.4f top-1 %.4f%s | %.1f img/s, %s, run ETA %s", row["epoch"],
                 self.cfg.epochs, row["train_loss"], row["train_top1"], val, row["images_per_s"],
                 _hms(row["epoch_time_s"]), _hms(eta))


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
