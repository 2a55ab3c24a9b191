"""The simulated robot: the MuJoCo twin of the bimanual Piper (``twin``, ``piper_mjcf``), its
tasks and scripted operators (``tasks``, ``experts``, ``ik``, ``pedal``), a Gymnasium env
(``env``), a Piper arm on a virtual CAN bus speaking the real frames (``piper_can``), and
recording the operators without ROS (``record_without_ros``)."""
