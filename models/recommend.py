"""Use a tuned model: the model bundle a test-stage seed run logs, and recommendations from it.

Every test-stage seed run logs its best-validation model to MLflow as the artifact
``model/model.pt`` (``save_bundle``, written by the trainable on the trial's last epoch): the
weights the test split was scored with, the resolved config, the catalog size, and the data the
model carries besides its weights (its non-persistent buffers: the semantic item vectors of the
SemSR variants, the personas and user profiles of ``persona``), so the model is rebuilt from the
bundle alone, without the dataset (``rebuild_model``). The file loads with
``torch.load(..., weights_only=True)``.

    python -m models.recommend --run-id RUN --session 12,45,3 -k 20 [--mlflow-uri URI]

prints the top-k items for the session with their scores. Ranking is the evaluation's: the whole
catalog except the padding item 0, items already in the session included (CORE's protocol does
not exclude them), the session cut to its last ``max_seq_length`` items.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from data.cli import EXIT_USAGE, OneLineParser, positive_int
from models.core import CORE
from models.encoders import PAD
from models.persona.spec import build_persona_model
from models.registry import build_model, needs_item_text, resolve_config

MODEL_ARTIFACT_DIR = "model"
MODEL_FILE = "model.pt"
MODEL_ARTIFACT = f"{MODEL_ARTIFACT_DIR}/{MODEL_FILE}"
BUNDLE_FORMAT = 1
# What rebuilding the persona model needs besides its weights (PersonaCORE's data buffers, and
# the argument of models.persona.spec.build_persona_model each one is).
PERSONA_DATA = ("semantic", "personas", "known", "profiles", "profile_personas")
_PERSONA_ARGUMENTS = ("item_vectors", "personas", "known", "profiles", "profile_personas")
DEFAULT_STORE = Path("outputs") / "mlflow.db"  # launch.py's default store


class BundleError(ValueError):
    """A model bundle that cannot be read or rebuilt; the message says what is wrong."""


def model_bundle(trainer) -> dict:
    """The bundle of a trained model: its best-validation weights (the ones test is scored
    with; the current weights before any epoch) and what rebuilding it needs.

    Args:
        trainer: a ``models.trainer.Trainer``.

    Returns:
        A dict of plain values and CPU tensors (``torch.load(weights_only=True)`` reads it):
        ``format``, ``config`` (resolved), ``n_items``, ``dataset``, ``best_epoch``,
        ``state_dict`` and ``buffers`` (the model's non-persistent buffers, by name).
    """
    model = trainer.model
    weights = trainer.best_state if trainer.best_state is not None else model.state_dict()
    persistent = set(model.state_dict())
    return {
        "format": BUNDLE_FORMAT,
        "config": dict(trainer.config),
        "n_items": int(trainer.dataset.n_items),
        "dataset": str(trainer.dataset.name),
        "best_epoch": int(trainer.best_epoch),
        "state_dict": {name: t.detach().cpu().clone() for name, t in weights.items()},
        "buffers": {
            name: t.detach().cpu().clone()
            for name, t in model.named_buffers()
            if name not in persistent
        },
    }


def save_bundle(trainer, path: str | Path) -> Path:
    """Write ``model_bundle(trainer)`` to ``path`` atomically (a temporary file, then rename).

    Args:
        trainer: a ``models.trainer.Trainer``.
        path: the file to write, e.g. ``<checkpoint dir>/model.pt``.

    Returns:
        ``path``.
    """
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    torch.save(model_bundle(trainer), partial)
    os.replace(partial, path)
    return path


def load_bundle(path: str | Path) -> dict:
    """Read a bundle written by ``save_bundle`` (weights only: no code is unpickled).

    Args:
        path: the bundle file.

    Returns:
        The bundle dict.

    Raises:
        BundleError: not a readable bundle, or one of another format.
    """
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated file, not a torch file, a pickle with code
        raise BundleError(f"{path}: not a readable model bundle ({exc})") from exc
    keys = {"format", "config", "n_items", "state_dict", "buffers"}
    if not isinstance(bundle, dict) or not keys <= set(bundle):
        raise BundleError(f"{path}: not a model bundle (expected keys {sorted(keys)})")
    if bundle["format"] != BUNDLE_FORMAT:
        raise BundleError(f"{path}: bundle format {bundle['format']}, this code reads "
                          f"{BUNDLE_FORMAT}")
    return bundle


def rebuild_model(bundle: dict) -> CORE:
    """The trained model of a bundle, on CPU, in eval mode, without its dataset.

    Args:
        bundle: as ``load_bundle`` returns it.

    Returns:
        The model with the bundle's weights and data buffers.

    Raises:
        BundleError: the config no longer resolves, data the variant needs is missing from the
            bundle (named), or the weights do not fit the rebuilt model.
    """
    try:
        config = resolve_config(bundle["config"])
    except (TypeError, ValueError) as exc:
        raise BundleError(f"the bundle's config does not resolve with this code: {exc}") from exc
    variant, n_items, buffers = config["model"], int(bundle["n_items"]), bundle["buffers"]
    if variant == "persona":
        missing = [name for name in PERSONA_DATA if name not in buffers]
        if missing:
            raise BundleError(f"the persona bundle lacks {missing}: it cannot be rebuilt")
        model = build_persona_model(config, n_items, **{
            argument: buffers[name].numpy()
            for argument, name in zip(_PERSONA_ARGUMENTS, PERSONA_DATA, strict=True)})
    elif needs_item_text(variant):
        # SemSR-F keeps its frozen vectors as a buffer; SemSR-I's vectors only initialised the
        # item table, which the saved weights replace, so placeholders (no text) do.
        vectors = buffers.get("semantic")
        vectors = np.zeros((n_items, 1), np.float32) if vectors is None else vectors.numpy()
        model = build_model(config, n_items, vectors)
    else:
        model = build_model(config, n_items)
    try:
        model.load_state_dict(bundle["state_dict"])
        for name, value in buffers.items():
            owner, _, leaf = name.rpartition(".")
            module = model.get_submodule(owner)
            if leaf not in module._buffers or module._buffers[leaf].shape != value.shape:
                raise BundleError(f"buffer {name!r} {tuple(value.shape)} does not fit the model")
            module._buffers[leaf] = value.clone()
    except RuntimeError as exc:
        raise BundleError(f"the bundle's weights do not fit the {variant!r} model: {exc}") from exc
    return model.eval()


def recommend(
    model: CORE, session: Sequence[int], k: int, *, max_seq_length: int | None = None,
    user: int | None = None,
) -> tuple[list[int], list[float]]:
    """The top-k items for one session, scored as evaluation scores them.

    Args:
        model: a model from ``rebuild_model`` (or any trained CORE variant).
        session: the session's item ids, oldest first (ids 1 .. n_items - 1).
        k: how many items (capped at the catalog size minus the padding item).
        max_seq_length: keep only the session's last items, as training and evaluation do.
        user: the session's user id, for models that score with users (``persona``); None or
            0: unknown (the persona fallback).

    Returns:
        ``(item_ids, scores)``, best first: the padding item 0 never appears, items of the
        session may.
    """
    items = list(session)[-max_seq_length:] if max_seq_length else list(session)
    batch = torch.tensor([items], dtype=torch.long)
    with torch.inference_mode():
        model.eval()
        if getattr(model, "wants_users", False):
            users = torch.tensor([user or 0], dtype=torch.long)
            scores = model.predict(batch, users)[0]
        else:
            scores = model.predict(batch)[0]
        scores = scores.float()
        scores[PAD] = float("-inf")
        top = scores.topk(min(k, len(scores) - 1))
    return top.indices.tolist(), top.values.tolist()


def _session(text: str) -> list[int]:
    try:
        items = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated item ids, e.g. 12,45,3; got {text!r}"
        ) from None
    if not items:
        raise argparse.ArgumentTypeError("the session is empty")
    return items


def fetch_bundle(run_id: str, tracking_uri: str, directory: Path) -> Path:
    """Download a run's ``model/model.pt`` into ``directory``.

    Args:
        run_id: the MLflow run (a test-stage seed run).
        tracking_uri: the MLflow tracking URI.
        directory: where to put the file.

    Returns:
        The downloaded file.

    Raises:
        BundleError: no such store, no such run, or a run without the model artifact.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        database = Path(tracking_uri.removeprefix("sqlite:///"))
        if not database.is_file():
            raise BundleError(f"no MLflow store at {database} (pass --mlflow-uri, or set "
                              "MLFLOW_TRACKING_URI)")
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise BundleError(f"no run {run_id!r} in the MLflow store {tracking_uri}") from exc
    listed = {a.path for a in client.list_artifacts(run_id, MODEL_ARTIFACT_DIR)}
    if MODEL_ARTIFACT not in listed:
        stage = run.data.tags.get("stage", "unknown")
        raise BundleError(
            f"run {run_id!r} (stage {stage!r}) has no {MODEL_ARTIFACT} artifact: only test-stage "
            "seed runs (launch.py --stage test) log their model"
        )
    return Path(client.download_artifacts(run_id, MODEL_ARTIFACT, str(directory)))


def main(argv: list[str] | None = None) -> int:
    """Print the top-k items of a session for the model of a test-stage seed run.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        0, or 2 for an unknown run, a run without a model, or an invalid session (the reason
        on stderr).
    """
    parser = OneLineParser(
        prog="python -m models.recommend",
        description=(
            "Top-k recommendations for one session from the model a test-stage seed run logged "
            f"to MLflow ({MODEL_ARTIFACT}). Item ids are the dataset's internal integer ids (the "
            "ids of its .inter files, 1 .. n_items - 1; 0 is padding), not raw tokens: map them "
            "back with the dataset's own id mapping. The whole catalog is ranked as in "
            "evaluation: items already in the session are not excluded. Scores are the model's "
            "(cosine / temperature for CORE variants; higher is better)."
        ),
    )
    parser.add_argument("--run-id", required=True, help="MLflow run id of a test-stage seed run")
    parser.add_argument("--session", required=True, type=_session,
                        help="the session's item ids, oldest first, comma-separated: 12,45,3")
    parser.add_argument("-k", type=positive_int, default=20, help="how many items (default 20)")
    parser.add_argument("--user", type=int, default=None,
                        help="the session's user id (persona models only; default: unknown, "
                             "the nearest users' persona)")
    parser.add_argument("--mlflow-uri", default=None,
                        help="tracking URI (default: $MLFLOW_TRACKING_URI, else "
                             "sqlite:///outputs/mlflow.db, as launch.py)")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = (args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
           or f"sqlite:///{DEFAULT_STORE.resolve()}")
    try:
        with tempfile.TemporaryDirectory() as directory:
            bundle = load_bundle(fetch_bundle(args.run_id, uri, Path(directory)))
        model = rebuild_model(bundle)
        n_items = int(bundle["n_items"])
        bad = [item for item in args.session if not 1 <= item < n_items]
        if bad:
            raise BundleError(f"session item id(s) {bad} are outside the model's catalog "
                              f"(1 .. {n_items - 1})")
        if args.user is not None and not getattr(model, "wants_users", False):
            raise BundleError(f"--user is only for persona models; this is "
                              f"{bundle['config']['model']!r}")
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    config = bundle["config"]
    items, scores = recommend(model, args.session, args.k,
                              max_seq_length=config.get("max_seq_length"), user=args.user)
    print(f"# run {args.run_id}: {config['model']} on {bundle.get('dataset', '?')}, seed "
          f"{config.get('seed')}, best epoch {bundle.get('best_epoch')}; top {len(items)} of "
          f"{n_items - 1} items (internal ids; session items not excluded)")
    print("rank\titem_id\tscore")
    for rank, (item, score) in enumerate(zip(items, scores, strict=True), start=1):
        print(f"{rank}\t{item}\t{score:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
