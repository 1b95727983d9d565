"""Text side of image-text pairs: a word tokeniser fitted on the captions, a small Transformer text
encoder trained from scratch, and the ``text_encoder.pt`` format that rebuilds both."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from replearn.errors import ReplearnError
from replearn.fileio import atomic_torch_save

PAD, UNK = 0, 1
SPECIALS = ("<pad>", "<unk>")
TOKEN_PATTERN = r"(?u)\b\w+\b"  # every word, one letter or digit included ("a", "7")
TEXT_FORMAT = "replearn-text/1"


def _analyzer():
    from sklearn.feature_extraction.text import CountVectorizer  # slow import, only when asked for

    return CountVectorizer(lowercase=True, token_pattern=TOKEN_PATTERN).build_analyzer()


class Tokenizer:
    """Captions -> padded int64 ids (N, L): scikit-learn's CountVectorizer word analyzer
    (lowercase, word tokens) and a vocabulary of words; 0 pads, 1 is any word outside the
    vocabulary, words are 2.. in vocabulary order. A caption without any word becomes one unknown
    token, so no row is all padding."""

    def __init__(self, words: Sequence[str], max_len: int = 32):
        self.words, self.max_len = list(words), max_len
        self.index = {w: i + len(SPECIALS) for i, w in enumerate(self.words)}
        self._analyze = _analyzer()

    @classmethod
    def fit(cls, texts: Sequence[str], max_words: int = 8192, max_len: int = 32) -> Tokenizer:
        """The ``max_words`` most frequent words of ``texts`` (ties in alphabetical order)."""
        counts: dict[str, int] = {}
        analyze = _analyzer()
        for t in texts:
            for w in analyze(t):
                counts[w] = counts.get(w, 0) + 1
        words = sorted(counts, key=lambda w: (-counts[w], w))[:max_words]
        return cls(sorted(words), max_len)

    def __len__(self) -> int:
        """Number of ids, the two specials included."""
        return len(SPECIALS) + len(self.words)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """int64 (N, L), L the longest caption's token count, at most ``max_len`` (longer ones are cut)."""
        rows = [[self.index.get(w, UNK) for w in self._analyze(t)][: self.max_len] or [UNK] for t in texts]
        out = torch.full((len(rows), max((len(r) for r in rows), default=1)), PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return out


class TextEncoder(nn.Module):
    """Token + learned position embeddings -> pre-norm Transformer encoder (padding masked) -> mean
    over the real tokens -> linear projection (N, out_dim): a small text tower trained from scratch,
    as CLIP's text encoder but mean-pooled (Radford et al., arXiv:2103.00020)."""

    def __init__(self, vocab_size: int, out_dim: int, width: int = 128, layers: int = 1, heads: int = 4, max_len: int = 32):
        super().__init__()
        self.spec = dict(vocab_size=vocab_size, out_dim=out_dim, width=width, layers=layers, heads=heads, max_len=max_len)
        self.token = nn.Embedding(vocab_size, width, padding_idx=PAD)
        self.position = nn.Parameter(torch.randn(max_len, width) * 0.01)
        block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, out_dim, bias=False)  # CLIP's text projection
        self.out_dim = out_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == PAD  # (N, L)
        x = self.token(ids) + self.position[: ids.shape[1]]  # (N, L, W)
        x = self.norm(self.blocks(x, src_key_padding_mask=pad))
        keep = (~pad).unsqueeze(-1).to(x.dtype)
        return self.proj((x * keep).sum(1) / keep.sum(1).clamp_min(1))  # (N, out_dim)


def save_text_encoder(path: str | Path, tokenizer: Tokenizer, text: TextEncoder, image_proj: nn.Module, spec: dict) -> None:
    """``text_encoder.pt``: the vocabulary, the text encoder and the image-side projection into the
    shared space (evaluation needs all three with ``encoder.pt``); ``torch.load(..., weights_only=True)``."""
    payload = {
        "format": TEXT_FORMAT,
        "words": list(tokenizer.words),
        "spec": {**spec, **text.spec},
        "text": text.state_dict(),
        "image_proj": image_proj.state_dict(),
    }
    atomic_torch_save(payload, path)


def load_text_encoder(path: str | Path, map_location="cpu") -> tuple[Tokenizer, TextEncoder, nn.Linear, dict]:
    """(tokeniser, text encoder, image projection, spec) from ``text_encoder.pt`` or a run folder holding one."""
    from replearn.nn.backbones import read_weights_file

    payload = read_weights_file(path, "text_encoder.pt", TEXT_FORMAT, "text encoder", "replearn pretrain --method clip", map_location)
    spec = payload["spec"]
    keys = ("vocab_size", "out_dim", "width", "layers", "heads", "max_len")
    text = TextEncoder(**{k: spec[k] for k in keys})
    image_proj = nn.Linear(spec["image_dim"], spec["out_dim"], bias=False)
    try:
        text.load_state_dict(payload["text"])
        image_proj.load_state_dict(payload["image_proj"])
    except RuntimeError as e:
        raise ReplearnError(f"{path}: the text encoder's weights do not fit its spec ({str(e).splitlines()[0]})") from e
    return Tokenizer(payload["words"], spec["max_len"]), text.eval(), image_proj.eval(), spec
