"""The Docker images, the compose file and the real-robot guide, checked without Docker.

No image can be built here (no daemon), so these tests check what a build and a run would
depend on: every file the Dockerfiles copy exists and is not excluded by .dockerignore; the
robot image installs as the README's "On a robot PC" section says; each compose service's
command names a launch file with arguments it declares, or an `sf` command with options it
accepts; and every `sf ...`, `ros2 launch sf_bringup ...`, `ros2 run sf_nodes ...`,
`scripts/...` and `docker compose ...` line in the fenced code blocks of docs/robot_guide.md
and docs/docker.md resolves the same way. That is how "each command in the guide is one the
code has" is kept true.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

import test_launch_files as launch_files
from conftest import BRINGUP, REPO
from test_launch_files import launch_standins  # noqa: F401  (used through usefixtures)

DOCKER = REPO / "docker"
DOCKERFILES = ("Dockerfile.robot", "Dockerfile.train")
GUIDES = (REPO / "docs" / "robot_guide.md", REPO / "docs" / "docker.md")
LAUNCH_DIR = BRINGUP / "launch"
TASKS = {p.stem for p in (BRINGUP / "config" / "tasks").glob("*.yaml")}


# --- parsing helpers ---------------------------------------------------------------------------

def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def copy_sources(args: str) -> list[str]:
    parts = [p for p in shlex.split(args) if not p.startswith("--")]
    return parts[:-1]


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: a path is excluded when it or one of its parents matches."""
    parts = Path(path).parts
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        for pattern in patterns:
            if fnmatch.fnmatch(prefix, pattern) or (pattern.startswith("**/")
                                                      and fnmatch.fnmatch(parts[i - 1], pattern[3:])):
                return True
    return False


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def substitute(text: str) -> str:
    """Compose interpolation with the defaults: ${VAR:-default} -> default, ${VAR} -> ''."""
    text = re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", text)
    return re.sub(r"\$\{\w+\}", "", text)


def code_commands(markdown: Path) -> list[tuple[int, str]]:
    """(line number, command) for each command in the fenced code blocks, continuations joined."""
    commands, in_block, pending, start = [], False, "", 0
    for number, line in enumerate(markdown.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_block = not in_block
            pending = ""
            continue
        if not in_block:
            continue
        if not pending:
            start = number
        text = line.rstrip()
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        commands.append((start, pending + text))
        pending = ""
    return commands


# --- resolving one command line -----------------------------------------------------------------

def sf_command(argv: list[str]):
    """Resolve `sf ARGV` through typer/click: the subcommand must exist and accept the options
    and arguments (parsed for real, without running the command)."""
    import typer

    from sf_policy.cli.main import app

    command, path, args = typer.main.get_command(app), ["sf"], list(argv)
    while hasattr(command, "commands"):  # a group (typer carries its own click: no isinstance)
        assert args and args[0] in command.commands, \
            f"`{' '.join(path)}` has no command {args[:1]}; it has {sorted(command.commands)}"
        name = args.pop(0)
        command, path = command.commands[name], path + [name]
    ctx = command.make_context(" ".join(path), args)  # raises on an unknown option or a missing argument
    if path[:2] == ["sf", "train"] and path[2] in ("run", "cache-teacher", "config"):
        from sf_policy.train.config import load_config

        load_config(ctx.params["config"], ctx.params["overrides"] or [])  # presets and override keys exist
    return path


def launch_arguments(name: str) -> set[str]:
    """The arguments a launch file declares (evaluated with test_launch_files' stand-ins)."""
    import importlib.util

    assert (LAUNCH_DIR / name).is_file(), f"no launch file {name} in {LAUNCH_DIR}"
    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), LAUNCH_DIR / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    actions = module.generate_launch_description().args[0]
    return {a.args[0] for a in actions if type(a).__name__ == "DeclareLaunchArgument"}


def node_executables() -> set[str]:
    setup = (REPO / "ros2_ws" / "src" / "sf_nodes" / "setup.py").read_text()
    return set(re.findall(r"[\"'](\w+)\s*=\s*sf_nodes\.", setup))


