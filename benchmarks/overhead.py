"""What TDAF costs over its plain network, measured side by side in one run.

Every case times the plain network, the *floor* and the TDAF model in turn within each
round, many short rounds, the order rotating from round to round, so that the load of a
shared machine hits all of them alike. Each round gives a ratio to the plain network;
the table shows the median ratio and its interquartile range (IQR) over the rounds.

Rows of each case:

* ``plain``: the baseline (torchvision's ResNet as tdaf builds it).
* ``floor``: the plain network plus the extra flows' stages run alone, with the plain
  network's own layers (for 3 flows on ResNet-50: stages 1-3 at half size, stages 1-2 at
  quarter size), no attention, no per-flow BatchNorm: what the extra flows cost.
* ``tdaf``: the TDAF model (ANAR-3, 3 flows), with the plain network's weights so that
  all rows compute on the same activations.
* ``tdaf folded`` (eval cases ``eval-*`` only): the same TDAF model in its inference form,
  ``tdaf.fold_batchnorm`` (every BatchNorm and MFBN folded into the convolution before
  it), what ``tdaf predict``, ``eval`` and ``export`` run by default, with per-flow
  statistics made to differ as a trained model's do (:func:`folded_tdaf`). Under
  ``compile``, inductor's freezing folds the other rows' BatchNorms too.
* ``attention share``: per round, ``(tdaf - floor) / plain``: what the attention path
  (ANAR, gating, resizing, per-flow BatchNorm) costs on top of the flows.

Cases (``--cases``): ``eval-b8`` / ``eval-b1`` (ResNet-50, 224x224, eval forward),
``eval-cifar`` (CIFAR ResNet-18, batch 1, 32x32, the demo's models), ``train`` (ResNet-50,
batch 8: one SGD step, forward + backward + update), ``memory`` (ResNet-50, batch 8: the
memory a training forward leaves allocated for the backward pass: deterministic),
``attention`` (ResNet-50 with timm's SE, ECA, CBAM, global-context and non-local blocks in
every bottleneck, against timm's plain ResNet-50, in the same rounds as TDAF: the cost
columns of the paper's Tab. 3b). Modes (``--modes``): ``eager``, ``channels-last``,
``compile`` (``torch.compile``, inductor, compiled once per model before timing).

On a GPU (``--device cuda``): cases ``gpu-b64`` and ``gpu-b256`` (ResNet-50, 224x224) in
fp32 and under bf16 / fp16 autocast, eval forward timed by CUDA events, and one training
step with its peak allocated memory from the caching allocator; with one more row,
``tdaf overlap``: the same model with ``backbone.overlap = True`` (flows 1..N-1 and the
ANARs gating flow N on a second CUDA stream, concurrently with flow N).

    python benchmarks/overhead.py                          # every CPU case, eager + channels-last
    python benchmarks/overhead.py --cases eval-b8 train --rounds 20
    python benchmarks/overhead.py --modes compile --cases eval-b1 eval-cifar
    python benchmarks/overhead.py --device cuda            # the GPU cases
    python benchmarks/overhead.py --json results.json      # also write every number
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import ctypes.util
import gc
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch._inductor.config
import torch.nn.functional as F
from torch import nn

import tdaf
from tdaf.layers.downsample import Downsample
from tdaf.r2dns import flow_inputs
from tdaf.profile import count_gmacs, count_params, interleaved_times

# Targets on the 2-core CPU machine (medians): ratio to the plain network, or for
# "attention share" the gap to the floor.
TARGETS: dict[tuple[str, str], float] = {
    ("eval-b8", "attention share"): 0.02,
    ("eval-b1", "tdaf"): 1.30,
    ("eval-cifar", "tdaf"): 1.40,
    ("train", "tdaf"): 1.30,
    ("memory", "tdaf"): 1.30,
    ("gpu-b256", "tdaf"): 1.20,
}


@dataclass(frozen=True)
class Case:
    name: str
    model: str  # the plain network; TDAF is "tdaf_" + model
    batch: int
    size: int
    kind: str  # "eval" | "train" | "memory" | "attention" | "gpu"
    rounds: int  # default timed rounds
    num_classes: int = 1000


CASES: dict[str, Case] = {c.name: c for c in (
    Case("eval-b8", "resnet50", 8, 224, "eval", 25),
    Case("eval-b1", "resnet50", 1, 224, "eval", 40),
    Case("eval-cifar", "resnet18_cifar", 1, 32, "eval", 200, num_classes=10),
    Case("train", "resnet50", 8, 224, "train", 16),
    Case("memory", "resnet50", 8, 224, "memory", 1),
    Case("attention", "resnet50", 8, 224, "attention", 6),
    Case("gpu-b64", "resnet50", 64, 224, "gpu", 30),
    Case("gpu-b256", "resnet50", 256, 224, "gpu", 15),
)}
CPU_CASES = ["eval-b8", "eval-b1", "eval-cifar", "train", "memory", "attention"]
GPU_CASES = ["gpu-b64", "gpu-b256"]
MODES = ("eager", "channels-last", "compile")
# timm's attention blocks, one in every bottleneck (attn_layer of timm's ResNet blocks).
ATTENTION_BLOCKS = {"se": "SE", "eca": "ECA", "cbam": "CBAM", "gc": "global context", "nl": "non-local"}


class ExtraFlowsFloor(nn.Module):
    """The plain network plus the extra flows' stages run alone: flow n (of N) runs the
    plain stages 1..S(n) on the input pooled N-n times, with no attention and the plain
    network's single BatchNorm statistics; only the last flow reaches the head."""

    def __init__(self, plain: nn.Module, flows: int) -> None:
        super().__init__()
        self.plain = plain
        self.flows = flows
        self.down = Downsample("avg")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stages = self.plain.backbone.stages
        tie = None
        for n, y in enumerate(flow_inputs(x, self.down, self.flows), start=1):
            for stage in stages[: len(stages) - (self.flows - n)]:
                y = stage(y)
            if n < self.flows:
                # Tie the extra flows to the output (with weight 0): a compiler cannot drop
                # them as dead code, and in training their backward pass runs and their
                # activations are kept, as in TDAF.
                tie = y.mean() if tie is None else tie + y.mean()
        out = self.plain.forward_head(y)
        return out if tie is None else out + 0.0 * tie


