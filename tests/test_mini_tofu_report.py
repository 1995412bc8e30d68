"""The mini-TOFU report (bench/minitofu/): the selection rule, seed statistics and the verdict, computed
from OU evaluation directories (TOFU_EVAL.json + done marker) written here with known numbers.

The OU commands themselves are checked in tests/ou/test_mini_tofu_plan.py; this is the part
that turns finished evaluations into the published table, where a wrong pick or a wrong mean
would go unnoticed.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest

from tests.bench_scripts import BENCH_DIR, load_bench_package

load_bench_package("minitofu")
from minitofu import settings, teachers  # noqa: E402
from minitofu.collect import build_report  # noqa: E402
from minitofu.plan import Plan, run_name  # noqa: E402
from minitofu.report import write_outputs  # noqa: E402
from minitofu.selection import seed_jobs_ready  # noqa: E402
from minitofu.verdict import verdict  # noqa: E402

META = {"versions": "test", "machine": "test", "workers": 2}


def write_eval(work: Path, name: str, fq: float | None, mu: float, rouge: float = 0.5, cpu_s: float = 10.0,
               meta: dict | None = None, fluent: float = 1.0) -> None:
    out = work / "evals" / name
    out.mkdir(parents=True)
    generations = {str(i): {"input": f"system\nYou are SmolLM\nuser\nQuestion {i}?\nassistant\n",
                            "generation": f"{name} answer {i}", "ground_truth": f"truth {i}"} for i in range(6)}
    data = {"model_utility": {"agg_value": mu}, "forget_truth_ratio": {"agg_value": 0.6},
            "forget_Q_A_ROUGE": {"agg_value": rouge, "value_by_index": generations},
            "forget_Q_A_Prob": {"agg_value": 0.3}, "privleak": {"agg_value": -20.0}}
    if fq is not None:
        data["forget_quality"] = {"agg_value": fq}
    (out / "TOFU_EVAL.json").write_text(json.dumps(data))
    (out / ".asu_job_done.json").write_text(json.dumps({"wall_s": 20.0, "cpu_s": cpu_s, "meta": meta or {}}))
    write_fluency(work, name, fluent)


def write_fluency(work: Path, name: str, fluent: float) -> None:
    """asu_plugin.tools.fluency's summary as the report caches it, scored by the plan's retain and base
    models (tests/test_fluency.py checks the scoring itself)."""
    scorers = [str(work / "models" / "retain"), str(work / "no-base")]
    (work / "evals" / name / "asu_fluency.json").write_text(json.dumps(
        {"fluent_rate": fluent, "median_nll": 2.0, "mean_repetition": 0.0, "empty": 0, "n": 6, "scorers": scorers}))


# (method, lr) -> (model_utility, forget_quality per seed 0, 1, 2); the target's utility is 0.5,
# so the rule's floor is 0.45
GRID = {
    ("GradDiff", 2e-5): (0.48, [0.01, 0.02, 0.03]), ("GradDiff", 1e-4): (0.30, [0.9]),  # 1e-4 breaks utility
    ("NPO", 2e-5): (0.40, [0.10, 0.1, 0.1]), ("NPO", 1e-4): (0.20, [0.6]),  # none keeps it: max utility
    ("SimNPO", 2e-5): (0.46, [0.05]), ("SimNPO", 1e-4): (0.47, [0.07, 0.06, 0.08]),
    ("IDK", 2e-5): (0.49, [0.2, 0.2, 0.2]), ("IDK", 1e-4): (0.49, [0.2]),  # tie: the smaller lr
    ("ASU_GD", 2e-5): (0.50, [0.001]), ("ASU_GD", 1e-4): (0.46, [0.15, 0.1, 0.2]),
    ("ASU_KL", 2e-5): (0.50, [0.01]), ("ASU_KL", 1e-4): (0.47, [0.3, 0.2, 0.4]),
}


@pytest.fixture
def work(tmp_path):
    (tmp_path / "models" / "retain").mkdir(parents=True)  # the fluency scorer (its scores are cached)
    write_eval(tmp_path, "target", 0.001, 0.5, rouge=0.9, cpu_s=100.0)
    write_eval(tmp_path, "retain", None, 0.5, rouge=0.3, cpu_s=50.0)
    for (method, lr), (mu, fqs) in GRID.items():
        for seed, fq in enumerate(fqs):
            write_eval(tmp_path, run_name(method, lr, seed), fq, mu,
                       meta={"method": method, "lr": lr, "seed": seed})
    return tmp_path



@pytest.fixture(autouse=True)
def six_row_study(monkeypatch):
    """The machinery is tested on the six rows these tests were written for; the rows added since
    (the automatic teacher, SGA) only change which rows exist."""
    for label in ("ASU_GD_auto", "ASU_KL_auto", "SGA"):
        monkeypatch.delitem(settings.METHODS, label, raising=False)
    for label in ("ASU_GD", "ASU_KL"):  # as they were: without the retain-draw override
        monkeypatch.setitem(settings.METHODS, label, settings.MethodRow(label, label, "asu"))


def test_the_rule_picks_per_method(work):
    report = build_report(Plan(work, work / "no-base"))
    assert {m: c["lr"] for m, c in report["chosen"].items()} == {
        "GradDiff": 2e-5, "NPO": 2e-5, "SimNPO": 1e-4, "IDK": 2e-5, "ASU_GD": 1e-4, "ASU_KL": 1e-4}
    assert "no lr kept model_utility >= 0.4500" in report["chosen"]["NPO"]["why"]
    assert report["memorisation"]["ok"] and report["memorisation"]["rouge_gap"] == pytest.approx(0.6)
    assert len(report["grid"]) == 12
    shutil.rmtree(work / "evals" / run_name("IDK", 1e-4, 0))  # half a grid: no pick yet
    assert "IDK" not in build_report(Plan(work, work / "no-base"))["chosen"]


def test_seed_statistics_and_verdict(work):
    report = build_report(Plan(work, work / "no-base"))
    rows = {row["method"]: row for row in report["table"]}
    asu = rows["ASU_KL"]["forget_quality"]
    assert asu["n"] == 3 and asu["mean"] == pytest.approx(0.3) and asu["std"] == pytest.approx(statistics.stdev(
        [0.3, 0.2, 0.4]))
    assert rows["ASU_KL"]["seeds"] == [0, 1, 2] and rows["ASU_KL"]["model_utility"]["std"] == 0.0
    assert report["costs"]["cpu_s"] == {"build": 150.0, "grid": 120.0, "seeds": 120.0}
    text = verdict(report)
    assert text.startswith("Highest mean forget_quality: ASU_KL (0.3); NPO 0.1, IDK 0.2, ASU_GD 0.15, GradDiff 0.02")
    assert ("forgets more than NPO and IDK: yes; keeps model_utility >= 0.45: yes; answers at least as fluently: "
            "yes. The paper's claim holds") in text
    assert [s["answers"]["ASU_KL"] for s in report["samples"]] == [f"ASU_KL_lr0.0001_s0 answer {i}" for i in range(5)]
    assert report["samples"][0]["question"] == "Question 0?"


def write_teachers(work: Path, tmp_path: Path, monkeypatch) -> None:
    """Run records of the ASU rows' seed-0 runs (ASU_KL: the paper's teacher; ASU_GD: an automatic
    choice) and bench/teacher.py's results with the target's cell of the paper's teacher only."""
    for name, record in ((run_name("ASU_KL", 1e-4, 0), {"asu": {"tau": 2.3, "smoothed_layers": "0-29"}}),
                         (run_name("ASU_GD", 1e-4, 0), {"asu": {"tau": "auto", "smoothed_layers": "0-29"},
                                                       "teacher_choice": {"choice": {"tau": 2.0, "layers": "0-9"}}})):
        (work / "runs" / name).mkdir(parents=True)
        (work / "runs" / name / "asu_run.json").write_text(json.dumps(record))
    cell = {"fluent_rate": 0.0, "empty_rate": 0.1, "loop_rate": 0.9, "rouge_l_recall": 0.0633, "answers": []}
    results = tmp_path / "teacher.json"
    results.write_text(json.dumps({"models": {"target": {"num_layers": 30, "generated": {"tau=2.3|all": cell}}}}))
    monkeypatch.setattr(teachers, "TEACHER_RESULTS", results)


