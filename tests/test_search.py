"""Student architecture search (compressor/search/): spaces, DisWOT scores, constraints, the pass."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from compressor import compress
from compressor.api import RunOptions, _pipeline_request
from compressor.artifacts import InputSpec, TensorSpec
from compressor.distill.losses import relation_loss, semantic_loss
from compressor.errors import CompressError
from compressor.search.cnn_search import make_space, search, teacher_at_init
from compressor.search.choice import choose, preference, spent_fraction
from compressor.search.config import SearchConfig
from compressor.search.constraints import Constraints
from compressor.search.cost import measure_cost
from compressor.search.diswot import DiswotScorer
from compressor.search.evolution import EvolutionSettings, evolve
from compressor.search.features import feature_reader
from compressor.search.outcome import Candidate
from compressor.search.pareto import pareto_front
from compressor.search.reinit import normalise_activations
from compressor.search.searchers import SEARCHERS, load_searcher
from compressor.progress import Progress
from compressor.targets import load_target

SPEC = InputSpec((TensorSpec("x", ("batch", 1, 28, 28)),), "classification")


class _Data:
    """SearchData's interface over random digits-shaped inputs (no recipe needed)."""

    def __init__(self, spec=SPEC, n=32):
        self.spec = spec
        self.inputs = (torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0)),)

    def samples(self, count=None):
        return tuple(x[:count] for x in self.inputs) if count else self.inputs

    def example(self, batch=1):
        return tuple(x[:batch] for x in self.inputs)


def _res_tiny(width=16):
    from tinynet import ResTiny

    torch.manual_seed(0)
    return ResTiny(width).eval()


class _Headless(nn.Module):
    """A CNN whose output is a feature map pooled to a vector: no classifier head."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.conv1(x).relu()).mean(dim=(2, 3))


def _cfg(**kw) -> SearchConfig:
    return SearchConfig(**{"population": 4, "generations": 1, "score_batch": 16, **kw})


def test_derived_space_narrows_groups_and_removes_blocks_of_the_teacher_graph():
    data = _Data()
    space = make_space(_res_tiny(), data, _cfg(), data.example())
    widths = [g for g in space.choices if g.startswith("width:")]
    blocks = [g for g in space.choices if g.startswith("block:")]
    assert widths and blocks  # the stem/residual stream group and the block's inner conv; the residual block
    assert all(space.choices[g][-1] == 16 and space.choices[g][0] < 16 for g in widths)
    full = measure_cost(space.build(space.largest()), data.example())
    small = measure_cost(space.build(space.smallest()), data.example())
    assert small.macs < full.macs / 4 and small.params < full.params and small.peak_activation_bytes <= full.peak_activation_bytes
    teacher = measure_cost(_res_tiny(), data.example())
    assert full.macs == teacher.macs  # largest = the teacher's architecture,
    assert teacher.params - full.params == 3 * 2 * 16  # with its 3 BatchNorms folded into the convs
    # an inherited student of the full spec is the teacher itself
    x = data.samples(4)[0]
    assert torch.allclose(space.inherit(space.largest(), data.samples())(x), _res_tiny()(x), atol=1e-4)


def test_an_inherited_student_is_recalibrated_to_the_teacher_s_statistics():
    """Adaptive BatchNorm with BN folded: the cut student's channels are rescaled and shifted to the
    teacher's statistics on the samples, so its logits have the teacher's per-class mean and spread
    there and lie closer to the teacher's than the student as cut; the teacher keeps its weights."""
    data = _Data(n=64)
    teacher = _res_tiny()
    space = make_space(teacher, data, _cfg(), data.example())
    genes = space.smallest()  # the narrowest widths, the residual block removed
    x = data.samples()[0]
    with torch.no_grad():
        target = teacher(x)
        matched = space.inherit(genes, data.samples())(x)
        as_cut = space.inherit(genes, None)(x)
    assert torch.allclose(matched.mean(0), target.mean(0), atol=1e-4)
    assert torch.allclose(matched.std(0), target.std(0), rtol=1e-3)
    assert (matched - target).pow(2).mean() < 0.5 * (as_cut - target).pow(2).mean()
    # the teacher's graph the search cuts from is unchanged: the full spec still inherits the teacher
    assert torch.allclose(space.inherit(space.largest(), None)(x), target, atol=1e-5)


