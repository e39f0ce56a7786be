"""§3.7 masked cross-entropy, uncertainty weighting and EMA weighting against hand computations."""
import math

import torch

from replication.losses import (EMAWeighting, SumWeighting, UncertaintyWeighting, make_weighting,
                                masked_cross_entropy)


def _ce(logits, y):
    """float64 hand computation of -log softmax(logits)[y]."""
    logits = [float(v) for v in logits.detach()]
    m = max(logits)
    return -(logits[y] - m - math.log(sum(math.exp(v - m) for v in logits)))


def test_masked_cross_entropy_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [1.0, -2.0, 0.0], [0.0, 0.0, 3.0]],
                          requires_grad=True)
    target = torch.tensor([0, -1, 2, -1])
    loss = masked_cross_entropy(logits, target)
    expected = (_ce(logits[0], 0) + _ce(logits[2], 2)) / 2  # mean over the 2 labelled samples only
    assert abs(loss.item() - expected) < 1e-6
    loss.backward()
    assert torch.all(logits.grad[[1, 3]] == 0)  # unlabelled samples get no gradient


def test_masked_cross_entropy_without_labels_is_zero_and_gradient_safe():
    logits = torch.randn(5, 7, requires_grad=True)
    loss = masked_cross_entropy(logits, torch.full((5,), -1))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    # also fine under half-precision logits (AMP)
    half = torch.randn(3, 2, dtype=torch.bfloat16, requires_grad=True)
    assert masked_cross_entropy(half, torch.full((3,), -1)).dtype == torch.float32


ALL_PRESENT = {t: torch.tensor(1.0) for t in ("age", "gender", "emotion", "a", "b")}


def test_masked_cross_entropy_divides_by_a_given_labelled_count():
    """Under DDP the engine passes the global batch's labelled count: the loss is then this shard's share of
    the global masked mean, and the shares add up to it."""
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [1.0, -2.0, 0.0], [0.0, 0.0, 3.0]])
    target = torch.tensor([0, -1, 2, 1])
    shards = [masked_cross_entropy(logits[i:i + 2], target[i:i + 2], torch.tensor(3)) for i in (0, 2)]
    assert abs(shards[0].item() - _ce(logits[0], 0) / 3) < 1e-6
    assert abs(sum(shards).item() - masked_cross_entropy(logits, target).item()) < 1e-6


def test_uncertainty_weighting_steps_match_hand_computation():
    tasks = ("age", "gender")
    uw = UncertaintyWeighting(tasks)
    assert torch.equal(uw.log_vars.detach(), torch.zeros(2))  # s_k initialised to 0
    opt = torch.optim.SGD(uw.parameters(), lr=0.1)
    L = {"age": 2.0, "gender": 0.5}  # constant task losses
    s = [0.0, 0.0]
    for _ in range(3):
        opt.zero_grad()
        total = uw({t: torch.tensor(L[t]) for t in tasks}, ALL_PRESENT)
        expected_total = sum(math.exp(-s[i]) * L[t] + 0.5 * s[i] for i, t in enumerate(tasks))
        assert abs(total.item() - expected_total) < 1e-6
        total.backward()
        # d/ds (e^{-s} L + s/2) = -e^{-s} L + 1/2
        s = [s[i] - 0.1 * (-math.exp(-s[i]) * L[t] + 0.5) for i, t in enumerate(tasks)]
        opt.step()
        torch.testing.assert_close(uw.log_vars.detach().double(), torch.tensor(s, dtype=torch.float64))
    log = uw.log()
    assert abs(log["task_weights"]["age"] - math.exp(-s[0])) < 1e-6
    assert abs(log["log_variances"]["gender"] - s[1]) < 1e-6


