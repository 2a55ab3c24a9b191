"""Starting ROS 2 graphs: which nodes a bringup runs (``plan``), the environment they run in
(``env``) and a small process runner for machines without ``ros2 launch`` (``launcher``)."""
