"""The report reads as science: seeds are averaged only when nothing else differs, n is stated per row, flags and
non-convergence are marked, changes within noise are not called gains, learned rates show their achieved value,
APGD leads the headline table when present, and lines never cross a rate that was not run."""

from __future__ import annotations

import re

import pytest

from report_db import add_model, write_spec
from robustprune.study import ResultsStore, write_report
from robustprune.study.report import load
from robustprune.study.report.figures import segments
from robustprune.study.report.tables import Marks, comparison_tables, headline_tables, robustness_table


def _md_rows(md: str, section: str) -> list[list[str]]:
    """The table rows (cells stripped) of the first table after the heading ``section``."""
    text = md.split(section, 1)[1]
    rows = []
    started = False
    for line in text.splitlines():
        if line.startswith("|"):
            started = True
            if not line.startswith("|---"):
                rows.append([c.strip() for c in line.strip("|").split("|")])
        elif started:
            break
    return rows


def test_runs_that_differ_in_more_than_the_seed_are_never_averaged(tmp_path):
    """PGD-20 on 1,000 points and PGD-10 on 200 points of the same model: two rows and two columns, no mean of
    66.1 and 67.5; two seeds of one configuration: one mean ± std."""
    with ResultsStore(tmp_path / "results.sqlite") as store:
        write_spec(tmp_path, store)
        add_model(store, tmp_path, method="unpruned", seed=0, clean=0.80, n=1000,
                  accs={("pgd", 0.1, 20, False): 0.661})
        add_model(store, tmp_path, method="unpruned", seed=0, clean=0.81, n=200,
                  accs={("pgd", 0.1, 10, False): 0.675})
        for seed, acc in ((0, 0.60), (1, 0.64)):
            add_model(store, tmp_path, method="magnitude-unstructured-global", seed=seed, rate=4.0, parent="base",
                      clean=0.78, n=1000, accs={("pgd", 0.1, 20, False): acc})
    data = load(tmp_path)
    (g,) = data.groups
    assert {c.label for c in g.attack_columns()} == {"pgd[steps=20]@0.1", "pgd[steps=10]@0.1"}
    base = {e.n_eval: e for e in g.entries if e.unpruned}
    assert set(base) == {1000, 200}
    by = {c.label: c for c in g.columns}
    assert base[1000].cell(by["pgd[steps=20]@0.1"]).values == [0.661] and not base[1000].cell(by["pgd[steps=10]@0.1"])
    assert base[200].cell(by["pgd[steps=10]@0.1"]).values == [0.675]
    pruned = next(e for e in g.entries if not e.unpruned)
    assert pruned.cell(by["pgd[steps=20]@0.1"]).mean == pytest.approx(0.62) and pruned.seeds == [0, 1]
    assert g.baseline(pruned) is base[1000]  # compared on the same 1,000 points
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "66.8" not in md  # the old report's mixed mean
    rows = _md_rows(md, "## Headline")
    assert rows[0][:6] == ["method", "c", "sparsity (%)", "achieved", "n", "seeds"]
    head = rows[0]
    cell = {(r[0], r[4]): dict(zip(head, r)) for r in rows[1:]}
    assert cell[("magnitude-unstructured-global", "1000")]["sparsity (%)"] == "75"  # c = 4 is sparsity 75 %
    assert cell[("unpruned", "1000")]["sparsity (%)"] == "0"
    assert cell[("unpruned", "1000")]["pgd[steps=20]@0.1 (%)"] == "66.1"
    assert cell[("unpruned", "200")]["pgd[steps=10]@0.1 (%)"] == "67.5"
    assert cell[("unpruned", "200")]["pgd[steps=20]@0.1 (%)"] == ""
    assert cell[("magnitude-unstructured-global", "1000")]["pgd[steps=20]@0.1 (%)"] == "62.0 ± 2.8"
    assert "first 1000 test images" not in md and "n differs between rows" in md


