from glob import glob

from setuptools import setup

package_name = "sf_bringup"

setup(
    name=package_name,
    version="0.1.0",
    packages=[],
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
        (f"share/{package_name}/launch", glob("launch/*.py")),
        # foxglove_layout.json: generated from sf_policy/topics.py (sf_policy/data/view.py)
        (f"share/{package_name}/config", glob("config/*.yaml") + glob("config/*.xml") + glob("config/*.json")),
        (f"share/{package_name}/config/tasks", glob("config/tasks/*.yaml")),
        # written by `sf calibrate intrinsics`; absent until the cameras are calibrated
        (f"share/{package_name}/config/intrinsics", glob("config/intrinsics/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="SF robot stack maintainers",
    maintainer_email="maintainers@example.org",
    description="Launch files and configuration of the Spatial Forcing robot stack",
    license="Apache-2.0",
)
