"""Camera intrinsics from views of a planar target (checkerboard or ChArUco), with OpenCV.

The pipeline, each step a function so it is tested on its own:

1. :func:`detect` finds the target's corners in one image (sub-pixel), with ids that say
   which board corner each one is, and a sharpness score of the board region.
2. :func:`select_views` drops blurry views (sharpness well below the median of the set:
   an absolute threshold would depend on the lens, the lighting and the board) and
   near-duplicates (a camera held still gives many copies of one view, which weigh that
   pose without adding information), keeping the sharpest of each group.
3. :func:`calibrate` runs ``cv2.calibrateCamera``, reports the RMS reprojection error and
   each view's error, and calibrates once more without outlier views (a mis-detection or
   a motion-blurred frame that passed the blur test).
4. :func:`coverage_warnings` says what the views leave poorly constrained: image regions
   without corners (distortion there is extrapolated) and too little tilt (focal length and
   principal point are then correlated with the distance).

``sf calibrate intrinsics`` drives it from a folder of images, a video file or a live
camera, and writes the ROS calibration file (:mod:`sf_policy.calibration.camera_info`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..drivers.cameras import Intrinsics

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MIN_VIEWS = 8              # fewer and the 9 unknowns (4 intrinsics + k1 k2 p1 p2 k3) are poorly fixed
MIN_CHARUCO_CORNERS = 6    # a homography needs 4; a few more make the pose stable
MIN_TILT_DEG = 15.0        # below this all views are near fronto-parallel: f and distance trade off
GOOD_RMS_PX = 0.5
POOR_RMS_PX = 1.0


class CalibrationError(RuntimeError):
    """Calibration cannot proceed; the message says what was found and what to do."""


def _cv2():
    import cv2

    return cv2


# --- the target ----------------------------------------------------------------------
@dataclass(frozen=True)
class Board:
    """A planar target. ``cols``/``rows``: inner corners (checkerboard) or squares (ChArUco)."""

    kind: str = "checkerboard"
    cols: int = 9
    rows: int = 6
    square_m: float = 0.025
    marker_m: float = 0.018            # ChArUco only: marker side
    dictionary: str = "DICT_4X4_50"    # ChArUco only: cv2.aruco predefined dictionary

    def __post_init__(self):
        if self.kind not in ("checkerboard", "charuco"):
            raise CalibrationError(f"board kind must be checkerboard or charuco, got {self.kind!r}")
        if self.cols < 2 or self.rows < 2:
            raise CalibrationError(f"board needs at least 2 x 2 {self._unit}, got {self.cols} x {self.rows}")
        if self.square_m <= 0 or (self.kind == "charuco" and not 0 < self.marker_m < self.square_m):
            raise CalibrationError(f"board sizes: square {self.square_m} m, marker {self.marker_m} m; "
                                   "both positive, marker smaller than the square")

    @property
    def _unit(self) -> str:
        return "inner corners" if self.kind == "checkerboard" else "squares"

    def describe(self) -> str:
        extra = f", marker {self.marker_m * 1000:g} mm, {self.dictionary}" if self.kind == "charuco" else ""
        return f"{self.kind} {self.cols} x {self.rows} {self._unit}, square {self.square_m * 1000:g} mm{extra}"

    def object_points(self) -> np.ndarray:
        """Every corner on the board plane (z = 0), metres, indexed by corner id."""
        if self.kind == "charuco":  # OpenCV's own numbering of the ids it detects
            return np.asarray(self.charuco().getChessboardCorners(), np.float32).reshape(-1, 3)
        grid = np.zeros((self.cols * self.rows, 3), np.float32)
        grid[:, :2] = np.mgrid[0:self.cols, 0:self.rows].T.reshape(-1, 2) * self.square_m
        return grid

    def charuco(self):
        cv2 = _cv2()
        if not hasattr(cv2, "aruco") or not hasattr(cv2.aruco, "CharucoDetector"):
            raise CalibrationError("ChArUco needs cv2.aruco with CharucoDetector (OpenCV >= 4.7); "
                                   "use --board checkerboard or upgrade opencv-python-headless")
        name = self.dictionary if self.dictionary.startswith("DICT_") else f"DICT_{self.dictionary}"
        if not hasattr(cv2.aruco, name):
            raise CalibrationError(f"unknown ArUco dictionary {self.dictionary!r} (e.g. DICT_4X4_50, DICT_5X5_100)")
        dictionary = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, name))
        return cv2.aruco.CharucoBoard((self.cols, self.rows), self.square_m, self.marker_m, dictionary)


# --- detection -----------------------------------------------------------------------
@dataclass
class Detection:
    name: str                    # file name, or "frame N"
    corners: np.ndarray          # N x 2 float32, pixels
    ids: np.ndarray              # N int: index into Board.object_points()
    sharpness: float             # variance of the Laplacian over the board's bounding box
    image_size: tuple[int, int]  # (width, height)


def to_gray(image: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    if image.ndim == 2:
        return image
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY if image.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)


def _sharpness(gray: np.ndarray, corners: np.ndarray) -> float:
    cv2 = _cv2()
    x0, y0 = np.floor(corners.min(axis=0)).astype(int)
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int)
    roi = gray[max(y0, 0):max(y1, 1), max(x0, 0):max(x1, 1)]
    return float(cv2.Laplacian(roi, cv2.CV_64F).var()) if roi.size else 0.0


def _detect_checkerboard(gray: np.ndarray, board: Board) -> tuple[np.ndarray, np.ndarray] | None:
    cv2 = _cv2()
    size = (board.cols, board.rows)
    # The sector-based detector is sub-pixel accurate by itself and copes with blur and
    # uneven light better than the classic one; the classic one is the fallback.
    found, corners = cv2.findChessboardCornersSB(gray, size, cv2.CALIB_CB_NORMALIZE_IMAGE | cv2.CALIB_CB_EXHAUSTIVE)
    if not found:
        found, corners = cv2.findChessboardCorners(gray, size, cv2.CALIB_CB_ADAPTIVE_THRESH
                                                   | cv2.CALIB_CB_NORMALIZE_IMAGE)
        if not found:
            return None
        criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 0.001)
        corners = cv2.cornerSubPix(gray, corners, (5, 5), (-1, -1), criteria)
    corners = corners.reshape(-1, 2).astype(np.float32)
    return corners, np.arange(len(corners))


def _detect_charuco(gray: np.ndarray, board: Board, detector) -> tuple[np.ndarray, np.ndarray] | None:
    corners, ids, _, _ = detector.detectBoard(gray)
    if ids is None or len(ids) < MIN_CHARUCO_CORNERS:
        return None
    return corners.reshape(-1, 2).astype(np.float32), ids.reshape(-1).astype(int)


class Detector:
    """Finds the board in images; holds the ChArUco detector so it is built once."""

    def __init__(self, board: Board):
        self.board = board
        self._charuco = None
        if board.kind == "charuco":
            cv2 = _cv2()
            self._charuco = cv2.aruco.CharucoDetector(board.charuco())

    def __call__(self, image: np.ndarray, name: str) -> Detection | None:
        gray = to_gray(image)
        found = (_detect_checkerboard(gray, self.board) if self._charuco is None
                 else _detect_charuco(gray, self.board, self._charuco))
        if found is None:
            return None
        corners, ids = found
        return Detection(name, corners, ids, _sharpness(gray, corners), (gray.shape[1], gray.shape[0]))


def detect(image: np.ndarray, board: Board, name: str = "") -> Detection | None:
    return Detector(board)(image, name)


# --- view selection --------------------------------------------------------------------
@dataclass
class Selection:
    kept: list[Detection]
    blurry: list[Detection] = field(default_factory=list)
    duplicates: list[Detection] = field(default_factory=list)


def _nn_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean distance from each corner of a to the nearest corner of b, symmetrised.

    Order-free on purpose: a checkerboard's corner order may flip between views."""
    d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
    return float((d.min(axis=1).mean() + d.min(axis=0).mean()) / 2.0)


