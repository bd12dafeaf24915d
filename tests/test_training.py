import pytest
import torch

from ebmhelpers.checkpoints import atomic_save, load_checkpoint
from ebmhelpers.models import EnergyModel, ResNetEnergy, tutorial8_cnn_energy
from ebmhelpers.profiles import get_profile
from ebmhelpers.training import METRICS, DivergenceError, PCDTrainer, energy_gap_bound, pcd_loss

TINY = get_profile("smoke").replace(
    buffer_size=32, batch_size=8, max_iters_per_epoch=None, epochs=2, ckpt_every=2, sgld_steps=3
)


def _data():
    torch.manual_seed(0)
    return torch.rand(24, 1, 28, 28) * 2 - 1


def _trainer(model, path=None, profile=TINY):
    return PCDTrainer(model, profile, _data(), ckpt_path=path)


def _tiny():
    torch.manual_seed(1)
    return ResNetEnergy((1, 1), (4, 8))


def test_pcd_loss_matches_formula():
    e_pos, e_neg = torch.tensor([1.0, -1.0, 0.5]), torch.tensor([2.0, 0.0, 1.0])
    t = pcd_loss(e_pos, e_neg, alpha=0.1)
    expected = e_pos.mean() - e_neg.mean() + 0.1 * ((e_pos**2).mean() + (e_neg**2).mean())
    assert torch.isclose(t["loss"], expected) and torch.isclose(t["cd"], torch.tensor(0.5 / 3 - 1.0))


def test_kill_and_resume_equals_uninterrupted(tmp_path, one_thread):
    full = _trainer(_tiny(), tmp_path / "full.pt")
    full.fit(progress=False)
    assert full.done and full.step == 6
    killed = _trainer(_tiny(), tmp_path / "run.pt")
    killed.fit(max_steps=2, progress=False)  # "killed" after its checkpoint at step 2 (mid-epoch)
    assert killed.step == 2 and killed.it == 2
    resumed = _trainer(_tiny(), tmp_path / "run.pt")  # a fresh process: new model, same file
    assert resumed.load() and resumed.step == 2
    resumed.fit(progress=False)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(full.buffer.samples, resumed.buffer.samples)
    assert full.history.equals(resumed.history)
    assert full.opt.param_groups[0]["lr"] == pytest.approx(1e-4 * 0.97**2)


def test_checkpoint_loads_with_weights_only(tmp_path):
    t = _trainer(_tiny(), tmp_path / "c.pt")
    t.fit(max_steps=2, progress=False)
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert state["step"] == 2 and "buffer" in state and "rng" in state


