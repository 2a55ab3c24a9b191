"""``sf serve``: one checkpoint behind HTTP + websocket (docs/serving.md).

  sf serve outputs/train/pi0_sf                                  # 127.0.0.1:8000, no token needed
  SF_SERVE_TOKEN=... sf serve CKPT --host 0.0.0.0 --port 8000    # other machines: a token is required

The robot side: ``ros2 launch sf_bringup policy.launch.py task:=lift_pot remote:=ws://gpu-box:8000``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape  # messages name fields like [lower, upper]: not markup

from ..runtime.config import RuntimeConfig, SettingError, describe, settings

console = Console(stderr=True)
_SETTINGS = {f.name: f for f in settings()}


def _model_option(name: str, *flags: str):
    """A model setting as an option: its default and help from ``RuntimeConfig`` (declared once)."""
    f = _SETTINGS[name]
    return typer.Option(f.default, *flags, help=describe(f)[0].upper() + describe(f)[1:] + ".")


def serve_cmd(
    checkpoint: Path = typer.Argument(..., help="Checkpoint directory (.../checkpoints/step_N) or run directory "
                                                "(its latest checkpoint)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind. Anything but loopback needs a token."),
    port: int = typer.Option(8000, help="TCP port."),
    token: Optional[str] = typer.Option(None, envvar="SF_SERVE_TOKEN", show_envvar=True,
                                        help="Bearer token every endpoint but /health requires (at least 16 "
                                             "characters off loopback). Prefer the environment variable: a "
                                             "command-line token shows in `ps`."),
    device: str = _model_option("device"),
    dtype: str = _model_option("dtype"),
    num_steps: int = _model_option("num_steps"),
    noise_scale: float = _model_option("noise_scale"),
    rtc_max_guidance: float = _model_option("rtc_max_guidance"),
    fps: float = typer.Option(_SETTINGS["rate"].default, help="Control rate the chunks were trained at (reported "
                                                              "in /metadata)."),
    max_payload_mb: float = typer.Option(16.0, help="Largest request body / websocket frame, MiB (413 above)."),
    max_queue: int = typer.Option(8, help="Requests allowed to wait for the model; more get 503."),
    warmup: bool = typer.Option(True, "--warmup/--no-warmup", help="One inference before accepting requests."),
    sampler: str = _model_option("sampler"),
    compile: bool = _model_option("compile", "--compile/--no-compile"),
    cuda_graph: bool = _model_option("cuda_graph", "--cuda-graph/--no-cuda-graph"),
    ssl_certfile: Optional[Path] = typer.Option(None, help="Serve https/wss with this certificate (PEM)."),
    ssl_keyfile: Optional[Path] = typer.Option(None, help="... and this private key (PEM)."),
    log_level: str = typer.Option("info", help="uvicorn log level: debug, info, warning, error."),
):
    """Serve a trained policy over HTTP and a websocket (msgpack + numpy, openpi-compatible websocket)."""
    from ..model.policy import CheckpointError, check_weights
    from ..serve.auth import BindRefused, check_bind, install_log_redaction
    from ..serve.metadata import checkpoint_info
    from ..serve.running import uvicorn_config
    from ..serve.server import create_app
    from ..train.checkpoint import POLICY_DIR

    token = token or None
    try:
        check_bind(host, token)
    except BindRefused as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2)
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise typer.BadParameter("--ssl-certfile and --ssl-keyfile go together")
    if max_payload_mb <= 0 or max_queue <= 0:
        raise typer.BadParameter("--max-payload-mb and --max-queue must be positive")
    try:
        runtime = RuntimeConfig().with_overrides(device=device, dtype=dtype, num_steps=num_steps, rate=fps,
                                                 noise_scale=noise_scale, rtc_max_guidance=rtc_max_guidance,
                                                 sampler=sampler, compile=compile, cuda_graph=cuda_graph)
    except SettingError as exc:
        option = "--fps" if exc.name == "rate" else f"--{exc.name.replace('_', '-')}"
        raise typer.BadParameter(exc.message, param_hint=option) from None
    try:
        info = checkpoint_info(checkpoint)
        check_weights(Path(info["path"]) / POLICY_DIR)  # a damaged file: one line now, not a traceback at startup
    except (FileNotFoundError, CheckpointError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2)

    def load():
        from ..runtime.inference import load_for_inference

        policy = load_for_inference(checkpoint, **runtime.model_options())
        console.print(f"loaded {info['id']} ({info['fingerprint'][:19]}...) on {policy.device} in "
                      f"{str(policy.dtype).removeprefix('torch.')}, {sampler} sampler")
        return policy

    app = create_app(load, token=token, max_payload_bytes=int(max_payload_mb * 2**20), metadata={"checkpoint": info},
                     num_steps=runtime.num_steps, fps=runtime.rate, max_queue=max_queue, warmup=warmup)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scheme = "https" if ssl_certfile else "http"
    console.print(f"serving {info['path']} on {scheme}://{host}:{port} (websocket /ws, "
                  f"{'token required' if token else 'no token'}); Ctrl-C stops")
    import uvicorn

    config = uvicorn_config(app, host, port, log_level=log_level,
                            ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
                            ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None)
    install_log_redaction()  # after uvicorn configured its loggers: '?token=' never reaches the log
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise typer.Exit(1)


#: ``sf_policy.cli.main`` registers ``serve_cmd`` as ``sf serve``; this app lets it run on its own too.
app = typer.Typer(help="Serve a trained policy.", add_completion=False, pretty_exceptions_enable=False)
app.command("serve")(serve_cmd)


@app.callback()
def _group() -> None:
    """Serve a trained policy."""