def select_views(detections: list[Detection], blur_ratio: float = 0.4, duplicate_fraction: float = 0.01,
                 max_views: int = 60) -> Selection:
    """Blurry: sharpness below ``blur_ratio`` x the median. Duplicate: corners within
    ``duplicate_fraction`` of the image diagonal (mean nearest-corner distance) of a kept view."""
    if not detections:
        return Selection([])
    median = float(np.median([d.sharpness for d in detections]))
    selection = Selection([])
    for det in sorted(detections, key=lambda d: -d.sharpness):  # the sharpest of each group survives
        diagonal = math.hypot(*det.image_size)
        if det.sharpness < blur_ratio * median:
            selection.blurry.append(det)
        elif any(_nn_distance(det.corners, k.corners) < duplicate_fraction * diagonal for k in selection.kept):
            selection.duplicates.append(det)
        else:
            selection.kept.append(det)
    selection.kept = _spread(selection.kept, max_views)
    return selection


def _spread(views: list[Detection], max_views: int) -> list[Detection]:
    """At most max_views, chosen far apart (greedy farthest point on corner centroid and scale)."""
    if len(views) <= max_views:
        return views
    feats = np.array([[*v.corners.mean(axis=0), math.sqrt(np.ptp(v.corners[:, 0]) * np.ptp(v.corners[:, 1]))]
                      for v in views])
    chosen = [0]
    dist = np.linalg.norm(feats - feats[0], axis=1)
    while len(chosen) < max_views:
        nxt = int(dist.argmax())
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(feats - feats[nxt], axis=1))
    return [views[i] for i in sorted(chosen)]


