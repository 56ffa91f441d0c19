"""Helpers shared by the benchmark scripts in this folder.

Each script imports this module by name, which works because Python puts a
script's own folder first on ``sys.path``.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from torch import Tensor
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from awdlm.config import Config, TrainerConfig, to_config
from awdlm.data import Corpus, TokenizerSettings, load_corpus
from awdlm.model.awd_lstm import AWDLSTM, Hidden, detach_hidden
from awdlm.runs import USER_ERRORS
from awdlm.training.trainer import clip_and_step, training_loss

MIB = 2**20


def compose_config(overrides: list[str]) -> Config:
    """Compose ``awdlm/conf`` with Hydra overrides and validate it, as the trainer does."""
    with initialize_config_module(config_module="awdlm.conf", version_base="1.3"):
        return to_config(compose(config_name="config", overrides=overrides))


def load_config_corpus(config: Config) -> Corpus:
    """Tokenize the corpus that ``config.dataset`` names, as the trainer does; nothing is cached or downloaded."""
    dataset = config.dataset
    settings = TokenizerSettings.for_level(
        dataset.level, dataset.tokenizer, min_count=dataset.min_count, max_size=dataset.max_size
    )
    folder = Path(dataset.path)
    files = {split: folder / getattr(dataset, split) for split in ("train", "valid", "test")}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"corpus files not found: {', '.join(missing)}; pass --data-dir DIR, the folder that contains ptb/ "
            f"and wikitext-2/ (python -m awdlm.data download all fetches them)"
        )
    return load_corpus(files, cache_dir=None, name=dataset.name, settings=settings)


def run_script(main) -> None:
    """Call ``main()`` and print an input error as one line, as the awdlm commands do, in place of a traceback."""
    try:
        main()
    except USER_ERRORS as error:
        sys.exit(f"error: {error}")


def train_step(
    model: AWDLSTM,
    optimizer: torch.optim.Optimizer,
    inputs: Tensor,
    targets: Tensor,
    hidden: Hidden,
    trainer: TrainerConfig,
) -> tuple[Hidden, Tensor]:
    """Run one training step as the trainer does; return the new hidden state and the raw loss."""
    hidden, raw_loss, loss = training_loss(model, inputs, targets, detach_hidden(hidden), trainer)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clip_and_step(model, optimizer, torch.stack([raw_loss.detach(), loss.detach()]), inputs.size(0), trainer)
    return hidden, raw_loss


@dataclass
class RngStates:
    """The CPU and (when present) CUDA random-number states, to run several models in lockstep."""

    cpu: Tensor
    cuda: list[Tensor]

    @classmethod
    def capture(cls) -> RngStates:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return cls(torch.get_rng_state(), cuda)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda:
            torch.cuda.set_rng_state_all(self.cuda)


def cpu_peak_bytes(fn) -> int:
    """Run ``fn()`` once and return the peak of tensor bytes it held alive at once on the CPU.

    The count comes from the allocation and free events that PyTorch's CPU
    allocator reports to ``torch.profiler`` with ``profile_memory=True``:
    their running sum, in event order, is the number of tensor bytes allocated
    since the call began and not yet freed. Tensors alive before the call
    (weights, inputs) are not counted, and neither is freeing them during the
    call: the profiler reports no event for a block allocated before it
    started, and PyTorch warns "Memory block of unknown size" instead. Memory
    outside PyTorch's allocator (the interpreter, libraries, thread stacks) is
    not counted either.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        event
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == DeviceType.CPU
    ]
    events.sort(key=lambda event: event.start_ns())  # stable: equal times keep their order
    live = peak = 0
    for event in events:
        live += event.nbytes()  # negative for a free
        peak = max(peak, live)
    return peak


def cuda_peak_bytes(fn, device: torch.device) -> int:
    """Run ``fn()`` once and return the peak of CUDA tensor bytes allocated beyond those alive before it."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def peak_bytes(fn, device: torch.device) -> int:
    """Peak extra tensor bytes of one call of ``fn()`` on ``device`` (see the two functions above)."""
    if device.type == "cuda":
        return cuda_peak_bytes(fn, device)
    return cpu_peak_bytes(fn)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    """Return the CPU's model name from /proc/cpuinfo on Linux, else from ``platform``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: torch.device) -> dict[str, object]:
    """Describe the hardware and software that a measurement runs on, and the current load."""
    info: dict[str, object] = {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def format_machine(info: dict[str, object]) -> str:
    return ", ".join(f"{key} {value}" for key, value in info.items())


def format_table(headers: list[str], rows: list[list[object]]) -> str:
    """Render rows as a Markdown table, so the output can be pasted into the docs."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(headers[i]), *(len(row[i]) for row in cells)) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
        "| " + " | ".join("-" * w for w in widths) + " |",
    ]
    lines += ["| " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines)
