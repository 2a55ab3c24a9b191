"""Video: encoder subprocesses fed from the recording thread, probing, and decoding (PyAV).

Why a subprocess per camera: encoding three 640x480 streams at 30 Hz is CPU work that
holds the GIL while it converts and muxes frames; measured on this project's machines, busy
Python threads in the recorder's process starve its 30 Hz loop. So the recorder only copies
the frame into an unbounded queue; a feeder thread writes it to the encoder's stdin (pipe
writes release the GIL) and ``python -m sf_policy.data.video encode ...`` does the rest in
its own interpreter. If the recorder dies, the encoder reads EOF, finishes its file in the
staging directory and exits; that file is never committed.

Timing convention (see docs/datasets.md): frame i has pts = i in a 1/fps time base, so its
time is exactly i/fps and LeRobot's lookup at ``from_timestamp + timestamp`` always lands on
it. Real capture times are kept in the dataset's ``sync.stamps_ns`` column instead.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

#: Encoder name -> the codec name decoders report (what LeRobot writes as video.codec).
CANONICAL_CODECS = {"libx264": "h264", "h264": "h264", "libx265": "hevc", "hevc": "hevc",
                    "libsvtav1": "av1", "libaom-av1": "av1"}


@dataclass(frozen=True)
class VideoOptions:
    """How camera streams are encoded.

    gop 2 is LeRobot's choice: a keyframe every other frame keeps random access (training
    samples single frames) cheap at some cost in size. ``preset`` applies to libx264/x265
    ("veryfast" keeps up with three 640x480 cameras on two cores; see docs/datasets.md);
    libsvtav1 takes its preset as a number (e.g. "8"). ``threads`` 0 lets the codec decide.
    """

    codec: str = "libx264"
    pix_fmt: str = "yuv420p"
    gop: int = 2
    crf: int = 23
    preset: str | None = "veryfast"
    threads: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    def codec_options(self) -> dict[str, str]:
        opts = {"g": str(self.gop), "crf": str(self.crf)}
        if self.preset:
            opts["preset"] = str(self.preset)
        opts.update({str(k): str(v) for k, v in self.extra.items()})
        return opts

    @property
    def canonical_codec(self) -> str:
        return CANONICAL_CODECS.get(self.codec, self.codec)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> VideoOptions:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def check_codec(options: VideoOptions) -> None:
    """Fail early (at dataset creation) if this PyAV build lacks the encoder."""
    import av

    if options.codec not in av.codecs_available:
        raise ValueError(f"video codec {options.codec!r} is not available in this PyAV build "
                         f"(has libx264: {'libx264' in av.codecs_available}, "
                         f"libsvtav1: {'libsvtav1' in av.codecs_available})")


def video_info(options: VideoOptions, height: int, width: int, fps: int) -> dict:
    """The ``info`` block LeRobot stores with each video feature in meta/info.json."""
    return {
        "video.height": height,
        "video.width": width,
        "video.codec": options.canonical_codec,
        "video.pix_fmt": options.pix_fmt,
        "video.is_depth_map": False,  # LeRobot <= 0.4 spelling
        "video.fps": fps,
        "video.channels": 3,
        "has_audio": False,
        "is_depth_map": False,  # LeRobot >= 0.5 spelling
    }


# --------------------------------------------------------------------------------------------
# Encoding: the child process


def _encode_main(args: argparse.Namespace) -> int:
    import av

    # The recorder decides when an episode ends; Ctrl-C in its terminal must not kill us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    options = VideoOptions.from_dict(json.loads(args.options))
    frame_bytes = args.height * args.width * 3
    buf = bytearray(frame_bytes)
    view = memoryview(buf)
    stdin = sys.stdin.buffer
    count = 0
    # Not stream.time_base: the muxer changes it to the track's timescale on the first packet.
    time_base = Fraction(1, args.fps)
    with av.open(args.out, "w") as container:
        stream = add_video_stream(container, options, args.height, args.width, args.fps)
        while _read_exact(stdin, view):
            image = np.frombuffer(buf, dtype=np.uint8).reshape(args.height, args.width, 3)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = count
            frame.time_base = time_base
            container.mux(stream.encode(frame))
            count += 1
        container.mux(stream.encode(None))  # flush delayed frames
    print(json.dumps({"frames": count}), flush=True)
    return 0


def add_video_stream(container, options: VideoOptions, height: int, width: int, fps: int):
    stream = container.add_stream(options.codec, rate=fps, options=options.codec_options())
    stream.width, stream.height, stream.pix_fmt = width, height, options.pix_fmt
    stream.time_base = Fraction(1, fps)
    if options.threads:
        stream.thread_count = options.threads
    return stream


def _read_exact(stream, view: memoryview) -> bool:
    """Fill view from stream; False at EOF (a partial last frame, from a dying writer, is dropped)."""
    got = 0
    while got < len(view):
        n = stream.readinto(view[got:])
        if not n:
            return False
        got += n
    return True


# --------------------------------------------------------------------------------------------
# Encoding: the recorder's side


class EncoderError(RuntimeError):
    pass


class CameraEncoder:
    """One camera's encoder subprocess and the feeder thread that writes frames to it."""

    def __init__(self, out: Path, height: int, width: int, fps: int, options: VideoOptions, log: Path):
        self.out, self.height, self.width = Path(out), height, width
        self._log_path = Path(log)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.error: str | None = None
        cmd = [sys.executable, "-m", "sf_policy.data.video", "encode", str(out), "--height", str(height),
               "--width", str(width), "--fps", str(fps), "--options", json.dumps(options.to_dict())]
        env = dict(os.environ, SVT_LOG="1")  # SVT-AV1 logs its whole configuration otherwise
        with open(self._log_path, "wb") as log_file:
            # Own session: a Ctrl-C meant for the recorder does not reach the encoders.
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file,
                                          env=env, start_new_session=True)
        self._thread = threading.Thread(target=self._feed, name=f"feed-{out.name}", daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> int:
        """Frames queued but not yet handed to the encoder process."""
        return self._queue.qsize()

    def put(self, image: np.ndarray) -> None:
        """Queue one frame (the caller passes a copy it will not touch again)."""
        if self.error:
            raise EncoderError(self.error)
        self._queue.put(image)

    def _feed(self) -> None:
        while True:
            image = self._queue.get()
            if image is None:
                break
            if self.error is None:
                try:
                    self._proc.stdin.write(memoryview(image).cast("B"))
                except OSError as exc:  # the encoder died (e.g. its disk is full): keep draining
                    self.error = f"encoder for {self.out.name} stopped: {exc}; {self._log_tail()}"
        try:
            self._proc.stdin.close()
        except OSError:
            pass

    def finish(self, timeout: float | None = None) -> int:
        """Send EOF, wait for the file to be complete; return the frames the encoder wrote."""
        self._queue.put(None)
        self._thread.join(timeout)
        try:
            self._proc.wait(timeout=timeout)  # its only output, one short line, fits the pipe
        except subprocess.TimeoutExpired:
            self.abort()
            raise EncoderError(f"encoder for {self.out} did not finish within {timeout} s") from None
        if self._proc.returncode != 0 or self.error:
            raise EncoderError(self.error or f"encoder for {self.out.name} exited with {self._proc.returncode}: "
                                             f"{self._log_tail()}")
        stdout = self._proc.stdout.read().decode()
        self._proc.stdout.close()
        return int(json.loads(stdout.strip().splitlines()[-1])["frames"])

    def abort(self) -> None:
        """Stop without a usable file (discard, or cleanup after an error)."""
        self.error = self.error or "aborted"
        self._queue.put(None)
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._proc.stdout.close()
        self._thread.join(5.0)

    def _log_tail(self, limit: int = 600) -> str:
        try:
            text = self._log_path.read_text(errors="replace").strip()
        except OSError:
            return ""
        return text[-limit:]


# --------------------------------------------------------------------------------------------
# Probing and decoding


@dataclass
class VideoProbe:
    codec: str
    pix_fmt: str
    width: int
    height: int
    fps: float
    frames: int
    times_s: list[float]  # presentation time of every frame, sorted
    duration_s: float


def probe(path: Path) -> VideoProbe:
    """Stream parameters and every frame's time, from the container's packets (no decoding)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        tb = stream.time_base
        pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None and p.size > 0)
        times = [float(t * tb) for t in pts]
        duration = float(stream.duration * tb) if stream.duration else (times[-1] if times else 0.0)
        return VideoProbe(codec=stream.codec.canonical_name,
                          pix_fmt=stream.pix_fmt or "", width=stream.width, height=stream.height,
                          fps=float(stream.base_rate or stream.average_rate or 0), frames=len(times),
                          times_s=times, duration_s=duration)


def decode_frames(path: Path, start_s: float = 0.0, end_s: float | None = None,
                  tolerance_s: float = 1e-4) -> Iterator[tuple[float, np.ndarray]]:
    """(time, HxWx3 uint8 RGB) of each frame with start_s <= time < end_s, in order."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if start_s > 0:
            container.seek(int(start_s / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            t = float(frame.pts * stream.time_base)
            if t < start_s - tolerance_s:
                continue
            if end_s is not None and t >= end_s - tolerance_s:
                break
            yield t, frame.to_ndarray(format="rgb24")


class FrameReader:
    """Random access to frames by time, keeping recently used files open."""

    def __init__(self, max_open: int = 8, tolerance_s: float = 1e-4):
        self._open: dict[str, object] = {}
        self._max_open = max_open
        self.tolerance_s = tolerance_s

    def read(self, path: Path, t: float) -> np.ndarray:
        container = self._container(str(path))
        stream = container.streams.video[0]
        container.seek(int(round(t / stream.time_base)), stream=stream, backward=True)
        for frame in container.decode(stream):
            ft = float(frame.pts * stream.time_base)
            if abs(ft - t) <= self.tolerance_s:
                return frame.to_ndarray(format="rgb24")
            if ft > t:
                break
        raise EncoderError(f"{path}: no frame at t={t:.6f} s (within {self.tolerance_s} s)")

    def _container(self, path: str):
        import av

        if path in self._open:
            self._open[path] = self._open.pop(path)  # most recently used goes last
            return self._open[path]
        if len(self._open) >= self._max_open:
            oldest = next(iter(self._open))
            self._open.pop(oldest).close()
        self._open[path] = av.open(path)
        return self._open[path]

    def close(self) -> None:
        for container in self._open.values():
            container.close()
        self._open.clear()


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sf_policy.data.video")
    sub = parser.add_subparsers(dest="command", required=True)
    enc = sub.add_parser("encode", help="encode raw rgb24 frames from stdin into an mp4")
    enc.add_argument("out")
    enc.add_argument("--height", type=int, required=True)
    enc.add_argument("--width", type=int, required=True)
    enc.add_argument("--fps", type=int, required=True)
    enc.add_argument("--options", default="{}", help="VideoOptions as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        return _encode_main(args)
    except Exception as exc:  # report in one line; the parent shows it in its DatasetError
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
