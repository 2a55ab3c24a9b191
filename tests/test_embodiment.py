"""The embodiment contract: joint order, limits, and SI <-> SDK integer round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sf_policy import embodiment as E


def test_joint_order_is_the_contract():
    assert E.JOINT_NAMES == (
        "left_joint1", "left_joint2", "left_joint3", "left_joint4", "left_joint5", "left_joint6", "left_gripper",
        "right_joint1", "right_joint2", "right_joint3", "right_joint4", "right_joint5", "right_joint6",
        "right_gripper")
    assert E.STATE_DIM == 14 and E.GRIPPER_INDICES == (6, 13)


def test_true_pi_not_3_14():
    assert E.rad_to_sdk(math.pi) == 180_000
    assert E.sdk_to_rad(90_000) == pytest.approx(math.pi / 2, abs=1e-15)


def test_limits_are_ordered_and_gripper_in_metres():
    for name, lim in E.PIPER_LIMITS.items():
        assert lim.lower < lim.upper, name
    assert E.PIPER_LIMITS["gripper"].upper == pytest.approx(0.07)
    assert E.gripper_m_to_sdk(0.07) == 70_000  # 0.001 mm


joint_ints = st.integers(min_value=-180_000, max_value=180_000)
radians = st.floats(min_value=-math.pi, max_value=math.pi, allow_nan=False)
openings = st.floats(min_value=0.0, max_value=0.07, allow_nan=False)


@given(joint_ints)
def test_sdk_joint_round_trip_is_exact(value):
    assert E.rad_to_sdk(E.sdk_to_rad(value)) == value


@given(radians)
def test_si_joint_round_trip_within_half_a_unit(rad):
    assert abs(E.sdk_to_rad(E.rad_to_sdk(rad)) - rad) <= 0.5 / E.MILLIDEG_PER_RAD + 1e-15


@given(st.integers(min_value=0, max_value=70_000))
def test_sdk_gripper_round_trip_is_exact(value):
    assert E.gripper_m_to_sdk(E.gripper_sdk_to_m(value)) == value


@given(openings)
def test_si_gripper_round_trip_within_half_a_unit(m):
    assert abs(E.gripper_sdk_to_m(E.gripper_m_to_sdk(m)) - m) <= 0.5e-6 + 1e-15


@given(st.lists(joint_ints, min_size=6, max_size=6), st.integers(min_value=0, max_value=70_000))
def test_arm_round_trip(joints, gripper):
    arm = E.arm_from_sdk(joints, gripper)
    assert arm.shape == (7,)
    assert E.arm_to_sdk(arm) == (joints, gripper)


@given(st.floats(min_value=0, max_value=5, allow_nan=False))
def test_effort_round_trip(nm):
    assert abs(E.effort_sdk_to_nm(E.effort_nm_to_sdk(nm)) - nm) <= 0.5e-3 + 1e-15


def test_split_and_join_arms():
    v = np.arange(14.0)
    left, right = E.split_arms(v)
    assert left.tolist() == list(range(7)) and right.tolist() == list(range(7, 14))
    assert E.join_arms(left, right).tolist() == v.tolist()
    with pytest.raises(ValueError, match="14"):
        E.split_arms(np.zeros(13))


def test_arm_to_sdk_rejects_wrong_length():
    with pytest.raises(ValueError, match="7 entries"):
        E.arm_to_sdk([0.0] * 6)
