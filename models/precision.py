"""Numeric precision and the full-catalog loss's implementation, chosen per machine.

``precision`` (config key, ``--precision`` of ``launch.py`` and ``models.train``):

- ``auto`` (the default): bf16 where bf16 matrix products are native (a CUDA device that supports
  bf16, or a CPU with AMX or AVX-512 BF16), fp32 elsewhere, where torch converts bf16 products to
  fp32 element by element and bf16 is several times slower (``native_bf16``);
- ``fp32`` or ``bf16``: as named (bf16 without native support warns).

``bf16_scope`` says which part runs in bf16 when the precision is bf16: ``all`` (the default: the
whole step under bf16 autocast, and the transformer's residual stream in bf16 too: its layer
norms, GELUs, dropouts and residual sums take bf16 tensors, where autocast alone would keep them
in fp32 and convert around every product; see ``models.encoders.Transformer``) or ``loss`` (the
encoder in fp32, only the full-catalog loss, whose [batch x catalog] products dominate an epoch,
under bf16 autocast). Which is faster, what each costs in memory and how far each moves the
validation metrics over seeds is measured by ``benchmarks/bench_train.py`` (docs/performance.md:
on an AMX Xeon the whole step was the fastest and peaked lowest, and its seed-paired difference
from dense fp32 was within 0.05 points on average).

``loss_impl`` (``models.catalog_loss``): ``chunked``, ``dense`` or ``auto`` (the default). Both
implementations give the same loss and gradients (identical to the last digit in fp32); which is
faster depends on the CPU (chunked was 0.92x dense for CORE-trm on an AVX2 EPYC, 1.12x for
CORE-ave), so ``auto`` times one forward and backward of each on the run's shapes (catalog,
batch, width, precision, hard negatives) on this device and uses the faster: the default is never
slower than dense fp32 by more than the timing's noise. The choice is kept in
``$CORE_CACHE_DIR/loss_impl.json`` by (device, threads, shapes), so it is timed once per machine.
A run records what it resolved (MLflow tags ``precision_used`` and ``loss_impl_used``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: launch.py --help reads PRECISIONS
    import torch

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
BF16_SCOPES = ("all", "loss")
LOSS_CHOICES = ("auto", "chunked", "dense")
# CPU flags of native bf16 matrix products (Linux /proc/cpuinfo names).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")
LOSS_IMPL_FILE = "loss_impl.json"
TIMED_REPEATS = 2


def cpuinfo_field(name: str) -> str | None:
    """The first processor's ``name`` field in /proc/cpuinfo ("model name", "flags", ...).

    Args:
        name: the field's name.

    Returns:
        Its value, or None where the field or the file (not Linux) is missing.
    """
    try:
        lines = CPUINFO.read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines
                 if line.split(":", 1)[0].strip() == name), None)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix products run natively on ``device``: a CUDA device that supports bf16,
    or a CPU with AMX or AVX-512 BF16 (read from /proc/cpuinfo; False where it cannot be read).
    Elsewhere torch converts bf16 products to fp32 element by element: measured on a 2-core AVX2
    CPU, a [2048 x 64] x [64 x 37,000] product took 3.9 s in bf16 against 0.42 s in fp32.

    Args:
        device: the device training runs on.

    Returns:
        True where ``precision: bf16`` can pay off.
    """
    if device.type == "cuda":
        import torch

        return torch.cuda.is_bf16_supported()
    flags = (cpuinfo_field("flags") or "").split()
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def resolve_precision(precision: str, native: bool) -> str:
    """The precision a run uses: ``auto`` is bf16 where bf16 is native, else fp32.

    Args:
        precision: the config's ``precision`` (``PRECISIONS``).
        native: ``native_bf16`` of the run's device.

    Returns:
        "fp32" or "bf16".
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native else "fp32"
    return precision


def cpu_tier(flags: list[str] | None = None) -> str:
    """The widest vector unit the CPU's flags name: what a CPU timing depends on most (bf16
    pays off only with AMX or AVX-512 BF16; AVX2 machines run it converted to fp32).

    Args:
        flags: the CPU's flags (default: /proc/cpuinfo's).

    Returns:
        "AMX", "AVX-512 BF16", "AVX-512", "AVX2" or "no AVX2" ("unknown" where the flags
        cannot be read).
    """
    if flags is None:
        text = cpuinfo_field("flags")
        if text is None:
            return "unknown"
        flags = text.split()
    for flag, tier in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 BF16"),
                       ("avx512f", "AVX-512"), ("avx2", "AVX2")):
        if flag in flags:
            return tier
    return "no AVX2"


def device_label(device: torch.device | None = None) -> str:
    """The GPU's name, or the CPU's model name with its vector tier, family and model: what
    timings are kept by and every study piece and benchmark records. A virtual machine's model
    name is often only the vendor's line ("AMD EPYC", "Intel(R) Xeon(R) Processor"), which hides
    a two-fold difference in speed between generations; the family and model numbers tell them
    apart (AMD family 23 model 1 is a first-generation EPYC, Zen).

    Args:
        device: the run's device (default: the first GPU where CUDA is available, else the CPU).

    Returns:
        e.g. "AMD EPYC (AVX2; family 23, model 1)" or "NVIDIA H100 80GB HBM3" ("unknown CPU"
        where /proc/cpuinfo cannot tell).
    """
    import torch

    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = cpuinfo_field("model name")
    if name is None:
        return "unknown CPU"
    family, model = cpuinfo_field("cpu family"), cpuinfo_field("model")
    where = f"; family {family}, model {model}" if family and model else ""
    return f"{name} ({cpu_tier()}{where})"


def choose_loss_impl(
    *, n_items: int, batch_size: int, dim: int, precision: str, hard_negatives: bool,
    device: torch.device, cache_dir: Path | None = None,
    timer: Callable[[str], float] | None = None,
) -> str:
    """The faster of the chunked and the dense full-catalog loss for these shapes here (module
    docstring), from the cache or timed now.

    Args:
        n_items: catalog rows.
        batch_size: training rows per batch.
        dim: the query's and the table's width.
        precision: the resolved precision ("fp32" or "bf16": the loss under bf16 autocast).
        hard_negatives: whether the loss mines hard negatives (CORE-HN, CORE-DAHN).
        device: the run's device.
        cache_dir: where ``loss_impl.json`` is kept (None: no cache).
        timer: seconds of one forward and backward of an implementation (default: timed on
            random tensors of these shapes; tests pass their own).

    Returns:
        "chunked" or "dense".
    """
    import torch

    from data.cache import CacheStore

    key = (f"{device_label(device)}|{torch.get_num_threads()} threads|N={n_items}|"
           f"B={batch_size}|d={dim}|{precision}|hn={int(hard_negatives)}")
    store = CacheStore(folder=cache_dir) if cache_dir else None
    known = store.read_records(LOSS_IMPL_FILE) if store else {}
    if isinstance(known.get(key), dict) and "choice" in known[key]:
        return known[key]["choice"]
    timer = timer or _loss_timer(n_items, batch_size, dim, precision, hard_negatives, device)
    seconds = {impl: timer(impl) for impl in ("dense", "chunked")}
    choice = min(seconds, key=seconds.get)
    log.info("loss_impl auto: %s (dense %.3f s, chunked %.3f s per batch; %s)", choice,
             seconds["dense"], seconds["chunked"], key)
    if store and store.write_record(LOSS_IMPL_FILE, key, {"choice": choice, **seconds}) is None:
        # a choice not kept is timed again next time
        log.warning("cannot keep the loss choice in %s", store.path(LOSS_IMPL_FILE))
    return choice


def _loss_timer(n_items: int, batch_size: int, dim: int, precision: str, hard_negatives: bool,
                device: torch.device) -> Callable[[str], float]:
    """Best of ``TIMED_REPEATS`` forward-and-backward times of ``catalog_loss`` on random
    tensors of the run's shapes, after one untimed call."""
    import torch

    from models.catalog_loss import catalog_loss

    generator = torch.Generator().manual_seed(0)
    query = torch.randn(batch_size, dim, generator=generator).to(device)
    table = torch.randn(n_items, dim, generator=generator).to(device)
    targets = torch.randint(1, n_items, (batch_size,), generator=generator).to(device)
    hn_k, hn_lambda = (64, 0.2) if hard_negatives else (0, 0.0)

    def once(impl: str) -> float:
        q = query.clone().requires_grad_(True)
        t = table.clone().requires_grad_(True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = catalog_loss(q, t, targets, hn_k=hn_k, hn_lambda=hn_lambda, impl=impl)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    def timer(impl: str) -> float:
        once(impl)
        return min(once(impl) for _ in range(TIMED_REPEATS))

    return timer