def build_trio(case: Case) -> dict[str, nn.Module]:
    """plain, floor and TDAF, with the same backbone weights (TDAF's per-flow statistics all
    start from the plain ones): every row computes on the same activations."""
    torch.manual_seed(0)
    plain = tdaf.create_model(case.model, num_classes=case.num_classes)
    model = tdaf.create_model("tdaf_" + case.model, num_classes=case.num_classes)
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(".attention." in k for k in missing), (missing, unexpected)
    return {"plain": plain, "floor": ExtraFlowsFloor(plain, model.backbone.flows), "tdaf": model}


def folded_tdaf(model: nn.Module) -> nn.Module:
    """The inference form of the TDAF row (:func:`tdaf.fold_batchnorm`), folded as a trained
    model's would be. The row's per-flow statistics are all the plain ones, with which every
    MFBN would fold into one plain convolution; in a trained model they differ from flow to
    flow, and a convolution that several flows share gets one folded weight and a per-flow
    rescale. So the copy folded here has each flow's variance 1% apart first (each norm's
    output scaled by at most 1%: the same work on nearly the same activations)."""
    trained_like = copy.deepcopy(model).eval()
    with torch.no_grad():
        for m in trained_like.modules():
            if isinstance(m, tdaf.MultiFlowBatchNorm) and m.running_var is not None and m.running_var.dim() == 2:
                m.running_var.mul_(1 + 0.01 * torch.arange(m.running_var.shape[0]).unsqueeze(1))
    return tdaf.fold_batchnorm(trained_like)


