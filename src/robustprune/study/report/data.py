"""What the report shows, as data: result rows grouped into entries (one model configuration evaluated on n points,
aggregated over seeds), measured columns (one attack configuration at one ε), baselines, comparisons with their
noise, and flags. No rendering here.

Aggregation rule: rows are averaged ("mean ± std over seeds") only when they differ in nothing but the seed, i.e.
they share ``(model_key, attack_hash, eps_str, n_eval)``. An entry is ``(model_key, n_eval)``; a column is
``(attack_hash, eps_str)``; a cell is their intersection. Anything else (another attack configuration, another
number of points, another model configuration) is another column or another row, never a mean.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from robustprune.study.store import FLAG_NOT_CONVERGED, FLAGS

TRANSFER_PREFIX = "transfer-"

# ---- statistics ------------------------------------------------------------------------------------------------


@dataclass
class Stat:
    """Values over seeds (one per seed)."""

    values: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values) if self.values else float("nan")

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds; None with a single seed (the spread is unknown)."""
        if len(self.values) < 2:
            return None
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (len(self.values) - 1))

    def __bool__(self) -> bool:
        return bool(self.values)

    def text(self, scale: float = 100.0, digits: int = 1) -> str:
        if not self.values:
            return ""
        sd = self.std
        return f"{scale * self.mean:.{digits}f}" + (f" ± {scale * sd:.{digits}f}" if sd is not None else "")


BETTER, WORSE, NOISE, UNKNOWN = "better", "worse", "within-noise", "spread-unknown"


@dataclass
class Comparison:
    """A value against its reference (the unpruned model): relative change (%) and whether it exceeds the noise.

    ``verdict``: 'better' / 'worse' (the difference of the means exceeds 2 std of the difference,
    2·sqrt(sd_a² + sd_b²), both over at least 2 seeds), 'within-noise', or 'spread-unknown' (a single seed on
    either side: nothing is marked)."""

    change: float | None  # relative change of the mean, %
    diff: float
    verdict: str
    confounded: bool = False  # a "better" vulnerability that came with an accuracy collapse


def compare(value: Stat, ref: Stat, good: int = +1) -> Comparison | None:
    if not value or not ref:
        return None
    diff = value.mean - ref.mean
    change = 100.0 * diff / ref.mean if ref.mean > 0 else None
    if value.std is None or ref.std is None:
        verdict = UNKNOWN
    else:
        noise = 2.0 * math.sqrt(value.std ** 2 + ref.std ** 2)
        if abs(diff) <= noise or good == 0:
            verdict = NOISE
        else:
            verdict = BETTER if diff * good > 0 else WORSE
    return Comparison(change, diff, verdict)


# ---- columns -----------------------------------------------------------------------------------------------------


@dataclass
class Column:
    """One measured quantity: an attack configuration at one ε (``attack == 'clean'``: clean accuracy)."""

    attack: str
    attack_hash: str
    eps: float
    eps_str: str
    norm: str | None
    config: dict[str, Any]
    label: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.attack_hash, self.eps_str)

    @property
    def transfer(self) -> bool:
        return self.attack.startswith(TRANSFER_PREFIX)

    @property
    def base_attack(self) -> str:
        return self.attack[len(TRANSFER_PREFIX):] if self.transfer else self.attack


def _config(text: Any) -> dict[str, Any]:
    if isinstance(text, dict):
        return text
    try:
        out = json.loads(text or "{}")
    except (TypeError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True, separators=(",", ":"))
    return str(v)


