"""Exports from a study: every model of a study folder to deployment formats, verified, in the ``exports`` table.

:func:`export_study` is what the study key ``export: [onnx, ...]`` and ``robustprune report OUT --export onnx``
run: each stored model (base models first, so that a pruned model's speed-up is measured against its base's own
verified file) is exported to ``OUT/exports/<model_id>.<suffix>`` with its ``.json`` report and ``.md`` card, from
the same first ``eval_n`` test images the study evaluated. A model whose export fails gets a ``failed`` row with
its one-line reason and the others go on; a rerun reuses every export whose checkpoint did not change and retries
the failed ones.

:func:`checkpoint_provenance` says where a checkpoint comes from: the study database beside it (method, paper,
rate, achieved compression, parent, the clean and APGD accuracy the study measured) or the sidecar of a
``robustprune prune`` checkpoint (its parent file and hash, validation accuracy), and which checkpoint is its
unpruned base.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from robustprune.checkpoint import sidecar_path
from robustprune.errors import ConfigError, RobustPruneError
from robustprune.provenance import file_sha256
from robustprune.study.store import STATUS_DONE, ResultsStore

STATUS_FAILED_EXPORT = "failed"


def _paper(method: str | None) -> str | None:
    if not method or method == "unpruned":
        return None
    try:
        from robustprune.methods import METHODS

        return str(METHODS.get(method).paper)
    except RobustPruneError:
        return None


def study_of_checkpoint(path: Path) -> Path | None:
    """The results database of the study a checkpoint belongs to (``OUT/checkpoints/ID.safetensors`` ->
    ``OUT/results.sqlite``), or None."""
    db = path.resolve().parent.parent / "results.sqlite"
    return db if path.resolve().parent.name == "checkpoints" and db.is_file() else None


def _measured(store: ResultsStore, model_id: str) -> dict[str, Any]:
    """The clean and white-box APGD accuracy (at the largest budget) the study stored for a model."""
    rows = store.results("model_id = ?", (model_id,))
    out: dict[str, Any] = {}
    clean = [r for r in rows if r["attack"] == "clean"]
    if clean:
        out["clean_acc (study, test)"] = round(float(clean[0]["robust_acc"]), 4)
        out["n_eval"] = clean[0].get("n_eval")
    apgd = sorted((r for r in rows if r["attack"] in ("apgd", "autoattack")), key=lambda r: r["eps"])
    if apgd:
        r = apgd[-1]
        out[f"{r['attack']}_acc (study, test, eps {r['eps_str']})"] = round(float(r["robust_acc"]), 4)
    return out


def checkpoint_provenance(path: str | Path, meta: dict[str, Any], model: Any = None,
                          masks: Any = None) -> tuple[dict[str, Any], Path | None]:
    """``(provenance, base checkpoint or None)`` of the checkpoint at ``path`` with sidecar ``meta`` (module
    docstring). The base is the unpruned ancestor when its file is present and unchanged and is a model of the same
    architecture and input (else a one-line error). With ``model`` (the checkpoint as loaded) the claims of the
    sidecar and the study database are checked against the weights (:func:`check_claims`) and the achieved
    compression and sparsity in the provenance are the ones measured on the weights."""
    prov, base = _provenance(Path(path), meta)
    if model is not None:
        prov.update(check_claims(path, meta, model, masks, claimed_compression=prov.get("achieved_compression")))
    return prov, base


def _model_kind(meta: dict[str, Any]) -> dict[str, Any]:
    return {"architecture": meta.get("architecture"), "input": list(meta.get("input_shape") or []),
            "classes": meta.get("num_classes"), "dataset": meta.get("dataset")}


def _kind_text(meta: dict[str, Any]) -> str:
    k = _model_kind(meta)
    return (f"a {k['architecture']} for {k['dataset']} ({'x'.join(map(str, k['input']))} inputs, {k['classes']} "
            "classes)")


def same_kind(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two sidecars describe the same architecture on the same input (and classes, and dataset when both say)."""
    ka, kb = _model_kind(a), _model_kind(b)
    if ka["dataset"] and kb["dataset"] and ka["dataset"] != kb["dataset"]:
        return False
    return all(ka[k] == kb[k] for k in ("architecture", "input", "classes")) and \
        float(a.get("width", 1.0) or 1.0) == float(b.get("width", 1.0) or 1.0)


