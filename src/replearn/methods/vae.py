"""VAE, beta-VAE and FactorVAE: a Gaussian encoder whose mean is the embedding, a deconvolutional
decoder, and the ELBO with a weighted KL (arXiv:1312.6114, Higgins et al. ICLR 2017,
arXiv:1804.03599, arXiv:1802.05983)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.utils import make_grid

from replearn.errors import ReplearnError
from replearn.losses.vae import (
    bernoulli_nll,
    critic_loss,
    gaussian_kl,
    gaussian_nll,
    permute_dims,
    reparameterize,
    total_correlation,
)
from replearn.methods.base import METHODS, Method, MethodOptions
from replearn.nn.generative import Decoder, LatentEncoder, frozen_call

LOGVAR_MIN, LOGVAR_MAX = -12.0, 8.0  # exp(-12) ~ 6e-6 .. exp(8) ~ 3e3: keeps exp() finite in bf16
TRAVERSAL = torch.linspace(-2.5, 2.5, 9)  # prior standard deviations either side of the base code
MAX_TRAVERSAL_ROWS = 12


class GenerativeMethod(Method):
    """What the generative methods share: un-augmented views (the image is the target), the
    trainer's seeded generator kept for the step's noise (so resume is exact), the encoder's
    latent head in ``encoder.pt`` and picture grids."""

    default_backbone = "flatconv"
    n_views = 1

    def __init__(self, backbone: nn.Module, opts: MethodOptions):
        super().__init__(backbone, opts)
        self.channels, self.image_size, self.width = opts.channels, opts.image_size, opts.width
        self._generator: torch.Generator | None = None
        self._pixels: torch.Tensor | None = None
        self._mean_std = None  # the data's normalisation, for images a method makes (InfoGAN's G)

    def make_views(self, images, recipe, size, mean, std, generator):
        """The images as they are, normalised (the encoder's input); [0, 1] pixels kept as the target."""
        if images.shape[-1] != self.image_size or images.shape[1] != self.channels:
            raise ReplearnError(
                f"{self.registered_name} was built for {self.channels}-channel {self.image_size}-px images, "
                f"got {images.shape[1]}-channel {images.shape[-1]}-px", "pretrain without --image-size",
            )
        self._generator, self._mean_std = generator, (mean, std)
        self._pixels = images.float() / 255
        return [self.normalize(self._pixels, mean, std)]

    @staticmethod
    def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
        m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - m) / s

    def take_pixels(self, n: int) -> torch.Tensor:
        x, self._pixels = self._pixels, None
        if x is None or len(x) != n:
            raise RuntimeError(f"{type(self).__name__}.training_step needs the views of its make_views")
        return x

    def generator_on(self, device) -> torch.Generator | None:
        """The step's seeded generator when it lives on ``device`` (None: the global one)."""
        g = self._generator
        return g if g is not None and g.device == torch.device(device) else None

    def randn(self, *shape: int, device) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator_on(device), device=device)

    def kl_weight(self, beta: float, warmup: float) -> float:
        """beta, ramped linearly from 0 over the first ``warmup`` fraction of training (KL warm-up,
        Bowman et al. arXiv:1511.06349): the decoder learns to use z before the KL pulls q to the prior."""
        return beta * (min(1.0, self.progress / warmup) if warmup > 0 else 1.0)

    def encoder_spec(self) -> dict:
        return {"head": self.backbone.head_spec}

    # -- pictures of an encoder-decoder: encode(x) -> (mu, logvar), decode_pixels(z) -> [0, 1] ----
    def traversal_rows(self, kl: torch.Tensor) -> list[dict]:
        """The latents to traverse, most informative (largest mean KL (D,)) first."""
        return [{"latent": d, "mean_kl_nats": round(float(kl[d]), 3)} for d in kl.argsort(descending=True).tolist()]

    @torch.no_grad()
    def pictures(self, images, mean, std) -> dict[str, Any]:
        """Reconstructions (the images above their decoded posterior means), 64 samples from the
        prior (a fixed seed, so epochs compare), and traversals of the middle image's mean code."""
        was = self.training
        self.eval()
        try:
            x = images.float() / 255
            mu, logvar = self.encode(self.normalize(x, mean, std))
            recon = self.decode_pixels(mu).to(x)
            prior = torch.randn(64, mu.shape[1], generator=torch.Generator().manual_seed(0)).to(mu)
            rows = self.traversal_rows(gaussian_kl(mu, logvar).mean(0))[:MAX_TRAVERSAL_ROWS]
            return {
                "reconstructions": make_grid(torch.cat([x, recon]).clamp(0, 1), nrow=len(x), padding=1, pad_value=0.5),
                "samples": make_grid(self.decode_pixels(prior).clamp(0, 1), nrow=8, padding=1, pad_value=0.5),
                "traversals": traversal_grid(self.decode_pixels, mu[len(mu) // 2], [r["latent"] for r in rows]),
                "traversals_legend": {
                    "base": "the posterior mean of the middle image of reconstructions.png's sample; "
                            "row i sets one latent to each value in turn",
                    "values": [round(v, 3) for v in TRAVERSAL.tolist()],
                    "rows": [{"row": i, **r} for i, r in enumerate(rows)],
                },
            }
        finally:
            self.train(was)


def traversal_grid(decode, base: torch.Tensor, dims: list[int], values: torch.Tensor = TRAVERSAL) -> torch.Tensor:
    """One row per latent dimension in ``dims``: ``base`` (D,) with that dimension set to each of
    ``values`` in turn, decoded to [0, 1] images; a (C, H, W) grid."""
    rows = []
    for d in dims:
        z = base.repeat(len(values), 1)
        z[:, d] = values.to(z)
        rows.append(decode(z))
    return make_grid(torch.cat(rows).float().clamp(0, 1), nrow=len(values), padding=1, pad_value=0.5)


@METHODS.register("vae")
class VAE(GenerativeMethod):
    """VAE: a Gaussian encoder and a Bernoulli (or Gaussian) decoder trained on the ELBO.

    q(z|x) = N(mu(x), diag s^2(x)) from the backbone's features, p(z) = N(0, I); the loss is
    -ELBO = reconstruction NLL + beta * KL (beta = 1 for the VAE).

    The encoder is any backbone (default ``flatconv``) with linear heads to mu and log s^2; mu is the
    embedding ``encoder.pt`` gives. The decoder mirrors ``flatconv``: FC 256, FC, then 4x4 stride-2
    transposed convolutions. KL warm-up ramps the KL weight over the first ``kl_warmup`` of training;
    log s^2 is clamped to [-12, 8] so that exp stays finite. ``capacity`` > 0 is Burgess et al.'s
    capacity annealing: beta |KL - C| with C raised linearly from 0 to ``capacity`` nats over the
    first ``capacity_anneal`` of training (the KL warm-up is then off).
    """

    paper = "Kingma & Welling, Auto-Encoding Variational Bayes, ICLR 2014 (arXiv:1312.6114)"

    @dataclass
    class Args:
        latent_dim: int = 10
        decoder: str = "bernoulli"  # bernoulli | gaussian (learned per-channel sigma)
        beta: float = 1.0  # weight of the KL term
        kl_warmup: float = 0.1  # fraction of training over which the KL weight rises from 0
        capacity: float = 0.0  # C_max in nats (0: off), beta |KL - C| (arXiv:1804.03599)
        capacity_anneal: float = 0.5  # fraction of training over which C rises to C_max

    def __init__(self, backbone, opts: MethodOptions):
        super().__init__(backbone, opts)
        a = self.args
        if a.decoder not in ("bernoulli", "gaussian"):
            raise ReplearnError(f"unknown decoder {a.decoder!r}", "use decoder=bernoulli or decoder=gaussian")
        if a.latent_dim < 1:
            raise ReplearnError(f"latent_dim must be at least 1, not {a.latent_dim}")
        d = backbone.out_dim
        self.backbone = LatentEncoder(backbone, {"kind": "mlp", "dims": [d, a.latent_dim]})
        self.logvar_head = nn.Linear(d, a.latent_dim)
        self.decoder = Decoder(a.latent_dim, self.channels, self.image_size, self.width)
        if a.decoder == "gaussian":
            self.log_sigma = nn.Parameter(torch.zeros(1, self.channels, 1, 1))

    # -- the model ---------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone.body(x)
        mu = self.backbone.head(h).float()
        return mu, self.logvar_head(h).float().clamp(LOGVAR_MIN, LOGVAR_MAX)

    def nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.args.decoder == "gaussian":
            return gaussian_nll(out, x, self.log_sigma.clamp(-7, 2))
        return bernoulli_nll(out, x)

    def vae_terms(self, views) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """(mu, z, nll (N,), kl (N, D), logs) of one step's batch."""
        x = self.take_pixels(len(views[0]))
        mu, logvar = self.encode(views[0])
        z = reparameterize(mu, logvar, self.randn(*mu.shape, device=mu.device))
        nll = self.nll(self.decoder(z), x)
        kl = gaussian_kl(mu, logvar)
        logs = {"features": mu.detach(), "rec_nll": nll.mean().detach(), "kl": kl.sum(1).mean().detach(),
                "elbo": -(nll + kl.sum(1)).mean().detach(),
                "active_dims": (kl.mean(0) > 0.01).sum().float().detach()}  # dims whose mean KL > 0.01 nats
        return mu, z, nll, kl, logs

    def kl_term(self, kl: torch.Tensor) -> torch.Tensor:
        a = self.args
        total = kl.sum(1).mean()
        if a.capacity > 0:
            c = a.capacity * min(1.0, self.progress / a.capacity_anneal) if a.capacity_anneal > 0 else a.capacity
            return a.beta * (total - c).abs()
        return self.kl_weight(a.beta, a.kl_warmup) * total

    def training_step(self, views, index):
        _, _, nll, kl, logs = self.vae_terms(views)
        return nll.mean() + self.kl_term(kl), logs

    def decode_pixels(self, z: torch.Tensor) -> torch.Tensor:
        """Latent codes -> the decoder's mean image in [0, 1]."""
        out = self.decoder(z).float()
        return out if self.args.decoder == "gaussian" else torch.sigmoid(out)


@METHODS.register("betavae")
class BetaVAE(VAE):
    """beta-VAE: the VAE with its KL weighted by beta > 1, for a factorised, disentangled code.

    Higgins et al. (ICLR 2017) trade reconstruction for a posterior closer to the factorised prior;
    ``capacity`` switches on Burgess et al.'s annealed-capacity form beta |KL - C| (arXiv:1804.03599)."""

    paper = (
        "Higgins et al., beta-VAE: Learning Basic Visual Concepts with a Constrained Variational Framework, "
        "ICLR 2017; Burgess et al., Understanding disentangling in beta-VAE (arXiv:1804.03599)"
    )

    @dataclass
    class Args(VAE.Args):
        beta: float = 4.0  # Higgins et al.'s dSprites setting


@METHODS.register("factorvae")
class FactorVAE(VAE):
    """FactorVAE: the VAE plus gamma times the total correlation of its code, estimated by a critic.

    TC(z) = KL(q(z) || prod_j q(z_j)) is estimated by a critic that tells samples of q(z) from ones
    whose dimensions were permuted across the batch (the density-ratio trick).

    The critic (an MLP, 6 layers of ``critic_hidden`` units with LeakyReLU, as the paper) has its own
    Adam (``critic_lr``, betas (0.5, 0.9)). The VAE's gamma * TC term sees the critic with its
    parameters held fixed and the critic's loss sees z detached, so one backward pass trains each
    on its own objective. The permuted samples come from the same batch (the paper draws a second
    batch).
    """

    paper = "Kim & Mnih, Disentangling by Factorising, ICML 2018 (arXiv:1802.05983)"

    @dataclass
    class Args(VAE.Args):
        gamma: float = 20.0  # weight of the TC term (paper: 6.4-40 on dSprites)
        critic_hidden: int = 1000
        critic_layers: int = 6
        critic_lr: float = 1e-4

    def __init__(self, backbone, opts: MethodOptions):
        super().__init__(backbone, opts)
        a = self.args
        layers: list[nn.Module] = []
        dims = [a.latent_dim] + [a.critic_hidden] * (a.critic_layers - 1)
        for i in range(a.critic_layers - 1):
            layers += [nn.Linear(dims[i], dims[i + 1]), nn.LeakyReLU(0.2, inplace=True)]
        self.critic = nn.Sequential(*layers, nn.Linear(dims[-1], 2))

    def extra_optimizers(self) -> list[dict]:
        return [{"params": list(self.critic.parameters()), "lr": self.args.critic_lr, "betas": (0.5, 0.9)}]

    def training_step(self, views, index):
        _, z, nll, kl, logs = self.vae_terms(views)
        tc = total_correlation(frozen_call(self.critic, z))
        zd = z.detach()
        critic = critic_loss(self.critic(zd), self.critic(permute_dims(zd, self.generator_on(zd.device))))
        loss = nll.mean() + self.kl_term(kl) + self.kl_weight(self.args.gamma, self.args.kl_warmup) * tc
        logs.update(tc=tc.detach(), critic_loss=critic.detach())
        return loss + critic, logs
