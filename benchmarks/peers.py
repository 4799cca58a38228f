"""The spiking CIFARNet of ``twinsnn.models.cifarnet`` rebuilt in SpikingJelly and snnTorch.

Both peers get the neuron of paper eq. 1 exactly: ``u[t] = 0.5 * u[t-1] * (1 - s[t-1]) + I[t]``,
``s = u >= 1``, hard reset to 0, and the boxcar surrogate of eq. 4 (ds/du = 0.5 where
``|u - 1| <= 0.5``) through ``Boxcar`` below, the surrogate both libraries accept as a callable.

- SpikingJelly (multi-step mode): ``LIFNode(tau=2, decay_input=False, v_reset=0)`` charges
  ``h = v - v / 2 + x``, i.e. ``0.5 * v + x``; its hard reset keeps the spike's gradient
  (``detach_reset=False``), as eq. 1 does. A Python surrogate such as ``boxcar`` runs its
  autograd reference path; ``spikingjelly:native`` gives its hidden neurons the built-in
  ``surrogate.ATan()`` instead, which selects its own LIF kernels (C++ on the CPU, CUDA/Triton
  on GPUs): the same forward, a different surrogate gradient. Conv, BatchNorm and Linear see ``[T*B, ...]``.
  The static image is repeated over T (its own examples' idiom), so the first conv runs T times.
  The readout is a ``LIFNode`` that never fires (threshold +inf) with ``store_v_seq=True``.
- snnTorch (per-step loop): ``Leaky(beta=0.5, reset_mechanism="zero")``; its reset at step t
  uses the previous step's spike, as eq. 1 does, but the reset is detached from autograd, so
  the backward misses eq. 1's ``-u * ds/du`` reset term. BatchNorm normalizes each step's batch
  of B separately (the library's idiom), so training-mode outputs differ from the T*B
  statistics of twinsnn and SpikingJelly; with running statistics (eval) all three compute the
  same function. The readout is ``Leaky(beta=0.5, reset_mechanism="none")`` and its membrane.

Dropout is time-shared in all three: one mask per sample reused at every timestep. Like
twinsnn's networks, each peer's ``forward(x)`` gives the output potentials ``[T, B, K]``, so
``twinsnn.cohort.train_step`` trains it. The layout is read from the reference network's
structure (``twinsnn.structure``).
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from twinsnn.structure import SpikingNetwork, layers, readout

THRESHOLD = 1.0
DECAY = 0.5


class Boxcar(torch.autograd.Function):
    """Heaviside ``x >= 0`` forward; eq. 4 backward: 0.5 where ``|x| <= 0.5``."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 0.5).to(grad.dtype) * 0.5


def boxcar(x: torch.Tensor) -> torch.Tensor:
    return Boxcar.apply(x)


def _layout(model: SpikingNetwork):
    """``(convs, fcs, readout, dropout p)``: ``(in, out, pooled after, block)`` of each conv
    layer, ``(in, out, block)`` of each fully connected one, the readout ``nn.Linear``."""
    pooled = {node.inputs[0] for node in model.nodes if node.kind == "pool"}
    convs, fcs = [], []
    for node in layers(model):
        s = node.module.synapse
        if isinstance(s, nn.Conv2d):
            convs.append((s.in_channels, s.out_channels, node.name in pooled, node.module))
        else:
            fcs.append((s.in_features, s.out_features, node.module))
    dropout = next((node.module.p for node in model.nodes if node.kind == "dropout"), 0.0)
    return convs, fcs, readout(model).module, dropout


def _load(dst: nn.Module, src: nn.Module) -> None:
    dst.to(src.weight.dtype).load_state_dict(src.state_dict())


def _copy_block(dst_syn, dst_norm, block):
    _load(dst_syn, block.synapse)
    _load(dst_norm, block.norm)


