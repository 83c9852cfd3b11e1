"""``ocad-serve``: the long-running online detection service.

Examples::

    ocad-serve --config config/detection.example.yaml
    ocad-serve --config detection.yaml --listen 0.0.0.0:8080      # needs $OCAD_SERVE_TOKEN
    ocad-serve --config detection.yaml --model-dir /srv/ocad/models --snapshot /var/lib/ocad/state.snap

Signals: SIGTERM / SIGINT drain (every accepted sample is scored, its alerts delivered or
written, the state snapshotted) and exit 0; SIGHUP re-reads the configuration file.
Exit codes: 0 clean shutdown, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]

_EXAMPLES = (__doc__ or "").split("Examples::\n", 1)[-1].split("\nSignals:", 1)[0].strip("\n")
logger = logging.getLogger("ocad_detectors.serve")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ocad-serve",
        description="Serve the OCAD detectors: push samples over HTTP (or pull them from Prometheus), "
        "alerts to Alertmanager / a webhook / JSON lines, metrics for Prometheus.",
        epilog="examples:\n" + _EXAMPLES + "\n\nSettings: the 'serve:' section of the config file (see "
        "ocad_detectors/serve/config.py); 'detection:' is what ocad-detect reads.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="YAML with detection: and serve: sections (default: built-in defaults)")
    p.add_argument("--listen", help="host:port (default serve.listen, 127.0.0.1:8080); non-loopback needs a bearer token")
    p.add_argument("--model-dir", type=Path, help="model registry root (overrides config and $OCAD_MODEL_DIR)")
    p.add_argument("--snapshot", type=Path, help="state file (overrides serve.snapshot_path)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    import dataclasses

    import uvicorn

    from ocad_detectors.config import DetectionConfig
    from ocad_detectors.serve.app import build_app
    from ocad_detectors.serve.config import ServeConfig, is_loopback, load_service_config, parse_listen
    from ocad_detectors.serve.service import DetectorService

    try:
        if args.config is not None:
            det, srv = load_service_config(args.config)
        else:
            det, srv = DetectionConfig(), ServeConfig()
        if args.listen:
            parse_listen(args.listen)
            srv = dataclasses.replace(srv, listen=args.listen)
        if args.snapshot:
            srv = dataclasses.replace(srv, snapshot_path=str(args.snapshot))
        host, port = parse_listen(srv.listen)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    token = os.environ.get(srv.token_env) or None
    if not is_loopback(host) and not token:
        print(f"error: listening on {host} (not loopback) needs a bearer token in ${srv.token_env}", file=sys.stderr)
        return 2
    try:
        svc = DetectorService(det, srv, config_path=args.config, model_dir=args.model_dir)
    except Exception as exc:
        print(f"error: cannot start the detectors: {exc}", file=sys.stderr)
        return 2
    svc.start()
    # our own handlers first: uvicorn captures SIGINT/SIGTERM while serving and re-raises them
    # with the previous handler afterwards; the drain below must run, not the default "die"
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGHUP, lambda *_: svc.request_config_reload())
    config = uvicorn.Config(
        build_app(svc, token), host=host, port=port, log_level="warning", access_log=False,
        lifespan="off", timeout_graceful_shutdown=10, server_header=False,
    )
    server = uvicorn.Server(config)
    logger.info("ocad-serve listening on http://%s:%d (shard %d of %d, models %s)", host, port,
                srv.shard.index, srv.shard.count, svc.pipeline.model_versions)
    try:
        server.run()
    finally:
        svc.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
