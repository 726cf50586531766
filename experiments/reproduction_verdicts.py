"""Verdicts of the reproduction suite (studies/reproduce/*.yaml) from its results database.

    python experiments/reproduction_verdicts.py runs/reproduce/results.sqlite [more.sqlite ...]

For each claim: per-seed paired differences (a pruned model against its own seed's base model, or two models of the
same seed), their mean ± std over seeds, the standard error, and a verdict. An effect counts when |mean| > 2 standard
errors (with 3 seeds); a "keeps" claim holds when the mean is not significantly negative.

Models are told apart by their family, (architecture, width, base objective), so the unpruned LeNet-5-Caffe
(fast-AT) of the Merkle2022 / Jian2022 / Ye2019-schemes claims, the LeNet-MNIST widths (PGD-AT) of the Ye2019
prune-vs-scratch and Madaan2020 claims, and the AT-VS models never mix. Flags (e.g. ``not-converged``) are the methods'
own convergence verdicts; they are printed beside every level.
"""

from __future__ import annotations

import json
import math
import sqlite3
import sys

FAST_AT = ("lenet5-caffe", 1.0, "fast-at")
W = {w: ("lenet-mnist-w", float(w), "pgd-at") for w in (1, 2, 4)}
W4_ATVS = ("lenet-mnist-w", 4.0, "at-vs")
W4_ATVS_LARGE = ("lenet-mnist-w", 4.0, "at-vs lam=0.1")  # post-hoc sensitivity: madaan2020-at-vs-larger-weight.yaml

Key = tuple  # (family, method, rate, seed)

# Issue 29's reruns of the leaders' claims (studies/reproduce/*-reference-epochs, *-from-scratch-equal-filters,
# *-overfitting-budget): their own families, so that they never mix with the first runs.
PREACT_FAST_AT = ("preact-resnet8", 1.0, "fast-at")
PREACT_PGD_AT = ("preact-resnet8", 1.0, "pgd-at")
SEPARATE_FAMILIES = {"chen2022-flyingbird-overfitting-budget": "overfitting-budget",
                     "zhao2023-harp-vs-hydra-eight-pruning-epochs": "eight-pruning-epochs"}
PGD_AT_LENET_1000 = ("lenet5-caffe", 1.0, "pgd-at", "overfitting-budget")


