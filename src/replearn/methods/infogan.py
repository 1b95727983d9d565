"""InfoGAN: a GAN whose generator also maximises the mutual information between latent codes and
its images, through a head Q on the discriminator that recovers the codes (arXiv:1606.03657)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.utils import make_grid

from replearn.errors import ReplearnError
from replearn.losses.vae import info_loss
from replearn.methods.base import METHODS, MethodOptions
from replearn.methods.vae import GenerativeMethod
from replearn.nn.generative import Decoder, LatentEncoder, frozen_call, stats_free_call

CODE_RANGE = torch.linspace(-2.0, 2.0, 9)  # continuous codes are drawn from U(-1, 1): show a bit beyond


@METHODS.register("infogan")
class InfoGAN(GenerativeMethod):
    """InfoGAN: a GAN whose codes c must be recoverable from its images by a head Q on D.

    G(noise, c) with a categorical code (``categories`` values) and ``continuous`` codes in U(-1, 1);
    D tells real from generated images; Q, an MLP on D's features (shared layers, as the paper),
    predicts c from G's images. The embedding is Q's output on a real image: the
    categories' logits, then the continuous codes' means.

    The losses are the paper's: D and Q minimise the GAN cross-entropy and lambda * -L_I on
    generated images (stop-gradient into G); G minimises the non-saturating GAN loss and lambda *
    -L_I through D and Q held fixed. D and Q have their own Adam (``disc_lr``, betas (0.5, 0.999)),
    G the run's optimiser. Generated batches pass D without touching its BatchNorm running
    statistics, so in evaluation D normalises real images by real images' statistics.
    """

    paper = (
        "Chen et al., InfoGAN: Interpretable Representation Learning by Information Maximizing Generative "
        "Adversarial Nets, NeurIPS 2016 (arXiv:1606.03657)"
    )

    @dataclass
    class Args:
        noise_dim: int = 62  # the paper's MNIST setting
        categories: int = 10  # values of the categorical code (0: none)
        continuous: int = 2  # continuous codes
        info_weight: float = 1.0  # lambda
        q_hidden: int = 128
        disc_lr: float = 2e-4  # the paper's D learning rate (G: 1e-3)

    def __init__(self, backbone, opts: MethodOptions):
        super().__init__(backbone, opts)
        a = self.args
        if a.continuous < 0 or a.categories < 0 or a.categories == 1 or a.noise_dim < 0 or a.categories + a.continuous == 0:
            raise ReplearnError("infogan needs categories = 0 or >= 2, continuous >= 0, noise_dim >= 0, and some code")
        d = backbone.out_dim
        self.backbone = LatentEncoder(backbone, {"kind": "mlp", "dims": [d, a.q_hidden, a.categories + a.continuous]})
        self.d_head = nn.Linear(d, 1)
        self.generator = Decoder(a.noise_dim + a.categories + a.continuous, self.channels, self.image_size, self.width, norm=True)

    def extra_optimizers(self) -> list[dict]:
        params = [*self.backbone.parameters(), *self.d_head.parameters()]
        return [{"params": params, "lr": self.args.disc_lr, "betas": (0.5, 0.999)}]

    def draw_codes(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(G's input (N, noise + K + C), category (N,) or None, continuous codes (N, C))."""
        a, g = self.args, self.generator_on(device)
        noise = torch.randn(n, a.noise_dim, generator=g, device=device)
        cont = torch.rand(n, a.continuous, generator=g, device=device) * 2 - 1
        cat = torch.randint(0, a.categories, (n,), generator=g, device=device) if a.categories else None
        onehot = F.one_hot(cat, a.categories).float() if cat is not None else noise[:, :0]
        return torch.cat([noise, onehot, cont], 1), cat, cont

    def generate(self, codes: torch.Tensor) -> torch.Tensor:
        """G's images in [0, 1]."""
        return torch.sigmoid(self.generator(codes).float())

    def training_step(self, views, index):
        self.take_pixels(len(views[0]))
        real = views[0]
        codes, cat, cont = self.draw_codes(len(real), real.device)
        mean, std = self._mean_std
        fake = self.normalize(self.generate(codes), mean, std).to(real.dtype)
        body, q_head = self.backbone.body, self.backbone.head
        h_real = body(real)
        h_fake = stats_free_call(body, fake.detach())  # D's and Q's step: G gets no gradient
        d_real, d_fake = self.d_head(h_real).float(), self.d_head(h_fake).float()
        d_loss = F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real)) + \
            F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
        info_d = info_loss(stats_free_call(q_head, h_fake), cat, cont)
        h_gen = frozen_call(body, fake)  # G's step: D and Q held fixed
        g_logit = frozen_call(self.d_head, h_gen).float()
        g_loss = F.binary_cross_entropy_with_logits(g_logit, torch.ones_like(g_logit))
        info_g = info_loss(frozen_call(q_head, h_gen), cat, cont)
        loss = d_loss + g_loss + self.args.info_weight * (info_d + info_g)
        with torch.no_grad():  # Q on real images: the embedding the collapse alarm watches (and BN's statistics)
            q_real = q_head(h_real)
        logs: dict[str, Any] = {
            "features": q_real, "d_loss": d_loss.detach(), "g_loss": g_loss.detach(),
            "info_loss": info_g.detach(), "d_real_acc": (d_real > 0).float().mean().detach(),
        }
        return loss, logs

    @torch.no_grad()
    def pictures(self, images, mean, std) -> dict[str, Any]:
        """64 samples (a fixed seed); traversals: with the noise and the other codes fixed, one row per
        continuous code from -2 to 2, then one row through the categories."""
        was = self.training
        self.eval()
        try:
            a = self.args
            g = torch.Generator().manual_seed(0)
            dev = next(self.generator.parameters()).device
            noise = torch.randn(64, a.noise_dim, generator=g)
            cat = torch.arange(64) % max(1, a.categories)
            onehot = F.one_hot(cat, a.categories).float() if a.categories else noise[:, :0]
            cont = torch.rand(64, a.continuous, generator=g) * 2 - 1
            samples = self.generate(torch.cat([noise, onehot, cont], 1).to(dev))
            base = torch.cat([noise[0], onehot[0], torch.zeros(a.continuous)])
            rows, legend = [], []
            for j in range(a.continuous):
                z = base.repeat(len(CODE_RANGE), 1)
                z[:, a.noise_dim + a.categories + j] = CODE_RANGE
                rows.append(z)
                legend.append({"row": len(legend), "code": f"continuous {j}", "values": [round(v, 2) for v in CODE_RANGE.tolist()]})
            if a.categories:
                z = base.repeat(a.categories, 1)
                z[:, a.noise_dim : a.noise_dim + a.categories] = torch.eye(a.categories)
                rows.append(z)
                legend.append({"row": len(legend), "code": "categorical", "values": list(range(a.categories))})
            width = max(len(CODE_RANGE), a.categories)
            tiles = []
            for z in rows:
                img = self.generate(z.to(dev)).cpu()
                pad = torch.full((width - len(img), *img.shape[1:]), 0.5)
                tiles.append(torch.cat([img, pad]))
            return {
                "samples": make_grid(samples.cpu().clamp(0, 1), nrow=8, padding=1, pad_value=0.5),
                "traversals": make_grid(torch.cat(tiles).clamp(0, 1), nrow=width, padding=1, pad_value=0.5),
                "traversals_legend": {"base": "noise and codes of sample 0; one row per code", "rows": legend},
            }
        finally:
            self.train(was)
