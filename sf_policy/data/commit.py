"""The renames that commit an episode, run in a process of their own.

Why a separate process: the commit is a short sequence of renames (data, videos, tasks, the
episode's meta row, stats, info) and LeRobot's loader sees each one as it lands. If the
recorder died between two of them (``kill -9``, the OOM killer), the dataset would be left
with totals behind its episodes, or a data file no episode names, until the next
``DatasetWriter.open`` repaired it. The writer therefore hands the renames to this tiny
process in a session of its own (``start_new_session``) and waits for it: killing the
recorder, or its whole process group, cannot interrupt a commit half way. A power cut still
can; ``DatasetWriter.open`` repairs that case (docs/datasets.md).

It imports nothing heavy (it starts in ~30 ms) and speaks a JSON plan:
``[[step, staged_path, final_path], ...]`` in commit order.

  python -m sf_policy.data.commit PLAN.json
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

#: Test hook: SIGKILL the process doing the renames right after this step (a power cut there).
CRASH_ENV = "SF_DATASET_CRASH_AT"
#: Test hook: the committer sleeps this many seconds after the "meta" step (the recorder can
#: then be killed mid-commit, and the commit must still complete). A file ``paused`` in the
#: staging folder marks the commit as under way from then until its last rename is done.
PAUSE_ENV = "SF_DATASET_COMMIT_PAUSE_S"


def fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)
    fsync(dst.parent, directory=True)


def crash_point(step: str) -> None:
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


class CommitError(Exception):
    pass


def publish(targets: list[tuple[str, Path, Path]]) -> None:
    """The renames in order. Before the meta row is in place a failure undoes the data and
    video renames (no row names those files); after it the episode is committed, and a
    failure only leaves totals behind, which DatasetWriter.open() repairs."""
    placed: list[tuple[str, Path]] = []
    marker: Path | None = None
    try:
        for i, (step, src, dst) in enumerate(targets):
            try:
                move(src, dst)
            except OSError as exc:
                if any(s == "meta" for s, _ in placed):
                    raise CommitError(f"{dst}: update failed: {exc}; the episode is committed and "
                                      "DatasetWriter.open() repairs this file") from None
                for placed_step, path in placed:
                    if placed_step in ("data", "videos"):
                        path.unlink(missing_ok=True)
                raise CommitError(f"{dst}: rename failed: {exc}; the episode was not committed") from None
            placed.append((step, dst))
            if i + 1 == len(targets) or targets[i + 1][0] != step:
                crash_point(step)
                if step == "meta" and os.environ.get(PAUSE_ENV):
                    marker = src.parent / "paused"
                    _pause(float(os.environ[PAUSE_ENV]), marker)
    finally:
        if marker is not None:  # only once the last rename is done: "no marker" = commit over
            marker.unlink(missing_ok=True)


def _pause(seconds: float, marker: Path) -> None:
    """Test hook: hold the commit open; the marker says so (publish removes it at the end)."""
    import time

    marker.touch()
    time.sleep(seconds)


def publish_detached(targets: list[tuple[str, Path, Path]], plan_path: Path) -> None:
    """Write the plan, run it in a committer process of its own session, wait for it."""
    plan_path.write_text(json.dumps([[step, str(src), str(dst)] for step, src, dst in targets]))
    fsync(plan_path)
    result = subprocess.run([sys.executable, "-m", __name__, str(plan_path)], start_new_session=True,
                            capture_output=True, text=True)
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}"
        raise CommitError(f"committing {plan_path.parent}: {reason}; DatasetWriter.open() repairs the dataset")


def main(argv: list[str]) -> int:
    plan = json.loads(Path(argv[1]).read_text())
    try:
        publish([(step, Path(src), Path(dst)) for step, src, dst in plan])
    except CommitError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
