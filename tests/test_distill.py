"""compressor.distill: the losses, taps and training loop every distilling pass shares."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor.distill import (DistillConfig, Fidelity, best_of, prefer, HookTaps, batched_outputs, feature_loss, fidelity_scorer, logit_kl,
                                normalised_mse, relation_loss, tap_last_weighted_input, train)
from compressor.evaluators import get_evaluator
from compressor.progress import Progress


def test_logit_kl_is_the_temperature_scaled_kl_divergence():
    torch.manual_seed(0)
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    expected = F.kl_div(F.log_softmax(s / 3.0, -1), F.softmax(t / 3.0, -1), reduction="batchmean") * 9.0
    torch.testing.assert_close(logit_kl(s, t, 3.0), expected, rtol=1e-5, atol=1e-6)
    assert float(logit_kl(t, t, 3.0)) == pytest.approx(0.0, abs=1e-6)


def test_normalised_mse_does_not_depend_on_the_output_scale():
    torch.manual_seed(0)
    a, b = torch.randn(4, 16), torch.randn(4, 16)
    assert float(normalised_mse(100 * a, 100 * b)) == pytest.approx(float(normalised_mse(a, b)), rel=1e-5)
    assert float(normalised_mse(b, b)) == 0.0


def test_relation_loss_compares_students_of_other_widths():
    torch.manual_seed(0)
    teacher = torch.randn(6, 32)
    # a narrower student whose features are a rotation of the teacher's first components would differ
    # in values but keeps the sample relations when it is an exact isometry of them
    q, _ = torch.linalg.qr(torch.randn(32, 32))
    same_relations = teacher @ q
    assert float(relation_loss(same_relations, teacher)) == pytest.approx(0.0, abs=1e-6)
    assert float(relation_loss(torch.randn(6, 8), teacher)) > 1e-3  # other width, other relations
    with pytest.raises(ValueError):
        feature_loss([teacher], [])


class _Net(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, width), nn.ReLU())
        self.head = nn.Linear(width, 4)

    def forward(self, x):
        return self.head(self.body(x))


def test_hook_taps_record_named_submodule_outputs():
    net = _Net()
    x = torch.randn(3, 8)
    with HookTaps(net, ["body", "head"]) as taps:
        out = net(x)
        assert taps.values[0].shape == (3, 16)
        torch.testing.assert_close(taps.values[1], out)
    with pytest.raises(ValueError, match="no submodule named nope"):
        HookTaps(net, ["nope"])


class _Scale(nn.Module):
    def forward(self, x):
        return x * 2


def test_graph_tap_sits_on_the_input_of_the_last_weighted_layer_and_looks_through():
    class WithScale(_Net):
        def __init__(self):
            super().__init__()
            self.scale = _Scale()

        def forward(self, x):
            return self.head(self.scale(self.body(x)))

    net = WithScale().eval()
    x = torch.randn(5, 8)
    gm = torch.export.export(net, (x,)).module()
    tap = tap_last_weighted_input(gm)
    gm(x)
    torch.testing.assert_close(tap.value, net.scale(net.body(x)))  # the head's input


def _distill_setup(seed: int = 0):
    torch.manual_seed(seed)
    teacher = _Net(32).eval()
    student = _Net(8).eval()
    x = torch.randn(256, 8)
    teacher_out = batched_outputs(teacher, (x,), 64)
    _, evaluate = get_evaluator(None, "classification")
    score = fidelity_scorer((x[:64],), teacher_out[:64], evaluate, 64, "classification", 4.0)

    def loss(idx):
        return normalised_mse(student(x[idx]), teacher_out[idx])

    return student, loss, score


def test_training_brings_the_student_closer_to_the_teacher_and_keeps_the_best_state():
    student, loss, score = _distill_setup()
    cfg = DistillConfig(epochs=4, lr=1e-2, batch=32, patience=4)
    history = train(student, 256, loss, score, cfg, Progress(quiet=True))
    assert [h["epoch"] for h in history] == [0, 1, 2, 3, 4]
    assert history[-1]["val_output_error"] < 0.5 * history[0]["val_output_error"]
    kept = [h for h in history if h["kept"]][-1]  # the last epoch the rule preferred is the result
    assert score(student).divergence == pytest.approx(kept["val_divergence"], rel=1e-6)


def test_lower_kl_wins_over_one_validation_flip_but_not_over_many():
    # 350 validation samples (a 3500-sample calibration set's slice). A fine-tuned state whose KL
    # to the teacher is lower is kept although one prediction flipped: one flip in 350 is
    # sampling noise (2 standard errors of a proportion near 1 are ~0.0057 there).
    ptq = Fidelity(metric=1.0, error=4.6e-4, divergence=2.0e-3, samples=350)
    assert prefer(Fidelity(349 / 350, 2.4e-4, 1.0e-3, 350), ptq)[0]
    assert not prefer(Fidelity(345 / 350, 2.4e-4, 1.0e-3, 350), ptq)[0]  # five flips are evidence
    assert not prefer(Fidelity(1.0, 5e-4, 2.5e-3, 350), ptq)[0]  # the same metric, a higher KL
    # on 20 samples one flip is a 5% drop, and still within noise; a metric gain never outvotes a higher KL
    assert prefer(Fidelity(19 / 20, 1e-4, 1e-3, 20), Fidelity(1.0, 2e-4, 2e-3, 20))[0]
    assert not prefer(Fidelity(1.0, 1e-4, 3e-3, 20), Fidelity(0.8, 2e-4, 2e-3, 20))[0]
    assert best_of({"a": Fidelity(0.97, 0, 1e-3, 1000), "b": Fidelity(1.0, 0, 9e-3, 1000),
                    "c": Fidelity(0.999, 0, 5e-3, 1000)}) == "c"


class _Rescaled(nn.Module):
    """A student that is the teacher with its logits scaled and class 1 shifted: two parameters
    whose one Adam step is exactly its learning rate, so the test controls what an epoch does."""

    def __init__(self, teacher: nn.Module):
        super().__init__()
        self.teacher = teacher.requires_grad_(False)
        self.scale = nn.Parameter(torch.tensor(1.5))
        self.shift = nn.Parameter(torch.tensor(0.0))

    def forward(self, x):
        return self.teacher(x) * self.scale + self.shift * torch.tensor([0.0, 1.0])


def _one_epoch_that_flips(shift_of) -> tuple[dict, dict, "_Rescaled"]:
    """A "PTQ" student (every prediction the teacher's, logits 1.5x too large) trained one epoch that
    brings the scale back to 1 while shifting class 1 up by `shift_of(sorted positive margins)`,
    which flips the class-0 samples nearest the boundary. The score before, the history, the student."""
    torch.manual_seed(0)
    teacher = nn.Linear(4, 2)
    x = torch.randn(350, 4)
    with torch.no_grad():
        teacher_out = teacher(x)
    _, evaluate = get_evaluator(None, "classification")
    score = fidelity_scorer((x,), teacher_out, evaluate, 64, "classification", 4.0)
    student = _Rescaled(teacher)
    margins = (teacher_out[:, 0] - teacher_out[:, 1])
    shift = shift_of(margins[margins > 0].sort().values)

    def loss(idx):
        return (student.scale - 1.0) ** 2 - student.shift

    groups = [{"params": [student.scale], "lr": 0.5}, {"params": [student.shift], "lr": shift}]
    before = score(student)
    history = train(student, 350, loss, score, DistillConfig(epochs=1, batch=350), Progress(quiet=True),
                    param_groups=groups)
    return before, history, student


def test_a_fine_tuned_epoch_with_lower_kl_is_kept_despite_one_validation_flip():
    # one epoch: the scale back to 1, and the class-0 sample nearest the boundary flips
    before, history, student = _one_epoch_that_flips(lambda m: float(m[0] + m[1]) / 2)
    after = history[1]
    assert before.metric == 1.0 and after["val_metric"] == pytest.approx(349 / 350), history
    assert after["val_divergence"] < before.divergence and after["kept"], history
    assert float(student.scale.detach()) == pytest.approx(1.0, abs=1e-4)  # the student ends in the kept state


def test_a_fine_tuned_epoch_that_flips_many_predictions_is_not_kept():
    _, history, student = _one_epoch_that_flips(lambda m: float(m[5]) * 1.0001)  # five flips
    assert history[1]["val_metric"] < 345.5 / 350 and not history[1]["kept"], history
    assert float(student.scale.detach()) == pytest.approx(1.5)  # PTQ's state survives


def test_a_worse_epoch_is_thrown_away():
    student, loss, score = _distill_setup()
    before = copy.deepcopy(student.state_dict())
    # a learning rate this large wrecks the student in one epoch: the untrained state must survive
    history = train(student, 256, loss, score, DistillConfig(epochs=1, lr=50.0, batch=32), Progress(quiet=True))
    assert history[1]["val_output_error"] > history[0]["val_output_error"]
    for k, v in student.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_an_interrupted_training_resumes_from_its_checkpoint_and_ends_the_same(tmp_path):
    cfg = DistillConfig(epochs=3, lr=1e-2, batch=32, patience=3)
    student, loss, score = _distill_setup()
    uninterrupted = train(student, 256, loss, score, cfg, Progress(quiet=True))
    expected = copy.deepcopy(student.state_dict())

    student, loss, score = _distill_setup()
    calls = {"n": 0, "die_at": 8 + 3}  # 8 batches an epoch: the third batch of epoch 2

    def dies_in_epoch_two(idx):
        calls["n"] += 1
        if calls["n"] == calls["die_at"]:
            raise KeyboardInterrupt
        return loss(idx)

    checkpoint = tmp_path / "distill.ckpt"
    with pytest.raises(KeyboardInterrupt):
        train(student, 256, dies_in_epoch_two, score, cfg, Progress(quiet=True), checkpoint=checkpoint)
    assert checkpoint.is_file()

    student, loss, score = _distill_setup()  # a fresh process: the same untrained student
    calls.update(n=0, die_at=-1)
    resumed = train(student, 256, dies_in_epoch_two, score, cfg, Progress(quiet=True), checkpoint=checkpoint)
    assert calls["n"] == 16  # epochs 2 and 3 only
    assert [h["epoch"] for h in resumed] == [0, 1, 2, 3]
    for a, b in zip(resumed, uninterrupted):
        assert a["val_output_error"] == pytest.approx(b["val_output_error"], rel=1e-5)
    for k, v in student.state_dict().items():
        torch.testing.assert_close(v, expected[k])


def test_lr_warmup_rises_linearly_then_decays_by_cosine_and_the_loop_follows_it():
    from compressor.distill.loop import warmup_cosine

    factor = warmup_cosine(100, 0.1)
    assert [factor(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert factor(10) == pytest.approx(1.0) and factor(55) == pytest.approx(0.5) and factor(99) < 1e-3
    plain = warmup_cosine(100, 0.0)
    assert plain(0) == 1.0 and plain(50) == pytest.approx(0.5)
    # the optimizer's learning rate in the loop: after one epoch of 8 steps with 4 of warmup it has
    # risen to lr and decayed; the first step ran at lr / 4
    student, loss, score = _distill_setup()
    seen = []
    opt_step = torch.optim.Adam.step

    def record(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return opt_step(self, *a, **k)

    torch.optim.Adam.step = record
    try:
        train(student, 256, loss, score, DistillConfig(epochs=2, lr=1e-2, batch=32, patience=2, lr_warmup=0.25),
              Progress(quiet=True))
    finally:
        torch.optim.Adam.step = opt_step
    assert seen[:4] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2]) and max(seen) == pytest.approx(1e-2)
    assert seen[-1] < 1e-3 and len(seen) == 16


def test_distill_config_refuses_nonsense():
    with pytest.raises(ValueError):
        DistillConfig(lr_warmup=1.0)
    with pytest.raises(ValueError):
        DistillConfig(epochs=-1)
    with pytest.raises(ValueError):
        DistillConfig(val_fraction=1.5)
    with pytest.raises(ValueError):
        DistillConfig(kd_weight=-1.0)


def _pass_context(tmp_path, teacher, x, labels=None):
    from compressor.artifacts import MODULE, Artifact, InputSpec, TensorSpec
    from compressor.calibration import CalibrationData
    from compressor.passes import RunContext
    from compressor.targets import load_target

    spec = InputSpec(inputs=(TensorSpec("x", ("batch", 8)),), task="classification")
    data = CalibrationData(recipe="test", calib=(x[:400],), holdout=(x[400:],), holdout_labels=None,
                           fingerprint="test", extras={}, calib_labels=labels)
    reference = Artifact(MODULE, spec, "teacher", module=teacher)
    ctx = RunContext(target=load_target("x86-cpu"), data=data, reference=reference, run_dir=tmp_path,
                     progress=Progress(quiet=True))
    return ctx, spec


@pytest.mark.parametrize("feature_weight", [0.0, 1.0])
def test_distill_pass_brings_any_student_to_the_teacher(tmp_path, feature_weight):
    from compressor.artifacts import MODULE, Artifact
    from compressor.distill.distill_pass import DistillPass, DistillPassConfig

    torch.manual_seed(0)
    teacher = _Net(32).eval()
    student = _Net(8).eval()  # another architecture: a narrower hidden layer
    x = torch.randn(500, 8)
    ctx, spec = _pass_context(tmp_path, teacher, x)
    config = DistillPassConfig(epochs=4, lr=1e-2, batch=32, patience=4, feature_weight=feature_weight)
    result = DistillPass(config).run(Artifact(MODULE, spec, "student", module=student), ctx, tmp_path)
    m = result.metrics
    assert m["after"]["val_output_error"] < 0.5 * m["before"]["val_output_error"]
    assert m["feature_loss"] == ("none" if feature_weight == 0 else "sample_relations")  # widths differ
    out = result.artifact.module(x[:4])  # an ordinary module: runs, and is no longer the input
    assert out.shape == (4, 4)
    assert m["training_samples"] + m["validation_samples"] == 400  # the held-out part never trains


def test_distill_pass_refuses_too_little_data(tmp_path):
    from compressor.artifacts import MODULE, Artifact
    from compressor.distill.distill_pass import DistillPass, DistillPassConfig
    from compressor.errors import CompressError

    teacher = _Net(8).eval()
    ctx, spec = _pass_context(tmp_path, teacher, torch.randn(500, 8))
    with pytest.raises(CompressError, match="fewer than one batch"):
        DistillPass(DistillPassConfig(batch=512)).run(Artifact(MODULE, spec, "s", module=_Net(8)), ctx, tmp_path)


class _ConvNet(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.head = nn.Linear(width * 16, 4)

    def forward(self, x):
        return self.head(self.body(x))


def test_affine_augmentation_moves_images_reproducibly_and_keeps_their_ink():
    from compressor.distill.augment import augmentation, resolve

    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 8:20, 11:17] = 1.0
    first = augmentation("affine", (x,), seed=3)((x,))[0]
    again = augmentation("affine", (x,), seed=3)((x,))[0]
    torch.testing.assert_close(first, again)
    assert first.shape == x.shape
    moved = (first - x).abs().flatten(1).sum(1)
    assert bool((moved > 1.0).all())  # every image changed
    assert len({round(float(m), 3) for m in moved}) > 32  # each by its own transform
    ink = first.flatten(1).sum(1) / x.flatten(1).sum(1)
    assert float(ink.min()) > 0.75 and float(ink.max()) < 1.3  # scaled by 0.9-1.1 in each direction, nothing cut off
    assert resolve("auto", (x,)) == "shift" and resolve("auto", (torch.zeros(4, 8),)) == "none"
    with pytest.raises(ValueError, match="needs image inputs"):
        augmentation("affine", (torch.zeros(4, 8),), seed=0)


@pytest.mark.parametrize("augment,feature_weight", [("auto", 0.0), ("auto", 1.0), ("none", 1.0), ("affine", 0.0)])
def test_distill_pass_shows_a_student_shifted_images_the_teacher_labels(tmp_path, augment, feature_weight):
    """Image inputs are shifted on each batch and labelled (outputs and tapped features) by the
    teacher there: the student learns the teacher, not the fixed training images."""
    from compressor.artifacts import MODULE, Artifact, InputSpec, TensorSpec
    from compressor.distill.distill_pass import DistillPass, DistillPassConfig

    torch.manual_seed(0)
    teacher, student = _ConvNet(8).eval(), _ConvNet(4).eval()
    x = torch.rand(500, 1, 16, 16)
    ctx, _ = _pass_context(tmp_path, teacher, x)
    spec = InputSpec(inputs=(TensorSpec("x", ("batch", 1, 16, 16)),), task="classification")
    config = DistillPassConfig(epochs=2, lr=1e-2, batch=32, patience=2, augment=augment, feature_weight=feature_weight)
    m = DistillPass(config).run(Artifact(MODULE, spec, "student", module=student), ctx, tmp_path).metrics
    assert m["augmentation"] == {"auto": "shift"}.get(augment, augment)
    assert m["feature_loss"] == ("none" if feature_weight == 0 else "sample_relations")
    assert m["after"]["val_divergence"] < m["before"]["val_divergence"]
    with pytest.raises(ValueError, match="augment must be one of"):
        DistillPassConfig(augment="rotate")