def check_command(tokens: list[str], where: str, services: dict | None = None) -> str | None:
    """Check one command line; returns what kind it was (None: not one of ours)."""
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", tokens[0]):
        tokens = tokens[1:]  # VAR=value prefixes
    if tokens[:1] in (["sudo"], ["/opt/sf/docker/entrypoint.sh"]):
        tokens = tokens[1:]
    if not tokens:
        return None
    head = tokens[0]
    if head == "sf":
        sf_command(tokens[1:])
        return "sf"
    if head == "accelerate" and "-m" in tokens:
        i = tokens.index("-m")
        assert tokens[i + 1] == "sf_policy.cli.train", f"{where}: accelerate runs {tokens[i + 1]}"
        sf_command(["train", *tokens[i + 2:]])
        return "sf"
    if tokens[:3] == ["ros2", "launch", "sf_bringup"]:
        name, args = tokens[3], tokens[4:]
        declared = launch_arguments(name)
        for arg in args:
            key, sep, value = arg.partition(":=")
            assert sep, f"{where}: launch argument {arg!r} is not name:=value"
            assert key in declared, f"{where}: {name} declares no {key!r} (it has {sorted(declared)})"
            if key == "task":
                assert value in TASKS, f"{where}: unknown task {value!r}; tasks: {sorted(TASKS)}"
        return "launch"
    if tokens[:3] == ["ros2", "run", "sf_nodes"]:
        assert tokens[3] in node_executables(), f"{where}: sf_nodes has no executable {tokens[3]!r}"
        return "run"
    if head.startswith("scripts/"):
        assert (REPO / head).is_file(), f"{where}: {head} does not exist"
        if head == "scripts/can_setup.sh" and len(tokens) > 1:
            assert tokens[1] in ("list", "up", "check", "--help"), f"{where}: can_setup.sh has no {tokens[1]!r}"
        return "script"
    if tokens[:2] == ["docker", "compose"]:
        return check_compose_cli(tokens[2:], where, services if services is not None else compose()["services"])
    if tokens[:2] == ["docker", "build"]:
        i = tokens.index("-f")
        assert (REPO / tokens[i + 1]).is_file(), f"{where}: no {tokens[i + 1]}"
        return "docker"
    return None


COMPOSE_VERBS_WITH_COMMAND = {"run", "exec"}
COMPOSE_FLAGS_WITH_VALUE = {"-e", "--env", "-f", "--file", "-p", "--project-name", "--profile", "-w", "--workdir",
                            "-u", "--user", "--entrypoint", "--name"}


def check_compose_cli(argv: list[str], where: str, services: dict) -> str:
    args = list(argv)
    while args and args[0].startswith("-"):  # global options: -f docker/compose.yaml, --profile ...
        flag = args.pop(0)
        if flag in ("-f", "--file"):
            assert args.pop(0) == "docker/compose.yaml", f"{where}: use -f docker/compose.yaml"
        elif flag in COMPOSE_FLAGS_WITH_VALUE:
            args.pop(0)
    verb = args.pop(0)
    rest = []
    while args:
        token = args.pop(0)
        if token.startswith("-"):
            if token in COMPOSE_FLAGS_WITH_VALUE:
                args.pop(0)
            continue
        rest.append(token)
        if verb in COMPOSE_VERBS_WITH_COMMAND:
            rest += args
            break
    if verb in COMPOSE_VERBS_WITH_COMMAND:
        service, command = rest[0], rest[1:]
        assert service in services, f"{where}: no compose service {service!r}"
        if command:
            check_command(command, where, services)
    else:
        for service in rest:
            assert service in services, f"{where}: no compose service {service!r} (has {sorted(services)})"
    return "compose"


# --- Dockerfiles -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_copied_file_exists_and_reaches_the_build_context(name):
    patterns = dockerignore_patterns()
    copies = [args for word, args in instructions(DOCKER / name) if word in ("COPY", "ADD")]
    assert copies, f"{name} copies nothing"
    for args in copies:
        assert "--from" not in args, "single-stage images: nothing is copied from another stage"
        for source in copy_sources(args):
            if source == ".":
                continue
            assert (REPO / source).exists(), f"{name}: COPY {source}: no such file in the repository"
            assert not ignored(source.rstrip("/"), patterns), f"{name}: COPY {source} is excluded by .dockerignore"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_files_named_in_run_steps_exist(name):
    text = "\n".join(args for word, args in instructions(DOCKER / name) if word in ("RUN", "ENTRYPOINT", "CMD"))
    named = set(re.findall(r"\b((?:requirements|scripts|docker)/[\w.-]+\.(?:txt|sh))\b", text))
    assert named, name
    for path in named:
        assert (REPO / path).is_file(), f"{name} uses {path}, which does not exist"
    entry = next(args for word, args in instructions(DOCKER / name) if word == "ENTRYPOINT")
    assert entry == '["/opt/sf/docker/entrypoint.sh"]' and (DOCKER / "entrypoint.sh").is_file()