def test_learned_rates_show_their_achieved_value_and_configurations_stay_apart(tmp_path):
    with ResultsStore(tmp_path / "results.sqlite") as store:
        add_model(store, tmp_path, method="unpruned", seed=0, clean=0.8, accs={("pgd", 0.1, 20, False): 0.6})
        add_model(store, tmp_path, method="anp-bbd", seed=0, rate=None, rate_kind="learned", group="filter",
                  parent="base", achieved=4.7, settings={"gamma": 1e-4}, clean=0.7,
                  accs={("pgd", 0.1, 20, False): 0.5})
        add_model(store, tmp_path, method="anp-bbd", seed=0, rate=None, rate_kind="learned", group="filter",
                  parent="base", achieved=1.0, settings={"gamma": 1e-6}, clean=0.8, flags=["nothing-pruned"],
                  accs={("pgd", 0.1, 20, False): 0.6})
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    rows = _md_rows(md, "## Headline")[1:]
    anp = [r for r in rows if r[0].startswith("anp-bbd")]
    assert sorted(r[1] for r in anp) == ["learned (×1.0)", "learned (×4.7)"]  # never "0", never averaged (×2.85)
    assert {r[2] for r in anp} == {"learned"}  # no target sparsity for a learned rate
    assert {r[0] for r in anp} == {"anp-bbd [gamma=0.0001]", "anp-bbd [gamma=1e-06] †"}
    assert "† nothing was pruned: anp-bbd [gamma=1e-06] c=learned (×1.0) (seed 0 of 1)." in md
    tables = md.split("## Models")[0]
    assert "×2.85" not in tables and not re.search(r"\| anp-bbd[^|]*\| 0 \|", md)
    models = _md_rows(md, "## Models")
    assert models[0][:4] == ["model id", "role", "method", "c"] and models[1][1] == "unpruned base"
    assert sorted(r[3] for r in models[2:]) == ["learned (×1.0)", "learned (×4.7)"]


def test_apgd_leads_the_headline_table_when_present(tmp_path):
    accs = {("apgd", 0.1, None, False): 0.627, ("pgd", 0.1, 20, False): 0.661, ("pgd", 0.05, 20, False): 0.75}
    with ResultsStore(tmp_path / "results.sqlite") as store:
        add_model(store, tmp_path, method="unpruned", seed=0, clean=0.8, accs=accs)
    data = load(tmp_path)
    (t,) = headline_tables(data, Marks(data))
    assert t.header[6:] == ["clean (%)", "apgd@0.1 (%)", "pgd@0.1 (%)"]  # PGD only at APGD's ε
    assert [c.text for c in t.rows[0][6:]] == ["80.0", "62.7", "66.1 *"]  # PGD 3.4 points above APGD: marked
    assert any(n.startswith("* PGD exceeds APGD") for n in t.notes)
    write_report(tmp_path)
    assert "## Headline: clean / APGD / PGD per model" in (tmp_path / "report.md").read_text()

    no_apgd = tmp_path / "pgd-only"
    with ResultsStore(no_apgd / "results.sqlite") as store:
        add_model(store, no_apgd, method="unpruned", seed=0, clean=0.8,
                  accs={k: v for k, v in accs.items() if k[0] == "pgd"})
    data = load(no_apgd)
    (t,) = headline_tables(data, Marks(data))
    assert t.header[6:] == ["clean (%)", "pgd@0.05 (%)", "pgd@0.1 (%)"]
    assert any("headline attack is PGD (no APGD rows" in n for n in t.notes)


def test_one_seed_marks_nothing_and_says_the_spread_is_unknown(tmp_path):
    with ResultsStore(tmp_path / "results.sqlite") as store:
        add_model(store, tmp_path, method="unpruned", seed=0, clean=0.8, accs={("pgd", 0.1, 20, False): 0.6})
        add_model(store, tmp_path, method="magnitude-unstructured-global", seed=0, rate=2.0, parent="base",
                  clean=0.85, accs={("pgd", 0.1, 20, False): 0.7})  # +10 points, but one seed
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    page = (tmp_path / "report.html").read_text()
    assert "**" not in md and 'class="gain"' not in page and 'class="loss"' not in page
    assert "the spread over seeds is unknown" in md and "(+16.7%)" in md


def test_changes_within_two_std_are_not_marked(tmp_path):
    with ResultsStore(tmp_path / "results.sqlite") as store:
        for seed, (b, p) in enumerate(((0.60, 0.62), (0.64, 0.66), (0.62, 0.64))):
            add_model(store, tmp_path, method="unpruned", seed=seed, clean=0.8, accs={("pgd", 0.1, 20, False): b})
            add_model(store, tmp_path, method="magnitude-unstructured-global", seed=seed, rate=2.0, parent="base",
                      clean=0.8 + 0.001 * seed, accs={("pgd", 0.1, 20, False): p})  # +2 points, std 2 points
            add_model(store, tmp_path, method="magnitude-unstructured-global", seed=seed, rate=8.0, parent="base",
                      clean=0.8, accs={("pgd", 0.1, 20, False): b - 0.2})  # -20 points: beyond noise
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    rows = _md_rows(md, "## Sweet spots")
    assert rows[2][4] == "64.0 ± 2.0 (+3.2%)"  # plain: within 2 std
    page = (tmp_path / "report.html").read_text()
    assert re.search(r'<td class="loss">42\.0 ± 2\.0 \(-32\.3%\)</td>', page)


