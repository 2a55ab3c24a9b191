"""How a training run spreads over processes (``torchrun`` / ``accelerate launch``), in one place.

The rule every other part follows: **a run is defined by its global batch, not by its process
count.** One optimiser step sees ``optim.batch_size`` samples: ``grad_accum`` micro-batches of
``batch_size / grad_accum`` samples, each split evenly over the processes. The samples of a
micro-batch are a slice of one permutation per epoch (``ResumableBatches``), and its random
draws (flow-matching noise and times, state noise) are made for the whole micro-batch from a
generator every process holds in the same state, each process keeping its own rows. So N
processes compute the same step as one process with the same global batch (up to the order of
floating-point sums), every process gets its own samples and noise, and a checkpoint can be
resumed on another number of processes (``check_resume``).

Why ``split_batches``: the trainer splits the global batch itself, which is what accelerate's
``split_batches`` means; without it accelerate steps a prepared LR scheduler once per process
on every optimiser step, and with N processes the warm-up and the cosine ended after 1/N of
the run.
"""

from __future__ import annotations

import os

import torch

#: π0's shard units under FSDP (configs/accelerate/fsdp.yaml lists them): every decoder layer of the
#: VLM and of the action expert (both Gemma) and every SigLIP layer. Whole layers, so a layer's
#: weights are gathered once for its forward and the keys/values the expert reads from the VLM's
#: cache are plain activations.
FSDP_WRAP = ("GemmaDecoderLayer", "SiglipEncoderLayer")

#: Environment variables a launcher (torchrun, accelerate launch, mpirun) sets to the process count.
WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")


class LaunchError(RuntimeError):
    """The processes were launched in a way that would not train the run asked for."""


def launched_processes() -> int:
    """The number of processes the launcher started (1 when started as a plain command)."""
    for name in WORLD_SIZE_VARS:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def make_accelerator(mixed_precision: str, grad_accum: int, log_with: list[str], project_dir: str):
    """An ``Accelerator`` for the trainer's own batch split, over every launched process.

    On a machine without CUDA, several launched processes train on the CPU over gloo: accelerate
    only does so with ``cpu=True``, and otherwise runs each launched process as a one-process run
    of its own (seen with ``torchrun --nproc_per_node 2``: two runs of the whole data). Refused
    loudly instead of silently: the world size accelerate sees must be the launcher's
    (``accelerate launch --cpu --num_processes 2`` starts a single process, which nothing here
    can tell from a plain command: docs/training.md says to use torchrun there)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    launched = launched_processes()
    cpu = launched > 1 and not torch.cuda.is_available()
    return Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum,
                       log_with=log_with, project_dir=project_dir, cpu=cpu,
                       dataloader_config=DataLoaderConfiguration(split_batches=True))  # the trainer checks it


def check_world(accelerator, launched: int | None = None) -> None:
    """Refuse an accelerator that would step the schedule per process, or that runs fewer processes
    than were launched."""
    launched = launched_processes() if launched is None else launched
    if accelerator.num_processes != launched:
        raise LaunchError(f"{launched} processes were launched but accelerate sees {accelerator.num_processes} "
                           f"({accelerator.distributed_type}): each would train alone on the whole data. Launch with "
                           "`torchrun --nproc_per_node N -m sf_policy.cli.train run ...` or `accelerate launch "
                           "--num_processes N -m sf_policy.cli.train run ...` (docs/training.md, \"Several GPUs\")")
    if not accelerator.split_batches:
        raise ValueError("the trainer splits each global batch over the processes itself: build the Accelerator "
                         "with DataLoaderConfiguration(split_batches=True), or the LR schedule runs N times too fast")


def per_process_batch(batch_size: int, grad_accum: int, processes: int) -> int:
    """Samples per process and micro-batch; an uneven split is an error that names the fields and
    the global batches that would divide."""
    parts = grad_accum * processes
    if batch_size % parts == 0:
        return batch_size // parts
    below, above = batch_size // parts * parts, (batch_size // parts + 1) * parts
    fits = " or ".join(str(b) for b in (below, above) if b > 0)
    raise ValueError(f"optim.batch_size {batch_size} does not divide into {processes} process(es) × optim.grad_accum "
                     f"{grad_accum} equal shares: set optim.batch_size to {fits} (a multiple of {parts}), or another "
                     f"optim.grad_accum / process count")


def own_rows(rows, rank: int, processes: int):
    """This process's equal share of a micro-batch's rows (sample indices, or a draw made for the
    whole micro-batch: see the module docstring)."""
    size = len(rows) // processes
    return rows[rank * size:(rank + 1) * size]


def check_resume(saved: dict, processes: int, distributed_type: str, checkpoint) -> str | None:
    """Whether a checkpoint written by ``saved["processes"]`` processes resumes on ``processes``.

    The data order and the random draws depend only on the global batch (module docstring), and a
    DDP checkpoint holds whole weights and optimiser state, so it re-shards exactly: returns a
    line saying so. A sharded (FSDP) one cannot change its process count: refused."""
    before = int(saved.get("processes", 1))
    if before == processes:
        return None
    if "FSDP" in str(distributed_type) or "FSDP" in str(saved.get("distributed", "")):
        raise ValueError(f"{checkpoint} was written by {before} FSDP process(es), whose optimiser state is sharded "
                         f"{before} ways; resume it on {before} processes, or start a new run from its weights "
                         f"(policy.checkpoint={checkpoint}/policy)")
    return (f"resuming {checkpoint} (written by {before} process(es)) on {processes}: the same global batches, noise "
            "and schedule, re-sharded (per-process RNG states of processes that did not exist start fresh)")