def ancestor_hashes(meta: dict[str, Any]) -> list[str]:
    """The sha256 of every ancestor a ``robustprune prune`` sidecar names (its parent, the parent's parent ...,
    as far as the files are present)."""
    from robustprune.checkpoint import read_meta

    out: list[str] = []
    cfg = meta.get("config") or {}
    for _ in range(16):
        if not cfg.get("parent_sha256"):
            break
        out.append(str(cfg["parent_sha256"]))
        p = Path(str(cfg.get("parent") or ""))
        try:
            cfg = read_meta(p).get("config") or {} if p.is_file() else {}
        except RobustPruneError:
            break
    return out


def check_base_file(checkpoint: str | Path, meta: dict[str, Any], base: str | Path, *,
                    what: str = "--base") -> str | None:
    """Refuse (one line) a comparison base that is the checkpoint itself or a model of another architecture or
    input; returns a note when the base is of the same kind but not the checkpoint's ancestor (None when it is)."""
    from robustprune.checkpoint import read_meta

    checkpoint, base = Path(checkpoint), Path(base)
    if base.resolve() == checkpoint.resolve() or (base.is_file() and file_sha256(base) == file_sha256(checkpoint)):
        raise ConfigError(f"{what} {base} is the checkpoint itself, so there is nothing to compare; give the "
                          "unpruned model it was pruned from, or drop " + what)
    bmeta = read_meta(base)
    if not same_kind(meta, bmeta):
        raise ConfigError(f"{what} {base} is {_kind_text(bmeta)}, the checkpoint {_kind_text(meta)}: not its base, "
                          f"so its sizes and latencies compare nothing; give the unpruned model it was pruned from")
    if file_sha256(base) in ancestor_hashes(meta):
        return None
    return (f"{what} {base} is not an ancestor of {checkpoint.name} in its provenance (no parent hash matches); "
            "it is compared as a model of the same architecture and input")


_CLAIM_RTOL = 0.01
_RATE_SLACK = 1.5


def _group_compression(model: Any, group: str, layers: list[str] | None) -> dict[str, float]:
    """Per prunable layer of ``group``: groups / groups with a non-zero weight (inf when all are zero)."""
    import math

    import torch

    from robustprune.sparsity import prunable_layers
    from robustprune.sparsity.groups import group_view

    out = {}
    for name, mod in prunable_layers(model, group).items():
        if layers is not None and name not in layers:
            continue
        g = group_view(mod.weight.detach(), group)
        alive = int(torch.count_nonzero(g.abs().sum(1)))
        out[name] = g.shape[0] / alive if alive else math.inf
    return out


def check_claims(path: str | Path, meta: dict[str, Any], model: Any, masks: Any = None, *,
                 claimed_compression: float | None = None) -> dict[str, Any]:
    """What the weights of a loaded checkpoint show, checked against what its sidecar (or study) claims: the
    achieved compression recomputed (every Conv2d / Linear weight / the non-zero ones) must equal the claimed one
    within 1 %; the method must be registered, and its group the sidecar's; a set rate c is contradicted when no
    layer of the method's group is pruned to within 1.5x of c (a global threshold prunes some layer at least to c, a
    local one every layer). Returns the measured ``achieved_compression`` and ``achieved_sparsity``; raises a
    one-line :class:`CheckpointError` naming the claim."""
    import math

    from robustprune.errors import CheckpointError
    from robustprune.sparsity import prunable_layers

    path = Path(path)
    total = nonzero = 0
    for mod in prunable_layers(model, "unstructured").values():
        w = mod.weight.detach()
        total += w.numel()
        nonzero += int((w != 0).sum())
    measured = total / nonzero if nonzero else math.inf
    side = f"{path.with_suffix('.json').name}"
    slim = bool(meta.get("slim"))
    if claimed_compression is not None and not slim and math.isfinite(measured):
        c = float(claimed_compression)
        if abs(c - measured) > _CLAIM_RTOL * measured:
            raise CheckpointError(f"checkpoint {path}: {side} (or its study) claims an achieved compression of {c:.4g}, "
                                  f"its weights show {measured:.4g}; the sidecar was edited or belongs to another "
                                  "file: re-create the checkpoint")
    cfg = meta.get("config") or {}
    method = cfg.get("method")
    if method:
        from robustprune.methods import METHODS

        if method not in METHODS.names():
            raise CheckpointError(f"checkpoint {path}: {side} names method {method!r}, which is not a registered "
                                  "method (`robustprune list methods`); fix the sidecar or re-create the checkpoint")
        m = METHODS.get(method)
        if cfg.get("group") and cfg["group"] != m.group:
            raise CheckpointError(f"checkpoint {path}: {side} says group {cfg['group']!r}, but {method} prunes "
                                  f"{m.group!r}; the sidecar was edited: re-create the checkpoint")
        rate = cfg.get("rate")
        if isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 1 and not slim:
            scope = (cfg.get("settings") or {}).get("layers")
            if not isinstance(scope, dict):  # per-layer rates: the rate names no one layer's
                group = m.group if m.group in ("unstructured", "kernel", "filter", "column") else "unstructured"
                mask_layers = list(getattr(masks, "masks", masks) or {}) or None
                per_layer = _group_compression(model, group, mask_layers)
                best = max(per_layer.values(), default=1.0)
                if best * _RATE_SLACK < float(rate):
                    raise CheckpointError(
                        f"checkpoint {path}: {side} claims {method} at compression rate {float(rate):g}, but no "
                        f"{group} layer of its weights is pruned beyond {best:.3g}x (overall {measured:.3g}x); the "
                        "sidecar was edited or belongs to another file: re-create the checkpoint")
    return {"achieved_compression": round(measured, 4) if math.isfinite(measured) else measured,
            "achieved_sparsity": round(1.0 - 1.0 / measured, 6) if measured > 0 else 0.0,
            "sparsity_measured_on": "the weights (zeros among all Conv2d + Linear weights)"}


