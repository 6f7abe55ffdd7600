"""The meta-learning engine: second-order meta-gradient, purity of each phase, G's update rule,
and a run where the right answer is known in advance."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tdfusion.tasks import TaskHead, create_task, register_task
from tdfusion.meta import objectives
from tdfusion.nets import FusionNet, LossGenerator
from tdfusion.meta.updates import apply_meta_gradient, make_optimizer


@register_task
class CopyTask(TaskHead):
    """Test task: T is a 1x1 convolution and must reproduce ``batch["target"]``.

    Where the target equals one source, the best fusion loss prefers that source there.
    """

    name = "test_copy"
    defaults = {"weights": None}

    def build_network(self) -> nn.Module:
        net = nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            net.weight.fill_(1.0)
            net.bias.zero_()
        return net

    def loss(self, net, params, fused, batch):
        return ((self.forward(net, params, fused) - batch["target"]) ** 2).mean()

    def predict(self, net, fused):
        return net(fused)


def tiny_nets(dtype=torch.float64, pairs=1, seed=0):
    torch.manual_seed(seed)
    f = FusionNet(dim=4, num_blocks=1, heads=2).to(dtype)
    g = LossGenerator(dim=4, num_blocks=1, heads=2, pairs=pairs, with_gradients=pairs == 2).to(dtype)
    return f, g


def textured_batch(n: int, size: int, seed: int, dtype=torch.float64) -> dict:
    """A textured on the left half, B textured on the right; flat elsewhere. Target: the textured one."""
    gen = torch.Generator().manual_seed(seed)
    noise_a = torch.rand(n, 1, size, size, generator=gen, dtype=dtype)
    noise_b = torch.rand(n, 1, size, size, generator=gen, dtype=dtype)
    left = torch.zeros(1, 1, size, size, dtype=dtype)
    left[..., : size // 2] = 1.0
    a = left * noise_a + (1 - left) * 0.5
    b = (1 - left) * noise_b + left * 0.5
    target = left * a + (1 - left) * b
    return {"crop_a": a, "crop_b": b, "a": a, "b": b, "target": target, "stems": [str(i) for i in range(n)]}


def outer_loss_of_g(f, g, task, t_net, g_params, train_b, test_b, lr, settings):
    f_params = objectives.params_of(f)
    stepped, _ = objectives.inner_update(f, f_params, g, g_params, train_b, lr, settings)
    fused_train = torch.func.functional_call(f, dict(f_params), (train_b["a"], train_b["b"])).detach()
    t_stepped, _ = objectives.task_inner_update(task, t_net, objectives.params_of(t_net), fused_train, train_b, 0.1)
    return objectives.meta_objective(f, stepped, task, t_net, t_stepped, test_b)


@pytest.mark.parametrize("form", ["tdfusion", "refusion"])
def test_meta_gradient_matches_finite_differences(form):
    pairs = 2 if form == "refusion" else 1
    f, g = tiny_nets(pairs=pairs)
    task = create_task("test_copy")
    t_net = task.build_network().double()
    train_b, test_b = textured_batch(2, 12, 1), textured_batch(2, 12, 2)
    settings = objectives.LossSettings(form=form)
    lr = 0.5  # a large inner step makes the second-order term large enough to measure
    grads, _ = objectives.meta_gradient_second_order(f, objectives.params_of(f), g, objectives.params_of(g), task, t_net,
                                    objectives.params_of(t_net), train_b, test_b, lr, 0.1, settings)
    g_params = {k: p.detach().clone(memory_format=torch.contiguous_format) for k, p in g.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    checked = 0
    for name in ("embed_a.weight", "head.2.weight", "encoder_b.0.attn.temperature", "joint.0.ffn.proj.weight"):
        flat = g_params[name].reshape(-1)
        for idx in torch.randint(0, flat.numel(), (2,), generator=gen).tolist():
            eps = 1e-5
            values = []
            for sign in (1, -1):
                probe = {k: v.clone() for k, v in g_params.items()}
                probe[name].view(-1)[idx] += sign * eps
                values.append(outer_loss_of_g(f, g, task, t_net, probe, train_b, test_b, lr, settings).item())
            fd = (values[0] - values[1]) / (2 * eps)
            an = float(grads[name].reshape(-1)[idx])
            assert an == pytest.approx(fd, rel=1e-4, abs=1e-10), (name, idx)
            checked += abs(fd) > 1e-9
    assert checked >= 4  # the comparison was not between zeros


def test_meta_phase_leaves_f_and_t_unchanged_and_fusion_phase_leaves_g():
    f, g = tiny_nets(torch.float32)
    task = create_task("recon", {"dim": 4, "num_blocks": 1, "heads": 2})
    t_net = task.build_network()
    before = {k: copy.deepcopy(m.state_dict()) for k, m in (("f", f), ("g", g), ("t", t_net))}
    batch = textured_batch(2, 16, 0, torch.float32)
    settings = objectives.LossSettings(form="tdfusion")
    opt_g = make_optimizer(g.parameters(), 1e-3, "normalized_adam")
    grads, _ = objectives.meta_gradient_second_order(f, objectives.params_of(f), g, objectives.params_of(g), task, t_net,
                                    objectives.params_of(t_net), batch, batch, 1e-4, 1e-4, settings)
    apply_meta_gradient(opt_g, dict(g.named_parameters()), grads, "normalized_adam")
    for key, module in (("f", f), ("t", t_net)):
        for k, v in module.state_dict().items():
            assert torch.equal(v, before[key][k]), f"meta phase changed {key}.{k}"
        assert all(p.grad is None for p in module.parameters())
    assert any(not torch.equal(v, before["g"][k]) for k, v in g.state_dict().items())

    # Fusion phase: F and T step, G must not move and must not even receive gradients.
    g_before = copy.deepcopy(g.state_dict())
    opt_f = make_optimizer(f.parameters(), 1e-3)
    out = objectives.fusion_objective(f, objectives.params_of(f), g, objectives.params_of(g), batch["crop_a"], batch["crop_b"],
                                  settings, detach_weights=True)
    out["loss"].backward()
    opt_f.step()
    assert all(p.grad is None for p in g.parameters())
    for k, v in g.state_dict().items():
        assert torch.equal(v, g_before[k])
    assert any(not torch.equal(v, before["f"][k]) for k, v in f.state_dict().items())


def _run_meta(rule: str, steps: int, lr: float = 3e-3):
    f, g = tiny_nets(torch.float32, seed=1)
    task = create_task("test_copy")
    t_net = task.build_network()
    settings = objectives.LossSettings(form="tdfusion")
    opt = make_optimizer(g.parameters(), lr, rule)
    start = {k: p.detach().clone() for k, p in g.named_parameters()}
    for step in range(steps):
        train_b, test_b = textured_batch(2, 24, 10 + 2 * step, torch.float32), textured_batch(2, 24, 11 + 2 * step, torch.float32)
        grads, _ = objectives.meta_gradient_second_order(f, objectives.params_of(f), g, objectives.params_of(g), task, t_net,
                                        objectives.params_of(t_net), train_b, test_b, 1e-4, 1e-4, settings)
        apply_meta_gradient(opt, dict(g.named_parameters()), grads, rule)
    moved = sum(float((p.detach() - start[k]).abs().sum()) for k, p in g.named_parameters())
    return f, g, moved


def test_g_learns_to_prefer_the_source_that_carries_the_task_signal():
    """A carries the target on the left half, B on the right: w_a must rise on the left."""
    _, g, _ = _run_meta("normalized_adam", steps=40)
    probe = textured_batch(4, 24, 999, torch.float32)
    with torch.no_grad():
        w_a = g(probe["a"], probe["b"])[:, 0]
    left, right = float(w_a[..., :12].mean()), float(w_a[..., 12:].mean())
    # untrained G gives about 0.5 everywhere; the margin below is far outside that noise
    assert left - right > 0.1, (left, right)


def test_plain_adam_barely_moves_g_compared_with_the_chosen_rule():
    """DESIGN §2.1: the meta-gradient carries the inner step size (1e-4), so plain Adam
    with its default eps hardly moves G; the normalised rules do."""
    _, _, moved_plain = _run_meta("adam", steps=3)
    _, _, moved_norm = _run_meta("normalized_adam", steps=3)
    _, _, moved_ref = _run_meta("maxnorm_sgd", steps=3)
    assert moved_norm > 20 * moved_plain
    assert moved_ref > 0.0


# -- meta.objective: target ----------------------------------------------------------------------------------------
def _target_setup(pairs: int = 1):
    from tdfusion.meta.target import meta_gradient_target, target_objective

    f, g = tiny_nets(pairs=pairs)
    task = create_task("test_copy")
    t_net = task.build_network().double()
    with torch.no_grad():  # T not the identity: the gradient has to pass through T's weights
        t_net.weight.fill_(0.7)
        t_net.bias.fill_(0.1)
    return f, g, task, t_net, meta_gradient_target, target_objective


@pytest.mark.parametrize("form", ["tdfusion", "refusion"])
def test_target_objective_gradient_matches_finite_differences(form):
    """d/dtheta_G of mean_pairs L_t(T(w_a A + w_b B)) on the meta-test batch, against central
    differences of the objective itself (float64)."""
    pairs = 2 if form == "refusion" else 1
    f, g, task, t_net, meta_gradient_target, target_objective = _target_setup(pairs)
    train_b, test_b = textured_batch(2, 12, 1), textured_batch(2, 12, 2)
    settings = objectives.LossSettings(form=form)
    grads, logs = meta_gradient_target(f, objectives.params_of(f), g, objectives.params_of(g), task, t_net,
                                       objectives.params_of(t_net), train_b, test_b, 1e-4, 1e-4, settings)
    g_params = {k: p.detach().clone() for k, p in g.named_parameters()}

    def objective(params):
        return float(target_objective(g, params, task, t_net, objectives.params_of(t_net), test_b))

    assert logs["loss_t_outer"] == pytest.approx(objective(g_params), rel=1e-12)
    gen = torch.Generator().manual_seed(0)
    checked = 0
    for name in ("embed_a.weight", "head.2.weight", "encoder_b.0.attn.temperature", "joint.0.ffn.proj.weight"):
        flat = g_params[name].reshape(-1)
        for idx in torch.randint(0, flat.numel(), (2,), generator=gen).tolist():
            eps = 1e-6
            values = []
            for sign in (1, -1):
                probe = {k: v.clone() for k, v in g_params.items()}
                probe[name].view(-1)[idx] += sign * eps
                values.append(objective(probe))
            fd = (values[0] - values[1]) / (2 * eps)
            assert float(grads[name].reshape(-1)[idx]) == pytest.approx(fd, rel=1e-5, abs=1e-11), (name, idx)
            checked += abs(fd) > 1e-8
    assert checked >= 4  # the comparison was not between zeros


def test_target_objective_teaches_g_the_source_the_task_needs():
    """The copy task wants A on the left half and B on the right: trained by the target
    objective, G's weight for A must end up high on the left and low on the right."""
    f, g, task, t_net, meta_gradient_target, _ = _target_setup()
    f, g, t_net = f.float(), g.float(), t_net.float()
    opt = make_optimizer(g.parameters(), 3e-3, "normalized_adam")
    settings = objectives.LossSettings()
    for step in range(30):
        train_b = textured_batch(2, 16, 100 + 2 * step, torch.float32)
        test_b = textured_batch(2, 16, 101 + 2 * step, torch.float32)
        grads, _ = meta_gradient_target(f, objectives.params_of(f), g, objectives.params_of(g), task, t_net,
                                        objectives.params_of(t_net), train_b, test_b, 1e-4, 1e-4, settings)
        apply_meta_gradient(opt, dict(g.named_parameters()), grads, "normalized_adam")
    probe = textured_batch(4, 16, 999, torch.float32)
    with torch.no_grad():
        w_a = g(probe["a"], probe["b"])[:, 0]
    left, right = w_a[..., :8].mean().item(), w_a[..., 8:].mean().item()
    assert left > 0.8 and right < 0.2, (left, right)
