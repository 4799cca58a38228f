"""The benchmark's peers (benchmarks/peers.py) compute twinsnn's network: from the same
weights, in float64, the same logits and, where the neuron's backward is the same, the same
gradients. Each test is skipped where its peer library is not installed."""
import pytest
import torch
import torch.nn.functional as F

from twinsnn.config import ModelConfig
from twinsnn.models import cifarnet

peers = pytest.importorskip("benchmarks.peers")


def need(*libraries):
    for library in libraries:
        pytest.importorskip(library)


@pytest.fixture
def net_and_batch():
    """A small twinsnn net in float64 without dropout, its BatchNorm running statistics set
    from one training pass so that every layer fires in eval mode, and a batch."""
    torch.manual_seed(0)
    net = cifarnet(ModelConfig(width=0.0625, dropout=0.0), 10, 3, (32, 32)).double()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (8,), generator=g)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.momentum = None  # the running statistics of this one pass
    with torch.no_grad():
        net.train()(x)
    for m in norms:
        m.momentum = 0.1
    return net, x, y


def _grads(params) -> list[torch.Tensor]:
    return [p.grad for p in params]


def _assert_same_grads(grads, ref_grads, rtol=1e-9):
    for g, r in zip(grads, ref_grads, strict=True):
        assert (g - r).abs().max() <= rtol * r.abs().max()


@pytest.mark.parametrize("name", ["spikingjelly", "spikingjelly:native", "snntorch"])
def test_eval_logits_are_twinsnns(net_and_batch, name):
    need(name.split(":")[0])
    net, x, _ = net_and_batch
    with torch.no_grad():
        expected = net.eval()(x)
        got = peers.PEERS[name](net).double().eval()(x)
    assert expected.abs().max() > 1
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_spikingjelly_trains_like_twinsnn(net_and_batch):
    """Training mode: the same T*B BatchNorm statistics and eq. 1's reset in the backward."""
    need("spikingjelly")
    net, x, y = net_and_batch
    peer = peers.PEERS["spikingjelly"](net).double().train()
    expected, got = net.train()(x), peer(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    F.cross_entropy(expected.sum(0), y).backward()
    F.cross_entropy(got.sum(0), y).backward()
    _assert_same_grads(_grads(peers.aligned_parameters(peer)), _grads(net.parameters()))


def test_snntorch_gradients_are_eq1s_with_the_reset_detached(net_and_batch):
    """snnTorch detaches the reset from autograd; so does SpikingJelly with
    ``detach_reset=True``. With BatchNorm on running statistics the two agree."""
    need("spikingjelly", "snntorch")
    net, x, y = net_and_batch
    snn = peers.PEERS["snntorch"](net).double().train()
    detached = peers.PEERS["spikingjelly"](net).double().train()
    for model in (snn, detached):
        for m in model.modules():
            if hasattr(m, "detach_reset"):
                m.detach_reset = True
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
        F.cross_entropy(model(x).sum(0), y).backward()
    _assert_same_grads(_grads(peers.aligned_parameters(snn)),
                       _grads(peers.aligned_parameters(detached)))


def test_native_spikingjelly_neuron_fires_as_eq1_with_the_atan_gradient(net_and_batch):
    """``spikingjelly:native`` (float32, its own kernels): spikes where u >= 1, and
    ds/du = (alpha / 2) / (1 + (pi / 2 * alpha * (u - 1))^2), alpha = 2, not eq. 4's boxcar."""
    need("spikingjelly")
    import math
    net, _, _ = net_and_batch
    lif = next(m for m in peers.PEERS["spikingjelly:native"](net).features
               if type(m).__name__ == "LIFNode")
    u = torch.tensor([[-1.0, 0.5, 0.9, 1.0, 1.2, 3.0]], requires_grad=True)  # T = 1
    spikes = lif(u)
    assert spikes.tolist() == [[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]]
    spikes.sum().backward()
    z = (u.detach() - 1) * math.pi / 2 * 2.0
    torch.testing.assert_close(u.grad, 1.0 / (1 + z * z))
    assert u.grad[0, 1] > 0  # boxcar's is 0.5 inside |u - 1| <= 0.5 and 0 outside


@pytest.mark.parametrize("name", ["spikingjelly", "spikingjelly:native", "snntorch"])
def test_peers_step_through_train_step(net_and_batch, name):
    """The benchmark times every implementation with the library's step."""
    need(name.split(":")[0])
    from twinsnn.config import load_config
    from twinsnn.train import Parts, build_trainer

    net, x, y = net_and_batch
    peer = peers.PEERS[name](net).double().train()
    if name.endswith(":native"):  # its kernels take float32
        peer, x = peer.float(), x.float()
    cfg = load_config(None, {"train.device": "cpu", "train.lr": 1e-3,
                             "train.channels_last": False})
    step = build_trainer(cfg, Parts(lambda: peer)).step
    before = [p.detach().clone() for p in peer.parameters()]
    loss, parts, outputs = step(x, y)
    assert outputs[0].shape == (5, 8, 10) and torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, peer.parameters()))