def _label_columns(cols: list[Column]) -> None:
    """``attack@ε``; when one attack name has several configurations, the settings that differ are added, e.g.
    ``pgd[steps=10]@0.1`` and ``pgd[steps=20]@0.1``."""
    def scale_free(col: Column) -> dict[str, Any]:
        # settings that scale with the budget (the default step 2.5 eps / steps) are one configuration across eps
        cfg = col.config
        out = {k: v for k, v in cfg.items() if k not in ("eps", "transfer_from")}
        try:
            from robustprune.utils import parse_eps

            eps = float(cfg.get("eps") or parse_eps(col.eps_str))
        except Exception:  # noqa: BLE001  (an unparsable budget string: compare the settings as they are)
            eps = None
        if isinstance(out.get("alpha"), (int, float)) and isinstance(eps, (int, float)) and eps > 0:
            out["alpha"] = f"{out['alpha'] / eps:.6g} eps"
        return out

    by_name: dict[str, dict[str, dict[str, Any]]] = {}
    for c in cols:
        by_name.setdefault(c.attack, {})[json.dumps(scale_free(c), sort_keys=True, default=str)] = scale_free(c)
    for c in cols:
        configs = by_name[c.attack]
        tag = ""
        if len(configs) > 1:
            keys = sorted({k for cfg in configs.values() for k in cfg if k not in ("eps", "transfer_from")})
            differ = [k for k in keys if len({_short(cfg.get(k)) for cfg in configs.values()}) > 1]
            tag = ",".join(f"{k}={_short(scale_free(c).get(k))}" for k in differ) or c.attack_hash[:6]
            tag = f"[{tag}]"
        c.label = "clean" if c.attack == "clean" else f"{c.attack}{tag}@{c.eps_str}"


# ---- entries -----------------------------------------------------------------------------------------------------


@dataclass
class Entry:
    """One model configuration (``model_key``; the model_id when the writer stored none) evaluated on ``n_eval``
    points, aggregated over seeds."""

    key: tuple[str, int]
    dataset: str
    architecture: str
    width: float | None
    method: str
    group: str | None
    scope: str | None
    schedule: str | None
    rate: float | None
    rate_kind: str
    settings: dict[str, Any]
    n_eval: int
    seeds: list[int] = field(default_factory=list)
    model_ids: list[str] = field(default_factory=list)
    cells: dict[tuple[str, str], Stat] = field(default_factory=dict)
    achieved: Stat = field(default_factory=Stat)       # achieved overall compression (prunable weights)
    sparsity: Stat = field(default_factory=Stat)
    filters_removed: Stat = field(default_factory=Stat)  # conv filters gone / the base's (all-zero or cut)
    flops_removed: Stat = field(default_factory=Stat)  # 1 - dense MACs of the slim model / the base's
    flops_ratio: Stat = field(default_factory=Stat)    # effective / dense MACs
    params_ratio: Stat = field(default_factory=Stat)   # non-zero / total parameters
    params_nonzero: Stat = field(default_factory=Stat)
    flops_effective: Stat = field(default_factory=Stat)
    train_time: Stat = field(default_factory=Stat)
    train_epochs: Stat = field(default_factory=Stat)
    train_steps: Stat = field(default_factory=Stat)
    eval_time: Stat = field(default_factory=Stat)      # all attacks of one model, per seed
    flag_seeds: dict[str, list[int]] = field(default_factory=dict)  # flag -> seeds that carry it
    convergence: dict[int, dict[str, Any]] = field(default_factory=dict)  # seed -> the method's signals
    converged: dict[int, int | None] = field(default_factory=dict)
    parent_key: str | None = None                      # model_key of the unpruned model it was pruned from
    variant: str = ""                                  # what tells it apart from same-method entries
    v_white: Stat = field(default_factory=Stat)
    v_black: Stat = field(default_factory=Stat)
    v_col: tuple[str, str] | None = None               # the column the vulnerability was measured under

    @property
    def model_key(self) -> str:
        return self.key[0]

    @property
    def unpruned(self) -> bool:
        return self.rate_kind == "none" or self.method == "unpruned"

    @property
    def learned(self) -> bool:
        return self.rate_kind == "learned"

    @property
    def name(self) -> str:
        return self.method + (f" {self.variant}" if self.variant else "")

    @property
    def flags(self) -> list[str]:
        return sorted(self.flag_seeds, key=flag_order)

    def cell(self, col: Column | tuple[str, str] | None) -> Stat:
        if col is None:
            return Stat()
        return self.cells.get(col.key if isinstance(col, Column) else col, Stat())

    @property
    def clean(self) -> Stat:
        return next((s for (h, _), s in self.cells.items() if h == "clean"), Stat())

    @property
    def x(self) -> float:
        """Where the entry sits on a compression axis: the achieved overall compression (mean over seeds)."""
        if self.unpruned:
            return 1.0
        if self.achieved:
            return max(self.achieved.mean, 1.0)
        return self.rate or 1.0

    def rate_text(self) -> str:
        """The target rate as shown: '4', '1' (unpruned), 'learned (×5.1)' (with the achieved value)."""
        if self.learned:
            return "learned" + (f" (×{self.achieved.mean:.1f})" if self.achieved else " (achieved rate not stored)")
        return f"{self.rate if self.rate is not None else 1.0:g}"

    def achieved_text(self) -> str:
        return f"×{self.achieved.mean:.2f}" if self.achieved else ""

    def sparsity_text(self) -> str:
        """The target sparsity (%) of the rate, s = 1 - 1/c: '75' for c = 4, '0' unpruned, 'learned'."""
        from robustprune.rates import sparsity_percent

        if self.learned:
            return "learned"
        return sparsity_percent(self.rate if self.rate is not None else 1.0)

    @property
    def rate_counts(self) -> str:
        """What the target rate (and the target sparsity 1 - 1/c) counts: ``weights`` (unstructured; or a structured
        method with ``budget: weights``), ``filters`` / ``kernels`` / ``columns`` (a structured method: the fraction
        of its groups removed, per its scope), ``learned`` or ``none`` (unpruned)."""
        if self.unpruned:
            return "none"
        if self.learned:
            return "learned"
        group = self.group or "unstructured"
        if group == "unstructured" or (self.settings or {}).get("budget") == "weights":
            return "weights"
        return {"filter": "filters", "kernel": "kernels", "column": "columns"}.get(group, group)

    def sort_rate(self) -> tuple[int, float]:
        return (1, self.x) if self.learned else (0, self.rate or 1.0)


