"""The probe's frames: `DepthFrames` (RGB, metric depth, state and prompt per frame) and their
collection from the twin's scripted expert, cached in an .npz file."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...topics import CAMERA_ROLES


@dataclass
class DepthFrames:
    """Frames of several episodes: per frame the cameras' RGB and metric depth, the state, the prompt."""

    images: np.ndarray  # [N, C, H, W, 3] uint8, cameras in `roles` order
    depth: np.ndarray  # [N, C, H, W] float32, metres along the optical axis (0: no reading)
    state: np.ndarray  # [N, 14] float32 puppet joints
    episode: np.ndarray  # [N] int64: the episode's seed
    prompts: list[str]  # [N]
    meta: dict = field(default_factory=dict)  # how the frames were made (the cache key)
    roles: tuple[str, ...] = CAMERA_ROLES

    def __len__(self) -> int:
        return len(self.state)

    def samples(self, indices: Sequence[int]) -> list[dict]:
        """Processor samples (images by role, state, prompt) for these frames."""
        return [{"images": {role: self.images[i, c] for c, role in enumerate(self.roles)},
                 "state": self.state[i], "prompt": self.prompts[i]} for i in indices]

    def split(self, test_episodes: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) frame indices; the last ``test_episodes`` episodes are held out whole."""
        seeds = list(dict.fromkeys(self.episode.tolist()))  # in recording order
        if not 1 <= test_episodes < len(seeds):
            raise ValueError(f"need 1 <= test_episodes < episodes, got {test_episodes} of {len(seeds)} episodes")
        test = np.isin(self.episode, seeds[-test_episodes:])
        return np.flatnonzero(~test), np.flatnonzero(test)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a bare name
            np.savez_compressed(f, images=self.images, depth=self.depth, state=self.state, episode=self.episode,
                                prompts=np.array(self.prompts), roles=np.array(self.roles),
                                meta=np.array(json.dumps(self.meta)))

    @classmethod
    def load(cls, path: str | Path) -> DepthFrames:
        with np.load(Path(path), allow_pickle=False) as data:
            return cls(data["images"], data["depth"], data["state"], data["episode"],
                       [str(p) for p in data["prompts"]], json.loads(str(data["meta"])),
                       tuple(str(r) for r in data["roles"]))


def collect_twin_frames(task: str = "lift_pot", episodes: int = 6, seed: int = 0, width: int = 320,
                        height: int = 240, every: int = 5, max_frames: int = 0,
                        log: Callable[[str], None] | None = None) -> DepthFrames:
    """Run the scripted expert for seeds ``seed .. seed+episodes-1`` and keep one frame in ``every`` ticks.

    An episode ends at success, at the task's step limit, or after ``max_frames`` kept frames
    (0: no cap). Failed episodes are kept: depth does not care whether the pot was lifted.
    """
    from ...sim.experts import make_expert
    from ...sim.twin import Twin

    if episodes < 2:
        raise ValueError("the depth probe needs at least 2 episodes (train and held-out test)")
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    meta = {"source": "twin", "task": task, "episodes": episodes, "seed": seed, "width": width, "height": height,
            "every": every, "max_frames": max_frames}
    images, depth, state, episode, prompts = [], [], [], [], []
    twin = Twin(task, width=width, height=height, depth=True)
    try:
        for s in range(seed, seed + episodes):
            twin.reset(s)
            expert = make_expert(twin)
            prompt = twin.info["prompt"]
            kept = 0
            while not twin.done():
                if twin.tick % every == 0:
                    obs = twin.observe()
                    images.append(np.stack([obs.images[r] for r in twin.cameras]))
                    depth.append(np.stack([obs.depth[r] for r in twin.cameras]))
                    state.append(obs.state.astype(np.float32))
                    episode.append(s)
                    prompts.append(prompt)
                    kept += 1
                    if max_frames and kept >= max_frames:
                        break
                twin.step(expert.act())
                if twin.success():
                    break
            if log is not None:
                log(f"episode {s}: {kept} frames ({twin.tick} ticks, {'success' if twin.success() else 'no success'})")
    finally:
        twin.close()
    return DepthFrames(np.stack(images), np.stack(depth).astype(np.float32), np.stack(state),
                       np.asarray(episode, dtype=np.int64), prompts, meta, tuple(twin.cameras))


def load_or_collect(path: str | Path | None, log: Callable[[str], None] | None = None, **kwargs) -> DepthFrames:
    """``collect_twin_frames(**kwargs)``, cached at ``path``: reused when it was made with the same arguments."""
    if path is not None and Path(path).is_file():
        frames = DepthFrames.load(path)
        made = {k: v for k, v in frames.meta.items() if k != "source"}
        defaults = {name: p.default for name, p in inspect.signature(collect_twin_frames).parameters.items()
                    if name != "log"}
        if made == defaults | kwargs:
            if log is not None:
                log(f"frames: {len(frames)} from {path}")
            return frames
        if log is not None:
            log(f"{path} holds frames made with other settings ({made}); collecting again")
    frames = collect_twin_frames(log=log, **kwargs)
    if path is not None:
        frames.save(path)
    return frames
