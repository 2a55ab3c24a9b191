"""Camera intrinsics: views rendered from a known pinhole camera (with lens distortion) must
give back its focal lengths and principal point; blurry and duplicate views are dropped;
the written file is what the camera driver publishes as CameraInfo."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import yaml

from sf_policy.calibration.camera_info import load_camera_info, save_camera_info
from sf_policy.calibration.intrinsics import (Board, CalibrationError, calibrate, coverage_warnings, detect_all,
                                              images_from_folder, select_views)
from sf_policy.drivers.cameras import Intrinsics

W, H = 640, 480
K_TRUE = np.array([[610.0, 0.0, 324.0], [0.0, 604.0, 236.0], [0.0, 0.0, 1.0]])
D_TRUE = np.array([-0.12, 0.05, 0.0008, -0.0005, 0.0])
PX = 40      # texture pixels per board square
MARGIN = 40  # texture pixels of white border around the board


def board_texture(board: Board) -> tuple[np.ndarray, float]:
    """(texture image, board-metres x of texture pixel 0): the printed target."""
    if board.kind == "charuco":
        size = (board.cols * PX + 2 * MARGIN, board.rows * PX + 2 * MARGIN)
        return board.charuco().generateImage(size, marginSize=MARGIN, borderBits=1), -MARGIN / PX * board.square_m
    squares = np.indices((board.rows + 1, board.cols + 1)).sum(axis=0) % 2
    tex = np.kron(1 - squares, np.ones((PX, PX))).astype(np.uint8) * 255
    tex = cv2.copyMakeBorder(tex, MARGIN, MARGIN, MARGIN, MARGIN, cv2.BORDER_CONSTANT, value=255)
    # object point (0, 0) is the first inner corner, one square in from the board's edge
    return tex, -(MARGIN + PX) / PX * board.square_m


def render(board: Board, rvec, centre) -> np.ndarray:
    """The image the true camera sees of the board, posed by rvec with its middle at centre (m)."""
    tex, origin = board_texture(board)
    scale = PX / board.square_m                       # texture pixels per metre
    mid = np.array([(tex.shape[1] / 2) / scale + origin, (tex.shape[0] / 2) / scale + origin, 0.0])
    rot, _ = cv2.Rodrigues(np.asarray(rvec, float))
    t = np.asarray(centre, float) - rot @ mid
    homography = np.column_stack([rot[:, 0], rot[:, 1], t])   # board (X, Y, 1) -> normalised camera
    u, v = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    pix = np.stack([u.ravel(), v.ravel()], axis=1).reshape(-1, 1, 2)
    norm = cv2.undistortPoints(pix, K_TRUE, D_TRUE).reshape(-1, 2)
    board_xy = np.linalg.inv(homography) @ np.vstack([norm.T, np.ones(len(norm))])
    board_xy = board_xy[:2] / board_xy[2]
    map_x = ((board_xy[0] - origin) * scale).reshape(H, W).astype(np.float32)
    map_y = ((board_xy[1] - origin) * scale).reshape(H, W).astype(np.float32)
    tex = cv2.GaussianBlur(tex, (3, 3), 0.8)  # a little optical blur, as a real lens gives
    return cv2.remap(tex, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=110)


def poses(n: int, seed: int = 3):
    """Tilted views spread over the image, 0.5-0.65 m away."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        angle = 2 * math.pi * i / n
        rvec = [math.radians(30) * math.cos(angle), math.radians(30) * math.sin(angle), rng.uniform(-0.25, 0.25)]
        radius = 0.0 if i == 0 else rng.uniform(0.04, 0.08)
        centre = [radius * math.cos(angle + 0.7) * 1.3, radius * math.sin(angle + 0.7), rng.uniform(0.5, 0.65)]
        yield rvec, centre


def write_views(folder, board: Board, n: int) -> list:
    folder.mkdir()
    images = []
    for i, (rvec, centre) in enumerate(poses(n)):
        image = render(board, rvec, centre)
        cv2.imwrite(str(folder / f"view_{i:02d}.png"), image)
        images.append(image)
    return images