def flag_order(flag: str) -> tuple[int, str]:
    known = [FLAG_NOT_CONVERGED, *[f for f in FLAGS if f != FLAG_NOT_CONVERGED]]
    return (known.index(flag), flag) if flag in known else (len(known), flag)


def _line_key(e: Entry) -> tuple:
    return (e.dataset, e.architecture, e.width, e.method, json.dumps(e.settings, sort_keys=True, default=str),
            e.group, e.scope, e.schedule, e.parent_key, e.n_eval)


def line_key(e: Entry) -> tuple:
    """Entries on one curve: the same method and settings from the same unpruned model on the same n points,
    at different rates."""
    return _line_key(e)


@dataclass
class Group:
    """One (dataset, architecture): its entries, its measured columns, and the study's grid of set rates."""

    dataset: str
    architecture: str
    entries: list[Entry]
    columns: list[Column]

    @property
    def title(self) -> str:
        return f"{self.dataset} / {self.architecture}"

    @property
    def rate_grid(self) -> list[float]:
        return sorted({e.rate for e in self.entries if e.rate_kind == "set" and e.rate is not None} | {1.0})

    def attack_columns(self, *, transfer: bool | None = None) -> list[Column]:
        cols = [c for c in self.columns if c.attack != "clean"]
        if transfer is not None:
            cols = [c for c in cols if c.transfer == transfer]
        return cols

    def baseline(self, e: Entry) -> Entry | None:
        """The unpruned entry ``e`` is compared with: its parent's configuration on the same n points; else the only
        unpruned configuration of the group on those points."""
        if e.unpruned:
            return None
        same_n = [b for b in self.entries if b.unpruned and b.n_eval == e.n_eval]
        if e.parent_key is not None:
            match = [b for b in same_n if b.model_key == e.parent_key]
            if match:
                return match[0]
        return same_n[0] if len({b.model_key for b in same_n}) == 1 else None

    def sorted_by_method(self) -> list[Entry]:
        """Unpruned first, then by method, then by rate (learned last)."""
        return sorted(self.entries, key=lambda e: (not e.unpruned, e.method, e.variant, e.sort_rate(), e.n_eval))

    def sorted_by_rate(self) -> list[Entry]:
        """Unpruned first, then by rate (learned last), methods side by side within a rate."""
        return sorted(self.entries, key=lambda e: (not e.unpruned, e.sort_rate(), e.method, e.variant, e.n_eval))


