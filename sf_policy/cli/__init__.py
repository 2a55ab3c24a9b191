"""``sf``: the command line outside ``ros2 launch``, one module per command group.

``main`` assembles the groups (``sf dataset``, ``sf train``, ``sf eval``, ``sf serve``,
``sf calibrate``) with the launch, config and demo commands. No ROS import happens here:
ROS graphs run as node processes (``sf_policy.bringup.launcher``). Nothing is imported
here, so ``python -m sf_policy.cli.train`` (torchrun, accelerate) runs that module alone.
"""
