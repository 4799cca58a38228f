import pytest
import torch

from twinsnn.config import ModelConfig
from twinsnn.errors import ConfigError
from twinsnn.layers import TimeSharedDropout
from twinsnn.checkpoint import build_from_spec
from twinsnn.losses import logits_of
from twinsnn.models import build_model, cifarnet, model_spec
from twinsnn.structure import layers


def small(**kw):
    return cifarnet(ModelConfig(width=0.0625, **kw), 10, 1, (28, 28))


def test_shapes_static_and_frames():
    net = small(timesteps=4)
    assert net(torch.randn(3, 1, 28, 28)).shape == (4, 3, 10)
    dvs = cifarnet(ModelConfig(width=0.0625, timesteps=4), 10, 2, (48, 48))
    assert dvs(torch.randn(4, 3, 2, 48, 48)).shape == (4, 3, 10)


def test_width_scales_every_layer():
    net = cifarnet(ModelConfig(width=0.25), 10, 3, (32, 32))
    synapses = [node.module.synapse for node in layers(net)]
    assert [s.out_channels for s in synapses[:5]] == [32, 64, 128, 256, 128]
    assert [s.out_features for s in synapses[5:]] == [256, 128]
    assert synapses[5].in_features == 128 * 8 * 8


def test_first_conv_runs_once_for_static_input():
    net = small(timesteps=5)
    calls = []
    for node in layers(net)[:2]:
        node.module.synapse.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    net(torch.randn(2, 1, 28, 28))
    assert calls == [2, 10]  # first conv on B samples, the next on T*B


def test_static_equals_repeated_frames():
    net = small(timesteps=3).eval()
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(net(x), net(x.expand(3, *x.shape)))


def test_readout_potential_integrates_current():
    net = small(timesteps=3, readout_decay=0.5).eval()
    currents = []
    net.nodes[-1].module.register_forward_hook(lambda m, i, o: currents.append(o.detach()))
    pot = net(torch.randn(2, 1, 28, 28))
    c = currents[0].unflatten(0, (3, -1))
    torch.testing.assert_close(pot[2], 0.25 * c[0] + 0.5 * c[1] + c[2])


def test_dropout_mask_shared_across_time():
    drop = TimeSharedDropout(0.5).train()
    out = drop(torch.ones(5, 64, 32))
    assert torch.equal(out, out[0].expand_as(out))
    assert 0 < (out[0] == 0).float().mean() < 1
    assert torch.equal(drop.eval()(torch.ones(5, 4)), torch.ones(5, 4))


def test_two_networks_share_no_state():
    torch.manual_seed(0)
    a = small()
    torch.manual_seed(1)
    b = small()
    x = torch.randn(2, 1, 28, 28)
    before = b.eval()(x)
    a.eval()(torch.randn(2, 1, 28, 28) * 10)
    assert torch.equal(b(x), before)


def test_backward_reaches_every_parameter():
    net = small()
    net(torch.randn(4, 1, 28, 28) * 3).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_bf16_autocast_keeps_float32_outputs_weights_and_gradients():
    torch.manual_seed(0)
    net = small()
    x = torch.randn(4, 1, 28, 28) * 3
    with torch.autocast("cpu", torch.bfloat16):
        potentials = net(x)
    assert potentials.dtype == torch.float32  # the readout integrates in float32
    potentials.sum().backward()
    assert all(p.dtype == p.grad.dtype == torch.float32 for p in net.parameters())
    # the same net in float32 gives close, not equal, logits: only the currents are rounded
    with torch.no_grad():
        exact = logits_of(net.eval()(x))
        with torch.autocast("cpu", torch.bfloat16):
            rounded = logits_of(net(x))
    assert not torch.equal(rounded, exact)
    assert (rounded - exact).abs().max() < 0.1 * exact.abs().max()


def test_bad_image_size_and_names():
    with pytest.raises(ConfigError):
        cifarnet(ModelConfig(), 10, 3, (30, 30))
    with pytest.raises(ConfigError, match="model.arch must be one of cifarnet, vgg11"):
        build_model(ModelConfig(arch="resnet"), 10, 3, (32, 32))
    with pytest.raises(ConfigError, match="fc_norm"):
        small(fc_norm="layer")
    with pytest.raises(ConfigError, match="model.neuron must be one of lif, relu"):
        small(neuron="izhikevich")


def test_the_model_is_built_from_its_config_and_rebuilt_from_its_spec():
    cfg = ModelConfig(width=0.0625, timesteps=3, decay=0.25, threshold=0.75, surrogate="atan")
    torch.manual_seed(0)
    net = build_model(cfg, 10, 1, (28, 28))
    neuron = layers(net)[-1].module.neuron
    assert (neuron.decay, neuron.threshold, neuron.surrogate) == (0.25, 0.75, "atan")
    spec = model_spec(cfg, 10, 1, (28, 28))
    torch.manual_seed(0)
    again = build_from_spec(spec)
    assert str(again) == str(net)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                 again.state_dict().values()))
    # a spec written before a field existed takes its default; unknown keys are ignored
    old = {k: v for k, v in spec.items() if k not in ("neuron", "surrogate")}
    assert layers(build_from_spec({**old, "note": 1}))[0].module.neuron.surrogate == "boxcar"
    with pytest.raises(ConfigError, match="model.width must be positive"):
        build_from_spec({**spec, "width": -1.0})
    with pytest.raises(ConfigError, match="num_classes"):
        build_from_spec({**spec, "num_classes": "ten"})
