import math

import pytest
import torch
import torch.nn.functional as F

from twinsnn.losses import cohort_loss, distill_loss, mutual_loss, squared_error
from twinsnn.strategies import KD, KDCE, TNA


def ce(logits, y):
    """Eq. 2 by hand: mean over the batch of -log softmax at the label."""
    return sum(-math.log(math.exp(l[c]) / sum(math.exp(v) for v in l))
               for l, c in zip(logits.tolist(), y.tolist())) / len(y)


LOGITS = [torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]),
          torch.tensor([[0.5, 2.5, 0.0], [1.0, -1.0, 2.0]]),
          torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])]
Y = torch.tensor([1, 2])


def hand_sq(a, b):
    return sum((x - z) ** 2 for x, z in zip(a.flatten().tolist(), b.flatten().tolist()))


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("reduction,divisor", [("sum", 1), ("batchmean", 2), ("mean", 6)])
def test_cohort_loss_equals_hand_computation(k, reduction, divisor):
    alpha = 0.3
    total, parts = cohort_loss(LOGITS[:k], Y, alpha, reduction)
    expected = sum(ce(l, Y) for l in LOGITS[:k])
    expected += alpha * sum(hand_sq(LOGITS[0], l) for l in LOGITS[1:k]) / divisor
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert set(parts) == {f"ce/{i}" for i in range(k)} | ({"match", "match_weighted"} if k > 1 else set())


def test_alpha_zero_is_independent_ce_and_gradients():
    a = LOGITS[0].clone().requires_grad_()
    b = LOGITS[1].clone().requires_grad_()
    total, _ = cohort_loss([a, b], Y, alpha=0.0)
    assert total.item() == pytest.approx(ce(LOGITS[0], Y) + ce(LOGITS[1], Y), rel=1e-6)
    total.backward()
    a_alone = LOGITS[0].clone().requires_grad_()
    F.cross_entropy(a_alone, Y).backward()
    assert torch.equal(a.grad, a_alone.grad)


def test_matching_gradient_reaches_both_members():
    a = LOGITS[0].clone().requires_grad_()
    b = LOGITS[1].clone().requires_grad_()
    _, parts = cohort_loss([a, b], Y, alpha=1.0)
    parts["match"].backward()
    torch.testing.assert_close(a.grad, 2 * (LOGITS[0] - LOGITS[1]))
    torch.testing.assert_close(b.grad, -2 * (LOGITS[0] - LOGITS[1]))


def test_per_timestep_matching_and_ce_on_summed_potentials():
    pots = [torch.randn(4, 2, 3), torch.randn(4, 2, 3)]
    total, parts = cohort_loss(pots, Y, alpha=0.5)
    assert parts["ce/0"].item() == pytest.approx(ce(pots[0].sum(0), Y), rel=1e-5)
    assert parts["match"].item() == pytest.approx(hand_sq(pots[0], pots[1]), rel=1e-5)
    _, p2 = TNA(alpha=0.5).loss(pots, Y)
    assert p2["match"].item() == pytest.approx(hand_sq(pots[0].sum(0), pots[1].sum(0)), rel=1e-5)


def test_kd_teacher_gets_no_gradient():
    student = LOGITS[0].clone().requires_grad_()
    teacher = LOGITS[1].clone().requires_grad_()
    total, parts = distill_loss(student, teacher, Y, alpha=0.1, with_ce=False)
    assert total.item() == pytest.approx(0.1 * hand_sq(LOGITS[0], LOGITS[1]), rel=1e-6)
    assert "ce/0" not in parts
    total.backward()
    assert teacher.grad is None and student.grad is not None
    total_ce, _ = distill_loss(LOGITS[0], LOGITS[1], Y, alpha=0.0, with_ce=True)
    assert total_ce.item() == pytest.approx(ce(LOGITS[0], Y), rel=1e-6)


def test_reductions_convert_by_batch_and_classes():
    a, b = torch.randn(8, 10), torch.randn(8, 10)
    s = squared_error(a, b, "sum")
    torch.testing.assert_close(s, 8 * squared_error(a, b, "batchmean"))
    torch.testing.assert_close(s, 80 * squared_error(a, b, "mean"))


@pytest.mark.parametrize("name,reduction", [("kd", "sum"), ("kd+ce", "sum"),
                                            ("kd+ce", "batchmean")])
