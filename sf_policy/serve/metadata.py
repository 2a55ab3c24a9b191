"""What the server says about its model: the checkpoint's identity (a fingerprint of the
exact weights, its run, its dataset) and the contract a client needs (``/metadata``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sf_policy.embodiment import JOINT_NAMES, STATE_DIM
from sf_policy.serve.wire import PROTOCOL, PROTOCOL_VERSION

DEFAULT_NUM_STEPS = 10
DEFAULT_FPS = 30.0


def fingerprint_dir(path: str | Path) -> str:
    """sha256 over a directory's files (relative names and full contents), as ``sha256:<hex>``."""
    path = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def checkpoint_info(checkpoint: str | Path) -> dict:
    """What ``/metadata`` says about a checkpoint: its id, path, fingerprint and dataset's fingerprint."""
    from sf_policy.train.checkpoint import DATASET_FILE, POLICY_DIR, resolve_checkpoint

    root = resolve_checkpoint(checkpoint)
    info = {"id": root.name, "run": root.parent.parent.name if root.parent.name == "checkpoints" else None,
            "path": str(root.resolve()), "fingerprint": fingerprint_dir(root / POLICY_DIR)}
    dataset = root / DATASET_FILE
    if dataset.is_file():
        try:
            info["dataset_fingerprint"] = json.loads(dataset.read_text()).get("fingerprint")
        except (ValueError, AttributeError):
            info["dataset_fingerprint"] = None
    return info


def policy_metadata(policy, *, num_steps: int = DEFAULT_NUM_STEPS, fps: float = DEFAULT_FPS) -> dict:
    """The contract a client needs, from a loaded ``Policy``."""
    pc = policy.processor.config
    return {
        "protocol": PROTOCOL,
        "version": PROTOCOL_VERSION,
        "encoding": "msgpack; numpy arrays as {__ndarray__, data, dtype, shape} (openpi's msgpack_numpy)",
        "joint_names": list(JOINT_NAMES),
        "state_dim": STATE_DIM,
        "action_dim": STATE_DIM,
        "camera_roles": list(pc.camera_roles),
        "image_size": pc.image_size,
        "image_format": "uint8 RGB, HxWx3 (3xHxW accepted), any size; letterboxed to image_size",
        "chunk_size": pc.chunk_size,
        "fps": float(fps),
        "num_steps": int(num_steps),
        "actions": "absolute joint targets, one row per control tick at fps",
        "action_units": {"joints": "rad", "gripper": "m (opening between the fingers, 0 = closed)"},
        "representation": pc.representation,
        "max_prompt_tokens": pc.max_prompt_tokens,
        "dtype": str(policy.dtype).removeprefix("torch."),
        "device": str(policy.device),
    }