def test_the_build_context_keeps_local_environments_out():
    patterns = dockerignore_patterns()
    for path in (".venv", "outputs", "ros2_ws/build", "ros2_ws/install", "ros2_ws/log",
                 "sf_policy/__pycache__", ".git"):
        assert ignored(path, patterns), f".dockerignore should exclude {path}"
    for path in ("sf_policy/cli/main.py", "requirements/base.txt", "scripts/setup.sh", "ros2_ws/src/sf_bringup/setup.py",
                 "docker/entrypoint.sh", "pyproject.toml", "README.md", "teleop/pedal.yaml"):
        assert not ignored(path, patterns), f".dockerignore must not exclude {path}"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_cuda_torch_at_the_repository_pin(name):
    """Both images take torch from PyTorch's CUDA index at the version the CPU pin file names,
    reading it from that file, so the two can never disagree."""
    text = (DOCKER / name).read_text()
    pin = re.search(r"^torch==([0-9][0-9.]*)", (REPO / "requirements" / "torch-cpu.txt").read_text(), re.M)
    assert pin, "requirements/torch-cpu.txt pins torch==X"
    assert r"sed -n 's/^torch==\([0-9][0-9.]*\).*/\1/p' requirements/torch-cpu.txt" in text
    assert re.search(r'install "torch==\$\{TORCH_VERSION\}" --index-url "\$TORCH_INDEX"', text)
    index = re.search(r"^ARG TORCH_INDEX=(\S+)", text, re.M).group(1)
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", index), index
    # torch is installed before the requirements that depend on it, so pip never picks a CPU build
    assert text.index("--index-url") < text.index("-r requirements/base.txt")


def test_robot_image_installs_as_the_readme_says():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## On a robot PC", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    steps = [line.split("#")[0].strip() for line in block.splitlines()]
    assert "source /opt/ros/$ROS_DISTRO/setup.bash" in steps
    assert "scripts/setup.sh" in steps
    assert "cd ros2_ws && colcon build --symlink-install && source install/setup.bash" in steps
    runs = [args for word, args in instructions(DOCKER / "Dockerfile.robot") if word == "RUN"]
    setup_run = next(r for r in runs if "scripts/setup.sh" in r)
    colcon_run = next(r for r in runs if "colcon build" in r)
    # same order and the same commands: ROS sourced before setup.sh (so it uses the system rclpy)
    assert setup_run.index('source "/opt/ros/$ROS_DISTRO/setup.bash"') < setup_run.index("scripts/setup.sh")
    assert "cd ros2_ws && colcon build --symlink-install" in colcon_run and "/opt/ros/$ROS_DISTRO/setup.bash" in colcon_run
    assert runs.index(setup_run) < runs.index(colcon_run)
    # the venv is the one setup.sh would make with ROS sourced: --system-site-packages, at $SF_VENV
    setup_sh = (REPO / "scripts" / "setup.sh").read_text()
    assert '-m venv --system-site-packages "$VENV"' in setup_sh and "VENV=${SF_VENV:-" in setup_sh
    assert any('python3 -m venv --system-site-packages "$SF_VENV"' in r for r in runs)
    text = (DOCKER / "Dockerfile.robot").read_text()
    assert re.search(r"^FROM ros:\$\{ROS_DISTRO\}-ros-base$", text, re.M) and "ARG ROS_DISTRO=jazzy" in text
    # the workspace the entrypoint sources is the one colcon built
    env = (DOCKER / "env.sh").read_text()
    assert 'source "/opt/ros/$ROS_DISTRO/setup.bash"' in env and 'source "$SF_ROOT/ros2_ws/install/setup.bash"' in env


@pytest.mark.parametrize("name", DOCKERFILES)
def test_images_have_the_debian_packages_setup_sh_installs(name):
    wanted = re.search(r"DEB_PKGS=\(([^)]*)\)", (REPO / "scripts" / "setup.sh").read_text()).group(1).split()
    apt = " ".join(args for word, args in instructions(DOCKER / name) if word == "RUN" and "apt-get install" in args)
    for package in wanted:
        assert re.search(rf"(?<![\w-]){re.escape(package)}(?![\w-])", apt), f"{name} lacks {package}"


def test_training_image_installs_the_training_requirements_without_ros():
    runs = " ".join(args for word, args in instructions(DOCKER / "Dockerfile.train") if word == "RUN")
    assert "-r requirements/base.txt" in runs and "-r requirements/torch-cpu.txt" in runs
    assert "--no-deps -e ." in runs  # as setup.sh installs the repository
    assert "ros-wheels" not in runs and "/opt/ros" not in runs
    base = (REPO / "requirements" / "base.txt").read_text()
    for package in ("accelerate", "transformers", "safetensors", "tensorboard", "fastapi", "uvicorn"):
        assert re.search(rf"^{package}\b", base, re.M), package


