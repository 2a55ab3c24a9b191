from setuptools import find_packages, setup

package_name = "sf_nodes"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="SF robot stack maintainers",
    maintainer_email="maintainers@example.org",
    description="Thin ROS 2 nodes of the Spatial Forcing stack",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "piper_arm_driver = sf_nodes.arm_driver:main",
            "camera_driver = sf_nodes.camera_driver:main",
            "driver_monitor = sf_nodes.monitor:main",
            "sim_node = sf_nodes.sim_node:main",
            "teleop_link = sf_nodes.teleop_link:main",
            "record_keys = sf_nodes.record_keys:main",
            "policy_node = sf_nodes.policy_node:main",
            "recorder = sf_nodes.recorder:main",
            "bag_player = sf_nodes.bag_player:main",
        ],
    },
)
