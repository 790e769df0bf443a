"""Saving a mergeplug directory: :func:`save_pretrained` (staged in a temporary directory next to the target and
moved into place when complete, a user's own ``README.md`` kept) and :func:`push_to_hub`."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..core import unmerged
from .card import CARD_MARKER, CARD_NAME, HUB_PLACEHOLDER, model_card
from .format import CONFIG_NAME, PACKED_NAME, WEIGHT_PATTERNS, _inner, read_config, write_config


def save_pretrained(
    obj: Any,
    directory: str | Path,
    *,
    base_model: str | None = None,
    weights: bool = True,
    results: str | Path | None = None,
    license: str = "apache-2.0",
    model_name: str | None = None,
    card: bool = True,
    float_weights: bool = True,
    overwrite_card: bool = False,
) -> Path:
    """Write ``obj`` (patched by :func:`mergeplug.apply` or not) to ``directory`` with its settings and a model card.

    Everything is first written to a temporary directory next to ``directory`` (``.<name>.tmp-XXXX``) and moved
    into it file by file (``os.replace``) only once complete: a save that fails (a full disk, a bad ``results``)
    leaves ``directory`` as it was. Files of ``directory`` that mergeplug does not write are kept; the weight files
    of a previous save that this one does not write again (other shards, ``model.safetensors`` when saving with
    ``float_weights=False``, a packed file the model no longer needs) are deleted after the move.

    Args:
        obj: a Chronos pipeline (Chronos-T5, Chronos-Bolt, Chronos-2) or a Hugging Face ``PreTrainedModel``.
        directory: created if needed; existing files of the same names are replaced, except a ``README.md`` that
            mergeplug did not generate (see ``overwrite_card``).
        base_model: hub id (or path) of the model the weights come from, for the card's metadata and for
            ``weights=False``.
        weights: write the weights (``save_pretrained``). ``False`` writes only the settings and the card
            and needs ``base_model``: :func:`from_pretrained` then loads the base model and applies them.
        results: a ``mergeplug-eval run`` output directory whose tables go into the card.
        license: SPDX id for the card's metadata.
        model_name: title of the card (default: the directory's name).
        card: write ``README.md`` (callers that write their own card, with :func:`model_card`, pass False).
        float_weights: for a binarized model, also write the float weights (``model.safetensors``, what plain
            ``transformers`` / ``chronos`` loaders read and what :func:`mergeplug.unbinarize` returns to).
            ``False`` writes only ``config.json`` and the packed file: the directory is as small as the packed
            format, and only :func:`from_pretrained` loads it.
        overwrite_card: replace a ``README.md`` that mergeplug did not generate (one without
            :data:`CARD_MARKER`). By default such a card is kept, with a warning, and no card is written.

    Returns:
        ``directory`` as a ``Path``.
    """
    if not isinstance(directory, (str, os.PathLike)) or not str(directory).strip():
        raise ValueError(
            f"save_pretrained needs a directory to write into, got {directory!r} (an empty path would write into the "
            "current directory): pass a folder name, e.g. 'my-merged-model'"
        )
    if not weights and not base_model:
        raise ValueError("weights=False saves only a reference to the base model: pass base_model='<hub id or path>'")
    if not float_weights:  # checked before anything is written: a refused call leaves the directory as it was
        from ..binary import binarization

        if binarization(_inner(obj)) is None:
            raise ValueError(
                "float_weights=False stores only packed sparse binary layers, but the model is not binarized: "
                "call mergeplug.binarize first, or keep float_weights=True"
            )
        if not weights:
            raise ValueError("float_weights=False needs weights=True (the packed file is the weights)")
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file; give the directory to save into")
    card = card and (overwrite_card or not _keep_users_card(out / CARD_NAME))
    with _staging(out) as tmp:
        meta = write_config(obj, tmp, base_model=base_model, weights=weights, float_weights=float_weights)
        if not float_weights:
            _inner(obj).config.save_pretrained(tmp)
        elif weights:
            from ..binary import suspended

            # from the original classes (then patched again with the same settings); binarized layers: their float
            # weights (the packed file holds the binary ones)
            with unmerged(obj), suspended(obj), _no_shard_bar():
                _inner(obj).save_pretrained(tmp)
        if meta["binarization"] is not None:
            from ..binary import save_packed

            save_packed(obj, tmp / PACKED_NAME, mask_encoding="auto")  # per layer the smaller mask encoding
        if card:
            model_card(
                tmp,
                obj=obj,
                results=results,
                license=license,
                model_name=model_name or out.resolve().name,
            ).save(tmp / CARD_NAME)
        _install(tmp, out, superseded=WEIGHT_PATTERNS if weights else ())
    return out


@contextmanager
def _no_shard_bar() -> Iterator[None]:
    """Without transformers' "Writing model shards" bar: a save writes a few files and reports nothing else."""
    import transformers.utils.logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _keep_users_card(readme: Path) -> bool:
    """Whether ``readme`` exists and mergeplug did not generate it: then it is kept, and a warning says so."""
    if not readme.is_file():
        return False
    text = readme.read_text(errors="replace")
    if CARD_MARKER in text or _older_generated_card(readme):
        return False
    warnings.warn(
        f"{readme} was not generated by mergeplug: kept as it is, no model card written; pass overwrite_card=True "
        "to mergeplug.save_pretrained to replace it with the generated card",
        UserWarning,
        stacklevel=3,
    )
    return True


def _older_generated_card(readme: Path) -> bool:
    """A card generated before :data:`CARD_MARKER` existed: its metadata carries the ``mergeplug`` tag and its body
    the generated usage section."""
    from huggingface_hub import metadata_load

    try:
        tags = (metadata_load(readme) or {}).get("tags") or []
    except Exception:  # not YAML front matter: the user's
        return False
    return "mergeplug" in tags and "mergeplug.from_pretrained" in readme.read_text(errors="replace")


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A temporary directory on ``out``'s file system for a save, deleted on exit whatever happens.

    Next to ``out`` (``.<name>.tmp-XXXX`` in its parent: nothing appears in ``out`` before the save is complete),
    or inside an existing ``out`` that is a mount point or whose parent is not writable (a move must not cross
    file systems, and the parent must take the temporary directory).
    """
    target = out.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    inside = target.is_dir() and (os.path.ismount(target) or not os.access(target.parent, os.W_OK))
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name or 'mergeplug'}.tmp-", dir=target if inside else target.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move(src: Path, dst: Path) -> None:
    """``os.replace``; across file systems (a bind mount the staging directory is not on: EXDEV) a copy into a
    temporary name beside ``dst`` and a replace there, so ``dst`` is still never half written."""
    try:
        os.replace(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        part = dst.with_name(f".{dst.name}.part")
        shutil.copyfile(src, part)
        os.replace(part, dst)
        src.unlink()


def _install(staged: Path, out: Path, superseded: Sequence[str]) -> None:
    """Move the files of a complete save from ``staged`` into ``out`` (each with ``os.replace``, atomic; the config
    last), then delete the files of ``out`` matching the glob patterns ``superseded`` that the save did not write."""
    out.mkdir(exist_ok=True)
    written = sorted(
        (f.relative_to(staged) for f in staged.rglob("*") if f.is_file()), key=lambda f: f.name == CONFIG_NAME
    )
    for rel in written:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        _move(staged / rel, out / rel)
    for pattern in superseded:
        for f in out.glob(pattern):
            if f.relative_to(out) not in written:
                f.unlink(missing_ok=True)


def fill_in_hub_id(directory: str | Path, repo_id: str) -> bool:
    """Put ``repo_id`` into the usage snippets of the generated card of ``directory`` (in place of the placeholder);
    returns whether the card changed. A user's own card (without :data:`CARD_MARKER`) is left alone."""
    card = Path(directory) / CARD_NAME
    if not card.is_file():
        return False
    text = card.read_text()
    placeholder = json.dumps(HUB_PLACEHOLDER)
    if CARD_MARKER not in text or placeholder not in text:
        return False
    card.write_text(text.replace(placeholder, json.dumps(repo_id)))
    return True


def push_to_hub(
    directory: str | Path, repo_id: str, *, token: str | None = None, private: bool = False, commit_message: str = ""
) -> str:
    """Upload a directory written by :func:`save_pretrained` to the Hugging Face Hub; returns the commit URL.

    A thin call to ``huggingface_hub.HfApi``: ``create_repo(exist_ok=True)`` then ``upload_folder``. It needs
    network access and a token (``token=`` or ``huggingface-cli login``). A card mergeplug generated gets the repo
    id in its usage snippets first (in place of :data:`~mergeplug.hub.card.HUB_PLACEHOLDER`), locally too.
    """
    from huggingface_hub import HfApi

    read_config(directory)  # refuse directories that are not mergeplug's
    fill_in_hub_id(directory, repo_id)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(
        folder_path=str(directory), repo_id=repo_id, commit_message=commit_message or "Upload with mergeplug"
    )
    return str(info)
