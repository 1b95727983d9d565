"""A clip run's two towers: zero-shot classification by prompts and image->text retrieval; on image
pairs, image->image retrieval of each image's partner."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from replearn.data.imageset import ImageSet
from replearn.errors import ReplearnError
from replearn.evaluate.features import extract_features

PROMPT = "a photo of a {label}"


class ClipTowers:
    """A clip run's image tower (``encoder.pt``'s backbone, then the image projection) and text tower
    (``text_encoder.pt``: vocabulary, text encoder), both ending in the shared, L2-normalised space."""

    def __init__(self, run: str | Path, device: torch.device | str | None = None):
        from replearn.nn import load_encoder
        from replearn.nn.text import load_text_encoder

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.backbone, self.spec = load_encoder(run, map_location=device)
        self.tokenizer, self.text, self.image_proj, _ = load_text_encoder(run, map_location=device)
        self.backbone, self.text, self.image_proj = self.backbone.to(device), self.text.to(device), self.image_proj.to(device)
        self.device = device

    def images(self, data: ImageSet, batch_size: int = 512) -> torch.Tensor:
        """float32 (N, P) on the CPU, unit rows; the data normalised as the pretraining data was."""
        return project_images(self.backbone, self.image_proj, self.spec, data, self.device, batch_size)

    @torch.no_grad()
    def texts(self, texts: list[str], batch_size: int = 512) -> torch.Tensor:
        """float32 (M, P) on the CPU, unit rows."""
        out = []
        for start in range(0, len(texts), batch_size):
            ids = self.tokenizer(texts[start : start + batch_size]).to(self.device)  # (B, L)
            out.append(F.normalize(self.text(ids).float(), dim=1).cpu())
        return torch.cat(out) if out else torch.empty(0, self.text.out_dim)


class PartnerTowers:
    """A clip run on image pairs: the first image's tower (``encoder.pt``'s backbone, then the image
    projection) and the partner's (``partner_encoder.pt``), both ending in the shared space."""

    def __init__(self, run: str | Path, device: torch.device | str | None = None):
        from replearn.nn import load_encoder
        from replearn.nn.partner import load_partner_encoder

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.backbone, self.spec = load_encoder(run, map_location=self.device)
        self.partner, self.partner_proj, self.image_proj, _ = load_partner_encoder(run, self.spec, self.device)
        for m in (self.backbone, self.partner, self.partner_proj, self.image_proj):
            m.to(self.device)

    def images(self, data: ImageSet, batch_size: int = 512) -> torch.Tensor:
        """The first images, float32 (N, P) on the CPU, unit rows."""
        return project_images(self.backbone, self.image_proj, self.spec, data, self.device, batch_size)

    def partners(self, data: ImageSet, batch_size: int = 512) -> torch.Tensor:
        """The second images (``data.partners``), float32 (N, P) on the CPU, unit rows."""
        if data.partners is None:
            raise ReplearnError(f"{data.name} has no second images", "give a pairs CSV image,image2 or an .npz with images2")
        second = dataclasses.replace(data, images=data.partners, decode=None, partners=None)
        return project_images(self.partner, self.partner_proj, self.spec, second, self.device, batch_size)


@torch.no_grad()
def project_images(backbone, proj, spec: dict, data: ImageSet, device, batch_size: int = 512) -> torch.Tensor:
    """``data``'s images, normalised as the pretraining data was (``spec``: encoder.pt's), through
    ``backbone`` then ``proj``: float32 (N, P) on the CPU, unit rows."""
    if spec["channels"] != data.channels or spec["image_size"] != data.size:
        raise ReplearnError(
            f"the encoder expects {spec['channels']}-channel {spec['image_size']}px images, "
            f"the data has {data.channels}-channel {data.size}px",
            "evaluate on data like the pretraining data (or pass --image-size when loading a folder)",
        )
    data = dataclasses.replace(data, mean=tuple(spec["mean"]), std=tuple(spec["std"]))
    h = extract_features(backbone, data, batch_size, device)  # (N, D)
    return torch.cat([F.normalize(proj(c.to(device)).float(), dim=1).cpu() for c in h.split(batch_size)])


def prompts(data: ImageSet, prompt: str = PROMPT) -> list[str]:
    """One prompt per class of ``data``, its name in place of ``{label}``."""
    if "{label}" not in prompt:
        raise ReplearnError(f"the prompt {prompt!r} has no {{label}}", "write e.g. 'a photo of a {label}'")
    if not data.has_labels or not data.classes:
        raise ReplearnError(f"{data.name} has no class names to build prompts from", "zero-shot needs labelled data")
    return [prompt.replace("{label}", name) for name in data.classes]