# --- calibration ---------------------------------------------------------------------
@dataclass
class Calibration:
    intrinsics: Intrinsics
    rms_px: float
    view_errors: dict[str, float]      # view name -> RMS reprojection error (px)
    outliers: list[str]                # views dropped before the final solve
    tilts_deg: list[float]             # angle between each board's normal and the optical axis
    camera_matrix: np.ndarray
    distortion: np.ndarray


def _solve(views: list[Detection], board: Board, flags: int):
    cv2 = _cv2()
    grid = board.object_points()
    obj = [grid[v.ids] for v in views]
    img = [v.corners.reshape(-1, 1, 2) for v in views]
    size = views[0].image_size
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 100, 1e-9)
    rms, k, d, rvecs, tvecs = cv2.calibrateCamera(obj, img, size, None, None, flags=flags, criteria=criteria)
    errors = []
    for o, i, r, t in zip(obj, img, rvecs, tvecs):
        projected, _ = cv2.projectPoints(o, r, t, k, d)
        errors.append(float(np.sqrt(np.mean(np.sum((projected - i) ** 2, axis=2)))))
    return rms, k, d, rvecs, errors


def _flags(k_coefficients: int) -> int:
    cv2 = _cv2()
    if k_coefficients == 6:
        return cv2.CALIB_RATIONAL_MODEL
    # Like ROS's camera_calibration: k3 is left out unless asked for, since with a few
    # dozen views of a normal lens it fits noise and misbehaves at the image edges.
    return {2: cv2.CALIB_FIX_K3, 3: 0}[k_coefficients]


def calibrate(views: list[Detection], board: Board, k_coefficients: int = 2,
              outlier_factor: float = 3.0) -> Calibration:
    """Calibrates; views whose error exceeds ``outlier_factor`` x the median (and 1 px) are
    dropped once and the solve repeated."""
    if k_coefficients not in (2, 3, 6):
        raise CalibrationError(f"k_coefficients must be 2, 3 or 6 (rational model), got {k_coefficients}")
    sizes = {v.image_size for v in views}
    if len(sizes) > 1:
        raise CalibrationError(f"views differ in size: {sorted(sizes)}; calibrate one resolution at a time")
    if len(views) < 3:
        raise CalibrationError(f"{len(views)} usable views; at least {MIN_VIEWS} are needed (3 to attempt it)")
    flags = _flags(k_coefficients)
    rms, k, d, rvecs, errors = _solve(views, board, flags)
    limit = max(outlier_factor * float(np.median(errors)), 1.0)
    outliers = [v.name for v, e in zip(views, errors) if e > limit]
    if outliers and len(views) - len(outliers) >= 3:
        views = [v for v, e in zip(views, errors) if e <= limit]
        rms, k, d, rvecs, errors = _solve(views, board, flags)
    else:
        outliers = []
    return Calibration(_intrinsics(k, d, views[0].image_size), float(rms),
                       {v.name: e for v, e in zip(views, errors)}, outliers, [_tilt_deg(r) for r in rvecs], k, d)


def _tilt_deg(rvec: np.ndarray) -> float:
    rot, _ = _cv2().Rodrigues(rvec)
    return float(np.degrees(np.arccos(min(1.0, abs(rot[2, 2])))))


def _intrinsics(k: np.ndarray, d: np.ndarray, size: tuple[int, int]) -> Intrinsics:
    cv2 = _cv2()
    coefficients = tuple(float(c) for c in d.reshape(-1))
    model = "rational_polynomial" if len(coefficients) > 5 else "plumb_bob"
    if model == "rational_polynomial":
        coefficients = coefficients[:8]
    # The projection matrix of the rectified image, as ROS's calibrator computes it
    # (alpha 0: every rectified pixel is valid). The raw images keep K and D.
    new_k, _ = cv2.getOptimalNewCameraMatrix(k, d, size, 0.0)
    projection = np.hstack([new_k, np.zeros((3, 1))]).reshape(-1)
    return Intrinsics(width=size[0], height=size[1], fx=float(k[0, 0]), fy=float(k[1, 1]), cx=float(k[0, 2]),
                      cy=float(k[1, 2]), distortion_model=model, coefficients=coefficients,
                      projection=tuple(float(v) for v in projection))