def test_diswot_scores_are_deterministic_with_a_seed_and_tell_candidates_apart():
    data = _Data()

    def scores(seed):
        space = make_space(_res_tiny(), data, _cfg(seed=seed), data.example())
        scorer = DiswotScorer(teacher_at_init(_res_tiny(), space, data, seed), data.samples(16), data.example(), True)
        assert scorer.semantic
        return [scorer(space.build(g)).score for g in (space.largest(), space.smallest())]

    first, again, other = scores(0), scores(0), scores(1)
    assert first == again
    assert first != other
    assert first[0] != first[1]
    assert first[0] == pytest.approx(0.0, abs=1e-9)  # the teacher's own architecture at the same init: distance 0


def test_the_search_meets_the_macs_budget_and_returns_a_working_student():
    data = _Data()
    teacher = _res_tiny()
    full = measure_cost(teacher, data.example())
    budget = full.macs // 2
    threads = torch.get_num_threads()
    outcome = search(teacher, data, Constraints(macs=budget), _cfg(), Progress(True))
    assert torch.get_num_threads() == threads  # scored on one thread, the caller's count restored
    chosen = outcome.chosen
    assert chosen in outcome.candidates
    assert chosen.macs <= budget and all(c.macs <= budget for c in outcome.candidates)
    spending = [c for c in outcome.candidates if c.macs >= _cfg().budget_use * budget]
    # the budget spent where a candidate spends it, then the score
    assert chosen is max(spending or outcome.candidates, key=lambda c: c.score)
    assert len(outcome.candidates) >= 4 and outcome.method == "diswot"
    assert outcome.student(data.samples(2)[0]).shape == (2, 10)
    assert measure_cost(outcome.student, data.example()).macs == chosen.macs
    json.dumps(outcome.spec)


def test_an_empty_space_under_the_constraints_names_the_binding_constraint_and_the_smallest_cost():
    data = _Data()
    with pytest.raises(CompressError, match=r"macs <= 100 MACs binds, and the smallest candidate needs [\d,]+ MACs"):
        search(_res_tiny(), data, Constraints(macs=100), _cfg(), Progress(True))
    with pytest.raises(CompressError, match=r"params <= 10 parameters binds"):
        search(_res_tiny(), data, Constraints(params=10), _cfg(), Progress(True))


def test_a_teacher_without_a_classifier_head_is_scored_on_relations_only():
    spec = InputSpec((TensorSpec("x", ("batch", 1, 28, 28)),), "embedding")
    data = _Data(spec)
    torch.manual_seed(0)
    outcome = search(_Headless().eval(), data, Constraints(), _cfg(), Progress(True))
    assert any("relation similarity only" in n for n in outcome.notes)
    assert "semantic" not in outcome.score_name and outcome.spec["semantic_distance"] is None


def test_built_in_family_spaces_build_and_score():
    data = _Data()
    for family in ("resnet", "mobilenetv2"):
        outcome = search(_res_tiny(), data, Constraints(), _cfg(space=family, generations=0, population=2), Progress(True))
        assert outcome.spec["space"] == family and outcome.student(data.samples(2)[0]).shape == (2, 10)


def test_diswot_similarities_as_distillation_losses():
    torch.manual_seed(0)
    feats = torch.randn(8, 4, 5, 5)
    head = nn.Linear(4, 10)
    teacher = feats.clone().requires_grad_(True)  # the maps are gradients: the teacher's features need them too
    student = feats.clone().requires_grad_(True)
    same = semantic_loss(student, head(student.mean(dim=(2, 3))), teacher, head(teacher.mean(dim=(2, 3))))
    assert float(same.detach()) == pytest.approx(0.0, abs=1e-10)
    other = torch.randn(8, 4, 5, 5, requires_grad=True)
    loss = semantic_loss(other, head(other.mean(dim=(2, 3))) ** 2, teacher, head(teacher.mean(dim=(2, 3))))
    loss.backward()
    assert float(loss.detach()) > 0 and other.grad is not None and other.grad.abs().sum() > 0
    assert float(relation_loss(torch.randn(8, 32), torch.randn(8, 7))) > 0  # widths differ: still comparable


def test_the_choice_prefers_candidates_that_spend_the_budget_then_the_score():
    budget = Constraints(macs=100)
    small_best, large, large_worse = Candidate({}, -0.1, 10, 0), Candidate({}, -0.5, 90, 0), Candidate({}, -0.9, 85, 0)
    assert choose([small_best, large, large_worse], budget, 0.8) is large
    halfway = Candidate({}, -0.3, 50, 0)
    assert choose([small_best, halfway], budget, 0.8) is small_best  # none spends 80%: the score alone
    assert choose([small_best, large], Constraints(), 0.8) is small_best  # no budget: the score alone
    assert choose([small_best, large], budget, 0.0) is small_best  # budget_use = 0: the score alone
    assert spent_fraction(large, Constraints(macs=100, params=10)) == 0.9
    # by default a candidate must spend 90% of the budget to be preferred over a better-scored one
    most, less = Candidate({}, -0.6, 95, 0), Candidate({}, -0.2, 85, 0)
    assert choose([less, most], budget, SearchConfig().budget_use) is most
    with pytest.raises(ValueError, match="budget_use"):
        SearchConfig(budget_use=1.5)


