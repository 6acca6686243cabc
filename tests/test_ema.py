"""Momentum (EMA) copies: the update rule, buffers, starting weights, fusion, errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from pseudoseg.engine.ema import ModelEMA


def tiny_net(blocks: int = 1, width: int = 4) -> nn.Sequential:
    """Convolutions with batch norm: parameters, float buffers and an integer buffer."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1)]
    for _ in range(blocks):
        layers += [nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1)]
    layers.append(nn.Conv2d(width, 1, 1))
    return nn.Sequential(*layers)


def scramble(net: nn.Module, seed: int) -> None:
    """Random values in every parameter and buffer (batch counters included)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*net.parameters(), *net.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
            else:
                tensor.fill_(int(torch.randint(1, 1000, (1,), generator=generator)))


def snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in net.state_dict().items()}


def split_state(net: nn.Module) -> tuple[set[str], set[str], set[str]]:
    """Names of parameters, float buffers and integer buffers."""
    params = {name for name, _ in net.named_parameters()}
    floats = {name for name, b in net.named_buffers() if b.is_floating_point()}
    ints = {name for name, b in net.named_buffers() if not b.is_floating_point()}
    return params, floats, ints


@pytest.fixture
def pair() -> Iterator[tuple[nn.Module, nn.Module]]:
    """A source network and a different starting point for its copy."""
    torch.manual_seed(0)
    source, start = tiny_net(), tiny_net()
    scramble(source, 1)
    scramble(start, 2)
    yield source, start


@pytest.mark.parametrize("momentum", [0.9, 0.99, 0.5])
def test_average_mode_matches_hand_update(pair: tuple[nn.Module, nn.Module], momentum: float) -> None:
    source, start = pair
    ema = ModelEMA(source, momentum, buffers="average", init=start)
    before, src = snapshot(ema.module), snapshot(source)
    ema.update()
    after = ema.module.state_dict()
    params, floats, ints = split_state(source)
    assert ints == {"1.num_batches_tracked"}
    for name in params | floats:
        expected = momentum * before[name].double() + (1.0 - momentum) * src[name].double()
        torch.testing.assert_close(after[name].double(), expected, rtol=0, atol=1e-6, msg=name)
        assert not torch.equal(after[name], src[name]), name  # really averaged, not copied
    for name in ints:
        assert torch.equal(after[name], src[name]), name


def test_copy_mode_copies_float_buffers_and_averages_parameters(pair: tuple[nn.Module, nn.Module]) -> None:
    source, start = pair
    ema = ModelEMA(source, 0.9, buffers="copy", init=start)
    before, src = snapshot(ema.module), snapshot(source)
    ema.update()
    after = ema.module.state_dict()
    params, floats, ints = split_state(source)
    assert floats == {"1.running_mean", "1.running_var"}
    for name in floats | ints:
        assert torch.equal(after[name], src[name]), name
    for name in params:
        torch.testing.assert_close(after[name], 0.9 * before[name] + 0.1 * src[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("buffers", ["average", "copy"])
def test_momentum_zero_is_an_exact_copy(pair: tuple[nn.Module, nn.Module], buffers: str) -> None:
    source, start = pair
    ema = ModelEMA(source, 0.0, buffers=buffers, init=start)
    ema.update()
    for name, tensor in source.state_dict().items():
        assert torch.equal(ema.module.state_dict()[name], tensor), name


def test_repeated_updates_converge_geometrically(pair: tuple[nn.Module, nn.Module]) -> None:
    """With a fixed source, the gap after k updates is m**k times the initial gap."""
    source, start = pair
    momentum = 0.8
    ema = ModelEMA(source, momentum, init=start)
    src = {name: t.double() for name, t in snapshot(source).items() if t.is_floating_point()}
    gap0 = {name: snapshot(ema.module)[name].double() - src[name] for name in src}
    for k in range(1, 9):
        ema.update()
        state = ema.module.state_dict()
        for name in src:
            gap = state[name].double() - src[name]
            torch.testing.assert_close(gap, momentum**k * gap0[name], rtol=0, atol=1e-5, msg=f"{name} after {k}")
    norm0 = sum(float(g.norm() ** 2) for g in gap0.values()) ** 0.5
    norm = sum(float((ema.module.state_dict()[n].double() - src[n]).norm() ** 2) for n in src) ** 0.5
    assert norm == pytest.approx(momentum**8 * norm0, rel=1e-4)


def test_init_sets_the_starting_weights_and_is_copied(pair: tuple[nn.Module, nn.Module]) -> None:
    source, start = pair
    expected = snapshot(start)
    ema = ModelEMA(source, 0.9, init=start)
    for name, tensor in ema.module.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    with torch.no_grad():  # the copy owns its tensors: changing init afterwards changes nothing
        for p in start.parameters():
            p.add_(1.0)
    assert all(torch.equal(t, expected[n]) for n, t in ema.module.state_dict().items())
    # ... and it follows the source, not init
    ema.update()
    weight = "0.weight"
    torch.testing.assert_close(ema.module.state_dict()[weight], 0.9 * expected[weight] + 0.1 * source.state_dict()[weight], rtol=0, atol=1e-6)


def test_default_start_is_the_source(pair: tuple[nn.Module, nn.Module]) -> None:
    source, _ = pair
    ema = ModelEMA(source, 0.9)
    assert all(torch.equal(t, source.state_dict()[n]) for n, t in ema.module.state_dict().items())
    assert ema.module.state_dict()["0.weight"].data_ptr() != source.state_dict()["0.weight"].data_ptr()


def test_copy_is_frozen_and_in_eval_mode(pair: tuple[nn.Module, nn.Module]) -> None:
    source, _ = pair
    source.train()
    ema = ModelEMA(source, 0.9)
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    assert all(p.requires_grad for p in source.parameters())


def test_state_dict_round_trip_keeps_following_the_source(pair: tuple[nn.Module, nn.Module]) -> None:
    source, start = pair
    saved = {n: t.clone() for n, t in ModelEMA(source, 0.9, init=start).state_dict().items()}
    ema = ModelEMA(source, 0.9)
    ema.load_state_dict(saved)
    assert all(torch.equal(t, saved[n]) for n, t in ema.state_dict().items())
    ema.update()  # loading copies in place: the fused update still writes into the live module
    torch.testing.assert_close(ema.module.state_dict()["0.weight"], 0.9 * saved["0.weight"] + 0.1 * source.state_dict()["0.weight"], rtol=0, atol=1e-6)


def test_architecture_mismatch_raises() -> None:
    source = tiny_net(blocks=1)
    with pytest.raises(ValueError, match="differ in architecture"):
        ModelEMA(source, 0.9, init=tiny_net(blocks=2))  # other parameter count
    with pytest.raises(ValueError, match=r"differ in architecture .*0\.weight"):
        ModelEMA(source, 0.9, init=tiny_net(blocks=1, width=5))  # same count, other shapes
    ema = ModelEMA(source, 0.9)
    with pytest.raises(ValueError, match="differ in architecture"):
        ema.attach(tiny_net(blocks=3))
    no_stats = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 1, 1))
    with pytest.raises(ValueError, match="buffer"):
        ModelEMA(source, 0.9, init=no_stats)  # same parameters, no running statistics


@pytest.mark.parametrize("momentum", [-0.1, 1.0, 1.5])
def test_momentum_outside_unit_interval_raises(momentum: float) -> None:
    with pytest.raises(ValueError, match="momentum"):
        ModelEMA(tiny_net(), momentum)


def test_unknown_buffer_mode_raises() -> None:
    with pytest.raises(ValueError, match="buffers"):
        ModelEMA(tiny_net(), 0.9, buffers="mean")  # type: ignore[arg-type]


class _TorchCalls(TorchFunctionMode):
    """Records every torch function called from Python (one entry per call, fused or not)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("buffers", ["average", "copy"])
def test_update_is_fused_constant_calls_whatever_the_depth(buffers: str, monkeypatch: pytest.MonkeyPatch) -> None:
    lerp_calls: list[int] = []
    real_lerp = torch._foreach_lerp_

    def spy(targets, sources, weight):  # type: ignore[no-untyped-def]
        lerp_calls.append(len(targets))
        return real_lerp(targets, sources, weight)

    monkeypatch.setattr(torch, "_foreach_lerp_", spy)
    calls = {}
    for blocks in (1, 12):
        net = tiny_net(blocks=blocks)
        ema = ModelEMA(net, 0.9, buffers=buffers)
        lerp_calls.clear()
        with _TorchCalls() as mode:
            ema.update()
        params = len(list(net.parameters()))
        float_buffers = sum(1 for b in net.buffers() if b.is_floating_point())
        # one fused lerp over all parameters (and one over the running statistics when averaged)
        assert lerp_calls == ([params, float_buffers] if buffers == "average" else [params])
        calls[blocks] = [name for name in mode.names if name != "_set_grad_enabled"]
    assert calls[1] == calls[12]
    assert len(calls[1]) <= 3
    assert all(name.startswith("_foreach_") for name in calls[1])
