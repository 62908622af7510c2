"""``tfrec index --remove / --restore``: products leave every answer, or come back, in a new
export version within seconds, without retraining or re-exporting.

A sold-out or delisted product is *removed*: no model returns it (``serving.signatures``
says how), and it keeps its row, so *restoring* it brings it back with its vector. The
new version of each model is its newest version with the catalogue's removed-items
variable rewritten: the same graph (``saved_model.pb``, byte for byte) as a version that
passed the serving check before it was published. What changed is checked before the
version goes live, in one fresh process for every model that returns item ids (exact
retrieve, ScaNN retrieve, similar, search): each loads in graph mode and eagerly,
answers with defaults, agrees with eager, and returns none of the removed ids, also when
asked for them (their histories, their texts as a search, their neighbours). The query
and candidate models return vectors, not ids: their new version is the previous one,
hard-linked.

``EXPORT/removed_items.json`` lists the removed ids and the last changes, and ``tfrec
export`` carries the list into every later version, so a new model does not bring a
removed product back. The new version's folders and that file are published under
``serving.publishing``'s journal: a run killed on the way leaves the previous version in
service, and the next run rolls the partial one back.
"""

from __future__ import annotations

import datetime
import difflib
import logging
import os
import shutil
import tempfile
import time

import numpy as np
import tensorflow as tf

from serving.export import RETRIEVE, RETRIEVE_SCANN, SEARCH, SIMILAR, next_version, publish
from serving.items import read_items
from serving.model_card import render_model_card_md
from serving.publishing import publish_version, publishes, recover
from serving.saved_model import newest_version
from serving.verify import check_versions, format_checks
from tfrec import fileio
from tfrec.errors import TfrecError
from tfrec.layout import MODEL_CARD_FILE, MODEL_CARD_MD_FILE, REMOVED_ITEMS_FILE

log = logging.getLogger(__name__)

RETURNS_IDS = (RETRIEVE, RETRIEVE_SCANN, SIMILAR, SEARCH)
"""The models whose answers are item ids: each reads the removed-items variable."""
VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"
REMOVED_KEY, IDS_KEY = f"removed{VALUE}", f"item_ids{VALUE}"
"""Checkpoint keys of the catalogue's variables (``ServingCatalogue.removed`` and ``.item_ids``)."""
PROBE_K = 1000
"""Results asked of each exact model when checking that removed items stay out."""
KEPT_CHANGES = 100


def read_ids(argument: str | None) -> list[str]:
    """Item ids from the command line: ``ID,ID,...``, or ``@FILE`` with one id per line
    (blank lines and lines starting with ``#`` are skipped)."""
    if not argument:
        return []
    if argument.startswith("@"):
        lines = fileio.read_text(argument[1:]).splitlines()
        return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return [part.strip() for part in argument.split(",") if part.strip()]


def _checkpoint(version_dir: str) -> str:
    return os.path.join(version_dir, "variables", "variables")


def catalogue_state(version_dir: str) -> tuple[np.ndarray, np.ndarray, str]:
    """A served version's catalogue: its item ids, its removed mask, and the mask's checkpoint key."""
    reader = tf.train.load_checkpoint(_checkpoint(version_dir))
    keys = [k for k in reader.get_variable_to_dtype_map() if k.endswith(REMOVED_KEY)]
    if not keys:
        raise TfrecError(f"{version_dir} was exported before products could be removed: export the model again "
                         "(tfrec export), then remove or restore products")
    ids = reader.get_tensor(keys[0][: -len(REMOVED_KEY)] + IDS_KEY).astype(str).astype(object)
    return ids, reader.get_tensor(keys[0]).astype(bool), keys[0]


def check_known(ids: list[str], catalogue: np.ndarray, what: str) -> None:
    """A clear error naming the ids the catalogue does not hold (with near spellings)."""
    known = set(catalogue)
    unknown = [i for i in dict.fromkeys(ids) if i not in known]
    if not unknown:
        return
    by_case = {str(c).casefold(): c for c in catalogue}
    hints = []
    for item in unknown[:5]:
        close = [by_case[item.casefold()]] if item.casefold() in by_case else difflib.get_close_matches(
            item, list(known), n=1, cutoff=0.8)
        hints.append(f"{item!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    raise TfrecError(f"cannot {what} {len(unknown)} item id(s) the served catalogue does not hold: "
                     f"{', '.join(hints)}{more}; nothing was changed")


def stage_copy(source: str, staging: str, mask: np.ndarray | None = None, key: str | None = None) -> str:
    """Copies version folder ``source`` into ``staging/model`` (hard links where it can) and,
    with ``mask``, rewrites the checkpoint's variable ``key`` to it; returns the copy's path."""
    target = os.path.join(staging, "model")
    try:
        shutil.copytree(source, target, copy_function=os.link)
    except OSError:  # another filesystem: plain copies
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
    if mask is None:
        return target
    reader = tf.train.load_checkpoint(_checkpoint(source))
    names = sorted(reader.get_variable_to_dtype_map())
    tensors = [tf.constant(mask) if name == key else tf.constant(reader.get_tensor(name)) for name in names]
    written = os.path.join(staging, "variables")
    tf.raw_ops.SaveV2(prefix=written, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)
    for suffix in (".index", ".data-00000-of-00001"):  # new files replace the links, never write through them
        os.replace(written + suffix, _checkpoint(target) + suffix)
    fingerprint = os.path.join(target, "fingerprint.pb")
    if os.path.exists(fingerprint):
        from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

        os.remove(fingerprint)
        with open(fingerprint, "wb") as f:
            f.write(fingerprinting.CreateFingerprintDef(target))
    return target


