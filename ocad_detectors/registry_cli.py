"""``ocad-models``: inspect the model registry and move the production pointer.

Examples::

    ocad-models list
    ocad-models show tcn_udp_echo            # production version
    ocad-models show tcn_udp_echo 1.1.0 --verify
    ocad-models promote tcn_udp_echo 1.1.0 --reason "better MAE on week 12"
    ocad-models rollback tcn_udp_echo --reason "false alarms after promotion"
    ocad-models keygen --out /etc/ocad/signing     # signing.key (private) + signing.pub
    ocad-models --public-key /etc/ocad/signing.pub --require-signed show tcn_ecpri --verify

Exit codes: 0 success, 2 registry error (one ``error: ...`` line on stderr) or bad usage,
1 unexpected internal error (also one line).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ocad_detectors._table import text_table
from ocad_detectors.registry import (
    ENV_VAR,
    RESERVED_METADATA_KEYS,
    SIGNING_KEY_ENV,
    ModelRegistry,
    RegistryError,
    generate_signing_key,
)

__all__ = ["main", "build_parser"]

_EXAMPLES = (__doc__ or "").split("Examples::\n", 1)[-1].split("\nExit codes", 1)[0].strip("\n")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested metric dicts as dotted keys: {"mae": {"p50": 1}} -> [("mae.p50", 1)]."""
    out: list[tuple[str, Any]] = []
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.extend(_flatten(value, name + "."))
        else:
            out.append((name, value))
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _cmd_list(reg: ModelRegistry, args: argparse.Namespace) -> int:
    models = reg.list_models()
    if not models:
        print(f"no models in {reg.root}")
        return 0
    rows: list[list[Any]] = []
    refused = []
    for name in models:
        try:
            versions = reg.list_versions(name)
            production = reg.production_version(name)
        except RegistryError as exc:  # one broken model does not hide the others
            refused.append(str(exc))
            rows.append([name, "REFUSED", None, None, None])
            continue
        latest = versions[-1] if versions else None
        rows.append(
            [
                name,
                production,
                len(versions),
                latest.version if latest else None,
                latest.created_at if latest else None,
            ]
        )
    print(text_table(["MODEL", "PRODUCTION", "VERSIONS", "LATEST", "LATEST CREATED_AT"], rows))
    for msg in refused:
        print(f"error: {msg}", file=sys.stderr)
    return 2 if refused else 0


def _cmd_show(reg: ModelRegistry, args: argparse.Namespace) -> int:
    name: str = args.name
    versions = reg.list_versions(name)
    production = reg.production_version(name)
    if args.version is None and production is None:
        version = versions[-1].version if versions else None
        if version is None:
            raise RegistryError(f"model {name!r} has no versions")
    else:
        version = args.version or production
    assert version is not None
    meta = reg.get_metadata(name, version)
    stage = next((v.status for v in versions if v.version == version), "unlisted")

    header: list[tuple[str, str]] = [
        ("model", name),
        ("version", version),
        ("stage", stage),
        ("created_at", str(meta.get("created_at", "-"))),
        ("path", str(reg.version_dir(name, version))),
    ]
    for key in sorted(meta):
        if key in RESERVED_METADATA_KEYS or key == "validation_metrics":
            continue
        value = meta[key]
        # nested blocks (config, scaler, ...) are summarised by their keys
        shown = f"{{{', '.join(sorted(map(str, value)))}}}" if isinstance(value, Mapping) else _fmt(value)
        header.append((key, shown if len(shown) <= 80 else shown[:77] + "..."))
    if args.verify:
        loaded = reg.load_version(name, version)  # raises ModelIntegrityError on any mismatch
        reg.validate(loaded)  # and what the detectors would refuse
        how = {
            "signed": "manifest signature verified",
            "hashed": "manifest sha256 matches the index",
            "legacy": "legacy version: manifest not covered by a hash",
        }[loaded.trust]
        header.append(("integrity", f"OK (all file sizes and sha256 verified, {how}, model checks passed)"))
    width = max(len(k) for k, _ in header) + 1
    for key, shown in header:
        print(f"{key + ':':<{width}} {shown}")

    files = meta["files"]
    print("\nfiles:")
    print(
        text_table(
            ["NAME", "SIZE", "SHA256"],
            [[f, spec.get("size"), str(spec.get("sha256", ""))[:12]] for f, spec in files.items()],
            indent="  ",
        )
    )
    metrics = meta.get("validation_metrics")
    print("\nvalidation_metrics:")
    if isinstance(metrics, Mapping) and metrics:
        print(text_table(["METRIC", "VALUE"], [[k, _fmt(v)] for k, v in _flatten(metrics)], indent="  "))
    else:
        print("  (none)")

    print("\nversions:")
    print(
        text_table(
            ["", "VERSION", "STAGE", "CREATED_AT"],
            [["*" if v.version == production else "", v.version, v.status, v.created_at]
             for v in versions],
            indent="  ",
        )
    )
    return 0


