"""Synthetic recordings for the dataset tests (imported by them and by their child processes)."""

from __future__ import annotations

import numpy as np

from sf_policy.data.features import ACTION, SKEW, STAMPS, STATE

FPS = 30
EPOCH_NS = 1_760_000_000_000_000_000  # a wall-clock time in 2025


def frame_values(i: int, episode: int = 0) -> dict[str, np.ndarray]:
    """Low-dimensional values of frame i, different in every episode and frame."""
    phase = np.arange(14) / 14 + episode
    tick = EPOCH_NS + episode * 10**12 + i * 33_333_333
    return {
        STATE: np.sin(0.1 * i + phase).astype(np.float32),
        ACTION: np.cos(0.1 * i + phase).astype(np.float32),
        STAMPS: tick - np.arange(8, dtype=np.int64) * 1_000_000,
        SKEW: np.array([0.25 * (i % 7)], dtype=np.float32),
    }


def smooth_image(i: int, height: int, width: int, salt: int = 0) -> np.ndarray:
    """Slowly moving colour gradients: codecs keep them well above 30 dB PSNR."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    t = i / 20 + salt
    r = 128 + 100 * np.sin(2 * np.pi * (x / width + t / 4))
    g = 128 + 100 * np.cos(2 * np.pi * (y / height - t / 5))
    b = 128 + 60 * np.sin(2 * np.pi * ((x + y) / (width + height) + t / 3))
    return np.stack([r, g, b], axis=-1).clip(0, 255).astype(np.uint8)


def frame_images(i: int, cameras: dict[str, tuple[int, int]], episode: int = 0) -> dict[str, np.ndarray]:
    return {role: smooth_image(i, h, w, salt=episode * 3 + k) for k, (role, (h, w)) in enumerate(cameras.items())}


def record(episode, n: int, cameras: dict[str, tuple[int, int]], episode_seed: int = 0) -> None:
    """Add n synthetic frames to a writer's episode."""
    for i in range(n):
        episode.add_frame(frame_values(i, episode_seed), images=frame_images(i, cameras, episode_seed))


def write_dataset(root, cameras: dict[str, tuple[int, int]], lengths, tasks):
    """A dataset of synthetic episodes (episode e: lengths[e] frames of tasks[e]), written by the writer."""
    from sf_policy.data.writer import DatasetWriter

    with DatasetWriter.create(root, fps=FPS, cameras=cameras) as writer:
        for e, (n, task) in enumerate(zip(lengths, tasks, strict=True)):
            episode = writer.begin_episode(task)
            record(episode, n, cameras, episode_seed=e)
            episode.save()
    return root


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_synthetic_frames_differ_between_frames_and_episodes():
    assert psnr(smooth_image(0, 48, 64), smooth_image(1, 48, 64)) < 40
    assert not np.array_equal(frame_values(3, 0)[STATE], frame_values(3, 1)[STATE])
