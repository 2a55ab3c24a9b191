"""The training loop: π0 + Spatial Forcing, with accelerate.

One step: a batch of frames → the policy's flow-matching loss; with α > 0 the VLM's layer-k
visual tokens (captured by a forward hook during that same forward pass) are projected and
pulled towards the frozen teacher's targets (from the cache, or computed online), and
L = L_action + α·L_align. Gradients are clipped over the policy and the projector together.

Everything that can make a run unreproducible is pinned: the batch order comes from
``ResumableBatches`` (seed, step), the flow-matching noise from a generator saved with the
checkpoint, so ``--resume`` continues on the same loss trajectory. Several processes
(``torchrun``, ``accelerate launch``) compute the same steps as one process with the same
global batch: sf_policy/train/distributed.py says how.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..align.aligner import SpatialAligner, attach
from ..data.decoded import DecodedFrames
from ..data.reader import DatasetReader
from ..embodiment import STATE_DIM
from ..model.actions import policy_stats
from ..model.normalize import Normalizer
from ..model.policy import NORMALIZER_FILE, Policy
from ..topics import CAMERA_ROLES
from . import checkpoint as ckpt
from .config import TrainConfig
from .data import ChunkDataset, ResumableBatches, check_dataset, emphasise_starts, split_episodes, training_scenes
from .distributed import check_resume, check_world, make_accelerator, own_rows, per_process_batch
from .targets import TargetSource, vla_grid


class TrainingDiverged(RuntimeError):
    """A loss term or the gradient norm became NaN/inf; the message names it and the last good checkpoint."""


@dataclass
class StepResult:
    loss: float
    action: float
    align: float | None
    grad_norm: float
    lr: float


def lr_lambda(cfg: TrainConfig):
    """Linear warm-up to the peak, then cosine down to ``min_lr_ratio`` × peak at the last step."""
    warmup, total, floor = cfg.optim.warmup_steps, cfg.optim.steps, cfg.optim.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        progress = min(1.0, (step - warmup) / max(total - warmup, 1))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class Collate:
    """Runs the policy's processor in the DataLoader workers; keeps the raw frames the online
    teacher needs (un-augmented, uint8) and each sample's dataset index (its cache row)."""

    def __init__(self, processor, keep_frames: bool, cache=None):
        self.processor, self.keep_frames, self.cache = processor, keep_frames, cache

    def __call__(self, samples: list[dict]) -> dict:
        batch = dict(self.processor([{k: v for k, v in s.items() if k != "index"} for s in samples]))
        batch["index"] = torch.tensor([s["index"] for s in samples], dtype=torch.long)
        if self.keep_frames:
            batch["frames"] = torch.from_numpy(np.stack([_frames(s["images"]) for s in samples]))
        if self.cache is not None:  # the memmap read overlaps the training step
            batch["teacher_tokens"] = self.cache.tokens(batch["index"].numpy())
        return batch


