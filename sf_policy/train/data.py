"""Training samples from a recorded dataset, in a reproducible (and resumable) order.

Sample ``i`` is global frame ``i``: the three cameras and the puppet state at that frame, the
next ``chunk_size`` master targets of the same episode (fewer at the episode's end: the
processor pads them and masks the padding), the frame's task prompt, and ``index`` = ``i``,
which is also the frame's row in the teacher cache.

Episodes, not frames, are held out, so the held-out loss measures generalisation to unseen
demonstrations rather than to neighbouring frames of a seen one.
"""

from __future__ import annotations

import logging

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..data.features import ACTION, STATE, image_key
from ..data.decoded import DecodedFrames
from ..data.reader import DatasetReader
from ..topics import CAMERA_ROLES


class ChunkDataset(Dataset):
    """Frames of a LeRobot v3 dataset as policy samples (see the module docstring).

    The reader (open video containers) is created lazily in each DataLoader worker: it does
    not cross process boundaries.
    """

    def __init__(self, root: str | Path, indices: np.ndarray | None = None, chunk_size: int = 50,
                 decoded: DecodedFrames | None = None):
        self.root, self.chunk_size, self.decoded = Path(root), chunk_size, decoded
        reader = DatasetReader(self.root)
        self.states = reader.column(STATE).astype(np.float32)
        self.actions = reader.column(ACTION).astype(np.float32)
        self.camera_roles = list(reader.camera_roles)
        unknown = [r for r in self.camera_roles if r not in CAMERA_ROLES]
        if unknown:
            raise ValueError(f"{self.root}: cameras {unknown} are not policy cameras {list(CAMERA_ROLES)}")
        #: Row just past each frame's episode: where its action chunk must stop.
        self.episode_end = np.zeros(len(reader), dtype=np.int64)
        first = reader.episodes[0].from_index if reader.episodes else 0
        for ep in reader.episodes:
            self.episode_end[ep.from_index - first:ep.to_index - first] = ep.to_index - first
        self.indices = np.arange(len(reader)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.prompts: list[str] = []  # per frame, as DatasetReader.__getitem__ names it
        if decoded is not None:
            task_of = reader.column("task_index")
            for ep in reader.episodes:
                rows = range(ep.from_index - first, ep.to_index - first)
                self.prompts += [reader.tasks.get(int(task_of[r]), ep.task) for r in rows]
        reader.close()
        self._reader: DatasetReader | None = None

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def reader(self) -> DatasetReader:
        if self._reader is None:
            self._reader = DatasetReader(self.root)
        return self._reader

    def __getitem__(self, k: int) -> dict:
        i = int(self.indices[k])
        end = min(i + self.chunk_size, int(self.episode_end[i]))
        if self.decoded is not None:  # decoded once (data.frames=decoded): a copy out of the page cache
            frames, prompt = self.decoded[i], self.prompts[i]
        else:
            frame = self.reader[i]
            frames = {role: frame.get(image_key(role)) for role in self.camera_roles}
            prompt = frame["task"]
        images = {role: frames.get(role) if role in self.camera_roles else None for role in CAMERA_ROLES}
        return {"index": i, "images": images, "state": self.states[i], "actions": self.actions[i:end],
                "prompt": prompt}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_reader"] = None  # each worker opens its own
        return state


def check_dataset(root: str | Path) -> None:
    """Refuse to train on a dataset ``sf dataset validate`` finds problems in (the videos are not
    opened here: decoding finds those), naming the first of them. Corrupted data otherwise ended
    in tracebacks naming no file, a misleading "teacher cache incomplete", or a silent run on
    two cameras."""
    from ..data.features import DatasetError
    from ..data.validate import validate_with_warnings

    problems, warnings = validate_with_warnings(root, videos=False)
    if warnings:  # trainable, but the user should know what the policy will learn from
        shown = "; ".join(w.message for w in warnings[:3])
        more = f" (and {len(warnings) - 3} more)" if len(warnings) > 3 else ""
        logging.getLogger(__name__).warning("%s: %d episode(s) recorded below the dataset's rate: %s%s", root,
                                            len(warnings), shown, more)
    if problems:
        shown = "\n  ".join(str(p) for p in problems[:5])
        more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise DatasetError(f"{root}: not a valid dataset ({len(problems)} problem(s); `sf dataset validate {root}` "
                           f"lists them):\n  {shown}{more}")


def heldout_positions(num_episodes: int, heldout: float, seed: int = 0) -> set[int]:
    """Positions (0-based, in dataset order) of the episodes ``split_episodes`` holds out.

    A count (``heldout`` ≥ 1) that would leave no episode to train on is an error naming
    ``data.heldout_episodes``; a fraction always leaves at least one."""
    if not (heldout >= 0):
        raise ValueError(f"data.heldout_episodes must be >= 0 (a fraction < 1 or a count), got {heldout}")
    count = int(heldout) if heldout >= 1 else int(round(heldout * num_episodes))
    if heldout >= 1 and num_episodes and count >= num_episodes:
        raise ValueError(f"data.heldout_episodes={heldout:g} holds out all {num_episodes} episode(s): none is left "
                         f"to train on; hold out fewer (a count below {num_episodes}, or a fraction such as 0.1)")
    count = min(count, max(num_episodes - 1, 0))
    return set(np.random.default_rng(seed).permutation(num_episodes)[:count].tolist())


def training_scenes(root: str | Path, heldout: float, seed: int = 0) -> tuple[set[int], int]:
    """(twin seeds of the episodes a run with this split trained on, episodes without one).

    An episode recorded in the twin knows its scene (``EpisodeInfo.sim_seed``); one recorded
    on the robot, or before the field existed, does not and is counted apart."""
    reader = DatasetReader(root)
    try:
        held = heldout_positions(len(reader.episodes), heldout, seed)
        trained = [ep for e, ep in enumerate(reader.episodes) if e not in held]
    finally:
        reader.close()
    return {ep.sim_seed for ep in trained if ep.sim_seed is not None}, sum(ep.sim_seed is None for ep in trained)


def split_episodes(root: str | Path, heldout: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train frame indices, held-out frame indices), holding out whole episodes.

    ``heldout`` < 1 is a fraction of the episodes, ≥ 1 a count; at least one episode always
    stays for training, and none is held out from a one-episode dataset.
    """
    reader = DatasetReader(root)
    episodes = reader.episodes
    first = episodes[0].from_index if episodes else 0
    try:
        held = heldout_positions(len(episodes), heldout, seed)
    except ValueError as exc:
        reader.close()
        raise ValueError(f"{root}: {exc}") from None
    train, test = [], []
    for e, ep in enumerate(episodes):
        rows = np.arange(ep.from_index - first, ep.to_index - first)
        (test if e in held else train).append(rows)
    reader.close()
    join = lambda parts: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)  # noqa: E731
    return join(train), join(test)


def emphasise_starts(root: str | Path, rows: np.ndarray, seconds: float, weight: int) -> np.ndarray:
    """``rows`` with each frame of an episode's first ``seconds`` repeated ``weight`` times.

    Why: every demonstration starts at rest in the same pose, and from there the arm's own
    motion gives away where it is going; only the first frames' chunks depend on the cameras
    alone (where the object lies). Drawn as often as the rest (a few % of the frames), a
    from-scratch model fits everything else first and reaches for the average pose, whatever
    the scene (docs/results/learn.md). Rows are positions in the dataset, as ``split_episodes``
    returns them; order is kept, so the draw stays a function of (seed, batch number)."""
    if weight == 1 or seconds <= 0 or len(rows) == 0:
        return rows
    reader = DatasetReader(root)
    try:
        first = reader.episodes[0].from_index
        starts = np.array([ep.from_index - first for ep in reader.episodes])
        window = int(round(seconds * reader.fps))
    finally:
        reader.close()
    # the episode each row belongs to is the last one starting at or before it
    into_episode = rows - starts[np.searchsorted(starts, rows, side="right") - 1]
    return np.repeat(rows, np.where(into_episode < window, weight, 1))


class ResumableBatches(Sampler[list[int]]):
    """Endless shuffled batches whose order depends only on (seed, batch number).

    Epoch ``e`` is the permutation drawn from ``(seed, e)``; batches run across epoch ends.
    Starting at ``start`` batches in reproduces exactly the batches an uninterrupted run
    would have drawn from there, which is what makes ``--resume`` follow the same trajectory.

    ``batch_size`` is the global (micro-)batch; with ``processes`` > 1 each process yields its
    ``rank``'s equal slice of it, so the processes partition one permutation: within an epoch
    every sample goes to one process once, and the samples of a step are those of a
    one-process run with the same global batch (sf_policy/train/distributed.py).
    """

    def __init__(self, size: int, batch_size: int, seed: int = 0, start: int = 0, rank: int = 0,
                 processes: int = 1):
        if size <= 0:
            raise ValueError("no training frames: is the dataset empty, or all episodes held out?")
        if batch_size % processes or not 0 <= rank < processes:
            raise ValueError(f"a global batch of {batch_size} does not split into {processes} equal shares "
                             f"(rank {rank})")
        self.size, self.batch_size, self.seed, self.start = size, batch_size, seed, start
        self.rank, self.processes = rank, processes

    def _epoch(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def global_batches(self) -> Iterator[list[int]]:
        """The global batches from ``start`` on, as every process sees them."""
        position = self.start * self.batch_size
        epoch, offset = divmod(position, self.size)
        order = self._epoch(epoch)
        while True:
            batch = []
            while len(batch) < self.batch_size:
                if offset == self.size:
                    epoch, offset = epoch + 1, 0
                    order = self._epoch(epoch)
                take = min(self.batch_size - len(batch), self.size - offset)
                batch += order[offset:offset + take].tolist()
                offset += take
            yield batch

    def __iter__(self) -> Iterator[list[int]]:
        from .distributed import own_rows

        for batch in self.global_batches():
            yield own_rows(batch, self.rank, self.processes)

    def __len__(self) -> int:  # DataLoader asks; the stream is endless, the trainer counts steps
        return 2**31


def collate(samples: list[dict]) -> dict:
    """Samples stay a list (the policy's processor batches them); indices become a tensor."""
    return {"samples": samples, "index": torch.tensor([s["index"] for s in samples], dtype=torch.long)}