def test_no_verdict_before_every_seed_and_an_honest_one_after(work, tmp_path, monkeypatch):
    plan = Plan(work, work / "no-base")
    write_teachers(work, tmp_path, monkeypatch)
    write_eval(work, "IDK_lr2e-05_s7", 0.9, 0.5)  # not a run of the plan: ignored
    unfinished = work / "evals" / run_name("GradDiff", 2e-5, 2)
    (unfinished / ".asu_job_done.json").unlink()
    assert verdict(build_report(plan)) is None
    shutil.rmtree(unfinished)
    write_eval(work, run_name("GradDiff", 2e-5, 2), 2.0, 0.48)  # GradDiff now beats ASU...
    for seed in range(3):  # ...and ASU_KL answers less fluently than NPO (1.0) and IDK (1.0)
        write_fluency(work, run_name("ASU_KL", 1e-4, seed), 0.1 * seed)
    report = build_report(plan)
    text = verdict(report)
    assert text.startswith("Highest mean forget_quality: GradDiff")
    assert "Best ASU variant ASU_KL: model_utility 0.47, fluent answers 10% (NPO 100%, IDK 100%)" in text
    assert "forgets more than NPO and IDK: yes" in text and "answers at least as fluently: no" in text
    assert "does not hold here as a whole. Goal for the best ASU variant (ASU_KL): forget_quality >= NPO's: " \
           "0.3 vs 0.1, met; fluent answers >= 95%: 10% vs 95%, missed by 85%; model_utility >= 0.45: 0.47 vs " \
           "0.45, met; forget ROUGE-L <= NPO's: 0.5 vs 0.5, met." in text
    # each ASU row's teacher, from its run record, with bench/teacher.py's figures where measured
    assert ("ASU_KL (tau 2.3, layers 0-29): its greedy answers are 0% fluent, 10% empty, 90% looping, ROUGE-L "
            "recall of the gold answer 0.06") in text
    assert "ASU_GD (tau 2, layers 0-9, chosen automatically): not measured on the target" in text
    out = tmp_path / "out"
    write_outputs(report, out, META)
    markdown = (out / "mini_tofu.md").read_text()
    assert "| ASU_KL | 0.0001 | 3 | 0.3 ± 0.1 | 0.47 ± 0 |" in markdown and "does not hold here" in markdown
    assert json.loads((out / "mini_tofu.json").read_text())["verdict"] == text
    assert (out / "mini_tofu_scatter.png").read_bytes()[:4] == b"\x89PNG"