def coverage_warnings(views: list[Detection], calib: Calibration | None = None, grid: int = 3) -> list[str]:
    """What the set of views leaves poorly constrained, in words an operator can act on."""
    warnings = []
    if len(views) < MIN_VIEWS:
        warnings.append(f"only {len(views)} views; use at least {MIN_VIEWS} (15-30 is typical)")
    if views:
        width, height = views[0].image_size
        pts = np.concatenate([v.corners for v in views])
        cells = np.zeros((grid, grid), int)
        cx = np.clip((pts[:, 0] / width * grid).astype(int), 0, grid - 1)
        cy = np.clip((pts[:, 1] / height * grid).astype(int), 0, grid - 1)
        np.add.at(cells, (cy, cx), 1)
        names = {0: "top", grid - 1: "bottom"}, {0: "left", grid - 1: "right"}
        empty = [f"{names[0].get(r, 'middle')}-{names[1].get(c, 'centre')}"
                 for r in range(grid) for c in range(grid) if cells[r, c] == 0]
        if empty:
            warnings.append(f"no corners in the {', '.join(empty)} part(s) of the image: hold the board there "
                            "too, or distortion is extrapolated at the edges")
    if calib is not None and calib.tilts_deg and max(calib.tilts_deg) < MIN_TILT_DEG:
        warnings.append(f"the board is never tilted more than {max(calib.tilts_deg):.0f} deg; tilt it by "
                        f"{MIN_TILT_DEG:.0f}-45 deg in some views so focal length and distance separate")
    if calib is not None and calib.rms_px > POOR_RMS_PX:
        warnings.append(f"RMS reprojection error {calib.rms_px:.2f} px is above {POOR_RMS_PX} px: check the board "
                        "size arguments, flatness of the board, and blur")
    return warnings


# --- sources ---------------------------------------------------------------------------
def images_from_folder(folder: Path) -> Iterator[tuple[str, np.ndarray]]:
    cv2 = _cv2()
    if not folder.is_dir():
        raise CalibrationError(f"{folder}: not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CalibrationError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    for path in files:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise CalibrationError(f"{path}: cannot be read as an image")
        yield path.name, image


def frames_from_video(path: Path, every: int = 5) -> Iterator[tuple[str, np.ndarray]]:
    """Every ``every``-th frame: neighbours of a 30 fps video are near-duplicates anyway."""
    cv2 = _cv2()
    if not path.is_file():
        raise CalibrationError(f"{path}: video file not found")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise CalibrationError(f"{path}: cv2.VideoCapture cannot open it")
    try:
        index = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if index % max(1, every) == 0:
                yield f"frame {index}", frame
            index += 1
    finally:
        cap.release()


def detect_all(frames: Iterable[tuple[str, np.ndarray]], board: Board, progress=None) -> tuple[list[Detection], int]:
    """(detections, frames looked at). ``progress(name, found)`` is called per frame."""
    detector = Detector(board)
    found, seen = [], 0
    for name, image in frames:
        seen += 1
        det = detector(image, name)
        if det is not None:
            found.append(det)
        if progress is not None:
            progress(name, det is not None)
    return found, seen


def frames_from_camera(cfg, duration_s: float, interval_s: float = 0.25,
                       enough=None) -> Iterator[tuple[str, np.ndarray]]:
    """Frames of a live camera (our RealSense / OpenCV backends), one every ``interval_s``,
    for ``duration_s`` or until ``enough()`` says so. The operator moves the board meanwhile."""
    import time

    from ..drivers.cameras import CameraStream, open_camera

    stream = CameraStream(open_camera(cfg), cfg).start()
    try:
        deadline, last_seq = time.monotonic() + duration_s, -1
        while time.monotonic() < deadline and not (enough is not None and enough()):
            frame = stream.latest()
            if frame is not None and frame.seq != last_seq:
                last_seq = frame.seq
                yield f"frame {frame.seq}", frame.rgb[:, :, ::-1]  # RGB -> BGR, as cv2 reads files
            time.sleep(interval_s)
        if last_seq < 0:
            raise CalibrationError(f"camera {cfg.role}: no frame in {duration_s:g} s ({stream.status().message})")
    finally:
        stream.stop()