def test_uncertainty_weighting_leaves_out_a_task_without_labels():
    """A batch with no gender label says nothing about gender: no s/2 term, so s_gender gets no gradient
    (with the term alone it would get +1/2 and the task's weight would drift down)."""
    uw = UncertaintyWeighting(("age", "gender"))
    with torch.no_grad():
        uw.log_vars.copy_(torch.tensor([0.3, -0.2]))
    total = uw({"age": torch.tensor(2.0), "gender": torch.tensor(0.0)},
               {"age": torch.tensor(1.0), "gender": torch.tensor(0.0)})
    assert abs(total.item() - (math.exp(-0.3) * 2.0 + 0.15)) < 1e-6
    total.backward()
    assert abs(uw.log_vars.grad[0].item() - (-math.exp(-0.3) * 2.0 + 0.5)) < 1e-6
    assert uw.log_vars.grad[1].item() == 0.0


def test_ema_weighting_epochs_match_hand_computation():
    tasks = ("age", "gender", "emotion")
    ema = EMAWeighting(tasks, beta=0.95)
    ema.start_epoch()
    assert ema.log()["task_weights"] == {t: 1.0 for t in tasks}  # first epoch: plain sum
    batches = [  # (losses, present)
        ({"age": 2.0, "gender": 0.6, "emotion": 0.0}, {"age": True, "gender": True, "emotion": False}),
        ({"age": 1.0, "gender": 0.4, "emotion": 1.5}, {"age": True, "gender": True, "emotion": True}),
        ({"age": 3.0, "gender": 0.2, "emotion": 0.5}, {"age": True, "gender": True, "emotion": True}),
    ]
    for losses, present in batches:
        ema.observe(losses, present)
    # hand computation: EMA starts at the first observation, then 0.95 * old + 0.05 * new
    age = 0.95 * (0.95 * 2.0 + 0.05 * 1.0) + 0.05 * 3.0
    gender = 0.95 * (0.95 * 0.6 + 0.05 * 0.4) + 0.05 * 0.2
    emotion = 0.95 * 1.5 + 0.05 * 0.5  # the batch without emotion labels is skipped
    # weights stay fixed within the epoch...
    total = ema({t: torch.tensor(v) for t, v in batches[1][0].items()}, ALL_PRESENT)
    assert abs(total.item() - (1.0 + 0.4 + 1.5)) < 1e-6
    # ...and change only at the next epoch's start, to 1 / EMA
    ema.start_epoch()
    w = ema.log()["task_weights"]
    assert abs(w["age"] - 1 / age) < 1e-12 and abs(w["gender"] - 1 / gender) < 1e-12
    assert abs(w["emotion"] - 1 / emotion) < 1e-12
    total = ema({"age": torch.tensor(2.0), "gender": torch.tensor(1.0), "emotion": torch.tensor(0.5)}, ALL_PRESENT)
    assert abs(total.item() - (2.0 / age + 1.0 / gender + 0.5 / emotion)) < 1e-5
    # state survives a state_dict round trip (resume)
    clone = EMAWeighting(tasks)
    clone.load_state_dict(ema.state_dict())
    assert clone.log() == ema.log()


def test_sum_weighting_and_factory():
    assert isinstance(make_weighting("none", ("age",)), SumWeighting)
    assert isinstance(make_weighting("uw", ("age",)), UncertaintyWeighting)
    total = make_weighting("none", ("a", "b"))({"a": torch.tensor(1.0), "b": torch.tensor(2.5)}, ALL_PRESENT)
    assert total.item() == 3.5
    try:
        make_weighting("gradnorm", ("age",))
    except ValueError as e:
        assert "gradnorm" in str(e)
    else:
        raise AssertionError("unknown weighting accepted")


def test_ema_weighting_built_by_name_uses_the_thesis_beta():
    """§3.7.3 sets beta = 0.95; the engine builds the weighting by name, i.e. with the default beta."""
    ema = make_weighting("ema", ("age",))
    for loss in (2.0, 1.0):
        ema.observe({"age": loss}, {"age": True})
    ema.start_epoch()
    assert abs(ema.log()["task_weights"]["age"] - 1 / (0.95 * 2.0 + 0.05 * 1.0)) < 1e-12