def assert_recovered(intr: Intrinsics, tolerance: float = 0.01):
    got = {"fx": intr.fx, "fy": intr.fy, "cx": intr.cx, "cy": intr.cy}
    want = {"fx": K_TRUE[0, 0], "fy": K_TRUE[1, 1], "cx": K_TRUE[0, 2], "cy": K_TRUE[1, 2]}
    for key, value in want.items():
        assert abs(got[key] - value) / value < tolerance, f"{key}: got {got[key]:.2f}, true {value:.2f}"


def test_checkerboard_recovers_the_camera_and_drops_blurry_and_duplicate_views(tmp_path):
    board = Board("checkerboard", cols=9, rows=6, square_m=0.03)
    folder = tmp_path / "views"
    images = write_views(folder, board, 12)
    cv2.imwrite(str(folder / "z_blurry.png"), cv2.GaussianBlur(images[3], (0, 0), 2.5))
    cv2.imwrite(str(folder / "z_duplicate.png"), np.roll(images[5], 1, axis=1))  # the same pose, 1 px over

    detections, seen = detect_all(images_from_folder(folder), board)
    assert seen == 14
    selection = select_views(detections)
    assert [d.name for d in selection.blurry] == ["z_blurry.png"]
    assert {d.name for d in selection.duplicates} & {"z_duplicate.png", "view_05.png"}
    assert len(selection.kept) == 12

    calib = calibrate(selection.kept, board)
    assert calib.rms_px < 0.3, calib.view_errors
    assert len(calib.view_errors) == 12 and max(calib.view_errors.values()) < 0.5
    assert_recovered(calib.intrinsics)
    assert calib.intrinsics.coefficients[0] == pytest.approx(D_TRUE[0], abs=0.02)  # k1
    assert coverage_warnings(selection.kept, calib) == []


def test_charuco_recovers_the_camera(tmp_path):
    board = Board("charuco", cols=8, rows=6, square_m=0.035, marker_m=0.026, dictionary="DICT_4X4_50")
    write_views(tmp_path / "views", board, 10)
    detections, _ = detect_all(images_from_folder(tmp_path / "views"), board)
    assert len(detections) == 10
    calib = calibrate(select_views(detections).kept, board)
    assert calib.rms_px < 0.5
    assert_recovered(calib.intrinsics)


def test_poor_coverage_and_too_few_views_are_named(tmp_path):
    board = Board("checkerboard", cols=9, rows=6, square_m=0.03)
    image = render(board, [0.0, 0.0, 0.0], [0.0, 0.0, 0.9])  # one small, flat view in the middle
    detections, _ = detect_all([("middle.png", image)], board)
    warnings = " | ".join(coverage_warnings(detections))
    assert "only 1 views" in warnings and "top-left" in warnings and "bottom-right" in warnings
    with pytest.raises(CalibrationError, match="1 usable views"):
        calibrate(detections, board)


def test_calibration_file_round_trips_in_the_ros_format(tmp_path):
    intr = Intrinsics(640, 480, 610.0, 604.0, 324.0, 236.0, "plumb_bob", (-0.12, 0.05, 0.001, -0.001, 0.0),
                      projection=(600.0, 0, 320.0, 0, 0, 598.0, 240.0, 0, 0, 0, 1.0, 0))
    path = save_camera_info(tmp_path / "cam_high.yaml", intr, "cam_high", comment="rms 0.2 px")
    data = yaml.safe_load(path.read_text())
    assert data["camera_matrix"] == {"rows": 3, "cols": 3, "data": [610.0, 0.0, 324.0, 0.0, 604.0, 236.0, 0, 0, 1]}
    assert data["distortion_model"] == "plumb_bob" and data["projection_matrix"]["cols"] == 4
    assert load_camera_info(path, expect_size=(640, 480)) == intr
    with pytest.raises(Exception, match="calibrated at 640x480 but the camera is configured for 1280x720"):
        load_camera_info(path, expect_size=(1280, 720))
    data["distortion_coefficients"]["data"] = [0.1]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(Exception, match="distortion_coefficients.data: plumb_bob needs 5 numbers"):
        load_camera_info(path)