def _provenance(path: Path, meta: dict[str, Any]) -> tuple[dict[str, Any], Path | None]:
    cfg = meta.get("config") or {}
    method = cfg.get("method") or "unpruned"
    prov: dict[str, Any] = {"checkpoint": path.name, "checkpoint_sha256": file_sha256(path),
                            "architecture": meta.get("architecture"), "dataset": meta.get("dataset"),
                            "method": method}
    paper = _paper(method)
    if paper:
        prov["paper"] = paper
    if method != "unpruned":
        prov.update(rate=cfg.get("rate"), settings=cfg.get("settings") or {})
    if meta.get("achieved_compression") is not None:
        prov["achieved_compression"] = round(float(meta["achieved_compression"]), 4)
    precision = meta.get("precision") or {}
    if precision.get("train") or cfg.get("train_precision"):
        prov["train_precision"] = precision.get("train") or cfg.get("train_precision")
    base: Path | None = None
    db = study_of_checkpoint(path)
    if db is not None:
        with ResultsStore(db, readonly=True) as store:
            rec = store.get_model(path.stem)
            if rec is not None:
                prov["study"] = rec.get("study")
                prov["study_database"] = str(db)
                metrics = rec.get("metrics") or {}
                if metrics.get("achieved_compression") is not None:
                    prov["achieved_compression"] = round(float(metrics["achieved_compression"]), 4)
                prov.update(_measured(store, path.stem))
                parent = store.get_model(rec["parent_id"]) if rec.get("parent_id") else None
                if parent is not None:
                    ppath = db.parent / parent["checkpoint"]
                    prov["parent_checkpoint"] = str(parent["checkpoint"])
                    prov["parent_sha256"] = parent.get("checkpoint_sha256")
                    if ppath.is_file() and file_sha256(ppath) == parent.get("checkpoint_sha256"):
                        base = ppath
        return prov, base
    # a `robustprune prune` checkpoint: its sidecar names its parent file and hash; follow the chain to the base
    if cfg.get("parent"):
        prov["parent_checkpoint"] = cfg["parent"]
        prov["parent_sha256"] = cfg.get("parent_sha256")
    if isinstance(meta.get("validation"), dict):
        prov.update({f"{k} (validation)": round(float(v), 4) for k, v in meta["validation"].items()})
    base = _unpruned_ancestor(path, meta)
    return prov, base


def _unpruned_ancestor(path: Path, meta: dict[str, Any]) -> Path | None:
    """The unpruned checkpoint at the end of the sidecar's parent chain (each link's file present with the hash
    its child names), or None; an ancestor of another architecture or input is a one-line error (an edited
    ``parent``)."""
    from robustprune.checkpoint import read_meta
    from robustprune.errors import CheckpointError

    cfg = meta.get("config") or {}
    seen = 0
    while cfg.get("parent") and seen < 16:
        p = Path(cfg["parent"])
        if not p.is_file() or (cfg.get("parent_sha256") and file_sha256(p) != cfg["parent_sha256"]):
            return None
        try:
            pmeta = read_meta(p)
        except RobustPruneError:
            return None
        if not same_kind(meta, pmeta):
            raise CheckpointError(f"checkpoint {path}: its sidecar's parent {p} is {_kind_text(pmeta)}, the checkpoint "
                                  f"{_kind_text(meta)}; the sidecar was edited: fix its config.parent, or pass the "
                                  "unpruned model with --base")
        cfg = pmeta.get("config") or {}
        if not cfg.get("method"):
            return p
        seen += 1
    return None


