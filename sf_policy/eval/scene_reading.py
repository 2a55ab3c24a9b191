"""Does a policy read the scene, or only its own motion? A probe on the first frames.

Every demonstration starts at rest in the same pose. At that moment nothing but the cameras
(and the prompt) says where the object is, so the demonstrated chunk differs from episode to
episode only because the scene does. Once the arm moves, its pose gives away where it is
going, and a policy can fit every later frame without looking. A small open-loop error says
nothing about this: a policy that reaches for the average grasp pose whatever the scene fits
all but a few % of the frames (docs/results/learn.md). This probe asks the question directly,
per arm joint, at a chosen frame of each episode:

* ``spread``: how much the demonstrated chunk end differs between episodes (what the scene decides);
* ``error`` against ``blind_error``: the policy's chunk end against the demonstration's, and
  what a policy that ignores the scene would make (the mean over episodes);
* ``swap``: how far the chunk end moves when the cameras show another episode's scene
  (same state and prompt). A policy that reads the scene moves about as much as ``spread``.

Deterministic: zero flow-matching noise (the chunk the policy believes most).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..embodiment import ARM_INDICES, JOINT_NAMES


@dataclass
class SceneReading:
    frame: int  # control ticks into each episode
    episodes: int
    joints: list[str]
    spread: list[float]  # std over episodes of the demonstrated chunk end (rad)
    error: list[float]  # mean |policy − demonstration| at the chunk end (rad)
    blind_error: list[float]  # the same for the episodes' mean chunk end: a scene-blind policy
    swap: list[float]  # mean |policy(own cameras) − policy(next episode's cameras)| (rad)
    correlation: list[float] = field(default_factory=list)  # policy vs demonstration over episodes

    @property
    def error_ratio(self) -> float:
        """Mean error over the scene-blind error: 1 or more is a policy that does not read the
        scene; 0 one that reads it perfectly."""
        return float(np.mean(self.error) / max(np.mean(self.blind_error), 1e-9))

    @property
    def swap_ratio(self) -> float:
        """Mean camera-swap effect over the mean spread: near 0, the cameras do not matter."""
        return float(np.mean(self.swap) / max(np.mean(self.spread), 1e-9))

    def to_dict(self) -> dict:
        return {**asdict(self), "error_ratio": self.error_ratio, "swap_ratio": self.swap_ratio}

    def summary(self) -> str:
        return (f"scene reading at frame {self.frame} ({self.episodes} episodes): error {np.mean(self.error):.3f} rad "
                f"vs {np.mean(self.blind_error):.3f} for a scene-blind policy (ratio {self.error_ratio:.2f}); "
                f"swapping the cameras moves the chunk end {np.mean(self.swap):.3f} rad against a "
                f"{np.mean(self.spread):.3f} rad spread between scenes (ratio {self.swap_ratio:.2f})")


def scene_reading(policy, root, frame: int = 0, episodes: list[int] | None = None, num_steps: int = 10,
                  joints: tuple[int, ...] | None = None) -> SceneReading:
    """Probe ``policy`` (a loaded ``Policy``) on frame ``frame`` of ``episodes`` of the dataset at
    ``root`` (default: all). ``joints``: indices into the 14-joint vector (default: the arms
    whose demonstrated chunk ends differ between episodes)."""
    from ..data.reader import DatasetReader
    from ..train.data import ChunkDataset

    with DatasetReader(root) as reader:
        known = reader.episodes
    chosen = list(range(len(known))) if episodes is None else list(episodes)
    if len(chosen) < 2:
        raise ValueError(f"{root}: the scene-reading probe needs at least 2 episodes, got {len(chosen)}")
    first = known[0].from_index
    short = [e for e in chosen if known[e].length <= frame]
    if short:
        raise ValueError(f"{root}: episode(s) {short} have no frame {frame}")
    dataset = ChunkDataset(root, chunk_size=policy.processor.config.chunk_size)
    samples = [dataset[known[e].from_index - first + frame] for e in chosen]
    shown = [{key: s[key] for key in ("images", "state", "prompt")} for s in samples]
    swapped = [{**shown[i], "images": shown[(i + 1) % len(shown)]["images"]} for i in range(len(shown))]
    own, other = _chunk_ends(policy, shown, num_steps), _chunk_ends(policy, swapped, num_steps)
    truth = np.stack([s["actions"][-1] for s in samples])
    if joints is None:
        arms = list(ARM_INDICES)
        joints = tuple(j for j in arms if truth[:, j].std() > 1e-4) or tuple(arms)
    j = list(joints)
    mean = truth[:, j].mean(axis=0)
    correlation = [_corr(own[:, k], truth[:, k]) for k in j]
    return SceneReading(
        frame=frame, episodes=len(chosen), joints=[JOINT_NAMES[k] for k in j],
        spread=truth[:, j].std(axis=0).tolist(), error=np.abs(own[:, j] - truth[:, j]).mean(axis=0).tolist(),
        blind_error=np.abs(mean - truth[:, j]).mean(axis=0).tolist(),
        swap=np.abs(own[:, j] - other[:, j]).mean(axis=0).tolist(), correlation=correlation)


def _chunk_ends(policy, samples: list[dict], num_steps: int, batch_size: int = 8) -> np.ndarray:
    ends = []
    with torch.inference_mode():
        for i in range(0, len(samples), batch_size):
            part = samples[i:i + batch_size]
            batch = policy.processor(part, device=policy.device)
            noise = torch.zeros_like(policy.noise_like(len(part)))
            ends.append(policy.sample(batch, num_steps=num_steps, noise=noise)[:, -1].float().cpu().numpy())
    return np.concatenate(ends)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() < 1e-9 or b.std() < 1e-9:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])
