"""Ladder: a hierarchical VAE with latents at several depths, learnt progressively from the deepest
(pro-VAE, arXiv:2002.10549, on VLAE's ladder, arXiv:1702.08396)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from replearn.errors import ReplearnError
from replearn.losses.vae import bernoulli_nll, gaussian_kl, reparameterize
from replearn.methods.base import METHODS, MethodOptions
from replearn.methods.vae import LOGVAR_MAX, LOGVAR_MIN, GenerativeMethod
from replearn.nn.generative import Decoder, LatentEncoder


@METHODS.register("ladder")
class Ladder(GenerativeMethod):
    """Ladder: a hierarchical VAE with latents at several depths, learnt from the deepest (pro-VAE).

    L levels of latents, level 1 read from the backbone's features and level l from
    h_l = MLP(h_{l-1}), each with a N(0, I) prior; the decoder starts from the deepest level and
    adds each shallower level's code on the way down (t_L = MLP(z_L), t_l = MLP([t_{l+1}, z_l]),
    image = deconv(t_1)), so the deepest level holds what is most abstract.

    Progressive learning (pro-VAE): training starts with the deepest level alone; level l switches
    on at the fraction (L - l) / (L - 1) * ``grow_until`` of training and fades in over ``fade``: its
    code enters the decoder as alpha * z_l with alpha rising 0 -> 1, and its KL weight falls from
    ``pre_kl`` * beta to beta (pro-VAE's stronger KL on a new level, so it takes only what the
    levels already on cannot explain). A level not yet on has neither decoder input nor KL. The
    embedding is every level's posterior mean, deepest last. Here the levels sit on the backbone's
    pooled features (an MLP ladder), not on its convolutional stages as in pro-VAE.
    """

    paper = (
        "Li et al., Progressive Learning and Disentanglement of Hierarchical Representations, ICLR 2020 "
        "(arXiv:2002.10549); Zhao et al., Learning Hierarchical Features from Generative Models, ICML 2017"
    )

    @dataclass
    class Args:
        levels: int = 3
        latent_per_level: int = 4
        hidden: int = 256
        beta: float = 1.0
        kl_warmup: float = 0.1  # fraction of training over which every KL weight rises from 0
        progressive: bool = True  # False: every level from the start (a plain VLAE)
        grow_until: float = 0.5  # the last (shallowest) level switches on at this fraction of training
        fade: float = 0.1  # fraction of training over which a new level fades in
        pre_kl: float = 4.0  # a new level's KL weight starts at pre_kl * beta (1: off)

    def __init__(self, backbone, opts: MethodOptions):
        super().__init__(backbone, opts)
        a = self.args
        if a.levels < 1 or a.latent_per_level < 1:
            raise ReplearnError("ladder needs levels >= 1 and latent_per_level >= 1")
        k, d = a.latent_per_level, backbone.out_dim
        self.backbone = LatentEncoder(backbone, {"kind": "ladder", "in_dim": d, "latents": [k] * a.levels, "hidden": a.hidden})
        in_dims = [d] + [a.hidden] * (a.levels - 1)
        self.logvar_heads = nn.ModuleList([nn.Linear(in_dims[i], k) for i in range(a.levels)])
        # top-down: the deepest level's MLP reads z_L alone, the others [t_{l+1}, z_l]
        self.down = nn.ModuleList([
            nn.Sequential(nn.Linear(k + (a.hidden if i < a.levels - 1 else 0), a.hidden), nn.ReLU(inplace=True))
            for i in range(a.levels)
        ])
        self.decoder = Decoder(a.hidden, self.channels, self.image_size, self.width)

    def alphas(self) -> list[float]:
        """Each level's fade-in weight alpha in [0, 1] at this point of training (index 0 = level 1)."""
        a, n = self.args, self.args.levels
        if not a.progressive:
            return [1.0] * n
        out = []
        for level in range(1, n):  # the deepest, level n, is always on
            start = (n - level) / (n - 1) * a.grow_until
            out.append(min(1.0, max(0.0, (self.progress - start) / a.fade)) if a.fade > 0 else float(self.progress >= start))
        return [*out, 1.0]

    def level_kl_weights(self, alphas: list[float]) -> list[float]:
        """Each level's KL weight: 0 before it is on, then from pre_kl * beta down to beta as it fades in
        (times the KL warm-up)."""
        a, warm = self.args, self.kl_weight(self.args.beta, self.args.kl_warmup)
        return [0.0 if al == 0 else warm * (a.pre_kl + (1 - a.pre_kl) * al) for al in alphas]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of every level, concatenated level 1 first: (N, L * k) each."""
        h = self.backbone.body(x)
        mus, logvars = [], []
        for (hl, mu), head in zip(self.backbone.head.levels(h), self.logvar_heads, strict=True):
            mus.append(mu.float())
            logvars.append(head(hl).float().clamp(LOGVAR_MIN, LOGVAR_MAX))
        return torch.cat(mus, 1), torch.cat(logvars, 1)

    def decode(self, z: torch.Tensor, alphas: list[float] | None = None) -> torch.Tensor:
        """Codes (N, L * k), level 1 first -> decoder logits; level l's code enters scaled by alpha_l."""
        alphas = alphas or [1.0] * self.args.levels
        zs = z.split(self.args.latent_per_level, 1)
        t = None
        for level in reversed(range(self.args.levels)):
            zl = zs[level] * alphas[level]
            t = self.down[level](zl if t is None else torch.cat([t, zl], 1))
        return self.decoder(t)

    def decode_pixels(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decode(z).float())

    def training_step(self, views, index):
        a = self.args
        x = self.take_pixels(len(views[0]))
        mu, logvar = self.encode(views[0])
        z = reparameterize(mu, logvar, self.randn(*mu.shape, device=mu.device))
        alphas = self.alphas()
        nll = bernoulli_nll(self.decode(z, alphas), x)
        kl = gaussian_kl(mu, logvar).view(len(mu), a.levels, a.latent_per_level).sum(2)  # (N, L)
        weights = torch.tensor(self.level_kl_weights(alphas), device=kl.device)
        loss = nll.mean() + (kl.mean(0) * weights).sum()
        logs: dict[str, Any] = {"features": mu.detach(), "rec_nll": nll.mean().detach(), "kl": kl.sum(1).mean().detach(),
                                "elbo": -(nll + kl.sum(1)).mean().detach(), "levels_on": float(sum(al > 0 for al in alphas))}
        for level in range(a.levels):
            logs[f"kl_level{level + 1}"] = kl[:, level].mean().detach()
        return loss, logs

    def traversal_rows(self, kl: torch.Tensor) -> list[dict]:
        """Deepest level first, each level's latents by mean KL."""
        k = self.args.latent_per_level
        dims = [lvl * k + j for lvl in reversed(range(self.args.levels))
                for j in kl[lvl * k:(lvl + 1) * k].argsort(descending=True).tolist()]
        return [{"latent": d, "level": d // k + 1, "mean_kl_nats": round(float(kl[d]), 3)} for d in dims]