def test_shell_scripts_parse():
    scripts = [*DOCKER.glob("*.sh"), REPO / "scripts" / "can_setup.sh"]
    for script in scripts:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script}: {result.stderr}"
        assert os.access(script, os.X_OK), f"{script} is not executable"


# --- compose ---------------------------------------------------------------------------------------

def test_compose_file_builds_both_images_from_files_that_exist():
    services = compose()["services"]
    builds = {name: s["build"] for name, s in services.items() if "build" in s}
    assert set(builds) == {"robot", "train"}
    for name, build in builds.items():
        assert (DOCKER / build["context"]).resolve() == REPO
        assert (REPO / build["dockerfile"]).is_file()
    images = {s["image"] for s in services.values()}
    assert images == {"sf-robot:latest", "sf-train:latest"}
    for name, service in services.items():
        assert service.get("profiles"), f"{name}: every service has a profile (a bare `up` starts nothing)"
        for volume in service.get("volumes", []):
            source = substitute(volume).split(":")[0]
            # outputs/ is made by the runs themselves (gitignored; docker creates a missing bind source)
            if source.startswith(".") and (DOCKER / source).resolve() != REPO / "outputs":
                assert (DOCKER / source).resolve().exists(), f"{name}: mounts {source}, which does not exist"


def test_robot_services_reach_can_cameras_and_shared_memory_dds():
    services = compose()["services"]
    robot = [n for n, s in services.items() if s["image"] == "sf-robot:latest"]
    assert {"robot", "can", "drivers", "record", "keys", "deploy", "deploy-remote"} <= set(robot)
    for name in robot:
        s = services[name]
        assert s["network_mode"] == "host", f"{name}: CAN interfaces are in the host's network namespace"
        assert s["ipc"] == "host" and s["pid"] == "host", f"{name}: Fast DDS shared memory across containers"
        assert s["privileged"] is True and "/dev:/dev" in s["volumes"], f"{name}: USB cameras, hot-plugged"
        env = s["environment"]
        assert {"ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_DEFAULT_PROFILES_FILE"} <= set(env)
        profile = env["FASTDDS_DEFAULT_PROFILES_FILE"]
        config_mount = next(v for v in s["volumes"] if v.startswith("../ros2_ws/src/sf_bringup/config:"))
        target = config_mount.split(":")[1]
        assert target == "/opt/sf/ros2_ws/install/sf_bringup/share/sf_bringup/config"  # where colcon installs it
        assert profile == f"{target}/fastdds_large_data.xml" and (BRINGUP / "config" / "fastdds_large_data.xml").is_file()
        assert any(v.endswith(":/root/sf_data") for v in s["volumes"]), "recordings land on the host"
    for name in ("deploy", "train", "serve"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert "deploy" not in services["deploy-remote"], "the remote variant runs on a robot PC without a GPU"


@pytest.mark.usefixtures("launch_standins")
def test_compose_commands_resolve_to_real_commands():
    services = compose()["services"]
    kinds = {}
    for name, service in services.items():
        tokens = shlex.split(substitute(service["command"]))
        kinds[name] = check_command(tokens, f"compose service {name}", services)
        if tokens[:2] == ["ros2", "launch"]:  # and the plan it starts can be built from the shipped config
            overrides = dict(a.split(":=", 1) for a in tokens[4:])
            _, nodes = launch_files.evaluate(tokens[3], **overrides)
            assert nodes, name
    assert kinds == {"robot": None, "can": "script", "drivers": "launch", "record": "launch", "keys": "run",
                     "deploy": "launch", "deploy-remote": "launch", "train": "sf", "serve": "sf"}
    assert "dry_run:=true" in substitute(services["deploy"]["command"]), "deployment defaults to a dry run"
    assert "keys:=none" in services["record"]["command"], "no desktop terminal in a container: the keys service"


@pytest.mark.usefixtures("launch_standins")
def test_the_checker_rejects_what_does_not_exist():
    services = compose()["services"]
    for bad in ("sf dataset inspect x", "sf train run pi0_sf --epochs 3", "sf train run nosuch data.root=x",
                "sf train run pi0_sf data.nosuch=1", "sf serve", "ros2 launch sf_bringup record.launch.py fps:=30",
                "ros2 launch sf_bringup nosuch.launch.py", "ros2 launch sf_bringup policy.launch.py task:=juggle",
                "ros2 run sf_nodes nosuch", "scripts/nosuch.sh", "docker compose -f docker/compose.yaml up nosuch",
                "docker compose -f docker/compose.yaml run --rm train sf train nosuch"):
        with pytest.raises(Exception):
            check_command(shlex.split(bad), "self-test", services)
    assert check_command(["echo", "hi"], "self-test", services) is None


# --- the guides ------------------------------------------------------------------------------------

@pytest.mark.usefixtures("launch_standins")
@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_every_command_in_the_guide_is_real(guide):
    services = compose()["services"]
    checked = []
    for number, line in code_commands(guide):
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as exc:
            pytest.fail(f"{guide.name}:{number}: cannot parse {line!r}: {exc}")
        for part in split_chain(tokens):
            kind = check_command(part, f"{guide.name}:{number}", services)
            if kind:
                checked.append(kind)
    assert len(checked) >= 20 and "compose" in checked, checked  # the checker did see the guide's commands


def split_chain(tokens: list[str]) -> list[list[str]]:
    """`a && b; c | d` -> [a, b, c, d]."""
    parts, current = [], []
    for token in tokens:
        if token in ("&&", "||", ";", "|"):
            parts.append(current)
            current = []
        else:
            current.append(token)
    return [p for p in parts + [current] if p]


def test_readme_points_to_the_guides():
    readme = (REPO / "README.md").read_text()
    assert "docs/robot_guide.md" in readme.split("## On a robot PC", 1)[1].split("\n## ", 1)[0]
    docker_section = readme.split("\n## Docker", 1)[1]
    assert "docs/docker.md" in docker_section
    for guide in GUIDES:
        assert guide.is_file()


# --- scripts/can_setup.sh ---------------------------------------------------------------------------

def fake_sysfs(root: Path, adapters: dict[str, str]) -> Path:
    """/sys/class/net with a CAN interface per USB port, plus an Ethernet one to ignore."""
    for name, port in {**adapters, "eth0": ""}.items():
        dev = root / "class" / "net" / name
        dev.mkdir(parents=True)
        (dev / "type").write_text("280\n" if port else "1\n")
        (dev / "operstate").write_text("down\n")
        if port:
            usb = root / "devices" / "usb1" / port.split(":")[0] / port
            usb.mkdir(parents=True)
            (dev / "device").symlink_to(usb)
    return root


def can_setup(sysfs: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / "can_setup.sh"), *args], capture_output=True, text=True,
                          env={**os.environ, "SF_SYSFS": str(sysfs), **(env or {})}, timeout=20)


