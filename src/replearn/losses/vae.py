"""The terms of the generative methods: Gaussian KL, decoder likelihoods, the ELBO, FactorVAE's
permuted-latent total-correlation estimate, and InfoGAN's mutual-information bound.

All per-image terms are in nats, summed over pixels or latent dimensions, shape (N,) or (N, D).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _wide(t: torch.Tensor) -> torch.Tensor:
    """float32 for bf16/fp16 (autocast) inputs; float64 kept as it is."""
    return t if t.dtype == torch.float64 else t.float()


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) per latent dimension, (N, D): 0.5 (mu^2 + s^2 - log s^2 - 1)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """z = mu + exp(logvar / 2) * noise, noise ~ N(0, 1): a sample whose gradient reaches mu and logvar."""
    return mu + (0.5 * logvar).exp() * noise


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x | z) of a Bernoulli decoder, (N,): x in [0, 1] (grey levels as probabilities), logits
    of the decoder's pixels, summed over pixels."""
    return F.binary_cross_entropy_with_logits(_wide(logits), _wide(x), reduction="none").flatten(1).sum(1)


def gaussian_nll(mean: torch.Tensor, x: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """-log p(x | z) of a Gaussian decoder N(mean, sigma^2), (N,), summed over pixels; ``log_sigma``
    broadcasts against x (a learned scalar or per-channel value)."""
    z = (_wide(x) - _wide(mean)) * torch.exp(-_wide(log_sigma))
    return (0.5 * z.pow(2) + _wide(log_sigma) + 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)


def elbo(nll: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
    """The evidence lower bound per image, (N,): E_q[log p(x|z)] - KL(q(z|x) || p(z)), from the
    decoder's negative log-likelihood (N,) and the KL per dimension (N, D)."""
    return -nll - kl.sum(1)


def permute_dims(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each latent dimension shuffled across the batch on its own (FactorVAE, arXiv:1802.05983,
    Algorithm 1): every column keeps its values, so the marginals q(z_j) stay, while the rows'
    dependence between dimensions is broken, so the batch samples prod_j q(z_j)."""
    n, d = z.shape
    keys = torch.rand(n, d, generator=generator, device=z.device)
    return torch.gather(z, 0, keys.argsort(0))


def total_correlation(critic_logits: torch.Tensor) -> torch.Tensor:
    """The density-ratio estimate of TC(z) = KL(q(z) || prod_j q(z_j)) from a critic's logits on
    samples of q(z), (N, 2) for the classes (joint, permuted): mean of log D / (1 - D) = the
    logit difference."""
    logits = _wide(critic_logits)
    return (logits[:, 0] - logits[:, 1]).mean()


def critic_loss(logits_joint: torch.Tensor, logits_permuted: torch.Tensor) -> torch.Tensor:
    """The TC critic's cross-entropy: class 0 for samples of q(z), class 1 for permuted ones."""
    zeros = torch.zeros(len(logits_joint), dtype=torch.long, device=logits_joint.device)
    ones = torch.ones(len(logits_permuted), dtype=torch.long, device=logits_permuted.device)
    return 0.5 * (F.cross_entropy(_wide(logits_joint), zeros) + F.cross_entropy(_wide(logits_permuted), ones))


def info_loss(q: torch.Tensor, categories: torch.Tensor | None, continuous: torch.Tensor) -> torch.Tensor:
    """InfoGAN's -L_I up to the codes' constant entropy (arXiv:1606.03657): the cross-entropy of the
    categorical code plus the Gaussian NLL (unit variance, constant dropped) of the continuous ones.
    ``q`` (N, K + C): Q's logits of the K categories, then its means of the C continuous codes;
    ``categories`` (N,) int or None (K = 0), ``continuous`` (N, C)."""
    q = _wide(q)
    k = q.shape[1] - continuous.shape[1]
    loss = 0.5 * (q[:, k:] - _wide(continuous)).pow(2).sum(1).mean()
    if k:
        loss = loss + F.cross_entropy(q[:, :k], categories)
    return loss
