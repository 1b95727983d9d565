"""The generative methods: each term against a closed form or a case worked by hand, the gradient
routing of the methods with two optimisers, the ladder's schedule, and runs that resume exactly."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from replearn.losses.vae import (
    bernoulli_nll,
    critic_loss,
    elbo,
    gaussian_kl,
    gaussian_nll,
    info_loss,
    permute_dims,
    reparameterize,
    total_correlation,
)
from replearn.methods import METHODS, MethodOptions
from replearn.nn import build_backbone, load_encoder
from replearn.nn.generative import Decoder, frozen_call, stats_free_call
from replearn.train.run import pretrain

TINY = dict(data="digits", width=8, batch_size=64, limit=256, knn_monitor=False, precision="32")


# -- the terms ---------------------------------------------------------------------------------
def test_gaussian_kl_matches_its_closed_form_and_monte_carlo():
    mu = torch.tensor([[0.0, 1.5, -0.7]], dtype=torch.float64)
    logvar = torch.tensor([[0.0, -1.0, 0.8]], dtype=torch.float64)
    kl = gaussian_kl(mu, logvar)
    s2 = logvar.exp()
    torch.testing.assert_close(kl, 0.5 * (mu**2 + s2 - torch.log(s2) - 1))
    assert kl[0, 0] == 0  # q = p
    # Monte Carlo: E_q[log q(z) - log p(z)] with a million samples
    g = torch.Generator().manual_seed(0)
    z = mu + s2.sqrt() * torch.randn(1_000_000, 3, generator=g, dtype=torch.float64)
    log_q = -0.5 * ((z - mu) ** 2 / s2 + torch.log(2 * math.pi * s2))
    log_p = -0.5 * (z**2 + math.log(2 * math.pi))
    torch.testing.assert_close(kl[0], (log_q - log_p).mean(0), atol=5e-3, rtol=0)


def test_elbo_of_a_linear_gaussian_model_is_log_evidence_at_the_exact_posterior():
    """p(z) = N(0, 1), p(x|z) = N(z, s^2): p(x) = N(0, 1 + s^2) and q*(z|x) = N(x/(1+s^2), s^2/(1+s^2)).
    The expected ELBO (exact, by Gauss-Hermite quadrature: the NLL is quadratic in z) equals log p(x)
    at q*, and falls short of it by KL(q || q*) for any other q."""
    s, x = 0.6, torch.tensor([[[[1.3]]]], dtype=torch.float64)
    log_px = -0.5 * (1.3**2 / (1 + s * s) + math.log(2 * math.pi * (1 + s * s)))
    nodes, weights = np.polynomial.hermite.hermgauss(8)

    def expected_elbo(m, v):
        z = m + math.sqrt(2 * v) * torch.tensor(nodes, dtype=torch.float64)
        nll = torch.stack([gaussian_nll(zi.view(1, 1, 1, 1), x, torch.tensor(math.log(s), dtype=torch.float64)) for zi in z])
        e_nll = (torch.tensor(weights, dtype=torch.float64) * nll.flatten()).sum() / math.sqrt(math.pi)
        kl = gaussian_kl(torch.tensor([[m]], dtype=torch.float64), torch.tensor([[math.log(v)]], dtype=torch.float64))
        return float(elbo(e_nll.view(1), kl)[0])

    m_star, v_star = 1.3 / (1 + s * s), s * s / (1 + s * s)
    assert expected_elbo(m_star, v_star) == pytest.approx(log_px, abs=1e-12)
    m, v = 0.2, 0.5  # the gap is KL(q || q*) between two Gaussians
    gap = 0.5 * (v / v_star + (m - m_star) ** 2 / v_star - 1 + math.log(v_star / v))
    assert expected_elbo(m, v) == pytest.approx(log_px - gap, abs=1e-12)


def test_bernoulli_and_gaussian_nll_by_hand():
    x = torch.tensor([[[[1.0, 0.0], [0.25, 1.0]]]])
    logits = torch.tensor([[[[0.0, 0.0], [math.log(3.0), -math.log(3.0)]]]])
    # pixels: log 2, log 2, -(0.25 log 0.75 + 0.75 log 0.25), -log 0.25
    want = 2 * math.log(2) - (0.25 * math.log(0.75) + 0.75 * math.log(0.25)) - math.log(0.25)
    assert bernoulli_nll(logits, x).item() == pytest.approx(want, rel=1e-6)
    mean = torch.zeros_like(x)
    want = sum(0.5 * v * v / 4 + math.log(2) + 0.5 * math.log(2 * math.pi) for v in (1.0, 0.0, 0.25, 1.0))
    assert gaussian_nll(mean, x, torch.tensor(math.log(2.0))).item() == pytest.approx(want, rel=1e-6)


def test_reparameterize_moves_noise_by_mean_and_std():
    mu, logvar = torch.tensor([[1.0, -2.0]]), torch.tensor([[math.log(4.0), 0.0]])
    z = reparameterize(mu, logvar, torch.tensor([[0.5, -1.0]]))
    torch.testing.assert_close(z, torch.tensor([[2.0, -3.0]]))


def test_permuting_dimensions_keeps_marginals_and_breaks_dependence():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20_000, generator=g)
    z = torch.stack([a, a + 0.1 * torch.randn(20_000, generator=g), torch.randn(20_000, generator=g)], 1)
    p = permute_dims(z, torch.Generator().manual_seed(1))
    for j in range(3):  # every column holds the same values, reordered
        torch.testing.assert_close(p[:, j].sort().values, z[:, j].sort().values, atol=0, rtol=0)
    assert torch.corrcoef(z.T)[0, 1] > 0.99
    assert abs(float(torch.corrcoef(p.T)[0, 1])) < 0.03  # dependence gone
    assert (p[:, 0] != z[:, 0]).float().mean() > 0.99  # rows really moved, per column on its own
    assert not torch.equal(p[:, 0].argsort(), p[:, 1].argsort())


def test_total_correlation_estimate_with_the_true_density_ratio_is_the_gaussian_tc():
    """For a bivariate Gaussian with correlation r, TC = -0.5 log(1 - r^2); a critic whose logit
    difference is the exact log density ratio q(z) / q(z1) q(z2) recovers it."""
    r = 0.8
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(400_000, generator=g, dtype=torch.float64)
    z2 = r * z1 + math.sqrt(1 - r * r) * torch.randn(400_000, generator=g, dtype=torch.float64)
    log_joint = -0.5 * (z1**2 - 2 * r * z1 * z2 + z2**2) / (1 - r * r) - 0.5 * math.log(1 - r * r)
    log_marginals = -0.5 * (z1**2 + z2**2)
    logits = torch.stack([log_joint - log_marginals, torch.zeros_like(z1)], 1)
    assert total_correlation(logits).item() == pytest.approx(-0.5 * math.log(1 - r * r), abs=0.01)


def test_critic_and_info_losses_by_hand():
    assert critic_loss(torch.zeros(3, 2), torch.zeros(5, 2)).item() == pytest.approx(math.log(2))
    # a confident critic: joint -> class 0, permuted -> class 1
    big = torch.tensor([[20.0, -20.0]])
    assert critic_loss(big, -big).item() < 1e-15 + 1e-16
    q = torch.tensor([[2.0, 0.0, 0.5], [0.0, 0.0, -1.0]])  # 2 categories then one continuous mean
    cats, cont = torch.tensor([0, 1]), torch.tensor([[1.0], [0.0]])
    ce = (-math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(2)) / 2
    assert info_loss(q, cats, cont).item() == pytest.approx(ce + 0.5 * (0.25 + 1.0) / 2, rel=1e-6)
    assert info_loss(q[:, 2:], None, cont).item() == pytest.approx(0.5 * 1.25 / 2, rel=1e-6)


# -- parts -------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [8, 28, 32, 64])
def test_decoder_and_flatconv_fit_every_image_size(size):
    enc = build_backbone("flatconv", 3, size, width=8)
    assert enc(torch.zeros(2, 3, size, size)).shape == (2, 256)
    assert Decoder(5, 3, size, width=8)(torch.zeros(2, 5)).shape == (2, 3, size, size)


def test_frozen_and_stats_free_calls_route_gradients_and_keep_running_statistics():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    x = torch.randn(8, 3, requires_grad=True)
    stats = net[1].running_mean.clone()
    frozen_call(net, x).sum().backward()
    assert x.grad is not None and net[0].weight.grad is None  # inputs only
    torch.testing.assert_close(net[1].running_mean, stats, atol=0, rtol=0)
    stats_free_call(net, x.detach()).pow(2).sum().backward()
    assert net[0].weight.grad is not None  # trains the parameters ...
    torch.testing.assert_close(net[1].running_mean, stats, atol=0, rtol=0)  # ... not the statistics
    net(x.detach())
    assert not torch.equal(net[1].running_mean, stats)  # a plain call does move them


def _method(name, size=8, **args):
    torch.manual_seed(0)
    backbone = build_backbone("flatconv", 1, size, width=8)
    return METHODS.get(name)(backbone, MethodOptions(channels=1, image_size=size, width=8, args=args))


def _batch(size=8):
    """(32 digits at ``size`` px, their ``make_views`` arguments before the generator)."""
    from replearn.data import load_data

    data = load_data("digits", "train", image_size=size)
    return data.images[:32], None, size, data.mean, data.std


def _step(method, seed=0, size=8):
    views = method.make_views(*_batch(size), torch.Generator().manual_seed(seed))
    return method.training_step(views, torch.arange(32)), views


def _grads(method, loss):
    method.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in method.named_parameters()}


def test_factorvae_one_backward_gives_each_part_its_own_objective():
    """The step's summed loss gives the VAE the gradient of nll + KL + gamma TC (the critic held
    fixed) and the critic the gradient of its own cross-entropy (z detached), each rebuilt here."""
    m = _method("factorvae", gamma=7.0, critic_hidden=16, critic_layers=3, kl_warmup=0.0)
    m.set_progress(5, 10, 0, 1)
    (total, _), _ = _step(m)
    both = _grads(m, total)
    _, views = _step(m)  # the same draws again (seeded), then each objective on its own
    m.make_views(*_batch(), torch.Generator().manual_seed(0))
    _, z, nll, kl, _ = m.vae_terms(views)
    vae_obj = nll.mean() + kl.sum(1).mean() + 7.0 * total_correlation(frozen_call(m.critic, z))
    zd = z.detach()
    critic_obj = critic_loss(m.critic(zd), m.critic(permute_dims(zd, m.generator_on("cpu"))))
    g_vae, g_critic = _grads(m, vae_obj), _grads(m, critic_obj)
    for n in both:
        torch.testing.assert_close(both[n], g_critic[n] if n.startswith("critic.") else g_vae[n], msg=n)
    assert all(g_vae[n].abs().sum() == 0 for n in g_vae if n.startswith("critic."))
    assert all(g_critic[n].abs().sum() == 0 for n in g_critic if not n.startswith("critic."))
    assert all(both[n].abs().sum() > 0 for n in both if n.startswith("critic."))
    assert any(g_vae[n].abs().sum() > 0 for n in g_vae if n.startswith("backbone."))


def test_infogan_generator_and_discriminator_get_only_their_own_gradients():
    """G's gradient is that of its non-saturating loss + lambda L_I through D and Q held fixed; D's
    BatchNorm statistics move with real images only."""
    m = _method("infogan", size=16, noise_dim=4, categories=3, continuous=2, q_hidden=8)
    bn = next(mod for mod in m.backbone.body.modules() if isinstance(mod, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    (loss, _), views = _step(m, size=16)
    grads = _grads(m, loss)
    twin = _method("infogan", size=16, noise_dim=4, categories=3, continuous=2, q_hidden=8)
    twin.backbone.body(views[0])  # one plain pass of the real batch
    twin_bn = next(mod for mod in twin.backbone.body.modules() if isinstance(mod, torch.nn.BatchNorm2d))
    assert not torch.equal(before, bn.running_mean)
    torch.testing.assert_close(bn.running_mean, twin_bn.running_mean)
    images, _, size, mean, std = _batch(16)
    m.make_views(images, None, size, mean, std, torch.Generator().manual_seed(0))
    m.take_pixels(32)
    codes, cat, cont = m.draw_codes(32, "cpu")
    fake = m.normalize(m.generate(codes), mean, std)
    h = frozen_call(m.backbone.body, fake)
    logit = frozen_call(m.d_head, h)
    g_obj = F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit)) + info_loss(frozen_call(m.backbone.head, h), cat, cont)
    want = _grads(m, g_obj)
    for n in grads:
        if n.startswith("generator."):
            torch.testing.assert_close(grads[n], want[n], msg=n)
        else:
            assert want[n].abs().sum() == 0, n  # G's objective leaves D and Q alone
    assert all(grads[n].abs().sum() > 0 for n in grads if n.startswith(("backbone.", "d_head.")))


def test_ladder_switches_levels_on_from_the_deepest_and_fades_them_in():
    m = _method("ladder", levels=3, latent_per_level=2, grow_until=0.5, fade=0.1, pre_kl=4.0, kl_warmup=0.0)
    at = {}
    for p in (0.0, 0.2, 0.3, 0.5, 0.55, 0.7):
        m.set_progress(int(p * 1000), 1000, 0, 1)
        at[p] = m.alphas()
    # level l starts at (L - l) / (L - 1) * grow_until: level 2 at 0.25, level 1 at 0.5
    assert at[0.0] == [0.0, 0.0, 1.0] and at[0.2] == [0.0, 0.0, 1.0]  # the deepest (level 3) alone
    assert at[0.3] == pytest.approx([0.0, 0.5, 1.0])  # level 2 half faded in
    assert at[0.5] == pytest.approx([0.0, 1.0, 1.0])
    assert at[0.55] == pytest.approx([0.5, 1.0, 1.0])
    assert at[0.7] == [1.0, 1.0, 1.0]
    # a new level's KL weight falls from pre_kl * beta to beta as it fades in; off: 0
    assert m.level_kl_weights(at[0.3]) == pytest.approx([0.0, 2.5, 1.0])
    assert m.level_kl_weights(at[0.7]) == pytest.approx([1.0, 1.0, 1.0])


def test_ladder_level_not_yet_on_gets_no_gradient():
    m = _method("ladder", levels=2, latent_per_level=2, grow_until=0.5, fade=0.1, kl_warmup=0.0)
    m.set_progress(0, 100, 0, 1)
    (loss, logs), _ = _step(m)
    g = _grads(m, loss)
    assert g["backbone.head.means.0.weight"].abs().sum() == 0  # level 1: off
    assert g["backbone.head.means.1.weight"].abs().sum() > 0  # level 2 (deepest): on
    m.set_progress(100, 100, 0, 1)
    (loss, logs), _ = _step(m)
    assert _grads(m, loss)["backbone.head.means.0.weight"].abs().sum() > 0
    assert logs["levels_on"] == 2


def test_kl_warmup_ramps_the_weight_from_zero():
    m = _method("betavae", kl_warmup=0.2)
    for step, want in ((0, 0.0), (10, 2.0), (20, 4.0), (90, 4.0)):
        m.set_progress(step, 100, 0, 1)
        assert m.kl_weight(m.args.beta, m.args.kl_warmup) == pytest.approx(want)


# -- runs ---------------------------------------------------------------------------------------
def test_vae_run_exports_the_posterior_mean_as_the_encoder_and_draws_pictures(tmp_path):
    run = pretrain(out=str(tmp_path / "vae"), method="vae", epochs=2, method_args={"latent_dim": 5}, **TINY)
    enc, spec = load_encoder(run)
    assert spec["backbone"] == "flatconv" and spec["head"]["dims"][-1] == 5 and enc.out_dim == 5
    ckpt = torch.load(run / "last.ckpt", weights_only=False)
    from replearn.data import load_data

    data = load_data("digits", "train")
    method = _method("vae", latent_dim=5)
    method.load_state_dict({k.removeprefix("method."): v for k, v in ckpt["state_dict"].items()})
    method.eval()
    from replearn.views import eval_view

    x = eval_view(data.images[:16], data.mean, data.std)
    torch.testing.assert_close(enc(x), method.encode(x)[0])  # encoder.pt = the posterior mean
    for name in ("reconstructions", "samples", "traversals"):
        assert (run / f"{name}.png").is_file() and (run / "pictures" / f"{name}_epoch001.png").is_file()
    legend = json.loads((run / "traversals_legend.json").read_text())
    assert sorted(r["latent"] for r in legend["rows"]) == list(range(5))  # one row per latent
    from PIL import Image

    w, h = Image.open(run / "traversals.png").size
    assert h == 5 * (8 + 1) + 1 and w == 9 * (8 + 1) + 1  # 5 rows of 9 values, 8-px tiles, 1-px padding


@pytest.mark.parametrize("name", ["factorvae", "infogan"])
def test_two_optimiser_runs_resume_exactly(tmp_path, name):
    """Manual optimisation (the critic's or D's own Adam): a run cut after its first epoch and resumed
    ends with the same weights and optimiser states as one that ran straight through."""
    import lightning.pytorch as pl

    class Stop(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise RuntimeError("simulated crash")

    args = {"critic_hidden": 16, "critic_layers": 3} if name == "factorvae" else {"noise_dim": 4, "q_hidden": 8}
    kw = dict(method=name, epochs=2, method_args=args, **TINY)
    straight = pretrain(out=str(tmp_path / "a"), **kw)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(out=str(tmp_path / "b"), callbacks=[Stop()], **kw)
    resumed = pretrain(out=str(tmp_path / "b"), resume=True)
    a, b = (torch.load(r / "last.ckpt", weights_only=False) for r in (straight, resumed))
    assert len(a["optimizer_states"]) == 2
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], atol=0, rtol=0, msg=k)
    for pic in ("samples", "traversals"):  # both draw what they learnt
        assert (resumed / f"{pic}.png").is_file()
    rows = json.loads((resumed / "traversals_legend.json").read_text())["rows"]
    assert len(rows) == (10 if name == "factorvae" else 2 + 1)  # factorvae: one per latent; infogan: 2 codes + categories
    extra = a["optimizer_states"][1]["param_groups"][0]
    assert extra["betas"] == ((0.5, 0.9) if name == "factorvae" else (0.5, 0.999))
    assert extra["lr"] == (1e-4 if name == "factorvae" else 2e-4)  # constant: no schedule


@pytest.mark.slow
def test_evaluate_on_shapes_measures_disentanglement(tmp_path):
    """A vae trained briefly on shapes: evaluate adds MIG and the FactorVAE score over the whole grid;
    the factors themselves, as codes, score 1 on both."""
    from replearn.data import load_data
    from replearn.evaluate.disentangle import disentanglement
    from replearn.evaluate.protocol import evaluate

    data = load_data("shapes", "train")
    perfect = disentanglement(data.factors.float(), data.factors, data.factor_names)
    assert perfect["mig"]["mig"] == pytest.approx(1.0) and perfect["factorvae"]["score"] == 1.0
    run = pretrain(out=str(tmp_path / "vae"), method="vae", data="shapes", epochs=1, width=8, batch_size=128,
                   limit=1024, knn_monitor=False, precision="32", method_args={"latent_dim": 4})
    r = evaluate(str(run), data="shapes", few_label=[4], seeds=[0], verbose=False)
    d = json.loads((run / "eval.json").read_text())["disentanglement"]
    assert d == json.loads(json.dumps(r["disentanglement"]))
    assert 0 <= d["mig"]["mig"] <= 1 and 0 <= d["factorvae"]["score"] <= 1
    assert len(d["mig"]["mi"]) == 5 and len(d["mig"]["mi"][0]) == 4  # 5 factors x 4 latents
    assert d["factor_names"] == data.factor_names


def test_a_nan_in_a_two_optimiser_method_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from replearn.errors import ReplearnError
    from replearn.methods.vae import FactorVAE

    real_step, calls = FactorVAE.training_step, []

    def step(self, views, index):
        calls.append(1)
        loss, logs = real_step(self, views, index)
        return (loss * float("nan") if len(calls) > 5 else loss), logs

    monkeypatch.setattr(FactorVAE, "training_step", step)
    with pytest.raises(ReplearnError, match="became nan at step 5.*last good checkpoint"):
        pretrain(out=str(tmp_path / "run"), method="factorvae", epochs=3, method_args={"critic_hidden": 8}, **TINY)
    assert torch.load(tmp_path / "run" / "last.ckpt", weights_only=False)["epoch"] == 0