def test_can_setup_names_adapters_by_usb_port(tmp_path):
    sysfs = fake_sysfs(tmp_path, {"can0": "1-2:1.0", "can1": "1-4:1.0"})
    listing = can_setup(sysfs, "list")
    assert listing.returncode == 0 and "can0" in listing.stdout and "1-4:1.0" in listing.stdout
    assert "eth0" not in listing.stdout
    up = can_setup(sysfs, "up", "can_left=1-4:1.0", "can_right=1-2:1.0", "--dry-run")
    assert up.returncode == 0, up.stderr
    assert up.stdout.splitlines() == [
        "ip link set can0 down", "ip link set can0 type can bitrate 1000000", "ip link set can0 name can_right",
        "ip link set can_right up",
        "ip link set can1 down", "ip link set can1 type can bitrate 1000000", "ip link set can1 name can_left",
        "ip link set can_left up"]
    from_env = can_setup(sysfs, "up", "--dry-run", env={"SF_CAN_PORTS": "can_left=1-4:1.0"})
    assert "ip link set can1 name can_left" in from_env.stdout
    wrong = can_setup(sysfs, "up", "can_left=3-1:1.0", "--dry-run")
    assert wrong.returncode != 0 and "no CAN interface on USB port 3-1:1.0" in wrong.stderr
    assert "can0@1-2:1.0" in wrong.stderr  # says what it found
    assert can_setup(sysfs, "up", "can_left", "--dry-run").returncode != 0  # ambiguous with two adapters
    # the robot config names the buses this script creates
    robot = yaml.safe_load((BRINGUP / "config" / "robot.yaml").read_text())
    assert {a["can_port"] for a in robot["arms"].values()} == {"can_left", "can_right"}


def test_can_setup_swaps_names_through_a_temporary_one(tmp_path):
    sysfs = fake_sysfs(tmp_path, {"can0": "1-2:1.0", "can1": "1-4:1.0"})
    swap = can_setup(sysfs, "up", "can0=1-4:1.0", "can1=1-2:1.0", "--bitrate", "500000", "--dry-run")
    assert swap.returncode == 0, swap.stderr
    lines = swap.stdout.splitlines()
    assert "ip link set can1 type can bitrate 500000" in lines
    renames = [line for line in lines if " name " in line]
    assert renames[0].endswith("name sf_tmp0") and len(renames) == 3