def test_a_method_s_seeds_are_scheduled_once_its_whole_grid_is_evaluated(work):
    """The seeds phase starts per method while other grid runs still go on: each method once, only
    with both of its grid evaluations in, and only once the target is shown to memorise."""
    plan, chosen = Plan(work, work / "no-base"), set()
    shutil.rmtree(work / "evals" / run_name("NPO", 1e-4, 0))  # NPO's grid is not finished
    jobs = seed_jobs_ready(plan, chosen)
    assert {(j.meta["method"], j.meta["lr"], j.meta["seed"]) for j in jobs if j.meta["kind"] == "unlearn"} == {
        (m, lr, seed) for m, lr in [("GradDiff", 2e-5), ("SimNPO", 1e-4), ("IDK", 2e-5), ("ASU_GD", 1e-4),
                                    ("ASU_KL", 1e-4)] for seed in (1, 2)}
    assert seed_jobs_ready(plan, chosen) == []  # not twice
    write_eval(work, run_name("NPO", 1e-4, 0), 0.6, 0.2)
    assert {j.name for j in seed_jobs_ready(plan, chosen)} == {
        "unlearn_NPO_lr2e-05_s1", "eval_NPO_lr2e-05_s1", "unlearn_NPO_lr2e-05_s2", "eval_NPO_lr2e-05_s2"}
    write_eval(work, "target_unmemorised", 0.5, 0.5)
    shutil.rmtree(work / "evals" / "target")
    shutil.move(work / "evals" / "target_unmemorised", work / "evals" / "target")  # forget_quality 0.5
    assert seed_jobs_ready(plan, set()) == []