def _fetched(out: Path, rel: str, storage: Any) -> Path:
    """The study folder's copy of the checkpoint ``rel`` (and its sidecar), fetched from the study's ``storage``
    when it is only there."""
    path = out / rel
    if not path.is_file() and storage is not None and storage.exists(rel):
        side = sidecar_path(rel).as_posix()
        storage.get(side, out / side)
        storage.get(rel, path)
    return path


def export_study(out_dir: str | Path, formats: Sequence[str], *, n: int | None = None, data_dir: str | None = None,
                 sparse: bool = False, latency_time: float = 0.3, model_ids: Sequence[str] | None = None,
                 log: Callable[[str], None] = print) -> dict[str, int]:
    """Export every done model of the study in ``out_dir`` (or those in ``model_ids``) to each of ``formats``
    (module docstring). Returns ``{"exported", "reused", "failed"}``."""
    from robustprune.checkpoint import load_checkpoint
    from robustprune.data import load_splits
    from robustprune.deploy import adversarial_examples, export, get_format

    out = Path(out_dir)
    fmts = [get_format(f) for f in formats]  # an unknown format fails before any work
    if not fmts:
        raise ConfigError("export needs at least one format (onnx, torchscript, exported-program)")
    db = out / "results.sqlite"
    counts = {"exported": 0, "reused": 0, "failed": 0}
    with ResultsStore(db) as store:
        spec = store.get_meta("spec", {}) or {}
        eval_n = int(n or spec.get("eval_n") or 1000)
        ddir = data_dir or spec.get("data_dir")
        models = [m for m in store.models() if m.get("status", STATUS_DONE) == STATUS_DONE
                  and (model_ids is None or m["model_id"] in set(model_ids))]
        models.sort(key=lambda m: (m.get("kind") != "base", m.get("created_at") or 0))
        by_id = {m["model_id"]: m for m in store.models()}
        (out / "exports").mkdir(parents=True, exist_ok=True)
        splits_cache: dict[str, Any] = {}
        storage = None
        if spec.get("storage"):  # checkpoints kept in the study's storage: fetched into the study folder first
            from robustprune.study.storage import StorageLocation

            storage = StorageLocation(spec["storage"])
        for rec in models:
            mid = rec["model_id"]
            ckpt = _fetched(out, rec["checkpoint"], storage)
            parent = by_id.get(rec.get("parent_id") or "")
            if parent is not None and parent.get("checkpoint"):
                _fetched(out, parent["checkpoint"], storage)  # the card compares with it
            # the file itself, hashed now: an export is reused only while the checkpoint it came from is unchanged
            # (a truncated or deleted checkpoint is re-exported, which fails that row with the checkpoint's error)
            ckpt_hash = file_sha256(ckpt) if ckpt.is_file() else None
            todo = []
            for fmt in fmts:
                row = next(iter(store.exports("model_id = ? AND format = ?", (mid, fmt.name))), None)
                dest = out / "exports" / f"{mid}{fmt.suffix}"
                if (row and row["status"] == STATUS_DONE and row["checkpoint_sha256"] == rec.get("checkpoint_sha256")
                        and ckpt_hash == row["checkpoint_sha256"]
                        and dest.is_file() and file_sha256(dest) == row["file_sha256"]):
                    counts["reused"] += 1
                    continue
                todo.append((fmt, dest))
            if not todo:
                continue
            label = f"{rec.get('method') or 'unpruned'}" + (f" c={rec['rate']:g}" if rec.get("rate") else "") + \
                f" (seed {rec.get('seed')})"
            try:
                model, meta, masks = load_checkpoint(ckpt)
                ds = meta["dataset"]
                if ds not in splits_cache:
                    splits_cache[ds] = load_splits(ds, data_dir=ddir, val_size=0, test_limit=eval_n)
                splits = splits_cache[ds]
                x, y = splits.test.x[:eval_n].cpu(), splits.test.y[:eval_n].cpu()
                eps = float(splits.spec.eps_linf)
                t0 = time.perf_counter()
                x_adv = adversarial_examples(model, x, y, eps=eps, seed=int(rec.get("seed") or 0))
                craft_s = time.perf_counter() - t0
                prov, base_path = checkpoint_provenance(ckpt, meta, model=model, masks=masks)
                base = base_masks = None
                base_rec = by_id.get(rec.get("parent_id") or "")
                if base_path is not None:
                    base, _bm, base_masks = load_checkpoint(base_path)
            except Exception as exc:  # noqa: BLE001 - one model's failure never stops the others
                for fmt, _dest in todo:
                    _failed(store, mid, fmt.name, rec, exc, log, label)
                    counts["failed"] += 1
                continue
            for fmt, dest in todo:
                base_file = None
                if base_rec is not None:
                    brow = next(iter(store.exports("model_id = ? AND format = ? AND status = ?",
                                                   (base_rec["model_id"], fmt.name, STATUS_DONE))), None)
                    if brow is not None and (out / brow["file"]).is_file():
                        base_file = out / brow["file"]
                try:
                    res = export(model, dest, format=fmt.name, data=(x, y), x_adv=x_adv, eps=eps, masks=masks,
                                 base=base, base_masks=base_masks, base_file=base_file, provenance=prov,
                                 sparse=sparse and fmt.sparse_ok, latency_time=latency_time,
                                 seed=int(rec.get("seed") or 0))
                except Exception as exc:  # noqa: BLE001
                    _failed(store, mid, fmt.name, rec, exc, log, label)
                    counts["failed"] += 1
                    continue
                r = res.report
                r["verification"]["attack"] = {"name": "apgd", "eps": eps, "steps": 50, "n_target_classes": 3,
                                               "seed": int(rec.get("seed") or 0), "craft_seconds": craft_s}
                ver, dep, lat = r["verification"], r["sizes"]["deployed"], r.get("latency") or {}
                ms = lat.get("ms") or {}
                sp = lat.get("speedup") or {}
                store.put_export({
                    "model_id": mid, "format": fmt.name, "status": STATUS_DONE,
                    "file": str(dest.relative_to(out)), "file_sha256": file_sha256(dest),
                    "checkpoint_sha256": rec.get("checkpoint_sha256"), "file_bytes": dep["file_bytes"],
                    "params": dep["params"], "params_nonzero": dep["params_nonzero"],
                    "macs_dense": dep["macs_dense"], "macs_effective": dep["macs_effective"],
                    "units_removed": int(r["slim"].get("removed") or 0) if r["slim"].get("applied") else 0,
                    "max_abs_logit_diff": ver["max_abs_logit_diff"],
                    "prediction_agreement": ver["prediction_agreement"],
                    "robust_acc_model": ver.get("robust_acc_model"), "robust_acc_export": ver.get("robust_acc_export"),
                    "n_verify": ver["n"], "eps": eps,
                    "runtime_b1_ms": (ms.get(fmt.runtime) or {}).get("b1"),
                    "runtime_b64_ms": (ms.get(fmt.runtime) or {}).get("b64"),
                    "pytorch_b1_ms": (ms.get("pytorch") or {}).get("b1"),
                    "pytorch_b64_ms": (ms.get("pytorch") or {}).get("b64"),
                    "speedup_b1": sp.get(f"{fmt.runtime} b1"), "speedup_b64": sp.get(f"{fmt.runtime} b64"),
                    "report": r,
                })
                counts["exported"] += 1
                log(f"  exported {label} to {fmt.name}: {dep['file_bytes'] / 1e6:.2f} MB, logits within "
                    f"{ver['max_abs_logit_diff']:.2g}, APGD accuracy {100 * ver['robust_acc_export']:.1f} % (model "
                    f"{100 * ver['robust_acc_model']:.1f} %)"
                    + (f", {sp[f'{fmt.runtime} b64']:.2f}x the base's speed at batch 64" if sp else ""))
            del model
    return counts


def _failed(store: ResultsStore, model_id: str, fmt: str, rec: dict[str, Any], exc: BaseException,
            log: Callable[[str], None], label: str) -> None:
    msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if not isinstance(exc, RobustPruneError):
        msg = f"{type(exc).__name__}: {msg}"
    store.put_export({"model_id": model_id, "format": fmt, "status": STATUS_FAILED_EXPORT, "message": msg[:500],
                      "checkpoint_sha256": rec.get("checkpoint_sha256"),
                      "report": {"traceback": traceback.format_exc(limit=8)}})
    log(f"  export of {label} to {fmt} FAILED: {msg}")


def export_summary(out_dir: str | Path) -> str | None:
    """``"1 of 24 exports failed: ..."`` or None."""
    db = Path(out_dir) / "results.sqlite"
    with ResultsStore(db, readonly=True) as store:
        rows = store.exports()
    bad = [r for r in rows if r["status"] != STATUS_DONE]
    if not bad:
        return None
    return f"{len(bad)} of {len(rows)} exports failed: " + "; ".join(
        f"{r['model_id'][:10]} {r['format']}: {r['message']}" for r in bad[:3]) + (" ..." if len(bad) > 3 else "")