@dataclass
class ReportData:
    groups: list[Group]
    rows: list[dict[str, Any]]
    models: list[dict[str, Any]]
    checks: list[dict[str, Any]]
    vulns: list[dict[str, Any]]
    meta: dict[str, Any]
    spec: dict[str, Any]
    entry_of_model: dict[str, list[Entry]]
    failures: list[dict[str, Any]] = field(default_factory=list)
    """Cells that failed or were not run (the database's ``failures`` table), oldest first."""
    exports: list[dict[str, Any]] = field(default_factory=list)
    """The deployment exports of the study's models (the database's ``exports`` table)."""

    @property
    def n_values(self) -> list[int]:
        return sorted({e.n_eval for g in self.groups for e in g.entries})

    @property
    def seeds(self) -> list[int]:
        return sorted({s for g in self.groups for e in g.entries for s in e.seeds})

    @property
    def has_apgd(self) -> bool:
        return any(c.attack == "apgd" for g in self.groups for c in g.columns)


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _root_key(model_id: str | None, models: dict[str, dict[str, Any]]) -> str | None:
    """The model_key of the unpruned ancestor of ``model_id`` (following parent_id)."""
    seen: set[str] = set()
    cur = models.get(model_id or "")
    while cur is not None and cur["model_id"] not in seen:
        seen.add(cur["model_id"])
        if cur.get("kind") == "base" or cur.get("method") == "unpruned" or not cur.get("parent_id"):
            return cur.get("model_key") or f"id:{cur['model_id']}"
        cur = models.get(cur["parent_id"])
    return None


def build(rows: list[dict[str, Any]], models: list[dict[str, Any]], checks: list[dict[str, Any]],
          vulns: list[dict[str, Any]], meta: dict[str, Any] | None = None,
          spec: dict[str, Any] | None = None, failures: list[dict[str, Any]] | None = None,
          exports: list[dict[str, Any]] | None = None) -> ReportData:
    """Group rows into entries and columns (see the module docstring)."""
    by_model = {m["model_id"]: m for m in models}
    entries: dict[tuple[str, int], Entry] = {}
    columns: dict[tuple[str, str], dict[tuple[str, str], Column]] = {}
    entry_of_model: dict[str, list[Entry]] = {}
    seen_model: set[tuple[tuple[str, int], str]] = set()
    for r in rows:
        mk = r.get("model_key") or f"id:{r['model_id']}"
        n = int(r.get("n_eval") or 0)
        key = (mk, n)
        e = entries.get(key)
        if e is None:
            e = entries[key] = Entry(
                key=key, dataset=r["dataset"], architecture=r["architecture"], width=_num(r.get("width")),
                method=r["method"], group=r.get("group"), scope=r.get("scope"), schedule=r.get("schedule"),
                rate=_num(r.get("rate")), rate_kind=r.get("rate_kind") or ("none" if r["method"] == "unpruned"
                                                                              else "set"),
                settings=r.get("settings") if isinstance(r.get("settings"), dict) else _config(r.get("settings")),
                n_eval=n, parent_key=_root_key(r["model_id"], by_model) if r["method"] != "unpruned" else None)
        g = (r["dataset"], r["architecture"])
        ck = (r["attack_hash"], r["eps_str"])
        if ck not in columns.setdefault(g, {}):
            columns[g][ck] = Column(r["attack"], r["attack_hash"], float(r["eps"]), r["eps_str"], r.get("norm"),
                                    _config(r.get("attack_config")))
        acc = _num(r.get("robust_acc"))
        if acc is not None:
            e.cells.setdefault(ck, Stat()).values.append(acc)
        seed = int(r["seed"]) if r.get("seed") is not None else 0
        if (key, r["model_id"]) not in seen_model:  # once per model (seed)
            seen_model.add((key, r["model_id"]))
            e.seeds.append(seed)
            e.model_ids.append(r["model_id"])
            entry_of_model.setdefault(r["model_id"], []).append(e)
            ac = _num(r.get("achieved_compression"))
            if ac is not None:
                e.achieved.values.append(ac)
            for stat, v in ((e.sparsity, r.get("achieved_sparsity")), (e.filters_removed, r.get("filters_removed")),
                            (e.flops_removed, r.get("flops_removed")), (e.params_nonzero, r.get("params_nonzero")),
                            (e.flops_effective, r.get("flops_effective")), (e.train_time, r.get("train_wall_time")),
                            (e.train_epochs, r.get("train_epochs")), (e.train_steps, r.get("train_steps"))):
                if _num(v) is not None:
                    stat.values.append(float(v))
            if _num(r.get("flops_dense")):
                e.flops_ratio.values.append(float(r.get("flops_effective") or 0) / float(r["flops_dense"]))
            if _num(r.get("params_total")):
                e.params_ratio.values.append(float(r.get("params_nonzero") or 0) / float(r["params_total"]))
            m = by_model.get(r["model_id"], {})
            conv = r.get("converged") if r.get("converged") is not None else m.get("converged")
            e.converged[seed] = conv
            flags = set(r.get("flags") or []) | set(m.get("flags") or [])
            if conv == 0:
                flags.add(FLAG_NOT_CONVERGED)
            for f in flags:
                e.flag_seeds.setdefault(f, []).append(seed)
            if m.get("convergence"):
                e.convergence[seed] = m["convergence"]
            e.eval_time.values.append(0.0)
        e.eval_time.values[e.model_ids.index(r["model_id"])] += float(r.get("eval_wall_time") or 0.0)
    # vulnerability: attached to the entry whose rows hold the measured attack at that ε on that model
    row_n = {(r["model_id"], r["attack_hash"], r["eps_str"]): int(r.get("n_eval") or 0) for r in rows}
    for v in vulns:
        for e in entry_of_model.get(v["model_id"], []):
            if row_n.get((v["model_id"], v["attack_hash"], v["eps_str"])) == e.n_eval:
                (e.v_white if v["threat"] == "white" else e.v_black).values.append(float(v["network"]))
                if v["threat"] == "white":
                    e.v_col = (v["attack_hash"], v["eps_str"])
    groups = []
    for g in sorted({(e.dataset, e.architecture) for e in entries.values()}):
        ents = [e for e in entries.values() if (e.dataset, e.architecture) == g]
        cols = list(columns.get(g, {}).values())
        _label_columns(cols)
        cols.sort(key=lambda c: (c.attack != "clean", c.transfer, c.attack, c.label, c.eps))
        _name_variants(ents)
        groups.append(Group(g[0], g[1], ents, cols))
    return ReportData(groups, rows, models, checks, vulns, meta or {}, spec or {}, entry_of_model,
                      list(failures or []), list(exports or []))