def _frames(images: dict) -> np.ndarray:
    """[3, H, W, 3] uint8 in slot order; a missing camera is black (its targets are masked)."""
    shape = next(img.shape for img in images.values() if img is not None)
    return np.stack([images[r] if images.get(r) is not None else np.zeros(shape, np.uint8) for r in CAMERA_ROLES])


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: str | Path | None = None, accelerator=None, progress: bool = True):
        from accelerate.utils import set_seed

        if not cfg.data.root:
            raise ValueError("no dataset: set data.root=<dataset directory>")
        self.cfg = cfg
        self.run_dir = Path(cfg.output_dir) / cfg.name
        if resume is None:
            refuse_to_overwrite(self.run_dir)
        trackers = ["tensorboard"] + (["wandb"] if cfg.log.wandb else [])
        if accelerator is None:
            accelerator = make_accelerator(cfg.optim.mixed_precision, cfg.optim.grad_accum, trackers, str(self.run_dir))
        check_world(accelerator)
        self.accelerator = accelerator
        self.rank, self.processes = accelerator.process_index, accelerator.num_processes
        per_device = per_process_batch(cfg.optim.batch_size, cfg.optim.grad_accum, self.processes)
        self._refuse_unsharded_extras()
        set_seed(cfg.seed)
        self.root = Path(cfg.data.root)
        check_dataset(self.root)
        self.train_idx, self.heldout_idx = split_episodes(self.root, cfg.data.heldout_episodes, cfg.seed)
        self.train_idx = emphasise_starts(self.root, self.train_idx, cfg.data.start_seconds, cfg.data.start_weight)
        self.scenes, self.unknown_scenes = training_scenes(self.root, cfg.data.heldout_episodes, cfg.seed)
        resume_from = ckpt.resolve_checkpoint(resume) if resume else None
        self.policy = self._build_policy(resume_from)
        self.aligner = self._build_aligner()
        grid = vla_grid(cfg.policy)
        self.capture = attach(self.policy.model, cfg.align, n_visual=len(CAMERA_ROLES) * grid * grid) \
            if self.aligner is not None else None
        self.targets = TargetSource(cfg.teacher, self.root, self.accelerator.device, grid, cfg.align.teacher_dim) \
            if self.aligner is not None else None

        params = [p for p in self.policy.parameters() if p.requires_grad]
        if self.aligner is not None:
            params += list(self.aligner.parameters())
        self.params = params
        optim = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optim, lr_lambda(cfg))
        self.start_step, ema = 0, None
        if resume_from is not None:
            saved, ema = ckpt.load_trainer_state(resume_from)
            self.start_step = int(saved["step"])
            reshard = check_resume(saved, self.processes, accelerator.distributed_type, resume_from)
            if reshard and accelerator.is_main_process:
                print(reshard)
        collate = Collate(self.policy.processor, keep_frames=cfg.aligned and cfg.teacher.mode == "online",
                          cache=getattr(self.targets, "cache", None))
        batches = ResumableBatches(len(self.train_idx), per_device * self.processes, cfg.seed,
                                   start=self.start_step * cfg.optim.grad_accum, rank=self.rank,
                                   processes=self.processes)
        self.decoded = self._decoded_frames(progress)
        loader = DataLoader(ChunkDataset(self.root, self.train_idx, self.policy.processor.config.chunk_size,
                                         self.decoded),
                            batch_sampler=batches, collate_fn=collate, num_workers=cfg.data.workers,
                            persistent_workers=cfg.data.workers > 0)
        modules = [self.policy] + ([self.aligner] if self.aligner is not None else [])
        prepared = self.accelerator.prepare(*modules, optim, scheduler)
        self.policy_ddp = prepared[0]
        self.aligner_ddp = prepared[1] if self.aligner is not None else None
        self.optim, self.scheduler = prepared[-2], prepared[-1]
        self.loader = loader  # not prepared: ResumableBatches already splits the global batch and resumes
        self.eval_batches = self._eval_batches(collate, per_device)
        # Flow-matching noise and times come from this generator, in the same state on every process
        # (each keeps its own rows of each draw: distributed.py); its state is saved for --resume.
        self.generator = torch.Generator(device=self.accelerator.device).manual_seed(cfg.seed * 7919 + 1)
        if resume_from is not None:
            self.accelerator.load_state(str(resume_from / ckpt.STATE_DIR))
            self.generator.set_state(torch.load(resume_from / ckpt.STATE_DIR / "generator.pt"))
            self._reschedule()
        self.ema = ema if ema is not None else self._init_ema()
        self.metrics_path = self.run_dir / "metrics.jsonl"

    @property
    def sharded(self) -> bool:
        """FSDP: each process holds a shard of the weights and optimiser state."""
        return "FSDP" in str(self.accelerator.distributed_type)

    def _refuse_unsharded_extras(self) -> None:
        """What the trainer does outside the wrapped model assumes whole weights on every process."""
        cfg = self.cfg
        if self.sharded and (cfg.optim.ema_decay > 0 or cfg.policy.lora is not None):
            raise ValueError("FSDP shards the weights: optim.ema_decay > 0 (a sharded EMA) and policy.lora (LoRA "
                             "fits one GPU: docs/training.md) are not supported with it; set optim.ema_decay=0 and "
                             "policy.lora=null, or train with DDP (sf_policy/train/configs/accelerate/ddp.yaml)")

    def _reschedule(self) -> None:
        """The saved optimiser carries the learning rate of the old run's schedule; a resumed run
        may have another length (optim.steps): set this schedule's rate for the next step."""
        sched = getattr(self.scheduler, "scheduler", self.scheduler)
        factor = lr_lambda(self.cfg)
        for group, base in zip(sched.optimizer.param_groups, sched.base_lrs):
            group["lr"] = base * factor(sched.last_epoch)

    # -- building

    def _build_policy(self, resume_from: Path | None) -> Policy:
        policy = self._new_policy(resume_from)
        if self.cfg.optim.gradient_checkpointing:  # every SigLIP, VLM and expert layer; the expert's KV cache kept
            from ..model.checkpointing import enable_gradient_checkpointing

            enable_gradient_checkpointing(policy)
        return policy

    def _new_policy(self, resume_from: Path | None) -> Policy:
        cfg = self.cfg
        if resume_from is not None:  # the weights come back with accelerate's state, the normaliser from here
            from ..model.tokenizer import load_tokenizer

            saved = resume_from / ckpt.POLICY_DIR
            normalizer = Normalizer.from_dict(json.loads((saved / NORMALIZER_FILE).read_text()))
            return Policy.build(cfg.policy, normalizer=normalizer, tokenizer=load_tokenizer(saved))
        reader = DatasetReader(self.root)
        if cfg.policy.tiny and not cfg.policy.tokenizer:  # a CPU run: a small real tokenizer, made here
            from ..model.tokenizer import tiny_tokenizer

            cfg.policy.tokenizer = str(self.run_dir / "tiny_tokenizer")
            with self.accelerator.main_process_first():  # one writer; the others read what it wrote
                if self.accelerator.is_main_process:
                    tiny_tokenizer(cfg.policy.tokenizer, **_tokenizer_corpus(cfg, reader))
        stats = policy_stats(reader, cfg.policy.representation, cfg.policy.chunk_size)
        reader.close()
        return Policy.build(cfg.policy, stats=stats)

    def _decoded_frames(self, progress: bool) -> DecodedFrames | None:
        """``data.frames=decoded``: the dataset's frames decoded once (the main process decodes,
        the others wait and map the same files)."""
        if self.cfg.data.frames != "decoded":
            return None
        with self.accelerator.main_process_first():
            return DecodedFrames.ensure(self.root, progress=progress and self.accelerator.is_main_process)

    def _build_aligner(self) -> SpatialAligner | None:
        if not self.cfg.aligned:
            return None
        return SpatialAligner.for_model(self.policy.pi0, self.cfg.align)

    def _init_ema(self) -> dict[str, torch.Tensor] | None:
        if self.cfg.optim.ema_decay <= 0:
            return None
        return {n: p.detach().clone() for n, p in self.policy.named_parameters() if p.requires_grad}

    def _eval_batches(self, collate: Collate, batch_size: int) -> list[dict]:
        """This process's rows of a fixed set of held-out global batches (the same every
        evaluation, so the curve is smooth; the same samples whatever the process count)."""
        if len(self.heldout_idx) == 0 or self.cfg.log.eval_batches <= 0:
            return []
        dataset = ChunkDataset(self.root, self.heldout_idx, self.policy.processor.config.chunk_size, self.decoded)
        rng = np.random.default_rng(self.cfg.seed)
        size = batch_size * self.processes
        count = min(self.cfg.log.eval_batches * size, len(dataset) // self.processes * self.processes)
        chosen = np.sort(rng.choice(len(dataset), count, replace=False))
        batches = [chosen[i:i + size] for i in range(0, count, size)]
        return [collate([dataset[int(k)] for k in own_rows(rows, self.rank, self.processes)]) for rows in batches]

    # -- one step

    def draws(self, size: int) -> dict[str, torch.Tensor]:
        """One training micro-batch's random draws, this process's ``size`` rows of them.

        Drawn for the whole global micro-batch from the generator every process shares, in the
        order a one-process run draws them, then sliced (distributed.py): the processes get
        different noise, and the run does not depend on how many there are."""
        g, cfg, total = self.generator, self.cfg, size * self.processes
        out = {}
        if cfg.data.state_noise > 0:
            out["state_noise"] = torch.randn(total, STATE_DIM, generator=g, device=g.device)
        if cfg.data.state_dropout > 0:
            out["keep"] = torch.rand(total, generator=g, device=g.device)
        out["noise"] = self.policy.noise_like(total, g)
        out["timestep"] = self.policy.sample_time(total, g)
        return {k: own_rows(v, self.rank, self.processes) for k, v in out.items()}

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """L_action, and with SF L_align and L = L_action + α·L_align, for one training batch."""
        batch = _to(batch, self.accelerator.device)
        draws = self.draws(batch["state"].shape[0])
        if "state_noise" in draws:
            batch = self._noisy_state(batch, draws["state_noise"])
        if "keep" in draws:
            batch = self._drop_state(batch, draws["keep"])
        # the hook captures layer k here
        action, _ = self.policy_ddp(batch, noise=draws["noise"], timestep=draws["timestep"])
        out = {"action": action, "loss": action}
        if self.aligner_ddp is not None:
            result = self.aligner_ddp(self.capture.outputs, *self._targets(batch))
            out["align"] = result.loss
            out["loss"] = action + self.cfg.align.alpha * result.loss
            if result.layer_weights is not None:
                out["layer_weights"] = result.layer_weights
        return out

    def _noisy_state(self, batch: dict, noise: torch.Tensor) -> dict:
        """Add N(0, state_noise²) to the normalised state input (its real joints, not the padding).

        Every episode starts at rest in one pose, and the first ticks of a reach move the arm by
        thousandths of a radian, yet that is enough to tell where it is going: a model reads the
        target out of a 0.01-σ deviation of the state long before it learns to find the object in
        the cameras (docs/results/learn.md). Below the noise, the state says nothing; the
        actions stay relative to the true state. ``noise``: [B, 14] standard normal draws."""
        state = batch["state"]
        noise = noise.to(state.device, state.dtype) * self.cfg.data.state_noise
        return {**batch, "state": torch.cat([state[:, :STATE_DIM] + noise, state[:, STATE_DIM:]], dim=1)}

    def _drop_state(self, batch: dict, uniform: torch.Tensor) -> dict:
        """Blank the state input (to the dataset mean: 0 once normalised) of a random share of the
        samples. Every episode starts from the same pose, so the state alone predicts the average
        reach and a small model learns that first and the object's place late; without the state
        it has to read the cameras. The actions stay relative to the true state. ``uniform``: [B]
        draws in [0, 1)."""
        keep = (uniform >= self.cfg.data.state_dropout).to(batch["state"].device)
        return {**batch, "state": batch["state"] * keep[:, None].to(batch["state"].dtype)}

    def _targets(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher targets and the tokens that count: inside the teacher's view of a camera AND
        a real, un-padded patch of the policy's input."""
        targets, valid = self.targets(batch)
        valid = valid.to(self.accelerator.device).reshape(valid.shape[0], -1) & batch["visual_valid"]
        return targets.to(self.accelerator.device), valid

    def step(self, batch: dict, step: int) -> StepResult:
        with self.accelerator.accumulate(*[m for m in (self.policy_ddp, self.aligner_ddp) if m is not None]):
            out = self.losses(batch)
            self._check_finite(out, step)
            self.accelerator.backward(out["loss"])
            grad_norm = torch.tensor(0.0)
            if self.accelerator.sync_gradients:
                grad_norm = self.accelerator.clip_grad_norm_(self.params, self.cfg.optim.clip_norm)
                if not torch.isfinite(grad_norm):
                    raise TrainingDiverged(self._diverged(step, "gradient norm", float(grad_norm)))
            self.optim.step()
            self.scheduler.step()
            self.optim.zero_grad(set_to_none=True)
        self._update_ema(step)
        self.layer_weights = out.get("layer_weights")
        terms = torch.stack([out[k].detach().float() for k in ("loss", "action", "align") if k in out])
        if self.processes > 1:  # what is logged is the global batch's loss, not process 0's share
            terms = self.accelerator.reduce(terms, reduction="mean")
        terms = terms.tolist()
        return StepResult(terms[0], terms[1], terms[2] if "align" in out else None, float(grad_norm),
                          self.scheduler.get_last_lr()[0])

    def _check_finite(self, out: dict, step: int) -> None:
        for term in ("action", "align"):
            if term in out and not torch.isfinite(out[term]):
                raise TrainingDiverged(self._diverged(step, f"{term} loss", out[term].item()))

    def _diverged(self, step: int, what: str, value: float) -> str:
        last = ckpt.latest_checkpoint(self.run_dir)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved yet"
        return f"step {step}: the {what} is {value}; training stopped, {kept}"

    def _update_ema(self, step: int) -> None:
        """EMA with the usual warm-up: decay min(ema_decay, (1 + step) / (10 + step)), so the
        average forgets the random initialisation instead of dragging it along (with a fixed 0.999
        a 1,500-step run exported weights a third of which were the first thousand steps')."""
        if self.ema is None or not self.accelerator.sync_gradients:
            return
        decay = min(self.cfg.optim.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for name, p in self.policy.named_parameters():
                if name in self.ema:
                    self.ema[name].lerp_(p.detach(), 1 - decay)

    # -- evaluation

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out losses and the open-loop action error (absolute units, padded steps excluded).

        As in training, each process takes its rows of every global eval batch, and of draws made
        for the whole batch (seed 12345 + its number), and the means are averaged over the
        processes: the figures do not depend on the process count. FSDP's sharded weights are
        whole only inside the wrapped model's forward: there only the losses are evaluated."""
        if not self.eval_batches:
            return {}
        keys = ["eval/action", "eval/align", "eval/joint_mae_rad", "eval/gripper_mae_m"]
        totals = torch.zeros(2, len(keys), dtype=torch.float64)  # sums over batches, counts
        policy = _unwrap(self.policy_ddp)
        policy.eval()
        for i, batch in enumerate(self.eval_batches):
            batch = _to(batch, self.accelerator.device)
            generator = torch.Generator(device=self.accelerator.device).manual_seed(12345 + i)
            total = batch["state"].shape[0] * self.processes
            noise, timestep, sample_noise = (own_rows(d, self.rank, self.processes) for d in (
                policy.noise_like(total, generator), policy.sample_time(total, generator),
                policy.noise_like(total, generator)))
            loss = self.policy_ddp if self.sharded else policy.loss  # the wrapper's forward is the loss
            action, _ = loss(batch, noise=noise, timestep=timestep)
            aligner = self.aligner_ddp if self.sharded else self.aligner
            values = [float(action), float(aligner(self.capture.outputs, *self._targets(batch)).loss)
                      if aligner is not None else None]
            if not self.sharded:
                values += open_loop_error(policy, batch, sample_noise)
            for k, value in enumerate(values):
                if value is not None:
                    totals[:, k] += torch.tensor([value, 1.0], dtype=torch.float64)
        policy.train()
        if self.processes > 1:
            totals = self.accelerator.reduce(totals.to(self.accelerator.device), reduction="sum").cpu()
        return {key: float(totals[0, k] / totals[1, k]) for k, key in enumerate(keys) if totals[1, k] > 0}

    # -- the run

    def train(self, progress: bool = True) -> Path:
        cfg, acc = self.cfg, self.accelerator
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if acc.is_main_process:
            (self.run_dir / ckpt.TRAIN_CONFIG_FILE).write_text(cfg.to_yaml())
        acc.init_trackers(cfg.name, config=_flat(cfg.to_dict()))
        self.policy_ddp.train()
        batches = iter(self.loader)
        bar = tqdm(range(self.start_step, cfg.optim.steps), initial=self.start_step, total=cfg.optim.steps,
                   desc=cfg.name, disable=not (progress and acc.is_main_process), dynamic_ncols=True)
        last = None
        if cfg.log.eval_every and self.start_step == 0:  # where the curves start
            self._log({"step": 0, **self.evaluate()}, 0)
        for step in bar:
            t0 = time.perf_counter()
            for _ in range(cfg.optim.grad_accum):
                result = self.step(next(batches), step)
            last = step + 1
            record = {"step": last, "loss": result.loss, "action": result.action, "lr": result.lr,
                      "grad_norm": result.grad_norm, "step_s": time.perf_counter() - t0}
            if result.align is not None:
                record["align"] = result.align
            if self.layer_weights is not None:
                record["layer_weights"] = [round(float(w), 4) for w in self.layer_weights]
            if last % cfg.log.every == 0 or last == cfg.optim.steps:
                self._log(record, last)
                bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k in ("loss", "action", "align", "lr")})
            if cfg.log.eval_every and last % cfg.log.eval_every == 0:
                self._log({"step": last, **self.evaluate()}, last)
            if cfg.log.save_every and last % cfg.log.save_every == 0 and last != cfg.optim.steps:
                self.save(last)
        if last is not None and cfg.log.eval_every and last % cfg.log.eval_every:
            self._log({"step": last, **self.evaluate()}, last)
        final = self.save(cfg.optim.steps)
        for tracker in acc.trackers:  # the main process's; end_training closes them again, harmlessly
            tracker.finish()
        acc.wait_for_everyone()  # then all tear down together: gloo aborts a process whose peer is still busy
        acc.end_training()
        return final

    def _log(self, record: dict, step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if "layer_weights" in record:
            scalars.update({f"align/layer_weight_{k}": w
                            for k, w in zip(self.cfg.align.capture_layers, record["layer_weights"])})
        self.accelerator.log(scalars, step=step)
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def save(self, step: int) -> Path:
        """Checkpoint ``step``; every process takes part (see checkpoint.py), the main one writes."""
        acc = self.accelerator
        acc.wait_for_everyone()
        staging = ckpt.staging_dir(self.run_dir, step, fresh=acc.is_main_process)
        acc.wait_for_everyone()
        acc.save_state(str(staging / ckpt.STATE_DIR))  # every process: its RNG state; the main one the rest
        weights = acc.get_state_dict(self.policy_ddp) if self.sharded else None  # a collective
        path = ckpt.step_dir(self.run_dir, step)
        if acc.is_main_process:
            torch.save(self.generator.get_state(), staging / ckpt.STATE_DIR / "generator.pt")  # the same everywhere
            train_frames = len(np.unique(self.train_idx))  # data.start_weight repeats some
            dataset = {"root": str(self.root.resolve()), "fingerprint": ckpt.dataset_fingerprint(self.root),
                       "frames": int(train_frames + len(self.heldout_idx)),
                       "train_frames": int(train_frames), "heldout_frames": int(len(self.heldout_idx)),
                       # the twin scenes trained on: `sf eval sim` refuses to score a policy on them
                       "train_sim_seeds": sorted(self.scenes), "train_episodes_without_seed": self.unknown_scenes}
            trainer = {"step": step, "processes": self.processes, "distributed": str(acc.distributed_type),
                       "global_batch": self.cfg.optim.batch_size}
            path = ckpt.save_checkpoint(self.run_dir, step, _unwrap(self.policy_ddp), self.aligner, self.cfg.to_yaml(),
                                        dataset, self.ema, trainer, self.cfg.log.keep_last, weights)
        acc.wait_for_everyone()
        return path


def _tokenizer_corpus(cfg: TrainConfig, reader: DatasetReader) -> dict:
    """The `small` recipe's tokenizer also learns the dataset's prompts (so its words are tokens);
    the `tiny` one keeps the built-in corpus only, as the tests and older runs have it."""
    if cfg.policy.size == "tiny":
        return {}
    return {"vocab_size": 384, "tasks": list(reader.tasks.values())}


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _unwrap(module):
    return module.module if hasattr(module, "module") else module


@torch.no_grad()
def open_loop_error(policy: Policy, batch: dict, noise: torch.Tensor) -> tuple[float, float]:
    """Mean absolute error of sampled chunks (from ``noise``) vs. the recorded actions: joints
    (rad), grippers (m)."""
    from ..embodiment import GRIPPER_INDICES

    predicted = policy.sample(batch, noise=noise)  # [B, chunk, 14] absolute
    truth = policy.processor.postprocess(batch["actions"][..., :STATE_DIM].to(predicted.device),
                                         batch["raw_state"].to(predicted.device))
    keep = ~batch["action_pad"].to(predicted.device)
    err = (predicted - truth).abs()[keep]  # [valid steps, 14]
    grippers = torch.zeros(STATE_DIM, dtype=torch.bool)
    grippers[list(GRIPPER_INDICES)] = True
    return float(err[:, ~grippers].mean()), float(err[:, grippers].mean())


def _flat(d: dict, prefix: str = "") -> dict:
    """Nested config → flat scalars for TensorBoard's hparams."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


def refuse_to_overwrite(run_dir: Path) -> None:
    """A fresh run never trains into another run's directory: it would append to that run's
    metrics.jsonl and prune its checkpoints."""
    held = [p.name for p in (run_dir / "metrics.jsonl", run_dir / "checkpoints") if p.exists()]
    if held:
        raise FileExistsError(f"{run_dir} already holds a training run ({', '.join(held)}): continue it with "
                              f"--resume {run_dir}, or give this run another name (name=...); nothing was changed")


def train(cfg: TrainConfig, resume: str | Path | None = None, progress: bool = True) -> Path:
    """Train ``cfg``; returns the final checkpoint directory."""
    return Trainer(cfg, resume=resume, progress=progress).train(progress=progress)