def attention_models(case: Case) -> dict[str, nn.Module]:
    import timm

    torch.manual_seed(0)
    models = build_trio(case)
    del models["floor"]
    models["timm plain"] = timm.create_model(case.model, num_classes=case.num_classes)
    for key in ATTENTION_BLOCKS:
        models[key] = timm.create_model(case.model, num_classes=case.num_classes, block_args=dict(attn_layer=key))
    return models


# ----------------------------------------------------------------------------- timing


def interleave(fns: dict[str, Callable[[], Any]], rounds: int, device: torch.device,
               progress: str = "") -> dict[str, list[float]]:
    """Per-round seconds of each function (:func:`tdaf.profile.interleaved_times`), with a
    progress line on stderr when ``progress`` names the work."""
    def report(r: int) -> None:
        print(f"\r  {progress}: round {r}/{rounds}", end="\n" if r == rounds else "", file=sys.stderr, flush=True)

    return interleaved_times(fns, rounds, device=device, on_round=report if progress else None)


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median and quartiles (inclusive method: a quartile of few values stays within them)."""
    if len(values) == 1:
        return {"median": values[0], "q1": values[0], "q3": values[0]}
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": median, "q1": q1, "q3": q3}


def ratios(times: dict[str, list[float]], base: str = "plain") -> dict[str, dict[str, float]]:
    out = {k: summary([t / b for t, b in zip(v, times[base])]) for k, v in times.items()}
    for k in out:
        out[k]["ms"] = statistics.median(times[k]) * 1e3
    if "floor" in times and "tdaf" in times:
        share = [(t - f) / b for t, f, b in zip(times["tdaf"], times["floor"], times[base])]
        out["attention share"] = summary(share)
    return out


# ----------------------------------------------------------------------------- the work


def _prepare(models: dict[str, nn.Module], mode: str, device: torch.device, train: bool) -> dict[str, nn.Module]:
    out = {}
    for k, m in models.items():
        m = m.to(device).train(train)
        if mode == "channels-last":
            m = m.to(memory_format=torch.channels_last)
        if mode == "compile":
            # Inference: inductor's freezing folds BatchNorm into the convs and prepacks the
            # weights (PyTorch's recipe for CPU inference); it does not apply to training.
            torch._inductor.config.freezing = not train
            m = torch.compile(m)
        out[k] = m
    return out


def _inputs(case: Case, mode: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(case.batch, 3, case.size, case.size, generator=g)
    if mode == "channels-last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(device), torch.randint(0, case.num_classes, (case.batch,), generator=g).to(device)


def eval_fn(model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None = None) -> Callable[[], Any]:
    def run() -> Any:
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            return model(x)
    return run


def train_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None = None
             ) -> Callable[[], Any]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def run() -> Any:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return run


def _resident_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _mallopt(mmap_threshold: int, trim_threshold: int) -> bool:
    """glibc's M_MMAP_THRESHOLD and M_TRIM_THRESHOLD; False where there is no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, mmap_threshold) and libc.mallopt(-1, trim_threshold))
    except (OSError, AttributeError):
        return False


def keep_freed_memory() -> bool:
    """Let glibc keep freed tensors' memory for reuse (tensors up to 32 MiB from the heap, no
    trimming): without it each large activation is a fresh mapping whose pages the kernel
    zeroes on first touch in every forward, which made ResNet-50 at batch 8 13% slower and
    the ratios' spread twice as wide here. jemalloc or tcmalloc do the same."""
    return _mallopt(32 << 20, 1 << 30)


