"""CLIP's symmetric image-text InfoNCE as a pure function of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from replearn import dist


def clip_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor | float, gather: bool = True) -> torch.Tensor:
    """Symmetric InfoNCE of paired embeddings (CLIP, Radford et al., arXiv:2103.00020).

    ``img`` and ``txt`` (N, D): row i of each is one pair. Both are L2-normalised; logits =
    exp(logit_scale) * img @ txt.T; the loss is the mean of the image->text and text->image
    cross-entropies with the partner as the target:
        loss = 1/2 * ( mean_i -log softmax_j(s * <u_i, v_j>)[i] + mean_i -log softmax_j(s * <v_i, u_j>)[i] ).
    Under DDP the candidates of both directions are gathered from every process with gradients,
    while anchors stay local, so W processes x N equal 1 process x W*N. Computed in float32.
    """
    # float32 also under autocast: at a scale near 100, bf16 logits would be off by ~0.4
    with torch.autocast(img.device.type, enabled=False):
        img, txt = F.normalize(img.float(), dim=1), F.normalize(txt.float(), dim=1)
        n = img.shape[0]
        if gather:
            all_img, all_txt, offset = dist.gather(img), dist.gather(txt), dist.rank() * n
        else:
            all_img, all_txt, offset = img, txt, 0
        scale = torch.as_tensor(logit_scale, device=img.device).float().exp()
        target = torch.arange(n, device=img.device) + offset  # the partner's column among the W*N
        i2t = F.cross_entropy(scale * img @ all_txt.T, target)  # (N, W*N) logits
        t2i = F.cross_entropy(scale * txt @ all_img.T, target)
        return (i2t + t2i) / 2