def _cmd_promote(reg: ModelRegistry, args: argparse.Namespace) -> int:
    before = reg.production_version(args.name)
    info = reg.promote(args.name, args.version, reason=args.reason)
    if before == info.version:
        print(f"{args.name} {info.version} is already production")
    else:
        print(f"{args.name}: production {before or '-'} -> {info.version}")
    return 0


def _cmd_rollback(reg: ModelRegistry, args: argparse.Namespace) -> int:
    before = reg.production_version(args.name)
    info = reg.rollback(args.name, reason=args.reason)
    print(f"{args.name}: rolled back production {before or '-'} -> {info.version}")
    return 0


def _cmd_keygen(reg: ModelRegistry, args: argparse.Namespace) -> int:
    priv, pub = f"{args.out}.key", f"{args.out}.pub"
    try:
        kid = generate_signing_key(priv, pub)
    except FileExistsError:
        raise RegistryError(f"{priv} exists; not overwriting a signing key") from None
    print(f"wrote {priv} (private, mode 0600; set ${SIGNING_KEY_ENV} to it where models are trained)")
    print(f"wrote {pub} (public; detection.trust.public_key of the detectors), key id {kid}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocad-models",
        description="Inspect OCAD's model registry and move the production pointer.\n"
        "Versions are immutable; promote and rollback only change which one is served.",
        epilog="examples:\n" + _EXAMPLES + "\n\nexit codes: 0 ok, 2 registry error or bad usage, 1 internal error",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--root",
        metavar="DIR",
        default=None,
        help=f"registry root directory (default: ${ENV_VAR} or data/models)",
    )
    parser.add_argument(
        "--public-key", metavar="PEM", default=None,
        help="Ed25519 public key: verify manifest signatures (as detection.trust.public_key)",
    )
    parser.add_argument(
        "--require-signed", action="store_true",
        help="refuse versions without a valid signature (needs --public-key)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "list",
        help="one line per model: production, #versions, latest",
        description="One line per model: production version, number of versions, latest version.",
    )
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser(
        "show",
        help="metadata, files, validation metrics and versions of a model",
        description="Metadata summary, files (size, sha256 prefix), validation metrics and the "
        "model's versions with their stage ('*' marks production).",
    )
    p.add_argument("name", help="model name, e.g. tcn_udp_echo")
    p.add_argument("version", nargs="?", help="version to show (default: production)")
    p.add_argument("--verify", action="store_true", help="also re-hash every file of the version")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser(
        "promote",
        help="make VERSION the production version (verified first)",
        description="Serve VERSION from now on. Its files are re-hashed first; the previous "
        "production version becomes 'archived' and the event is added to the history.",
    )
    p.add_argument("name", help="model name")
    p.add_argument("version", help="version to serve, e.g. 1.1.0")
    p.add_argument("--reason", default="", help="why; recorded in the model's history")
    p.set_defaults(func=_cmd_promote)

    p = sub.add_parser(
        "rollback",
        help="serve the previous production version again",
        description="Serve the version that was production before the current one. Repeated "
        "rollbacks walk further back through the promotion history.",
    )
    p.add_argument("name", help="model name")
    p.add_argument("--reason", default="", help="why; recorded in the model's history")
    p.set_defaults(func=_cmd_rollback)

    p = sub.add_parser(
        "keygen",
        help="create an Ed25519 key pair for signing model versions",
        description=f"Write OUT.key (private, for ${SIGNING_KEY_ENV} on the training side) and "
        "OUT.pub (public, for detection.trust.public_key).",
    )
    p.add_argument("--out", required=True, metavar="PREFIX", help="path prefix of the two PEM files")
    p.set_defaults(func=_cmd_keygen)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        reg = ModelRegistry(args.root, public_key=args.public_key, require_signed=args.require_signed)
        return int(args.func(reg, args))
    except (RegistryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # root is a file, disk full, permissions, ...
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except Exception as exc:  # never a traceback: one line naming the problem
        print(f"error: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