def _name_variants(entries: list[Entry]) -> None:
    """Entries of one method that are different configurations at the same rate (or on different n, or from
    different unpruned models) get a short label saying what differs."""
    by_method: dict[str, dict[tuple, list[Entry]]] = {}
    for e in entries:  # n is not a variant: every table has an n column, and figures name n when it differs
        by_method.setdefault(e.method, {}).setdefault(line_key(e)[:9], []).append(e)
    for method, lines in by_method.items():
        if len(lines) < 2:
            continue
        keys = list(lines)
        settings = [json.loads(k[4]) for k in keys]
        differ = sorted({s for cfg in settings for s in cfg if len({_short(c.get(s)) for c in settings}) > 1})
        for i, k in enumerate(keys):
            parts = [f"{s}={_short(settings[i].get(s))}" for s in differ[:3]]
            if len({kk[8] for kk in keys}) > 1 and not parts:
                parts.append(f"base {str(k[8])[:6]}")
            for name, pos in (("group", 5), ("scope", 6), ("schedule", 7)):
                if len({kk[pos] for kk in keys}) > 1:
                    parts.append(f"{name}={k[pos]}")
            label = "[" + (", ".join(parts) or f"config {chr(ord('a') + i)}") + "]"
            for e in lines[k]:
                e.variant = label


def summarize_convergence(conv: dict[str, Any], limit: int = 4) -> str:
    """A method's convergence signals in a few words: scalars as they are, per-layer dicts as their maximum,
    curves as first → last."""
    parts = []
    for k, v in conv.items():
        if len(parts) >= limit:
            break
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, (int, float)):
            parts.append(f"{k} {v:.3g}")
        elif isinstance(v, dict):
            nums = [float(x) for x in v.values() if isinstance(x, (int, float)) and not isinstance(x, bool)]
            if nums:
                parts.append(f"{k} max {max(nums):.3g}")
        elif isinstance(v, list):
            nums = [float(x) for x in v if isinstance(x, (int, float)) and not isinstance(x, bool)]
            if len(nums) >= 2:
                parts.append(f"{k} {nums[0]:.3g} → {nums[-1]:.3g}")
    return ", ".join(parts)
