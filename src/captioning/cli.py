"""``captioning`` command line.

``captioning predict IMAGE... [--model URI|DIR] [--beam 3] [--attention out.png] [--device D]``
prints one ``file<TAB>caption`` line per image (JPEG or PNG; grayscale, RGBA, CMYK and
EXIF-rotated images are converted as everywhere else in the pipeline).

``captioning params apply RECIPE [--set KEY=VALUE ...] [--params PATH]`` writes a recipe
(recipes/coco2017.yaml) into params.yaml, validated first, and prints each change and the
``dvc exp run -S ...`` that sets the same keys. ``captioning registry ...``: the registry.

``captioning probe-relations MODEL_DIR [--features data/features] [--split test]`` asks a shapes
model, teacher-forced, which relation word comes next in the references that state one
(``evaluation.relation_probe``): does it know where the objects are?
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from captioning import runtime

logger = logging.getLogger(__name__)

EXIT_BAD_INPUT = runtime.EXIT_BAD_INPUT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captioning", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="caption images")
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    predict.add_argument(
        "--model",
        help="a trained model directory or an MLflow models:/ URI (default: the champion of "
        "params.yaml's registered model, models:/captioner@champion for the shapes run)",
    )
    predict.add_argument(
        "--beam",
        type=int,
        default=3,
        help="beam size (1 = greedy; at most the vocabulary size and CAPTIONING_MAX_BEAM)",
    )
    predict.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="maximum caption length (default and bound: the longest the model was trained on)",
    )
    predict.add_argument("--scores", action="store_true", help="also print the log-probability")
    predict.add_argument(
        "--device",
        help="auto, cpu, cuda or cuda:N (default: $CAPTIONING_DEVICE, else auto: CUDA if "
        "available); cuda where there is none is an error",
    )
    predict.add_argument(
        "--attention",
        type=Path,
        metavar="OUT.png",
        help="draw per-word attention heat-maps (several images: OUT-<n>-<image name>.png)",
    )
    predict.add_argument("--batch-size", type=int, default=16, help=argparse.SUPPRESS)
    predict.set_defaults(func=cmd_predict)
    from captioning.registry.commands import add_registry_commands

    add_registry_commands(commands)
    add_params_commands(commands)
    probe = commands.add_parser(
        "probe-relations",
        help="teacher-forced: does a shapes model rank the references' relation words first?",
    )
    probe.add_argument("model", type=Path, metavar="MODEL_DIR", help="a trained model directory")
    probe.add_argument("--features", type=Path, default=Path("data/features"))
    probe.add_argument("--split", default="test")
    probe.set_defaults(func=cmd_probe_relations)
    return parser


def add_params_commands(commands: argparse._SubParsersAction) -> None:
    params = commands.add_parser("params", help="write a recipe of params into params.yaml")
    actions = params.add_subparsers(dest="params_command", required=True)
    apply = actions.add_parser(
        "apply",
        help="validate a recipe (dotted params.yaml keys, e.g. recipes/coco2017.yaml) and write "
        "it into params.yaml, comments kept",
    )
    apply.add_argument("recipe", type=Path, metavar="RECIPE")
    apply.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a key on top of the recipe, its value read as YAML as `dvc exp run -S` reads it "
        "(repeatable)",
    )
    apply.add_argument(
        "--params",
        type=Path,
        help="params.yaml to write (default: the one beside the nearest dvc.yaml, else the "
        "working directory's)",
    )
    apply.set_defaults(func=cmd_params_apply)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse errors and --help; keep main() returning an int
        return int(exc.code or 0)
    runtime.setup(logging.INFO if args.verbose else logging.WARNING)
    return runtime.exit_status(lambda: args.func(args))


def cmd_params_apply(args: argparse.Namespace) -> int:
    """One line per changed key, then the `dvc exp run` that sets the same keys."""
    import shlex

    from captioning import orchestration
    from captioning.registry.tracking import pipeline_dir

    params_path = args.params or pipeline_dir() / "params.yaml"
    overrides = orchestration.parse_set(args.sets)
    keys, changes = orchestration.apply_recipe(params_path, args.recipe, overrides)
    for change in changes:
        print(f"{params_path}: {change.key}: {change.old!r} -> {change.new!r}")
    if not changes:
        print(f"{params_path}: unchanged (already as {args.recipe} sets it)")
    command = shlex.join(["dvc", "exp", "run", *orchestration.dvc_set_args(keys)])
    print(f"same as: {command}")
    return 0


def cmd_probe_relations(args: argparse.Namespace) -> int:
    """One line: relation words probed, the shares with the word and the axis right, per word."""
    from captioning.evaluation.relation_probe import probe_model

    result = probe_model(args.model, args.features, args.split)
    words = ", ".join(f"{w} {r}/{n}" for w, (r, n) in result.by_word.items())
    print(
        f"{args.model} {args.split}: {result.probed} relation words; word right "
        f"{result.word_right:.3f} (a guess of direction: 0.5), axis right "
        f"{result.axis_right:.3f}; {words}"
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from captioning.data.images import ImageDecodeError
    from captioning.decoding.limits import RequestError, RequestLimits
    from captioning.inference import decoding_device, load_image

    device = decoding_device(args.device, source="--device")  # a bad one fails before any work
    try:
        limits = RequestLimits.from_env()
    except RequestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    status = 0
    decoded = []
    for path in args.images:
        try:
            decoded.append((path, load_image(path, str(path), limits)))
        except ImageDecodeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = EXIT_BAD_INPUT
    if not decoded:
        return status
    model = args.model or champion_uri()
    try:
        captioner = load_captioner(model, device)
    except Exception as exc:  # any load failure is reported, not a traceback
        logger.debug("model load failed", exc_info=True)
        print(f"error: cannot load model {model}: {exc}", file=sys.stderr)
        return 1
    try:
        beam_size, max_length = captioner.check_request(
            args.beam, captioner.max_length if args.max_length is None else args.max_length
        )
    except RequestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for start in range(0, len(decoded), args.batch_size):
        batch = decoded[start : start + args.batch_size]
        results = captioner.caption(
            [image for _, image in batch], beam_size=beam_size, max_length=max_length
        )
        for n, ((path, image), result) in enumerate(zip(batch, results, strict=True), start):
            line = f"{path}\t{result.caption}"
            if args.scores:
                line += f"\t{result.score:.4f}"
            print(line, flush=True)
            if args.attention is not None:
                target = attention_path(args.attention, path, n + 1, len(decoded))
                write_attention(image, result, target, captioner.config["decoder"])
    return status


def attention_path(out: Path, image: Path, number: int, count: int) -> Path:
    """``out`` itself for one image; ``out-<number>-<image stem><suffix>`` for several."""
    if count == 1:
        return out
    return out.with_name(f"{out.stem}-{number}-{image.stem}{out.suffix or '.png'}")


def write_attention(image, result, target: Path, decoder_name: str) -> None:
    if result.attention is None:
        print(
            f"note: decoder {decoder_name} does not attend: no heat-map written to {target}",
            file=sys.stderr,
        )
        return
    from captioning.viz.attention import plot_attention

    plot_attention(image, result.words, result.attention, target, title=result.caption)


def champion_uri() -> str:
    """``models:/<name>@champion`` for the registered model of the params.yaml around the cwd."""
    from captioning.registry.commands import registered_model

    _, name = registered_model()
    return f"models:/{name}@champion"


def load_captioner(model: str, device=None):
    """A Captioner from a model directory or an MLflow ``models:/`` URI, on ``device`` (a
    torch device; None: ``inference.decoding_device``)."""
    from captioning.inference import Captioner

    if "://" not in model and not model.startswith("models:/"):
        return Captioner.load(Path(model), device)
    from captioning.registry.pyfunc import download_model_dir
    from captioning.registry.tracking import configure_mlflow

    configure_mlflow()
    with tempfile.TemporaryDirectory(prefix="captioning-model-") as tmp:
        model_dir = download_model_dir(model, Path(tmp))
        logger.info("loading %s from %s", model, model_dir)
        # Everything is read into memory, so the download can go.
        return Captioner.load(model_dir, device)


if __name__ == "__main__":
    sys.exit(main())