def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "x.pt"
    atomic_save({"a": torch.ones(2)}, path)
    with pytest.raises(Exception):
        atomic_save({"bad": lambda: 0}, path)  # lambdas cannot be pickled
    assert torch.equal(load_checkpoint(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]  # no temp file left behind


class Flaky(EnergyModel):
    """Wraps a model and corrupts the energies of forward calls number [start, stop)."""

    def __init__(self, inner, start, stop, value=float("nan")):
        super().__init__()
        self.inner, self.start, self.stop, self.value, self.calls = inner, start, stop, value, 0

    def logits(self, x):
        out = self.inner.logits(x)
        self.calls += 1
        if self.start <= self.calls - 1 < self.stop:
            out = out * 0 + self.value * torch.ones_like(out)
        return out


@pytest.mark.parametrize("value,reason", [(float("nan"), "non-finite"), (1e6, "energy")])
def test_divergence_guard_rolls_back_and_recovers(tmp_path, value, reason):
    calls_per_iter = TINY.sgld_steps + 1
    model = Flaky(_tiny(), start=3 * calls_per_iter, stop=4 * calls_per_iter, value=value)  # iteration 3
    # windows close at steps 2, 3 (end of epoch 0), 5, 6: the blow-up is seen at 5, undone to 3
    t = _trainer(model, tmp_path / "g.pt")
    t.fit(progress=False)
    assert len(t.rollbacks) == 1
    rb = t.rollbacks[0]
    assert reason in rb["reason"] and rb["failed_at_step"] == 5 and rb["resumed_from_step"] == 3
    assert rb["new_lr"] == pytest.approx(TINY.lr * TINY.lr_gamma * TINY.rollback_lr_factor)  # in epoch 1
    assert t.done and t.step == 6
    h = t.history
    assert h["step"].tolist() == list(range(6)) and h[["loss", "e_real", "e_fake"]].abs().max().max() < 1e3
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    assert load_checkpoint(tmp_path / "g.pt")["rollbacks"][0]["reason"] == rb["reason"]


def test_divergence_guard_gives_up(tmp_path):
    model = Flaky(_tiny(), start=0, stop=10**9)
    with pytest.raises(DivergenceError):
        _trainer(model, tmp_path / "d.pt", TINY.replace(max_rollbacks=2)).fit(progress=False)


def test_checkpoint_of_another_profile_is_refused(tmp_path):
    t = _trainer(_tiny(), tmp_path / "p.pt")
    t.fit(max_steps=2, progress=False)
    other = _trainer(_tiny(), tmp_path / "p.pt", TINY.replace(name="colab"))
    with pytest.raises(ValueError, match="profile"):
        other.load()


def test_gap_bound_follows_alpha_unless_set():
    assert energy_gap_bound(TINY) == pytest.approx(0.5 / TINY.alpha)
    assert energy_gap_bound(TINY.replace(alpha=0.5)) == pytest.approx(1.0)
    assert energy_gap_bound(TINY.replace(max_energy_gap=2.0)) == 2.0


def _window(e_real, e_fake, n=4):
    row = {"loss": 0.0, "cd": e_real - e_fake, "reg": 0.0, "e_real": e_real, "e_fake": e_fake}
    return torch.tensor([[row[k] for k in METRICS]] * n)


def test_gap_criterion_uses_the_window_mean():
    t = _trainer(_tiny())
    bound = energy_gap_bound(TINY)
    assert t._healthy(_window(-0.6, -0.4)) is None  # a healthy run's gap (~0.2)
    assert t._healthy(_window(-bound / 2 + 0.1, bound / 2 - 0.1)) is None  # bounded energies, gap just below
    assert "energy gap" in t._healthy(_window(-bound / 2 - 0.1, bound / 2))
    spike = torch.cat([_window(-bound, bound, n=1), _window(-0.5, -0.4, n=9)])  # one bad iteration of ten
    assert t._healthy(spike) is None


# Collapse test: tutorial 8's CNN on real digits, 10x the profile's learning rate so it is quick.
COLLAPSE = get_profile("smoke").replace(
    buffer_size=64, batch_size=16, max_iters_per_epoch=None, epochs=6, ckpt_every=10, lr=1e-3, max_rollbacks=2
)


def _window_gaps(history, every):
    gap = history.e_fake - history.e_real
    return gap.groupby(history.step // every).mean()


def test_guard_fires_when_samples_stay_noise(mnist_test, one_thread):
    """K=0 SGLD steps: the negatives are the buffer's uniform noise, which the network separates
    from digits while every energy stays bounded; only the gap criterion can see it."""
    torch.manual_seed(0)
    t = PCDTrainer(tutorial8_cnn_energy(), COLLAPSE.replace(sgld_steps=0), mnist_test[0][:256])
    with pytest.raises(DivergenceError, match="energy gap"):
        t.fit(progress=False)
    assert len(t.rollbacks) == COLLAPSE.max_rollbacks
    assert all("energy gap" in r["reason"] and "buffer pixel mean" in r["reason"] for r in t.rollbacks)
    assert t.rollbacks[0]["failed_at_step"] <= 30  # caught within the first windows
    assert (t.buffer.samples.mean(dim=(1, 2, 3)).abs() < 0.1).all()  # the buffer is still noise ...
    kept = t.history
    assert kept[["e_real", "e_fake"]].abs().max().max() < 1 / COLLAPSE.alpha  # ... energies bounded
    assert _window_gaps(kept, COLLAPSE.ckpt_every).max() <= energy_gap_bound(COLLAPSE)  # kept windows are fine


def test_guard_stays_quiet_on_a_normal_run(mnist_test, one_thread):
    torch.manual_seed(0)
    # K = smoke's sgld_steps, for twice as long as the collapse above takes to be caught
    t = PCDTrainer(tutorial8_cnn_energy(), COLLAPSE.replace(epochs=4), mnist_test[0][:256])
    t.fit(progress=False)
    assert t.done and t.rollbacks == []
    assert _window_gaps(t.history, COLLAPSE.ckpt_every).max() < energy_gap_bound(COLLAPSE) / 4
