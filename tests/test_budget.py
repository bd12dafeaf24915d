import math

import pandas as pd
import pytest
import torch

from ebmhelpers import budget, runtime
from ebmhelpers.models import ResNetEnergy
from ebmhelpers.profiles import SGLDConfig, get_profile

NAN = float("nan")


def test_rescaled_step_keeps_temperature_and_total_time_in_both_directions():
    base = SGLDConfig(steps=256, step_size=10.0, noise_std=0.005, grad_clamp=0.03)
    t_ref = base.temperature
    assert t_ref == pytest.approx(0.005**2 / 20)  # notebook 00: 1.25e-6 at the paper's settings
    for k in (16, 64, 256, 512, 1024):
        cfg = budget.rescaled_step_size(base, k, ref_steps=256)
        assert cfg.steps == k and cfg.grad_clamp == 0.03 and cfg.clamp_range == base.clamp_range
        assert cfg.temperature == pytest.approx(t_ref, rel=1e-12)
        assert k * cfg.step_size == pytest.approx(256 * 10.0)  # same total "time" K * step
    fewer, more = budget.rescaled_step_size(base, 64, 256), budget.rescaled_step_size(base, 512, 256)
    assert fewer.step_size == pytest.approx(40.0) and fewer.noise_std == pytest.approx(0.01)
    assert more.step_size == pytest.approx(5.0) and more.noise_std == pytest.approx(0.005 / math.sqrt(2))
    assert budget.rescaled_step_size(base, 256, 256) == base


def test_budget_study_holds_temperature_fixed_on_both_sides_of_the_reference():
    p = get_profile("smoke")
    ks = budget.budget_steps(p)
    assert min(ks) < p.gen_steps < max(ks) and p.gen_steps in ks
    configs = budget.budget_configs(p, ks, p.gen_steps)
    assert len(configs) == len(ks) * len(budget.BUDGET_RULES)
    t = p.sgld_config().temperature
    assert all(cfg.temperature == pytest.approx(t, rel=1e-12) for _, _, cfg in configs)
    fixed = [(k, c) for k, r, c in configs if r == budget.FIXED_STEP]
    rescaled = [(k, c) for k, r, c in configs if r == budget.FIXED_TIME]
    assert all(c.step_size == p.gen_sgld_config().step_size and c.steps == k for k, c in fixed)
    assert len({round(k * c.step_size, 9) for k, c in rescaled}) == 1
    assert dict(fixed)[p.gen_steps] == dict(rescaled)[p.gen_steps]  # the rules meet at the reference


class _FakeEvaluator:
    """Counts quality calls; FID falls with the step size so rows can be told apart."""

    def __init__(self):
        self.calls = []

    def quality(self, model, cfg, progress=True):
        self.calls.append(cfg)
        return {"IS": 1.0, "IS_std": NAN, "FID": 100.0 / cfg.steps, "FID_std": NAN, "n_seeds": 1}, None


def test_sampling_budget_rows_and_shared_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("EBM_RESULTS_DIR", str(tmp_path))
    p = get_profile("smoke").replace(latency_batch=2, gen_steps=4, budget_steps=(2, 4))
    ctx = runtime.Context(p, torch.device("cpu"))
    torch.manual_seed(0)
    ev = _FakeEvaluator()
    steps = budget.budget_steps(p)
    assert steps == (2, 4, 8)
    table = budget.sampling_budget(ctx, ev, {"tiny": ResNetEnergy((1,), (4,))}, steps, ref_steps=4, repeats=1)
    assert len(table) == 6 and len(ev.calls) == 5  # K=4 is scored once for both rules
    assert (table.seconds > 0).all()
    assert table.groupby("K").seconds.nunique().eq(1).all()  # one timing per K, shared by both rules
    assert table[table.rule == budget.FIXED_TIME].total_time.round(9).nunique() == 1


def test_budget_summary_judges_each_k_by_the_series_margins():
    rows = [(16, 6.5, 400.0), (32, 6.9, 340.0), (64, 7.0, 330.0), (128, 7.0, 331.0)]
    b = pd.DataFrame(
        [
            {
                "model": "base",
                "rule": budget.FIXED_STEP,
                "K": k,
                "ref_K": 64,
                "IS": i,
                "IS_std": 0.02,
                "FID": f,
                "FID_std": 2.0,
                "n_seeds": 3,
                "seconds": k / 64,
            }
            for k, i, f in rows
        ]
    )
    s = budget.budget_summary(b).set_index("K")
    assert 64 not in s.index and s.loc[16, "time_vs_ref"] == pytest.approx(0.25)
    assert s.keeps.to_dict() == {16: "contradicted", 32: "reproduced", 128: "reproduced"}
    one_seed = b.assign(IS_std=NAN, FID_std=NAN, n_seeds=1)  # no spread: no interval, nothing shown
    assert set(budget.budget_summary(one_seed).keeps) == {"inconclusive"}


def test_committed_sampling_budget_loads_with_its_declaration(committed_cpu_table):
    table = committed_cpu_table("sampling_budget", budget.BUDGET_COLUMNS)
    assert set(table.rule) == set(budget.BUDGET_RULES) and (table.K == table.ref_K).any()