def test_evolution_moves_the_population_towards_the_budget():
    """A space whose score falls with size: ranked by score alone the population stays small; ranked
    by the preference, the best candidates found spend the budget."""
    data = _Data()
    space = make_space(_res_tiny(), data, _cfg(), data.example())
    costs = {}

    def evaluate(genes):
        key = str(sorted(genes.items()))
        if key not in costs:
            costs[key] = measure_cost(space.build(genes), data.example()).macs
        macs = costs[key]
        candidate = Candidate({"genes": genes}, -macs / 1e6, macs, 0)
        candidate.feasible = macs <= limit
        return candidate

    full = measure_cost(space.build(space.largest()), data.example()).macs
    limit = full // 2
    settings = EvolutionSettings(population=6, generations=3, seed=0)
    budget = Constraints(macs=limit)
    by_score = evolve(space, evaluate, settings, Progress(True))
    preferred = evolve(space, evaluate, settings, Progress(True), preference(budget, 0.8))
    assert choose(preferred.scored, budget, 0.8).macs >= 0.8 * limit
    assert max(by_score.scored, key=lambda c: c.score).macs < 0.8 * limit


def test_diswot_reads_the_feature_map_before_global_pooling():
    """Class activation maps need positions: the pooled (N, C, 1, 1) tensor left one per class."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 10)).eval()
    data = _Data()
    reader = feature_reader(net, data.example(), True)
    feats, logits = reader(data.samples(4))
    assert reader.has_classifier and feats.shape == (4, 8, 28, 28) and logits.shape == (4, 10)


def test_relation_distance_of_two_networks_is_of_the_order_of_one():
    """ReLU features are all positive: uncentred, two unrelated networks' relations differed by ~1e-4."""
    x = _Data().samples(32)[0]
    torch.manual_seed(0)
    a, b = (nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU())
            for _ in range(2))
    with torch.no_grad():
        fa, fb = a(x), b(x)
    assert 0.05 < float(relation_loss(fa, fb)) < 4
    assert float(relation_loss(fa, fa)) == pytest.approx(0.0, abs=1e-6)