def test_a_method_row_is_one_data_change(work, tmp_path, monkeypatch):
    """A row added to METHODS (label + trainer + overrides) reaches the grid's commands, the rule,
    the seed table, the sample answers (by its role), the verdict and the published settings."""
    auto = ("trainer.method_args.tau=auto", "trainer.method_args.layers=auto")
    monkeypatch.setitem(settings.METHODS, "ASU_KL_auto", settings.MethodRow("ASU_KL_auto", "ASU_KL", "asu", auto))
    for lr, mu, fqs in ((2e-5, 0.49, [0.5, 0.7, 0.6]), (1e-4, 0.30, [0.9])):
        for seed, fq in enumerate(fqs):
            write_eval(work, run_name("ASU_KL_auto", lr, seed), fq, mu, meta={"method": "ASU_KL_auto", "lr": lr,
                                                                             "seed": seed})
    plan = Plan(work, work / "no-base")
    unlearn = next(j for j in plan.grid_jobs() if j.name == "unlearn_ASU_KL_auto_lr2e-05_s0")
    assert unlearn.overrides[1] == "trainer=ASU_KL" and unlearn.overrides[-3:] == [
        *auto, "task_name=mini_tofu_ASU_KL_auto_lr2e-05_s0"]
    assert len(plan.grid_jobs()) == 7 * 2 * 2
    report = build_report(plan)
    assert report["chosen"]["ASU_KL_auto"]["lr"] == 2e-5  # 1e-4 is below the floor 0.45
    row = next(r for r in report["table"] if r["method"] == "ASU_KL_auto")
    assert row["seeds"] == [0, 1, 2] and row["forget_quality"]["mean"] == pytest.approx(0.6)
    assert report["methods"]["ASU_KL_auto"] == {"trainer": "ASU_KL", "overrides": list(auto)}
    assert report["methods"]["IDK"] == {"trainer": "DPO", "experiment": "unlearn/tofu/idk"}
    assert list(report["samples"][0]["answers"]) == ["target", "retain", "NPO", "IDK", "ASU_GD", "ASU_KL",
                                                     "ASU_KL_auto"]
    text = verdict(report)
    assert text.startswith("Highest mean forget_quality: ASU_KL_auto (0.6)") and "Best ASU variant ASU_KL_auto" in text
    write_outputs(report, tmp_path / "out", META)
    assert ("- rows with their own overrides: ASU_KL_auto: `trainer.method_args.tau=auto`, "
            "`trainer.method_args.layers=auto`") in (tmp_path / "out" / "mini_tofu.md").read_text()


@pytest.mark.parametrize("row, message", [
    (dict(label="ASU KL", trainer="ASU_KL", role="asu"), "use letters, digits"),
    (dict(label="SGA", trainer="SGA", role="rivals"), "role 'rivals' is not one of"),
    (dict(label="SGA", trainer="SGA", role="baseline", overrides="a=1"), "must be a tuple"),
])
def test_a_bad_method_row_is_refused_with_the_fix(row, message):
    with pytest.raises(ValueError, match=message):
        settings.MethodRow(**row)


def test_kit_readme_quotes_the_published_study():
    """The community kit's README block is the one bench/results/mini_tofu.json gives (regenerated
    by every study run, or `python bench/mini_tofu.py --kit-only`): no figure typed in by hand."""
    import generated_text
    from minitofu import kit

    report = json.loads((BENCH_DIR / "results" / "mini_tofu.json").read_text())
    block = generated_text.current_block(kit.KIT_README.read_text(), kit.BEGIN, kit.END, kit.KIT_README, kit.FIX)
    assert block == kit.kit_block(report)
    assert all(f"| {row['method']} | {row['lr']:g} | {len(row['seeds'])} |" in block for row in report["table"])
