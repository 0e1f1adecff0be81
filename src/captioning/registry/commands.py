"""``captioning registry compare | promote | rollback``: the reviewer's side of the registry.

The gate's knobs (confidence, resamples, seed, min gain), the model name and the score come from
the ``register`` section of params.yaml, so the command gives the numbers the stage gave.
Exit codes: 0 done, 1 promotion refused by the gate, 2 a request that cannot be carried out
(a CaptioningError: one line from the ``captioning`` command's handler, ``runtime.exit_status``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from captioning.config import RegisterConfig

EXIT_REFUSED = 1


def add_registry_commands(commands: argparse._SubParsersAction) -> None:
    registry = commands.add_parser("registry", help="compare, promote and roll back versions")
    actions = registry.add_subparsers(dest="registry_command", required=True)

    compare = actions.add_parser("compare", help="paired bootstrap of two versions")
    compare.add_argument("challenger", nargs="?", default="challenger", help="version or alias")
    compare.add_argument("champion", nargs="?", default="champion", help="version or alias")
    compare.add_argument("--json", action="store_true", help="print the numbers as JSON")
    compare.set_defaults(func=cmd_compare)

    promote = actions.add_parser("promote", help="move champion to a version that passes the gate")
    promote.add_argument("version", nargs="?", default="challenger", help="version or alias")
    promote.add_argument("--force", action="store_true", help="promote even if the gate refuses")
    promote.add_argument("--reason", default="", help="why (required with --force; recorded)")
    promote.add_argument("--by", help="who decides (default: $USER)")
    promote.set_defaults(func=cmd_promote)

    rollback = actions.add_parser("rollback", help="move champion back to an earlier champion")
    rollback.add_argument("version", help="the version number to bring back")
    rollback.add_argument("--reason", required=True, help="why (recorded on both versions)")
    rollback.add_argument("--by", help="who decides (default: $USER)")
    rollback.set_defaults(func=cmd_rollback)

    for action in (compare, promote, rollback):
        action.add_argument(
            "--params", type=Path, help="params.yaml (default: that of the nearest dvc.yaml)"
        )
        action.add_argument(
            "--name",
            help="registered model name (default: register.model_name, or if that is empty "
            "captioner for shapes, captioner-<fetch.source> for other data)",
        )


def cmd_compare(args: argparse.Namespace) -> int:
    from captioning.registry import review

    def run(client, cfg, name):
        comparison = review.compare(
            client, name, args.challenger, args.champion, cfg.gate, _score(cfg)
        )
        if args.json:
            payload = {
                "name": name,
                "challenger": comparison.challenger,
                "champion": comparison.champion,
                "score": comparison.score,
                **comparison.result.to_dict(),
            }
            print(json.dumps(payload, indent=2))
        else:
            print(comparison.report())
        return 0

    return _with_registry(args, run)


def cmd_promote(args: argparse.Namespace) -> int:
    from captioning.registry import review

    if args.force and not args.reason.strip():
        raise review.RegistryError("--force needs --reason (it is recorded on the version)")

    def run(client, cfg, name):
        decision = review.promote(
            client,
            name,
            args.version,
            cfg.gate,
            _score(cfg),
            force=args.force,
            reason=args.reason,
            by=args.by,
        )
        if decision.comparison is not None:
            print(decision.comparison.report())
        print(f"{name} version {decision.version}: {decision.decision} ({decision.reason})")
        if decision.champion_moved:
            print(f"champion: {decision.champion_before or 'none'} -> {decision.version}")
        return EXIT_REFUSED if decision.decision == "refused" else 0

    return _with_registry(args, run)


def cmd_rollback(args: argparse.Namespace) -> int:
    from captioning.registry import review

    def run(client, cfg, name):
        decision = review.rollback(client, name, args.version, reason=args.reason, by=args.by)
        print(f"{name}: champion {decision.champion_before or 'none'} -> {decision.version}")
        return 0

    return _with_registry(args, run)


def _with_registry(args: argparse.Namespace, run) -> int:
    """Load the register params, point MLflow at the project's store and run.

    What cannot be done as asked raises a CaptioningError (a bad params file, no store, an
    unknown version, scores that cannot be compared); anything else is a bug with a traceback.
    """
    import mlflow

    from captioning.registry.tracking import configure_mlflow

    cfg, name = registered_model(args.params)
    _require_store(configure_mlflow())
    return run(mlflow.MlflowClient(), cfg, args.name or name)


def registered_model(params_path: Path | None = None) -> tuple[RegisterConfig, str]:
    """The register section of ``params_path`` and the name it registers models under.

    By default the params.yaml beside the nearest dvc.yaml at or above the cwd (so from
    pipelines/captcha, the reader's), and the defaults where there is none.
    """
    from captioning.config import Params, load_params
    from captioning.registry.tracking import pipeline_dir

    path = params_path or pipeline_dir() / "params.yaml"
    params = load_params(path) if params_path is not None or path.is_file() else Params()
    return params.register, params.register.registered_name(params.fetch.source)


def _require_store(tracking_uri: str) -> None:
    """Refuse a local SQLite store that does not exist (MLflow would create an empty one)."""
    from captioning.registry.review import RegistryError

    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix) or ":memory:" in tracking_uri:
        return
    db = Path(tracking_uri[len(prefix) :])
    if not db.is_file():
        raise RegistryError(
            f"no MLflow store at {db}: nothing is registered there yet (the register stage "
            "creates it); run inside the project or set MLFLOW_TRACKING_URI"
        )


def _score(cfg) -> str:
    return f"{cfg.decoding}.{cfg.promote_metric}"