def test_kd_strategies_by_hand(name, reduction):
    # student [[1, 0], [0, 2]], teacher [[0, 0], [1, 2]], labels 0 and 1:
    # squared differences 1 + 0 + 1 + 0 = 2 (sum) or 2 / 2 = 1 (batchmean);
    # CE = (log(1 + e^-1) + log(1 + e^-2)) / 2
    student = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    teacher = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    y = torch.tensor([0, 1])
    match = 2.0 if reduction == "sum" else 1.0
    cross_entropy = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-2))) / 2
    strategy = {"kd": KD, "kd+ce": KDCE}[name](alpha=0.25, reduction=reduction)
    total, parts = strategy.loss([student, teacher], y)
    want = 0.25 * match + (cross_entropy if name == "kd+ce" else 0.0)
    assert total.item() == pytest.approx(want, rel=1e-6)
    assert parts["match"].item() == pytest.approx(match, rel=1e-6)


def test_alpha_at_the_switch():
    from twinsnn.config import LossConfig
    from twinsnn.strategies import from_config
    always = from_config(LossConfig(strategy="tna", alpha=1e-4))
    always.set_compressed(True)
    assert always.weight == 1e-4
    late = from_config(LossConfig(strategy="tna", alpha=0.0, alpha_compressed=1e-3))
    weights = []
    for compressed in (False, True):
        late.set_compressed(compressed)
        weights.append(late.weight)
    assert weights == [0.0, 1e-3]


def kl_by_hand(p_logits, q_logits, tau):
    """KL(p || q) of softmax(logits / tau), summed over classes, averaged over the batch."""
    total = 0.0
    for a, b in zip(p_logits.tolist(), q_logits.tolist()):
        p = [math.exp(v / tau) / sum(math.exp(w / tau) for w in a) for v in a]
        q = [math.exp(v / tau) / sum(math.exp(w / tau) for w in b) for v in b]
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    return total / len(p_logits)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_mutual_loss_equals_hand_computation(k, tau):
    """DML: sum_i [CE_i + alpha * tau^2 / (k-1) * sum_{j != i} KL(p_j || p_i)]."""
    alpha = 0.3
    total, parts = mutual_loss(LOGITS[:k], Y, alpha, tau)
    match = sum(kl_by_hand(LOGITS[j], LOGITS[i], tau) for i in range(k) for j in range(k)
                if j != i) / (k - 1)
    assert parts["match"].item() == pytest.approx(match, rel=1e-6)
    expected = sum(ce(l, Y) for l in LOGITS[:k]) + alpha * tau ** 2 * match
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert set(parts) == {f"ce/{i}" for i in range(k)} | {"match", "match_weighted"}


def test_mutual_loss_alone_and_at_alpha_zero_is_cross_entropy():
    total, parts = mutual_loss(LOGITS[:1], Y, 0.5)
    assert total.item() == pytest.approx(ce(LOGITS[0], Y), rel=1e-6) and set(parts) == {"ce/0"}
    total, _ = mutual_loss(LOGITS, Y, 0.0, 3.0)
    assert total.item() == pytest.approx(sum(ce(l, Y) for l in LOGITS), rel=1e-6)


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_mutual_loss_gradients_are_each_members_own_by_finite_differences(tau):
    """Member i's gradient is that of its own loss CE_i + alpha tau^2/(k-1) sum_j KL(p_j||p_i)
    with the others' p_j constant (central differences in float64); the gradient of the
    summed total as a function of everything differs from it (the p_j are held)."""
    alpha, k, eps = 0.7, 3, 1e-6
    logits = [l.double().requires_grad_() for l in LOGITS]
    total, _ = mutual_loss(logits, Y, alpha, tau)
    grads = torch.autograd.grad(total, logits)

    def own(i, o_i):
        others = [l.detach() for l in logits]
        log_q = F.log_softmax(o_i / tau, -1)
        kl = sum(F.kl_div(log_q, F.log_softmax(others[j] / tau, -1), reduction="batchmean",
                          log_target=True) for j in range(k) if j != i)
        return F.cross_entropy(o_i, Y) + alpha * tau ** 2 / (k - 1) * kl

    def whole(i, o_i):
        outs = [o_i if j == i else l.detach() for j, l in enumerate(logits)]
        return mutual_loss(outs, Y, alpha, tau)[0]  # p_i here also moves the others' terms

    for i in range(k):
        base = logits[i].detach()
        for f, same in ((own, True), (whole, False)):
            numeric = torch.zeros_like(base)
            for idx in range(base.numel()):
                step = torch.zeros_like(base).view(-1)
                step[idx] = eps
                step = step.view_as(base)
                numeric.view(-1)[idx] = (f(i, base + step) - f(i, base - step)).item() / (2 * eps)
            close = torch.allclose(grads[i], numeric, rtol=1e-6, atol=1e-8)
            assert close == same, (i, f.__name__, grads[i], numeric)
