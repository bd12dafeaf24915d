import torch

from ebmhelpers.profiles import Speedups
from ebmhelpers.runtime import peak_flops
from ebmhelpers.tools import bench
from ebmhelpers.distillation import build_student
from ebmhelpers.models import ResNetEnergy, count_parameters
from ebmhelpers.profiles import get_profile
from ebmhelpers.quantization import weight_count


def test_flop_count_scales_with_batch_and_model():
    cpu = torch.device("cpu")
    small, big = ResNetEnergy((1, 1), (8, 16)), ResNetEnergy((1, 1), (16, 32))
    f1, f2 = bench.sgld_step_flops(small, 1, cpu), bench.sgld_step_flops(small, 4, cpu)
    assert f1 > 0 and f2 == 4 * f1
    assert bench.sgld_step_flops(big, 1, cpu) > 3 * f1  # twice the widths: about 4x the conv FLOPs
    assert peak_flops(cpu, "fp32") is None


def test_bench_table_for_a_student():
    table = bench.run_bench("smoke", batch=2, repeats=1, models=["student cnn_2k"], steps=1)
    student = table[table.model == "student cnn_2k"]
    assert len(student) >= 1 and (student.img_steps_per_s > 0).all()
    assert student.params.iloc[0] == sum(p.numel() for p in build_student("cnn_2k").parameters())
    assert "train_iters_per_s" in table and table.train_iters_per_s.dropna().gt(0).all()


def test_bench_models_follow_the_profile_baseline():
    models = bench.bench_models(get_profile("cpu"))  # tutorial 8's CNN, not ResNet18
    names = list(models)
    assert names[:3] == [
        "baseline cnn_tutorial8",
        "int8 weight-only cnn_tutorial8",
        f"structured Conv2d {bench.PRUNE_RATIO:.0%} cnn_tutorial8, channels removed",
    ]
    base = count_parameters(models["baseline cnn_tutorial8"]())
    assert weight_count(models["int8 weight-only cnn_tutorial8"]()) == base
    assert count_parameters(models[names[2]]()) < base
    assert "student resnet_slim" not in models  # a student larger than the teacher compresses nothing
    assert all(count_parameters(models[n]()) < base for n in names if n.startswith("student"))


def test_speedup_ladder_on_the_cpu_measures_each_rung_and_the_targets(capsys):
    """Tutorial 8's CNN (the cpu profile's baseline): every rung that runs on a CPU gets a row with a
    positive speed and an agreement with eager fp32; the targets line comes out with a small target."""
    table = bench.run_speedup_bench("cpu", repeats=1, target=(64, 4))
    assert list(table.speedups) == [s.label for _, s in bench.ladder(torch.device("cpu"))]
    assert (table.img_steps_per_s > 0).all() and (table.first_call_s > 0).all()
    eager = table[table.speedups == "eager"].iloc[0]
    assert eager.max_abs_diff == 0.0 and eager.rel_diff == 0.0  # eager fp32 is the reference itself
    fp32 = table[table.dtype == "fp32"]
    assert (fp32.rel_diff < 1e-3).all()  # channels_last and compile change only the rounding
    assert (table.rel_diff < 0.1).all()  # bf16, where the CPU has it: close, not equal
    out = capsys.readouterr().out
    assert "64 digits x 4 SGLD steps" in out and "paper profile training, 28,140 PCD iterations" in out


def test_ladder_adds_one_change_per_rung():
    rungs = bench.ladder(torch.device("cuda"))
    assert rungs[0] == (None, Speedups()) and rungs[1] == ("bf16", Speedups())
    assert (None, Speedups(channels_last=True, compile=True)) in rungs  # both in fp32, what scoring uses
    assert len(set(rungs)) == len(rungs)
    assert bench._speedups_of("channels_last + compile") == Speedups(channels_last=True, compile=True)


def test_a_rung_that_fails_is_reported_and_the_ladder_goes_on(monkeypatch, capsys):
    real = bench.measure_rung

    def flaky(make, amp, sp, *args):
        if sp.channels_last:
            raise RuntimeError("no kernel for this layout\nsecond line")
        return real(make, amp, sp, *args)

    monkeypatch.setattr(bench, "measure_rung", flaky)
    table = bench.run_speedup_bench("cpu", repeats=1)
    failed = table[table.speedups.str.contains("channels_last")]
    assert len(failed) >= 1 and (failed.error == "RuntimeError: no kernel for this layout").all()
    assert table[table.speedups == "eager"].img_steps_per_s.gt(0).all()
    assert "FAILED: RuntimeError: no kernel for this layout" in capsys.readouterr().out


def test_interleaved_speedups_time_every_variant_and_report_failures(monkeypatch):
    """eager, channels_last and compile are timed against each other on the profile's chain; a variant
    that cannot run here is a row with its error, never a crash or a silent omission."""
    from ebmhelpers import speedups
    from ebmhelpers.tools import bench

    def broken_compile(model, backend="inductor"):
        raise RuntimeError("no compiler on this machine")

    from ebmhelpers.profiles import PROFILES, get_profile

    tiny = get_profile("smoke").replace(name="tiny-bench", baseline="cnn_tutorial8", batch_size=8, sgld_steps=2)
    monkeypatch.setitem(PROFILES, "tiny-bench", tiny)
    monkeypatch.setattr(speedups, "compiled", broken_compile)
    table = bench.run_interleaved_speedups("tiny-bench", repeats=5).set_index("model")
    assert table.loc["eager", "speedup"] == 1.0
    assert table.loc["channels_last", "median_s"] > 0 and table.loc["channels_last", "n"] >= 5
    assert (
        table.loc["channels_last", "speedup_lo"]
        <= table.loc["channels_last", "speedup"]
        <= table.loc["channels_last", "speedup_hi"]
    )
    assert "no compiler" in table.loc["compile", "error"]