def held_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Memory a training forward leaves allocated for the backward pass (saved activations,
    the graph, the loss): the process's resident memory after the forward minus before it.

    Runs in a fresh process (:func:`held_memory_in_subprocess`) in which glibc makes every
    allocation above 64 KiB its own mapping and returns it to the system when freed, so
    resident memory follows the live tensors. (Counting the tensors autograd saves through
    saved-tensor hooks would count weights and activations freed before the backward pass,
    and would switch off the recomputation of gated maps, which must not run under
    someone else's hooks.)"""
    model.train()
    for _ in range(2):  # gradients and optimizer-free state allocated before measuring
        F.cross_entropy(model(x), y).backward()
    gc.collect()
    before = _resident_bytes()
    loss = F.cross_entropy(model(x), y)
    held = _resident_bytes() - before
    loss.backward()
    return held


def run_case(case: Case, mode: str, device: torch.device, rounds: int, progress: bool = True) -> dict[str, Any]:
    """One case in one mode: ``{"rows": {name: {...}}, ...}``."""
    label = f"{case.name} [{mode}]" if progress and sys.stderr.isatty() else ""
    if case.kind == "memory":
        sizes = held_memory_in_subprocess(case, mode)
        return {"unit": "MiB", "rows": {k: {"value": v / 2**20, "median": v / sizes["plain"], "q1": v / sizes["plain"],
                                             "q3": v / sizes["plain"]} for k, v in sizes.items()}}
    if case.kind == "attention":
        base = attention_models(case)
        models = _prepare(base, mode, device, train=False)
        x, y = _inputs(case, mode, device)
        evals = interleave({k: eval_fn(m, x) for k, m in models.items()}, rounds, device,
                           progress=label and label + " eval")
        for m in models.values():
            m.train()
        trains = interleave({k: train_fn(m, x, y) for k, m in models.items()}, max(rounds // 2, 2), device,
                            progress=label and label + " train")
        rows: dict[str, dict[str, Any]] = {}
        for k, m in base.items():
            ref = "timm plain" if k in ATTENTION_BLOCKS or k == "timm plain" else "plain"
            ev = summary([t / b for t, b in zip(evals[k], evals[ref])])
            tr = summary([t / b for t, b in zip(trains[k], trains[ref])])
            rows[k] = {"params": count_params(m), "gmacs": count_gmacs(m.cpu().float(), x[:1].cpu().float()),
                       "eval": ev, "train": tr, "eval_ms": statistics.median(evals[k]) * 1e3,
                       "train_ms": statistics.median(trains[k]) * 1e3, "baseline": ref}
        return {"rows": rows}
    if case.kind == "gpu":
        out: dict[str, Any] = {"rows": {}}
        for dtype_name, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
            trio = build_trio(case)
            trio["tdaf overlap"] = copy.deepcopy(trio["tdaf"])
            trio["tdaf overlap"].backbone.overlap = True  # extra flows on a second CUDA stream
            models = _prepare(trio, mode, device, train=False)
            x, y = _inputs(case, mode, device)
            with torch.inference_mode():
                diff = (models["tdaf overlap"](x) - models["tdaf"](x)).abs().max().item()
            out.setdefault("overlap max abs difference", {})[dtype_name] = diff
            times = interleave({k: eval_fn(m, x, dtype) for k, m in models.items()}, rounds, device,
                               progress=f"{label} {dtype_name} eval" if label else "")
            out["rows"][f"eval {dtype_name}"] = ratios(times)
            for m in models.values():
                m.train()
            steps = {k: train_fn(m, x, y, dtype) for k, m in models.items()}
            times = interleave(steps, max(rounds // 3, 3), device,
                               progress=f"{label} {dtype_name} train" if label else "")
            out["rows"][f"train {dtype_name}"] = ratios(times)
            peak = {}
            for k, step in steps.items():
                torch.cuda.synchronize(device)
                before = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
                step()
                torch.cuda.synchronize(device)
                peak[k] = torch.cuda.max_memory_allocated(device) - before
            out["rows"][f"peak memory {dtype_name}"] = {
                k: {"value": v / 2**20, "median": v / peak["plain"], "q1": v / peak["plain"], "q3": v / peak["plain"]}
                for k, v in peak.items()}
            del models, steps
            torch.cuda.empty_cache()
        return out
    train = case.kind == "train"
    base = build_trio(case)
    if case.kind == "eval":  # the inference form, beside the model it is folded from
        base["tdaf folded"] = folded_tdaf(base["tdaf"])
    models = _prepare(base, mode, device, train=train)
    x, y = _inputs(case, mode, device)
    fns = {k: (train_fn(m, x, y) if train else eval_fn(m, x)) for k, m in models.items()}
    return {"rows": ratios(interleave(fns, rounds, device, progress=label))}


def held_memory_in_subprocess(case: Case, mode: str) -> dict[str, int]:
    """:func:`held_bytes` of plain, floor and TDAF, measured in a fresh Python process (an
    allocator that has already served other work keeps pages resident that it reuses)."""
    if not os.path.exists("/proc/self/statm"):
        raise RuntimeError("the memory case reads /proc/self/statm (Linux only)")
    cmd = [sys.executable, os.path.abspath(__file__), "--held-memory", case.name, "--modes", mode,
           "--threads", str(torch.get_num_threads())]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the memory probe failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _held_memory_main(case: Case, mode: str) -> int:
    if not _mallopt(1 << 16, 1 << 16):
        raise RuntimeError("the memory case needs glibc (mallopt)")
    models = _prepare(build_trio(case), mode, torch.device("cpu"), train=True)
    x, y = _inputs(case, mode, torch.device("cpu"))
    print(json.dumps({k: held_bytes(m, x, y) for k, m in models.items()}))
    return 0


# ----------------------------------------------------------------------------- output


def _ratio_cell(s: dict[str, float]) -> str:
    return f"{s['median']:.3f} [{s['q1']:.3f}-{s['q3']:.3f}]"


def _target_cell(case: str, row: str, s: dict[str, float]) -> str:
    target = TARGETS.get((case.split("/")[0], row))
    if target is None:
        return ""
    return f"<= {target:.2f} {'met' if s['median'] <= target else 'MISSED'}"


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def render(case: Case, mode: str, result: dict[str, Any], rounds: int) -> str:
    title = f"### {case.name} [{mode}]: {case.model}, batch {case.batch}, {case.size}x{case.size}"
    if case.kind == "memory":
        rows = [(k, f"{r['value']:.0f} MiB", f"{r['median']:.3f}", _target_cell(case.name, k, r))
                for k, r in result["rows"].items()]
        return title + ", memory held for the backward pass\n\n" + table(("row", "held", "ratio", "target"), rows)
    if case.kind == "attention":
        rows = []
        for k, r in result["rows"].items():
            name = {"plain": "ResNet-50 (torchvision)", "tdaf": "TDAF (ANAR-3, 3 flows)",
                    "timm plain": "ResNet-50 (timm)"}.get(k, ATTENTION_BLOCKS.get(k, k))
            rows.append((name, f"{r['params'] / 1e6:.2f}M", f"{r['gmacs']:.3f}", f"{r['eval_ms']:.0f}",
                         _ratio_cell(r["eval"]), f"{r['train_ms']:.0f}", _ratio_cell(r["train"])))
        note = (f"\n\nratios against the row's own plain network (TDAF: torchvision's; the others: timm's); "
                f"{rounds} eval rounds, {max(rounds // 2, 2)} training rounds; GMACs per image")
        return title + "\n\n" + table(("model", "params", "GMACs", "eval ms", "eval ratio [IQR]", "train ms",
                                       "train ratio [IQR]"), rows) + note
    if case.kind == "gpu":
        parts = [title, "overlap vs sequential, largest logit difference: "
                 + ", ".join(f"{k} {v:.1e}" for k, v in result.get("overlap max abs difference", {}).items())
                 + " (TF32 convolutions may pick other cuDNN algorithms; with TF32 off and deterministic "
                   "cuDNN the outputs are bit-identical)"]
        for what, res in result["rows"].items():
            if what.startswith("peak"):
                rows = [(k, f"{r['value']:.0f} MiB", f"{r['median']:.3f}", "") for k, r in res.items()]
            else:
                rows = [(k, f"{r['ms']:.2f}" if "ms" in r else "", _ratio_cell(r),
                         _target_cell(case.name, k, r) if what == "eval fp32" or what == "eval bf16" else "")
                        for k, r in res.items()]
            parts.append(f"{what}\n\n" + table(("row", "ms" if not what.startswith("peak") else "peak",
                                               "ratio [IQR]", "target"), rows))
        return "\n\n".join(parts)
    rows = [(k, f"{r['ms']:.2f}" if "ms" in r else "", _ratio_cell(r), _target_cell(case.name, k, r))
            for k, r in result["rows"].items()]
    what = "training step" if case.kind == "train" else "eval forward"
    return (f"{title}, {what}, {rounds} rounds\n\n"
            + table(("row", "median ms", "ratio to plain [IQR]", "target"), rows))


def environment(device: torch.device) -> str:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    return f"torch {torch.__version__}, {where}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", choices=sorted(CASES), metavar="CASE",
                   help=f"cases to run (default: {' '.join(CPU_CASES)} on cpu, {' '.join(GPU_CASES)} on cuda); "
                        f"choices: {', '.join(CASES)}")
    p.add_argument("--modes", nargs="+", choices=MODES, default=["eager", "channels-last"], metavar="MODE",
                   help=f"execution modes (default: eager channels-last); choices: {', '.join(MODES)}")
    p.add_argument("--rounds", type=int, help="timed rounds of every case (default: each case's own, 6 to 200)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's, the number of cores)")
    p.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="no per-round progress on stderr")
    p.add_argument("--allocator", choices=["keep", "system"], default="keep",
                   help="keep (default): glibc keeps freed memory for reuse, as jemalloc/tcmalloc would "
                        "(steadier timings); system: glibc's defaults")
    p.add_argument("--held-memory", choices=sorted(CASES), help=argparse.SUPPRESS)  # the memory case's child
    args = p.parse_args(argv)
    if args.held_memory:
        if args.threads:
            torch.set_num_threads(args.threads)
        return _held_memory_main(CASES[args.held_memory], args.modes[0])
    if args.allocator == "keep" and args.device == "cpu" and not keep_freed_memory():
        print("note: no glibc here, --allocator keep has no effect", file=sys.stderr)
    if args.rounds is not None and args.rounds < 1:
        p.error(f"--rounds: got {args.rounds}; allowed: an integer >= 1")
    if args.threads is not None:
        if args.threads < 1:
            p.error(f"--threads: got {args.threads}; allowed: an integer >= 1")
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    cases = args.cases or (GPU_CASES if device.type == "cuda" else CPU_CASES)
    wrong = [c for c in cases if (CASES[c].kind == "gpu") != (device.type == "cuda")]
    if wrong:
        p.error(f"--cases {' '.join(wrong)}: not for --device {args.device} (gpu-* cases need --device cuda)")
    if "compile" in args.modes:
        os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # no compile workers left busy while timing
    env = environment(device) + (f", allocator {args.allocator}" if device.type == "cpu" else "")
    print(f"TDAF overhead, {env}; ratio = median over rounds [interquartile range]\n", flush=True)
    results: dict[str, Any] = {"environment": env, "cases": {}}
    missed = []
    for name in cases:
        case = CASES[name]
        for mode in (["eager"] if case.kind == "memory" and "eager" in args.modes else args.modes):
            rounds = args.rounds or case.rounds
            result = run_case(case, mode, device, rounds, progress=not args.no_progress)
            results["cases"][f"{name}/{mode}"] = result
            print(render(case, mode, result, rounds) + "\n", flush=True)
            rows = result["rows"].get("eval fp32", {}) if case.kind == "gpu" else result["rows"]
            for row, r in rows.items():
                target = TARGETS.get((name, row))
                if target is not None and mode == "eager" and "median" in r and r["median"] > target:
                    missed.append(f"{name} {row} {r['median']:.3f} > {target:.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    if "eager" in args.modes:
        print("eager targets: " + ("all met" if not missed else "missed: " + "; ".join(missed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