def test_a_fall_in_vulnerability_with_collapsed_accuracy_is_not_a_gain(tmp_path):
    with ResultsStore(tmp_path / "results.sqlite") as store:
        ids = []
        for seed in (0, 1):
            ids.append(add_model(store, tmp_path, method="unpruned", seed=seed, clean=0.8 + 0.01 * seed,
                                 accs={("pgd", 0.1, 20, False): 0.6 + 0.01 * seed}))
            ids.append(add_model(store, tmp_path, method="pwoa-irregular", seed=seed, rate=16.0, parent="base",
                                 clean=0.1 + 0.01 * seed, flags=["chance-accuracy"],
                                 accs={("pgd", 0.1, 20, False): 0.05 + 0.01 * seed}))
        pgd = [r for r in store.results() if r["attack"] == "pgd"][0]
        for i, mid in enumerate(ids):
            store.put_vulnerability(mid, "white", pgd["attack_hash"], "0.1", network=(0.5 if i % 2 == 0 else 0.05)
                                    + 0.01 * (i // 2), layers={}, features={"fc": [0.1, 0.2]}, n_points=100)
    write_report(tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert re.search(r'<td class="confounded" title="lower, but accuracy collapsed with it: not a gain">0\.055', page)
    assert "‡" not in page
    assert "† accuracy at chance level (collapsed): pwoa-irregular c=16 (seeds 0, 1 of 2)." in page
    (t,) = robustness_table(*_rows_vulns(tmp_path))
    e = t["entries"][1]
    assert e["method"] == "pwoa-irregular" and e["values"]["v_white"]["change"] == pytest.approx(-89.1, abs=0.1)


def _rows_vulns(path):
    with ResultsStore(path / "results.sqlite", readonly=True) as store:
        return store.results(), store.vulnerabilities(), store.models()


def test_methods_sit_side_by_side_at_equal_c_sorted_by_c_with_training_budget(tmp_path):
    with ResultsStore(tmp_path / "results.sqlite") as store:
        add_model(store, tmp_path, method="unpruned", seed=0, clean=0.8, accs={("pgd", 0.1, 20, False): 0.6})
        for method, group in (("magnitude-filter-local", "filter"), ("admm-irregular", "unstructured")):
            for rate in (16.0, 2.0, 4.0):
                add_model(store, tmp_path, method=method, seed=0, rate=rate, group=group, parent="base",
                          achieved=1 + rate / 100 if group == "filter" else rate, clean=0.7,
                          accs={("pgd", 0.1, 20, False): 0.5}, train_epochs=rate, train_steps=int(60 * rate))
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    rows = _md_rows(md, "## Methods at each pruning rate")
    head = rows[0]
    assert head[-4:] == ["train time (s)", "train epochs", "train steps", "eval time (s)"]
    order = [(r[0], r[1]) for r in rows[1:]]
    assert order == [("1 (unpruned)", "unpruned"), ("2", "admm-irregular"), ("", "magnitude-filter-local"),
                     ("4", "admm-irregular"), ("", "magnitude-filter-local"), ("16", "admm-irregular"),
                     ("", "magnitude-filter-local")]
    filt16 = dict(zip(head, rows[-1]))
    assert filt16["achieved"] == "×1.16" and filt16["train epochs"] == "16.00" and filt16["train steps"] == "960"
    # within a method, rows sorted by c in the headline table too
    head_rows = [r for r in _md_rows(md, "## Headline")[1:] if r[0] == "magnitude-filter-local"]
    assert [r[1] for r in head_rows] == ["2", "4", "16"]
    data = load(tmp_path)
    (t,) = comparison_tables(data, Marks(data))
    assert not any(c.cls == "gain" for r in t.rows for c in r)  # one seed: no "best" in bold


def test_no_line_across_a_rate_that_was_not_run():
    grid = [1.0, 2.0, 4.0, 8.0, 16.0]
    assert segments([(1.0, "a"), (2.0, "b"), (4.0, "c"), (16.0, "d")], grid) == [["a", "b", "c"], ["d"]]
    assert segments([(1.0, "a"), (4.0, "c")], grid) == [["a"], ["c"]]
    assert segments([(2.0, "b"), (4.0, "c"), (8.0, "x")], grid) == [["b", "c", "x"]]


def test_checks_say_which_ran_and_which_did_not(tmp_path):
    with ResultsStore(tmp_path / "results.sqlite") as store:
        mid = add_model(store, tmp_path, method="unpruned", seed=0, clean=0.8, accs={("pgd", 0.1, 20, False): 0.6})
        store.put_checks(mid, [{"name": "eps_monotone:pgd", "passed": True},
                               {"name": "input_gradients", "passed": True},
                               {"name": "large_eps", "ran": False, "detail": "too costly in a study"}])
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("Sanity checks:"))
    assert line.startswith("Sanity checks: 2/2 that ran passed. Ran: eps_monotone (1×), input_gradients (1×).")
    assert "large_eps (too costly in a study)" in line and "more_iterations (" in line
    assert "a pass covers only the checks that ran" in line
    page = (tmp_path / "report.html").read_text()
    assert ">skipped<" in page