class SpikingJellyCIFARNet(nn.Module):
    """Multi-step SpikingJelly network; ``forward(x [B,C,H,W])`` returns the output
    potentials ``[T, B, K]``."""

    def __init__(self, reference: SpikingNetwork, native: bool = False):
        super().__init__()
        from spikingjelly.activation_based import functional, layer, neuron, surrogate

        self._functional = functional
        self.timesteps = reference.timesteps
        convs, fcs, reference_out, p = _layout(reference)

        def lif(**kw):
            return neuron.LIFNode(tau=2.0, decay_input=False, v_threshold=THRESHOLD,
                                  v_reset=0.0, detach_reset=False, step_mode="m",
                                  surrogate_function=surrogate.ATan() if native else boxcar, **kw)

        blocks = []
        for cin, cout, pool, ref in convs:
            conv = layer.Conv2d(cin, cout, 3, padding=1, bias=False, step_mode="m")
            norm = layer.BatchNorm2d(cout, step_mode="m")
            _copy_block(conv, norm, ref)
            blocks += [conv, norm, lif()] + ([layer.AvgPool2d(2, step_mode="m")] if pool else [])
        blocks.append(layer.Flatten(step_mode="m"))
        for fin, fout, ref in fcs:
            linear = layer.Linear(fin, fout, bias=False, step_mode="m")
            norm = layer.BatchNorm1d(fout, step_mode="m")
            _copy_block(linear, norm, ref)
            blocks += [linear, norm, lif(), layer.Dropout(p, step_mode="m")]
        out = layer.Linear(reference_out.in_features, reference_out.out_features, step_mode="m")
        _load(out, reference_out)
        self.features = nn.Sequential(*blocks, out)
        # never fires: integrates (1 - 1/tau) * v + x = readout_decay * v + x (the native
        # kernels take finite thresholds only; a [T, B, classes] readout costs nothing)
        self.readout = neuron.LIFNode(tau=1.0 / (1.0 - reference.readout_decay),
                                      decay_input=False, v_threshold=float("inf"), v_reset=0.0,
                                      surrogate_function=boxcar, step_mode="m", store_v_seq=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._functional.reset_net(self)
        x_seq = x.unsqueeze(0).expand(self.timesteps, *x.shape)
        self.readout(self.features(x_seq))
        return self.readout.v_seq


class SnnTorchCIFARNet(nn.Module):
    """snnTorch network stepped in a Python loop over T; ``forward(x [B,C,H,W])`` returns the
    output potentials ``[T, B, K]``."""

    def __init__(self, reference: SpikingNetwork):
        super().__init__()
        import snntorch as snn

        self.timesteps = reference.timesteps
        convs, fcs, reference_out, p = _layout(reference)
        self.p = p
        self.convs, self.conv_norms, self.pools = nn.ModuleList(), nn.ModuleList(), []
        for cin, cout, pool, ref in convs:
            conv, norm = nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
            _copy_block(conv, norm, ref)
            self.convs.append(conv)
            self.conv_norms.append(norm)
            self.pools.append(pool)
        self.fcs, self.fc_norms = nn.ModuleList(), nn.ModuleList()
        for fin, fout, ref in fcs:
            linear, norm = nn.Linear(fin, fout, bias=False), nn.BatchNorm1d(fout)
            _copy_block(linear, norm, ref)
            self.fcs.append(linear)
            self.fc_norms.append(norm)
        self.lifs = nn.ModuleList(
            snn.Leaky(beta=DECAY, threshold=THRESHOLD, spike_grad=boxcar, reset_mechanism="zero")
            for _ in range(len(convs) + len(fcs)))
        self.out = nn.Linear(reference_out.in_features, reference_out.out_features)
        _load(self.out, reference_out)
        self.readout = snn.Leaky(beta=reference.readout_decay, threshold=THRESHOLD,
                                 spike_grad=boxcar, reset_mechanism="none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mems = [lif.reset_mem() for lif in self.lifs]
        mem_out = self.readout.reset_mem()
        masks = [None] * len(self.fcs)
        if self.training and self.p > 0:
            keep = 1.0 - self.p
            masks = [torch.empty(x.shape[0], fc.out_features).bernoulli_(keep) / keep
                     for fc in self.fcs]
        potentials = []
        for _ in range(self.timesteps):
            h, i = x, 0
            for conv, norm, pool in zip(self.convs, self.conv_norms, self.pools):
                h, mems[i] = self.lifs[i](norm(conv(h)), mems[i])
                if pool:
                    h = nn.functional.avg_pool2d(h, 2)
                i += 1
            h = h.flatten(1)
            for fc, norm, mask in zip(self.fcs, self.fc_norms, masks):
                h, mems[i] = self.lifs[i](norm(fc(h)), mems[i])
                if mask is not None:
                    h = h * mask
                i += 1
            _, mem_out = self.readout(self.out(h), mem_out)
            potentials.append(mem_out)
        return torch.stack(potentials)


PEERS = {"spikingjelly": SpikingJellyCIFARNet, "snntorch": SnnTorchCIFARNet,
         "spikingjelly:native": functools.partial(SpikingJellyCIFARNet, native=True)}


def aligned_parameters(peer: nn.Module) -> list[nn.Parameter]:
    """The peer's parameters in the order of the twinsnn model's ``parameters()``."""
    if isinstance(peer, SpikingJellyCIFARNet):
        return list(peer.features.parameters())
    params = []
    for conv, norm in zip(peer.convs, peer.conv_norms):
        params += [conv.weight, norm.weight, norm.bias]
    for fc, norm in zip(peer.fcs, peer.fc_norms):
        params += [fc.weight, norm.weight, norm.bias]
    return params + [peer.out.weight, peer.out.bias]
