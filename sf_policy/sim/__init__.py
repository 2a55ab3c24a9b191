"""Simulated hardware: a Piper arm on a CAN bus speaking the real frames (the MuJoCo twin comes later)."""