def _probes(removed: list[str], texts: dict[str, str], size: int) -> dict[str, list[dict]]:
    """Requests that would return removed items if anything let them through."""
    some, k = removed[:8], min(size, PROBE_K)
    return {RETRIEVE: [{"history": [some], "k": k}], RETRIEVE_SCANN: [{"history": [some]}],
            SIMILAR: [{"item_id": some, "k": k}], SEARCH: [{"query": [texts.get(i, i) for i in some], "k": k}]}


@publishes
def change_catalogue(export_dir: str | os.PathLike, remove: list[str] = (), restore: list[str] = ()) -> dict:
    """Publishes a new version of every model of ``export_dir`` that never returns the ids of
    ``remove`` and returns those of ``restore`` again; returns what was done.

    Raises a ``TfrecError`` naming any id the served catalogue does not hold (nothing is
    changed then). Removing a removed item, or restoring one that is not, changes nothing;
    when nothing changes, no version is written.
    """
    started = time.time()
    export_dir = os.fspath(export_dir)
    if set(remove) & set(restore):
        raise TfrecError(f"{sorted(set(remove) & set(restore))[:5]}: asked to be both removed and restored")
    recover(export_dir)  # a killed run's partial version and temporary folders
    served = {name: newest_version(fileio.join(export_dir, name)) for name in fileio.listdir(export_dir)
              if not name.startswith(".") and fileio.isdir(fileio.join(export_dir, name))
              and any(v.isdigit() for v in fileio.listdir(fileio.join(export_dir, name)))}
    if RETRIEVE not in served:
        raise TfrecError(f"{export_dir}: no {RETRIEVE} model: pass the output folder of `tfrec export`")
    with fileio.local_copy(served[RETRIEVE]) as local:
        ids, before, _ = catalogue_state(local)
    check_known(list(remove), ids, "remove")
    check_known(list(restore), ids, "restore")
    mask = before | np.isin(ids, list(remove))
    mask &= ~np.isin(ids, list(restore))
    changed = {"removed": sorted(set(ids[mask & ~before])), "restored": sorted(set(ids[before & ~mask]))}
    if not changed["removed"] and not changed["restored"]:
        log.info("catalogue change: nothing to change (%d items removed already)", int(before.sum()))
        return {**changed, "version": None, "removed_total": int(before.sum()), "seconds": time.time() - started}
    version = next_version(export_dir)
    staged = _stage(export_dir, served, mask, version)
    timings = {"stage_seconds": round(time.time() - started, 2)}
    try:
        checked = {name: path for name, path in staged.items() if name in RETURNS_IDS}
        texts = read_items(export_dir)
        gone = sorted(ids[mask])
        checks = check_versions(checked, [i for i in ids if i not in set(gone)][:6], list(texts.values())[:2],
                                _num_categorical(export_dir), probes=_probes(gone, texts, len(ids)) if gone else None,
                                never_returned=gone)
        timings["check_seconds"] = round(time.time() - started - timings["stage_seconds"], 2)
        if not all(c.ok for c in checks):
            raise TfrecError("the new version failed its serving check and was not published:\n"
                             + format_checks(checks))
        result = {**changed, "version": version, "removed_total": len(gone), "checked": sorted(checked),
                  "graph_mode_verified": True, **timings}
        targets = {name: fileio.join(export_dir, name, str(version)) for name in staged}
        publish_version(export_dir, version, staged, targets, publish,
                        lambda: _record(export_dir, gone, result | {"seconds": round(time.time() - started, 2)}))
    finally:
        for path in staged.values():
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    seconds = time.time() - started
    result["seconds"] = round(seconds, 2)
    log.info("catalogue change: %d removed, %d restored (%d removed in all): version %d published in %.1fs, "
             "checked in graph mode: %s", len(changed["removed"]), len(changed["restored"]), len(gone), version,
             seconds, ", ".join(sorted(checked)))
    return result


def _stage(export_dir: str, served: dict[str, str], mask: np.ndarray, version: int) -> dict[str, str]:
    """Every model's new version in a staging folder (beside its final place when local, so
    publishing is a rename; else a local temporary folder): rewritten where it returns ids."""
    staged: dict[str, str] = {}
    try:
        for name, source in served.items():
            target = fileio.join(export_dir, name, str(version))
            if fileio.is_url(target):
                staging = tempfile.mkdtemp(prefix="tfrec-change-")
            else:
                staging = fileio.temporary_sibling(target)
                os.mkdir(staging)
            with fileio.local_copy(source) as local:
                key = catalogue_state(local)[2] if name in RETURNS_IDS else None
                staged[name] = stage_copy(local, staging, mask if key else None, key)
    except BaseException:
        for path in staged.values():
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)
        raise
    return staged


def _num_categorical(export_dir: str) -> int:
    card = fileio.read_json(fileio.join(export_dir, MODEL_CARD_FILE), default={})
    return len(card.get("categorical_fields") or [])


def _record(export_dir: str, removed: list[str], result: dict) -> None:
    """``removed_items.json`` (the removed ids and the last changes) and the model card's version."""
    path = fileio.join(export_dir, REMOVED_ITEMS_FILE)
    changes = fileio.read_json(path, default={}).get("changes", [])
    at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    change = {"at": at, **{k: result[k] for k in ("version", "removed", "restored", "seconds", "stage_seconds",
                                                  "check_seconds")}}
    fileio.write_json(path, {"removed": removed, "version": result["version"],
                             "changes": [*changes, change][-KEPT_CHANGES:]})
    card = fileio.read_json(fileio.join(export_dir, MODEL_CARD_FILE))
    if card:
        card |= {"version": result["version"], "removed_items": len(removed)}
        fileio.write_json(fileio.join(export_dir, MODEL_CARD_FILE), card)
        fileio.write_text(fileio.join(export_dir, MODEL_CARD_MD_FILE), render_model_card_md(card))

