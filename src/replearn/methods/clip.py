"""CLIP: an image and its caption (or second image) attract, every other one in the batch repels (arXiv:2103.00020)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from replearn.errors import ReplearnError
from replearn.losses import clip_loss
from replearn.methods.base import METHODS, Method, MethodOptions
from replearn.nn.partner import PartnerTower, save_partner_encoder
from replearn.nn.text import SPECIALS, TextEncoder, Tokenizer, save_text_encoder


@METHODS.register("clip")
class CLIP(Method):
    """CLIP: backbone -> linear projection, caption -> small Transformer -> linear projection, symmetric InfoNCE.

    The captions come from the data (``ImageSet.captions``: a pairs CSV ``image,caption`` or an .npz
    ``captions`` array). ``bind_data`` fits the word vocabulary on them and tokenises every caption
    once; a step embeds one light view of each image and its caption, and both directions of the
    InfoNCE take their candidates from every process. The temperature is learned as
    ``logit_scale = log(1/T)``, from T = 0.07 and clamped to exp(logit_scale) <= 100 after each step,
    as in the paper. ``text_encoder.pt`` (vocabulary, text encoder, image projection) is written
    beside ``encoder.pt`` for zero-shot classification by prompts (``replearn evaluate``).

    On image pairs (``ImageSet.partners``: a pairs CSV ``image,image2`` or an .npz ``images2``) the
    text tower gives way to a second image tower: a fresh copy of the backbone with its own
    projection, or with ``shared_tower=true`` the backbone and projection themselves (SimCLR with
    given positives). The partner's view is drawn with the batch's recipe and generator right after
    the first image's, so resume stays exact; ``partner_encoder.pt`` replaces ``text_encoder.pt``.
    """

    views = "crop-flip"
    n_views = 1
    paper = "Radford et al., Learning Transferable Visual Models From Natural Language Supervision, ICML 2021 (arXiv:2103.00020)"

    @dataclass
    class Args:
        """Text encoder size, vocabulary, the learned temperature's start and bound; on image pairs,
        whether both images go through one tower."""

        text_width: int = 128
        text_layers: int = 1
        text_heads: int = 4
        max_len: int = 32  # tokens per caption; longer captions are cut
        max_words: int = 8192  # vocabulary: the most frequent words of the training captions
        init_temperature: float = 0.07
        max_logit_scale: float = 100.0  # bound of exp(logit_scale) = 1/T
        shared_tower: bool = False  # image pairs: one backbone and projection for both images

    def __init__(self, backbone, opts: MethodOptions):
        super().__init__(backbone, opts)
        a = self.args
        self.image_proj = nn.Linear(backbone.out_dim, opts.proj_dim, bias=False)  # CLIP's linear projections
        self.text = TextEncoder(a.max_words + len(SPECIALS), opts.proj_dim, a.text_width, a.text_layers, a.text_heads, a.max_len)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / a.init_temperature)))
        # the vocabulary as "\n"-joined UTF-8 bytes, so a checkpoint holds it
        self.register_buffer("words", torch.empty(0, dtype=torch.uint8))
        self.tokenizer: Tokenizer | None = None
        # every caption's ids (N, L) by dataset index: derived from the data, so not a buffer that
        # checkpoints store or DDP broadcasts each step; moved to the batch's device on first use
        self.tokens = torch.empty(0, 0, dtype=torch.long)
        self.partner: PartnerTower | None = None  # image pairs, unless shared_tower
        self.partners = torch.empty(0, dtype=torch.uint8)  # second images (N, C, H, W), like tokens
        self._view = None  # (recipe, size, mean, std, generator) of the batch make_views saw

    def bind_data(self, data) -> None:
        if getattr(data, "partners", None) is not None:
            self.partners = data.partners
            self.text = None  # no caption to encode; a tower without gradients would stall DDP
            if not self.args.shared_tower:
                self.partner = PartnerTower(self.backbone, self.image_proj.out_features)
            return
        if self.args.shared_tower:
            raise ReplearnError("shared_tower applies to image pairs only", "drop shared_tower, or give a CSV image,image2")
        if data.captions is None or not any(data.captions):
            raise ReplearnError(
                f"{data.name} has no captions",
                "clip needs paired data: a CSV image,caption or an .npz with captions (or image,image2 / images2)",
            )
        self.tokenizer = Tokenizer.fit(data.captions, self.args.max_words, self.args.max_len)
        self.tokens = self.tokenizer(data.captions)  # (N, L)
        self.words = torch.tensor(list("\n".join(self.tokenizer.words).encode()), dtype=torch.uint8)

    def make_views(self, images, recipe, size, mean, std, generator):
        views = super().make_views(images, recipe, size, mean, std, generator)
        self._view = (recipe, size, mean, std, generator)  # the partners' view comes next, in training_step
        return views

    def training_step(self, views, index):
        h = self.backbone(views[0])  # (N, D)
        img = self.image_proj(h)  # (N, P)
        if self.text is None:  # image pairs
            other = self._partner_embeddings(index)  # (N, P)
        else:
            if self.tokens.device != index.device:
                self.tokens = self.tokens.to(index.device)
            other = self.text(self.tokens[index])  # (N, P)
        loss = clip_loss(img, other, self.logit_scale)
        return loss, {"features": h.detach(), "embeddings": img.detach(), "temperature": 1 / self.logit_scale.detach().exp()}

    def _partner_embeddings(self, index):
        if self._view is None:
            raise RuntimeError("clip on image pairs draws the partners' view after make_views; call it first")
        recipe, size, mean, std, generator = self._view
        if self.partners.device != index.device:
            self.partners = self.partners.to(index.device)
        x = recipe(self.partners[index], size, mean, std, generator).contiguous(memory_format=torch.channels_last)
        return self.image_proj(self.backbone(x)) if self.partner is None else self.partner(x)

    @torch.no_grad()
    def after_step(self) -> None:
        self.logit_scale.clamp_(max=math.log(self.args.max_logit_scale))

    def export(self, folder: Path) -> None:
        spec = {"image_dim": int(self.backbone.out_dim), "logit_scale": self.logit_scale.item()}
        if self.tokenizer is not None:
            save_text_encoder(Path(folder) / "text_encoder.pt", self.tokenizer, self.text, self.image_proj, spec)
        elif self.text is None:  # image pairs
            shared = self.partner is None
            backbone, proj = (self.backbone, self.image_proj) if shared else (self.partner.backbone, self.partner.proj)
            spec |= {"out_dim": self.image_proj.out_features, "shared_tower": shared}
            save_partner_encoder(Path(folder) / "partner_encoder.pt", backbone, proj, self.image_proj, spec)