def test_a_student_from_random_initialisation_starts_with_unit_activations():
    """BatchNorm is folded into a derived candidate's convs: normalise_activations sets each conv
    (but the classifier) to zero-mean, unit-variance outputs per channel on the samples given."""
    from compressor.capture import op_kind

    data = _Data()
    space = make_space(_res_tiny(), data, _cfg(), data.example())
    net = normalise_activations(space.build(space.largest()), data.samples())
    outputs = []

    class Convs(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if op_kind(n) == "conv":
                outputs.append(out.transpose(0, 1).flatten(1))
            return out

    with torch.no_grad():
        Convs(net).run(*data.samples())
    assert len(outputs) == 3
    for out in outputs:
        assert torch.allclose(out.mean(dim=1), torch.zeros(out.shape[0]), atol=1e-4)
        assert torch.allclose(out.std(dim=1), torch.ones(out.shape[0]), atol=1e-3)


def test_pareto_front_keeps_the_candidates_nothing_beats():
    c = [Candidate({}, s, m, 0) for s, m in ((1.0, 10), (2.0, 20), (1.5, 30), (3.0, 40), (0.5, 5))]
    assert [(x.score, x.macs) for x in pareto_front(c, "macs")] == [(0.5, 5), (1.0, 10), (2.0, 20), (3.0, 40)]


def test_a_missing_transformer_searcher_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(SEARCHERS, "transformer", "compressor.search.no_such_module:search")
    with pytest.raises(CompressError, match=r"the transformer searcher .* is not available in this installation"):
        load_searcher("transformer")


def test_a_search_budget_puts_search_and_distill_in_front():
    names, configs, _ = _pipeline_request(load_target("x86-cpu"), RunOptions(overrides={"search": {"macs_budget": 0.25}}))
    assert names == ["search", "distill", "quantize", "export", "lower", "verify"]
    assert configs["search"] == {"macs_budget": 0.25} and configs["distill"]["lr"] == 1e-3


def _loose_target(tmp_path: Path) -> Path:
    """These tests check the pipeline, not what one epoch of distillation reaches (bench/search_bench.py)."""
    text = (Path(__file__).resolve().parents[1] / "targets" / "x86-cpu.toml").read_text()
    path = tmp_path / "x86-loose.toml"
    path.write_text(text.replace("max_metric_drop = 0.01", "max_metric_drop = 1.0").replace('name = "x86-cpu"', 'name = "x86-loose"'))
    return path


@pytest.mark.slow
def test_search_distill_export_verify_end_to_end_and_resume(trained_res, tmp_path):
    config = tmp_path / "search.toml"
    config.write_text('passes = ["search", "distill", "export", "verify"]\n[search]\nmacs_budget = 0.5\npopulation = 4\n'
                      'generations = 1\nscore_batch = 16\n[distill]\nepochs = 1\nlr = 1e-3\n'
                      '[verify]\nlatency_runs = 10\nwarmup = 2\n')
    target = str(_loose_target(tmp_path))
    result = compress(trained_res, target=target, calib="mnist", out=tmp_path / "run", config=config)
    search_metrics = result.report["passes"][0]["metrics"]
    assert search_metrics["chosen"]["macs"] <= 0.5 * search_metrics["teacher"]["macs"]
    assert search_metrics["candidates_scored"] >= 4 and search_metrics["seconds"] > 0
    folder = tmp_path / "run" / "01-search"
    spec = json.loads((folder / "student.json").read_text())
    front = json.loads((folder / "pareto.json").read_text())
    assert spec["space"] == "derived" and front["front"] and (folder / "pareto.png").stat().st_size > 0
    md = (tmp_path / "run" / "report.md").read_text()
    assert "## Student architecture search (diswot)" in md and "candidates scored in" in md
    assert result.report["passes"][-1]["metrics"]["passed"]

    again = compress(trained_res, target=target, calib="mnist", out=tmp_path / "run", config=config, resume=True)
    assert [p["status"] for p in again.report["passes"]] == ["cached"] * 4
    assert again.report["passes"][0]["metrics"]["chosen"] == search_metrics["chosen"]


def test_the_latency_table_is_rebuilt_for_another_runtime_version_or_target(tmp_path):
    from compressor.backends import get_backend
    from compressor.search.latency_table import LatencyTable

    runner = get_backend("onnxruntime").runner
    path = tmp_path / "table.json"
    layers = [("conv", 4, 8, 3, 3, 1, 1, 1, 8, 8), ("linear", 16, 10), ("conv", 4, 8, 3, 3, 1, 1, 1, 8, 8)]
    first = LatencyTable("x86-cpu", "onnxruntime", "onnxruntime 1.0", runner, path)
    ms = first.lookup(layers)
    assert first.measured == 2 and all(m > 0 for m in ms) and ms[0] == ms[2] and not first.cached
    again = LatencyTable("x86-cpu", "onnxruntime", "onnxruntime 1.0", runner, path)
    assert again.cached and again.lookup(layers) == ms and again.measured == 0  # reused, nothing timed
    newer = LatencyTable("x86-cpu", "onnxruntime", "onnxruntime 2.0", runner, path)
    assert not newer.cached and "runtime onnxruntime 1.0" in newer.rebuilt_because
    newer.lookup(layers)
    assert newer.measured == 2  # timed again, not taken from the other version's table
    other = LatencyTable("jetson-orin-nano", "onnxruntime", "onnxruntime 2.0", runner, path)
    assert not other.cached and "target x86-cpu" in other.rebuilt_because


@pytest.mark.slow
def test_a_latency_budget_searches_with_the_table_and_reports_its_error(trained_res, tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "search.toml"
    config.write_text('passes = ["search"]\n[search]\nlatency_budget = 0.7\npopulation = 4\ngenerations = 1\n'
                      'score_batch = 16\nlatency_holdout = 2\n')
    result = compress(trained_res, target="x86-cpu", calib="mnist", out=tmp_path / "run", config=config)
    m = result.report["passes"][0]["metrics"]
    table = m["latency_table"]
    assert table["entries"] > 0 and not table["cached"] and len(table["holdout"]) == 2
    assert table["holdout_error"]["max"] >= 0 and m["pareto_cost"] == "latency_ms"
    assert m["chosen"]["latency_ms"] <= m["constraints"]["latency_ms"] == pytest.approx(0.7 * m["teacher"]["latency_ms"])
    assert "Latency table:" in (tmp_path / "run" / "report.md").read_text()


def test_cli_search_flag_refuses_a_sparsity_budget(models):
    from click.testing import CliRunner

    from compressor.cli import main

    result = CliRunner().invoke(main, ["run", str(models["pt2"]), "--calib", "mnist", "--search", "--sparsity", "0.5"])
    assert result.exit_code == 2 and "with --search give --macs-budget or --latency-budget" in result.output