def zero_shot_accuracy(img_emb: torch.Tensor, labels: torch.Tensor, class_emb: torch.Tensor) -> float:
    """Top-1 in percent over the labelled items (label >= 0): each image takes the class whose
    prompt embedding is nearest (cosine)."""
    keep = labels >= 0
    pred = (F.normalize(img_emb[keep].float(), dim=1) @ F.normalize(class_emb.float(), dim=1).T).argmax(1)
    return 100.0 * (pred == labels[keep]).float().mean().item()


def zero_shot(run_dir: str | Path, data: ImageSet, prompt: str = PROMPT, batch_size: int = 512) -> float:
    """Zero-shot top-1 (percent) of a clip run on ``data``'s labelled items, by prompts built from
    its class names: ``zero_shot("runs/clip", load_data("test.npz"))``."""
    texts = prompts(data, prompt)  # checked before the towers are loaded
    towers = ClipTowers(run_dir)
    return zero_shot_accuracy(towers.images(data, batch_size), data.labels, towers.texts(texts, batch_size))


def image_text_recall(
    img_emb: torch.Tensor, txt_emb: torch.Tensor, captions: list[str], ks: tuple[int, ...] = (1, 5), chunk: int = 1024
) -> dict[str, float]:
    """Image->text Recall@K in percent. Row i of ``img_emb`` (N, D) and of ``txt_emb`` (N, D) is the
    pair with caption ``captions[i]``; each image ranks all N texts by cosine similarity and scores
    a hit at K when one of the first K has a caption equal to its own (repeated captions, as
    template captions are, count alike)."""
    if not len(captions) == len(img_emb) == len(txt_emb):
        raise ValueError("img_emb, txt_emb and captions differ in length")
    codes: dict[str, int] = {}
    ids = torch.tensor([codes.setdefault(c, len(codes)) for c in captions])  # equal text, equal id
    return _pair_recall(img_emb, txt_emb, ids, ks, chunk)


def image_image_recall(emb: torch.Tensor, partner_emb: torch.Tensor, ks: tuple[int, ...] = (1, 5), chunk: int = 1024) -> dict[str, float]:
    """Image->image Recall@K in percent. Row i of ``emb`` (N, D) is a first image, row i of
    ``partner_emb`` (N, D) its second image; each first image ranks all N second images by cosine
    similarity and scores a hit at K when its own partner is among the first K."""
    if len(emb) != len(partner_emb):
        raise ValueError("emb and partner_emb differ in length")
    return _pair_recall(emb, partner_emb, torch.arange(len(emb)), ks, chunk)


def _pair_recall(queries: torch.Tensor, keys: torch.Tensor, ids: torch.Tensor, ks: tuple[int, ...], chunk: int) -> dict[str, float]:
    """Recall@K of query i against all keys: a hit when one of its K nearest (cosine) has ``ids == ids[i]``."""
    q, keys = F.normalize(queries.float(), dim=1), F.normalize(keys.float(), dim=1)
    top_k = min(max(ks), len(keys))
    hits = dict.fromkeys(ks, 0)
    for s in range(0, len(q), chunk):
        top = (q[s : s + chunk] @ keys.T).topk(top_k, dim=1).indices  # (B, K)
        match = ids[top] == ids[s : s + chunk, None]  # (B, K)
        for k in ks:
            hits[k] += int(match[:, :k].any(1).sum())
    return {f"recall@{k}": 100.0 * hits[k] / max(1, len(q)) for k in ks}


def clip_metrics(run_dir: str | Path, data: ImageSet, prompt: str = PROMPT, batch_size: int = 512) -> dict:
    """What ``replearn evaluate`` adds to eval.json for a clip run: ``zero_shot`` (accuracy in
    percent, prompt) and, when ``data`` has captions, ``image_text`` (Recall@1 and @5 in percent).
    A run on image pairs has no text tower, so no zero-shot: ``image_image`` (Recall@1 and @5 in
    percent) when ``data`` has second images, else nothing."""
    if (Path(run_dir) / "partner_encoder.pt").exists():
        if data.partners is None:
            return {}
        towers = PartnerTowers(run_dir)
        r = image_image_recall(towers.images(data, batch_size), towers.partners(data, batch_size))
        return {"image_image": {k: round(v, 2) for k, v in r.items()}}
    texts = prompts(data, prompt)
    towers = ClipTowers(run_dir)
    img = towers.images(data, batch_size)
    acc = zero_shot_accuracy(img, data.labels, towers.texts(texts, batch_size))
    out: dict = {"zero_shot": {"accuracy": round(acc, 2), "prompt": prompt}}
    if data.captions is not None:
        r = image_text_recall(img, towers.texts(data.captions, batch_size), data.captions)
        out["image_text"] = {k: round(v, 2) for k, v in r.items()}
    return out
