"""``sf demo``: the stack end to end on a machine with no robot.

``loop``: the whole loop (record → teacher cache → train → closed-loop eval → replay), what
the README's main command runs. ``ros_graphs``: the ROS 2 graphs it and ``sf demo
record|twin|drivers`` start (the twin, the recorder, the drivers on simulated hardware).
Recording without a ROS graph lives with the twin (``sf_policy.sim.record_without_ros``).
"""
