"""The shared training loop: hook order, determinism, divergence, frozen BN, method param groups."""

from __future__ import annotations

import pytest
import torch

from onnxprune.calibration import TaskLoss
from onnxprune.errors import TrainingDivergedError
from onnxprune.methods.base import PruningMethod, TrainContext
from onnxprune.training.loop import TrainConfig, TrainData, train


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 4))


def _data(n: int = 96) -> TrainData:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    teacher = _net(seed=7).eval()
    with torch.no_grad():
        y = teacher(x)
    return TrainData([x], [y], y.argmax(1))


def _weights(net: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {"fc1.weight": net[0].weight, "fc2.weight": net[3].weight}


class Recorder(PruningMethod):
    """Records the hook sequence and trains a threshold of its own through param_groups."""

    name = "recorder"

    def setup(self, ctx: TrainContext) -> None:
        self.calls = ["setup"]
        self.tau = torch.nn.Parameter(torch.zeros(()))

    def param_groups(self, ctx):
        self.calls.append("param_groups")
        return [{"params": [self.tau], "lr": 0.1}]

    def before_step(self, ctx):
        self.calls.append("before_step")

    def penalty(self, ctx):
        self.calls.append("penalty")
        return (self.tau - 1.0) ** 2

    def after_backward(self, ctx):
        self.calls.append("after_backward")
        assert self.tau.grad is not None

    def after_step(self, ctx):
        self.calls.append("after_step")

    def end_epoch(self, ctx):
        self.calls.append("end_epoch")
        ctx.stop = ctx.epoch == 1  # stop after two of three epochs


def _run(method, net=None, seed=0, **overrides):
    net = net or _net()
    data = _data()
    config = TrainConfig(**{"epochs": 3, "batch_size": 32, "lr": 1e-2, "seed": seed, "quiet": True, **overrides})
    loss = TaskLoss(["logits"], "kd")
    ctx = train(method, net, _weights(net), data, loss, config,
                evaluate=lambda: {"top1_agreement": float((net(data.inputs[0]).argmax(1) == data.labels).float().mean())})
    return net, ctx


def test_hooks_run_in_contract_order_and_stop_ends_training():
    method = Recorder()
    net, ctx = _run(method)
    per_step = ["before_step", "penalty", "after_backward", "after_step"]
    assert method.calls == ["setup", "param_groups", *per_step * 3, "end_epoch", *per_step * 3, "end_epoch"]
    assert ctx.steps_per_epoch == 3 and ctx.step == 6 and len(ctx.history) == 2
    assert method.tau.item() > 0.1  # its own group (lr 0.1) moved it toward 1
    assert {"loss", "top1_agreement"} <= set(ctx.history[-1])


def test_distillation_reduces_the_loss():
    _, ctx = _run(PruningMethod(), epochs=8)
    assert ctx.history[-1]["loss"] < 0.5 * ctx.history[0]["loss"]


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_same_seed_same_bytes(optimizer):
    a, _ = _run(PruningMethod(), optimizer=optimizer, epochs=2)
    b, _ = _run(PruningMethod(), optimizer=optimizer, epochs=2)
    c, _ = _run(PruningMethod(), optimizer=optimizer, epochs=2, seed=1)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert pa.numpy().tobytes() == pb.numpy().tobytes()
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values()))


def test_batchnorm_statistics_stay_frozen():
    net = _net()
    mean, var = net[1].running_mean.clone(), net[1].running_var.clone()
    _run(PruningMethod(), net=net, epochs=2)
    assert torch.equal(net[1].running_mean, mean) and torch.equal(net[1].running_var, var)
    assert not net.training  # returned in eval mode


class Diverges(PruningMethod):
    name = "diverges"

    def penalty(self, ctx):
        return torch.tensor(float("nan")) if ctx.step == 2 else None


def test_nan_loss_raises_training_diverged():
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at epoch 1, step 2"):
        _run(Diverges())