def load(db: str) -> dict[Key, dict]:
    """Every model with at least 1,000 evaluated test points: clean, APGD and PGD accuracy at 0.1, white-box latent
    vulnerability, flags, achieved compression, training wall time and convergence record."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    models = {r["model_id"]: dict(r) for r in con.execute("SELECT * FROM models")}
    spec = con.execute("SELECT value FROM meta WHERE key = 'spec'").fetchone()
    study = (json.loads(spec["value"]) or {}).get("name") if spec else None
    tag = SEPARATE_FAMILIES.get(study)  # a rerun whose family would collide with its first run's

    def objective(mid: str) -> str:
        m = models[mid]
        if m["kind"] != "base" and m["parent_id"] in models:
            m = models[m["parent_id"]]
        o = json.loads(m["config"] or "{}").get("objective") or {}
        return o.get("name", "?") + (f" lam={o['lam']:g}" if o.get("lam") is not None else "")

    out: dict[Key, dict] = {}
    for r in con.execute("SELECT * FROM results WHERE n_eval >= 1000 AND (eps_str = '0.1' OR attack = 'clean')"):
        if r["model_id"] not in models:
            continue
        fam = (r["architecture"], float(r["width"] or 1.0), objective(r["model_id"])) + ((tag,) if tag else ())
        key = (fam, r["method"], r["rate"], r["seed"])
        e = out.setdefault(key, {"model_id": r["model_id"], "flags": json.loads(r["flags"] or "[]"),
                                 "converged": r["converged"], "achieved": r["achieved_compression"],
                                 "wall": models[r["model_id"]]["wall_time"],
                                 "convergence": json.loads(models[r["model_id"]]["convergence"] or "{}")})
        e[r["attack"]] = r["robust_acc"] if r["attack"] != "clean" else r["clean_acc"]
        if "overfit" not in e:
            e["overfit"] = robust_overfit(models[r["model_id"]])
            e["overfit_after_decay"], e["train_acc_final"] = after_first_decay(models[r["model_id"]])
        keys = r.keys()
        for col, field in (("filters_removed", "filters"), ("flops_removed", "flops")):
            if col in keys and r[col] is not None:
                e[field] = r[col]
    for v in con.execute("SELECT model_id, network FROM vulnerability WHERE threat = 'white' AND eps_str = '0.1'"):
        for e in out.values():
            if e["model_id"] == v["model_id"]:
                e["vuln"] = v["network"]
    return out


def robust_overfit(m: dict) -> float | None:
    """Best minus last validation robust accuracy over the training epochs (Chen2022's robust overfitting): a pruned
    model's own record (``convergence.robust_overfit``), or the base model's training history."""
    conv = json.loads(m.get("convergence") or "{}")
    if conv.get("robust_overfit") is not None:
        return float(conv["robust_overfit"])
    if m.get("kind") != "base":
        return None
    hist = [h.get("val_robust") for h in (json.loads(m.get("metrics") or "{}").get("history") or [])]
    hist = [v for v in hist if v is not None]
    return max(hist) - hist[-1] if hist else None


def after_first_decay(m: dict) -> tuple[float | None, float | None]:
    """A base model's best minus last validation robust accuracy counted from the first epoch after the first
    learning-rate drop (robust overfitting as Rice et al. 2020 and Chen2022 Fig. 1 show it: the decline after the
    decay), and its last epoch's training accuracy on the training attack's examples; (None, None) without a
    history. Added after the Chen2022 rerun had run (post hoc, reported as such)."""
    hist = [h for h in (json.loads(m.get("metrics") or "{}").get("history") or [])
            if isinstance(h, dict) and h.get("val_robust") is not None]
    if m.get("kind") != "base" or not hist or hist[0].get("lr") is None:
        return None, None
    after = [h["val_robust"] for h in hist if h["lr"] < hist[0]["lr"]]
    train = hist[-1].get("train_acc")
    return (max(after) - after[-1] if after else None), (float(train) if train is not None else None)


def stats(values: list[float]) -> tuple[float, float, float]:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return mean, sd, sd / math.sqrt(n) if n > 1 else float("nan")


def values(t: dict, fam, method, rate, field: str) -> dict[int, float]:
    return {k[3]: e[field] for k, e in t.items() if k[:3] == (fam, method, rate) and e.get(field) is not None}


def paired(t: dict, a: tuple, b: tuple, field: str = "apgd", scale: float = 100.0) -> list[float]:
    va, vb = values(t, *a, field), values(t, *b, field)
    return [scale * (va[s] - vb[s]) for s in sorted(va) if s in vb]


def level(t: dict, key: tuple, field: str = "apgd", scale: float = 100.0, digits: int = 1) -> str:
    v = list(values(t, *key, field).values())
    if not v:
        return "n/a"
    mean, sd, _ = stats(v)
    flags = sorted({f for k, e in t.items() if k[:3] == key for f in e["flags"]})
    return f"{scale * mean:.{digits}f} ± {scale * sd:.{digits}f}" + (f" ({', '.join(flags)})" if flags else "")


def effect(d: list[float], digits: int = 1) -> str:
    if len(d) < 2:
        return "n/a (fewer than 2 seeds)"
    mean, sd, se = stats(d)
    return f"{mean:+.{digits}f} ± {sd:.{digits}f} (SE {se:.{digits}f}, n={len(d)})"


def significant(d: list[float], sign: int) -> bool:
    if len(d) < 2:
        return False
    mean, _sd, se = stats(d)
    return sign * mean > 2 * se


def caveat(t: dict, *keys: tuple) -> str:
    """`` (caveat: ... did not converge)`` when any model of ``keys`` carries the ``not-converged`` flag, and
    `` (caveat: ... mechanism did not act)`` for ``mechanism-did-not-act``: a verdict resting on such a model describes
    the budget as much as the method."""
    out = ""
    for flag, words in (("not-converged", "did not converge"), ("mechanism-did-not-act", "mechanism did not act")):
        bad = [k[1] for k in keys if any(flag in e["flags"] for kk, e in t.items() if kk[:3] == k)]
        out += f" (caveat: {', '.join(dict.fromkeys(bad))} {words})" if bad else ""
    return out


def row(claim: str, comparison: str, levels: str, diff: str, verdict: str) -> None:
    if verdict and ("n=1)" in diff or "fewer than 2" in diff):
        verdict = "pending (fewer than 2 seeds)" if verdict else verdict
    print(f"| {claim} | {comparison} | {levels} | {diff} | {verdict} |")


def madaan2020(t: dict) -> None:
    at, anpvs, atvs = (W[4], "unpruned", 1.0), (W[4], "anp-vs-bbd", None), (W4_ATVS, "unpruned", 1.0)
    dv = paired(t, anpvs, at, "vuln", 1.0)
    if dv:
        dr = paired(t, anpvs, at)
        lower, keeps = significant(dv, -1), not significant(dr, -1)
        verdict = ("reproduced" if lower and keeps else "partly reproduced (lower vulnerability, lower robustness)"
                   if lower else "partly reproduced (robustness kept, vulnerability not lower)" if keeps
                   else "not reproduced")
        comp = [e["achieved"] for k, e in t.items() if k[:3] == anpvs and e.get("achieved")]
        comp_s = f"; learned x{min(comp):.2f}-{max(comp):.2f}" if comp else ""
        verdict += caveat(t, anpvs, at)
        row("Madaan2020 Table 1: ANP-VS lowers vulnerability vs AT at similar robustness",
            f"ANP-VS vs AT: latent vulnerability (LeNet-MNIST w=4{comp_s})",
            f"{level(t, anpvs, 'vuln', 1.0, 4)} vs {level(t, at, 'vuln', 1.0, 4)}", effect(dv, 4), verdict)
        row("(same)", "ANP-VS vs AT: APGD robust accuracy", f"{level(t, anpvs)} vs {level(t, at)}", effect(dr), "")
        row("(same)", "ANP-VS vs AT: clean accuracy", f"{level(t, anpvs, 'clean')} vs {level(t, at, 'clean')}",
            effect(paired(t, anpvs, at, "clean")), "")
    dr = paired(t, atvs, at)
    if dr:
        verdict = "reproduced" if significant(dr, +1) else "opposite" if significant(dr, -1) else "not reproduced"
        verdict += caveat(t, atvs, at)
        row("Madaan2020 Table 1: AT-VS improves robustness over AT", "AT-VS vs AT: APGD robust accuracy (w=4)",
            f"{level(t, atvs)} vs {level(t, at)}", effect(dr), verdict)
        row("(same)", "AT-VS vs AT: latent vulnerability", f"{level(t, atvs, 'vuln', 1.0, 4)} vs "
            f"{level(t, at, 'vuln', 1.0, 4)}", effect(paired(t, atvs, at, "vuln", 1.0), 4), "")
        row("(same)", "AT-VS vs AT: clean accuracy", f"{level(t, atvs, 'clean')} vs {level(t, at, 'clean')}",
            effect(paired(t, atvs, at, "clean")), "")
    large = (W4_ATVS_LARGE, "unpruned", 1.0)
    if paired(t, large, at):
        for label, field, scale, digits in (("APGD robust accuracy", "apgd", 100.0, 1),
                                            ("latent vulnerability", "vuln", 1.0, 4),
                                            ("clean accuracy", "clean", 100.0, 1)):
            row("(post-hoc sensitivity, not a verdict)", f"AT-VS with lambda_VS 0.1 vs AT: {label}",
                f"{level(t, large, field, scale, digits)} vs {level(t, at, field, scale, digits)}",
                effect(paired(t, large, at, field, scale), digits), "")


def ye2019(t: dict) -> None:
    pairs = [((W[4], "admm-irregular", 4.0), (W[2], "unpruned", 1.0), "w=4 pruned 4x vs w=2 from scratch"),
             ((W[2], "admm-irregular", 4.0), (W[1], "unpruned", 1.0), "w=2 pruned 4x vs w=1 from scratch")]
    found = [(a, b, label, paired(t, a, b)) for a, b, label in pairs if paired(t, a, b)]
    if found:
        wins = [significant(d, +1) for *_x, d in found]
        verdict = ("reproduced" if all(wins) else "partly reproduced" if any(wins) else
                   "opposite" if all(significant(d, -1) for *_x, d in found) else "not reproduced")
        verdict += caveat(t, *[k for a, b, *_x in found for k in (a, b)])
        for i, (a, b, label, d) in enumerate(found):
            row("Ye2019 Table 2: pruning a wide robust net beats training the small one from scratch" if i == 0
                else "(same)", f"{label}: APGD", f"{level(t, a)} vs {level(t, b)}", effect(d), verdict if i == 0
                else "")
            row("(same)", f"{label}: clean", f"{level(t, a, 'clean')} vs {level(t, b, 'clean')}",
                effect(paired(t, a, b, "clean")), "")
    schemes = [(FAST_AT, f"admm-{s}", 8.0) for s in ("irregular", "column", "filter")]
    if all(values(t, *k, "apgd") for k in schemes):
        irr, col, fil = schemes
        d1, d2, d3 = paired(t, irr, col), paired(t, col, fil), paired(t, irr, fil)
        reversal = significant(d1, -1) or significant(d2, -1) or significant(d3, -1)
        strict = significant(d1, +1) or significant(d2, +1) or significant(d3, +1)
        verdict = ("not reproduced (a significant reversal)" if reversal else "reproduced" if strict else
                   "partly reproduced (no reversal; the three are equal within noise)")
        verdict += caveat(t, *schemes)
        comp = {k[1]: stats([e["achieved"] for kk, e in t.items() if kk[:3] == k and e.get("achieved")])[0]
                for k in schemes}
        row("Ye2019 Tables 3-4: irregular >= column >= filter (AdvPrune, conv layers 8x)",
            "irregular vs column", f"{level(t, irr)} vs {level(t, col)}", effect(d1), verdict)
        row("(same)", "column vs filter", f"{level(t, col)} vs {level(t, fil)}", effect(d2), "")
        row("(same)", "irregular vs filter; overall compression " + ", ".join(f"{m[5:]} x{c:.3f}"
                                                                               for m, c in comp.items()),
            f"{level(t, irr)} vs {level(t, fil)}", effect(d3), "")


def merkle2022(t: dict) -> None:
    base = (FAST_AT, "unpruned", 1.0)
    mild = [(FAST_AT, "magnitude-unstructured-global", c) for c in (2.0, 4.0)]
    heavy = [(FAST_AT, "magnitude-unstructured-global", c) for c in (16.0, 32.0)]
    if all(paired(t, k, base) for k in mild + heavy):
        keeps = all(not significant(paired(t, k, base), -1) for k in mild)
        lowers = all(significant(paired(t, k, base), -1) for k in heavy)
        verdict = ("reproduced" if keeps and lowers else "partly reproduced" if keeps or lowers else
                   "not reproduced")
        verdict += caveat(t, base, *mild, *heavy)
        for k in mild + heavy:
            row("Merkle2022 Table 2: mild keeps, heavy lowers", f"c={k[2]:g} vs unpruned ({level(t, base)})",
                level(t, k), effect(paired(t, k, base)), verdict)


def jian2022(t: dict) -> None:
    base = (FAST_AT, "unpruned", 1.0)
    pw, ce, kd = ((FAST_AT, m, 16.0) for m in ("pwoa-irregular", "pwoa-irregular@ce", "pwoa-irregular@kd"))
    if paired(t, pw, ce):
        d = paired(t, pw, ce)
        keeps = not significant(paired(t, pw, base), -1)
        v = ("reproduced" if significant(d, +1) and keeps else
             "partly reproduced (beats CE, but loses robustness against the base)" if significant(d, +1) else
             "opposite" if significant(d, -1) else "not reproduced")
        v += caveat(t, pw, ce, base)
        row("Jian2022 Table II: PwoA keeps robustness where CE loses it", "PwoA vs CE at 16x",
            f"{level(t, pw)} vs {level(t, ce)}", effect(d), v)
        row("(same)", f"PwoA at 16x vs unpruned ({level(t, base)})", level(t, pw), effect(paired(t, pw, base)), "")
    if paired(t, pw, kd):
        d = paired(t, pw, kd)
        v = "reproduced" if significant(d, +1) else ("opposite" if significant(d, -1) else "not reproduced")
        v += caveat(t, pw, kd)
        row("Jian2022 Table II: HBaR adds robustness on top of KD", "KD + HBaR vs KD at 16x",
            f"{level(t, pw)} vs {level(t, kd)}", effect(d), v)
    adv = (FAST_AT, "admm-irregular@pgd10", 16.0)
    if paired(t, pw, adv):
        d = paired(t, pw, adv)
        wall = {m: stats(list(values(t, *k, "wall").values()))[0] for m, k in (("pwoa", pw), ("adv", adv))}
        similar = not significant(d, -1)
        v = ("reproduced (similar robustness; time: see bench)" if similar else
             "partly reproduced (faster, but less robust)")
        v += caveat(t, pw, adv)
        row("Jian2022 Fig. 3: PwoA reaches similar robustness several times faster than AdvPrune",
            "PwoA vs AdvPrune (PGD-10) at 16x: APGD", f"{level(t, pw)} vs {level(t, adv)}", effect(d), v)
        row("(same)", "training wall time per model (s; the runs shared the CPU differently: use the bench ratio)",
            f"{wall['pwoa']:.0f} vs {wall['adv']:.0f}", "", "")


def sehwag2020(t: dict) -> None:
    base = (FAST_AT, "unpruned", 1.0)
    hydra, lwm = (FAST_AT, "hydra", 16.0), (FAST_AT, "magnitude-unstructured-local@lwm", 16.0)
    if paired(t, hydra, lwm):
        d = paired(t, hydra, lwm)
        v = "reproduced" if significant(d, +1) else "opposite" if significant(d, -1) else "not reproduced"
        v += caveat(t, hydra, lwm)
        row("Sehwag2020 Tables 1-2: HYDRA keeps more robustness than LWM + the same adversarial fine-tuning",
            "HYDRA vs LWM at 16x (layer-local)", f"{level(t, hydra)} vs {level(t, lwm)}", effect(d), v)
        row("(same)", "HYDRA vs LWM at 16x: clean", f"{level(t, hydra, 'clean')} vs {level(t, lwm, 'clean')}",
            effect(paired(t, hydra, lwm, "clean")), "")
        row("(same)", f"HYDRA at 16x vs unpruned ({level(t, base)})", level(t, hydra), effect(paired(t, hydra, base)),
            "")


PGD_AT_LENET = ("lenet5-caffe", 1.0, "pgd-at")


def zhao2023(t: dict) -> None:
    hydra, harp, rates = ((FAST_AT, m, 100.0) for m in ("hydra", "harp", "harp@rates-only"))
    if paired(t, harp, hydra):
        dr, dc = paired(t, harp, hydra), paired(t, harp, hydra, "clean")
        v = ("reproduced" if significant(dr, +1) and significant(dc, +1) else
             "partly reproduced (more robust, not more accurate)" if significant(dr, +1) else
             "partly reproduced (more accurate, not more robust)" if significant(dc, +1) else
             "opposite" if significant(dr, -1) else "not reproduced")
        v += caveat(t, harp, hydra)
        row("Zhao2023 Table 2: at 99 % HARP keeps more clean and robust accuracy than HYDRA (same budget)",
            "HARP vs HYDRA at 100x: APGD", f"{level(t, harp)} vs {level(t, hydra)}", effect(dr), v)
        row("(same)", "HARP vs HYDRA at 100x: clean", f"{level(t, harp, 'clean')} vs {level(t, hydra, 'clean')}",
            effect(dc), "")
        if paired(t, rates, hydra):
            row("(same, ablation)", "learned per-layer rates alone (magnitude scores, not trained) vs HYDRA: APGD",
                f"{level(t, rates)} vs {level(t, hydra)}", effect(paired(t, rates, hydra)), "")
            row("(same, ablation)", "learned rates alone vs HYDRA: clean",
                f"{level(t, rates, 'clean')} vs {level(t, hydra, 'clean')}",
                effect(paired(t, rates, hydra, "clean")), "")


def chen2022(t: dict) -> None:
    dense, fb = (PGD_AT_LENET, "unpruned", 1.0), (PGD_AT_LENET, "flyingbird", 10.0)
    d = paired(t, fb, dense, "overfit")
    if d:
        dense_drop = list(values(t, *dense, "overfit").values())
        overfits = stats([100 * v for v in dense_drop])[0] > 0.5 and significant([100 * v for v in dense_drop], +1)
        v = ("reproduced" if significant(d, -1) else "opposite" if significant(d, +1) else "not reproduced")
        if not overfits:
            v = "not testable at this scale (the dense run does not overfit: its drop is within noise of 0)"
        v += caveat(t, fb, dense)
        row("Chen2022 Figs. 1, 4: Flying Bird overfits less than dense AT (best-to-final robust drop, validation)",
            "Flying Bird 90 % vs dense PGD-AT, 20 epochs from scratch: drop in points",
            f"{level(t, fb, 'overfit')} vs {level(t, dense, 'overfit')}", effect(d), v)
        row("(same)", "Flying Bird 90 % vs dense: APGD of the selected models", f"{level(t, fb)} vs {level(t, dense)}",
            effect(paired(t, fb, dense)), "")
        row("(same)", "Flying Bird 90 % vs dense: clean", f"{level(t, fb, 'clean')} vs {level(t, dense, 'clean')}",
            effect(paired(t, fb, dense, "clean")), "")


def li2023(t: dict) -> None:
    found = []
    for c in (2.0, 10.0):
        tr, mag = (FAST_AT, "twin-rep-filter", c), (FAST_AT, "magnitude-filter-global@same-schedule", c)
        if paired(t, tr, mag):
            found.append((c, tr, mag, paired(t, tr, mag)))
    if found:
        wins = [significant(d, +1) for *_x, d in found]
        v = ("reproduced" if all(wins) else "partly reproduced" if any(wins) else
             "opposite" if all(significant(d, -1) for *_x, d in found) else "not reproduced")
        v += caveat(t, *[k for _c, a, b, _d in found for k in (a, b)])
        gaps = [stats(paired(t, a, b, "filters"))[0] for _c, a, b, _d in found if paired(t, a, b, "filters")]
        if gaps and max(abs(g) for g in gaps) > 5:
            v += (f" (caveat: at the same number of convolution weights Twin-Rep removed {max(gaps):+.0f} points more "
                  "of the filters: not the paper's comparison at equal filter fractions)")
        for i, (c, tr, mag, d) in enumerate(found):
            row("Li2023 Tables 2-3: at 50-90 % of filters Twin-Rep beats magnitude filter pruning (same schedule)"
                if i == 0 else "(same)", f"Twin-Rep vs magnitude filter at c={c:g}: APGD",
                f"{level(t, tr)} vs {level(t, mag)}", effect(d), v if i == 0 else "")
            row("(same)", f"Twin-Rep vs magnitude filter at c={c:g}: clean",
                f"{level(t, tr, 'clean')} vs {level(t, mag, 'clean')}", effect(paired(t, tr, mag, "clean")), "")
            if values(t, *tr, "filters") and values(t, *mag, "filters"):
                row("(same)", f"at c={c:g} (the same number of convolution weights): filters removed; FLOPs removed "
                    f"{level(t, tr, 'flops')} vs {level(t, mag, 'flops')}",
                    f"{level(t, tr, 'filters')} vs {level(t, mag, 'filters')}",
                    effect(paired(t, tr, mag, "filters")), "")


def zhao2023_rerun(t: dict, family: tuple = PREACT_FAST_AT, epochs: int = 4) -> None:
    """zhao2023-harp-vs-hydra-reference-epochs.yaml (4 pruning epochs) and -eight-pruning-epochs.yaml (8, its own
    database and family): 391-step epochs, preact-resnet8, the body layers pruned."""
    hydra, harp = ((family, m, 100.0) for m in ("hydra", "harp"))
    dr = paired(t, harp, hydra)
    if not dr:
        return
    dc = paired(t, harp, hydra, "clean")
    v = ("reproduced" if significant(dr, +1) and significant(dc, +1) else
         "partly reproduced (more robust, not more accurate)" if significant(dr, +1) else
         "partly reproduced (more accurate, not more robust)" if significant(dc, +1) else
         "opposite" if significant(dr, -1) else "not reproduced")
    v += caveat(t, harp, hydra)
    conv = [e["convergence"] for k, e in t.items() if k[:3] == harp]
    reached = sum(bool(c.get("target_reached")) for c in conv)
    rescale = [c["rescale"] for c in conv if c.get("rescale") is not None]
    v += (f" (HARP reached its density on {reached} of {len(conv)} seeds"
          + (f"; export rescale {min(rescale):.2f}-{max(rescale):.2f}" if rescale else "") + ")")
    chance = [k[1] for k in (harp, hydra) if any("chance-accuracy" in e["flags"] for kk, e in t.items() if kk[:3] == k)]
    if chance:
        v += f" (caveat: {', '.join(chance)} at chance: a collapse, not an allocation, decides it)"
    row(f"Zhao2023 Table 2 (rerun, issue 29): HARP beats HYDRA at 99 % with 391-step epochs on a ResNet, {epochs} "
        "pruning epochs", "HARP vs HYDRA at 100x on preact-resnet8's body: APGD", f"{level(t, harp)} vs "
        f"{level(t, hydra)}", effect(dr), v)
    row("(same)", "HARP vs HYDRA at 100x: clean", f"{level(t, harp, 'clean')} vs {level(t, hydra, 'clean')}",
        effect(dc), "")


def li2023_rerun(t: dict) -> None:
    """li2023-twin-rep-from-scratch-equal-filters.yaml: from scratch, equal filter fractions, the same lr per step."""
    found = []
    for c in (2.0, 10.0):
        tr, mag = (PREACT_PGD_AT, "twin-rep-filter", c), (PREACT_PGD_AT, "magnitude-filter-global@same-schedule", c)
        if paired(t, tr, mag):
            found.append((c, tr, mag, paired(t, tr, mag)))
    if not found:
        return
    wins = [significant(d, +1) for *_x, d in found]
    v = ("reproduced" if all(wins) else "partly reproduced" if any(wins) else
         "opposite" if all(significant(d, -1) for *_x, d in found) else "not reproduced")
    v += caveat(t, *[k for _c, a, b, _d in found for k in (a, b)])
    for i, (c, tr, mag, d) in enumerate(found):
        row("Li2023 Tables 2-3 (rerun, issue 29): from scratch, at equal filter fractions, Twin-Rep beats magnitude "
            "filter pruning" if i == 0 else "(same)", f"Twin-Rep vs magnitude filter at {100 - 100 / c:g} % of the "
            "filters: APGD", f"{level(t, tr)} vs {level(t, mag)}", effect(d), v if i == 0 else "")
        row("(same)", f"at {100 - 100 / c:g} % of the filters: clean",
            f"{level(t, tr, 'clean')} vs {level(t, mag, 'clean')}", effect(paired(t, tr, mag, "clean")), "")
        if values(t, *tr, "filters") and values(t, *mag, "filters"):
            row("(same)", f"at {100 - 100 / c:g} % of the filters: filters removed (should be equal); FLOPs removed "
                f"{level(t, tr, 'flops')} vs {level(t, mag, 'flops')}",
                f"{level(t, tr, 'filters')} vs {level(t, mag, 'filters')}", effect(paired(t, tr, mag, "filters")), "")


def chen2022_rerun(t: dict) -> None:
    """chen2022-flyingbird-overfitting-budget.yaml: 100 epochs of 1,000 images."""
    dense, fb = (PGD_AT_LENET_1000, "unpruned", 1.0), (PGD_AT_LENET_1000, "flyingbird", 10.0)
    d = paired(t, fb, dense, "overfit")
    if not d:
        return
    drop = [100 * v for v in values(t, *dense, "overfit").values()]
    overfits = stats(drop)[0] > 0.5 and significant(drop, +1)
    v = ("reproduced" if significant(d, -1) else "opposite" if significant(d, +1) else "not reproduced")
    if not overfits:
        v = ("not testable on this budget either (100 epochs of 1,000 images: the dense run's drop is within noise "
             "of 0)")
    v += caveat(t, fb, dense)
    row("Chen2022 Figs. 1, 4 (rerun, issue 29): Flying Bird overfits less than dense AT, on a budget meant to overfit",
        "Flying Bird 90 % vs dense PGD-AT, 100 epochs of 1,000 images from scratch: drop in points",
        f"{level(t, fb, 'overfit')} vs {level(t, dense, 'overfit')}", effect(d), v)
    row("(same)", "Flying Bird 90 % vs dense: APGD of the selected models", f"{level(t, fb)} vs {level(t, dense)}",
        effect(paired(t, fb, dense)), "")
    row("(same)", "Flying Bird 90 % vs dense: clean", f"{level(t, fb, 'clean')} vs {level(t, dense, 'clean')}",
        effect(paired(t, fb, dense, "clean")), "")
    if values(t, *dense, "overfit_after_decay"):
        row("(same, post hoc)", "dense PGD-AT: drop counted from the first lr decay (the paper's robust overfitting); "
            "its last training accuracy on PGD examples", f"{level(t, dense, 'overfit_after_decay')}; "
            f"{level(t, dense, 'train_acc_final')}", "", "")


def main(*dbs: str) -> None:
    t: dict = {}
    for db in dbs:
        t.update(load(db))
    print("| claim | comparison | level (mean ± std over seeds; % unless vulnerability) | paired difference | "
          "verdict |")
    print("|---|---|---|---|---|")
    madaan2020(t)
    ye2019(t)
    merkle2022(t)
    jian2022(t)
    sehwag2020(t)
    zhao2023(t)
    chen2022(t)
    li2023(t)
    zhao2023_rerun(t)
    zhao2023_rerun(t, PREACT_FAST_AT + ("eight-pruning-epochs",), epochs=8)
    li2023_rerun(t)
    chen2022_rerun(t)


if __name__ == "__main__":
    main(*(sys.argv[1:] or ["runs/reproduce/results.sqlite"]))
