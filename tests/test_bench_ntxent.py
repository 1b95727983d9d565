"""bench/ntxent.py: its plain-autograd contender is the loss's definition, and a tiny run of both
contenders writes a table where they agree."""

import sys
from pathlib import Path

import torch

from replearn.losses import nt_xent

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import ntxent  # noqa: E402


def test_plain_contender_equals_replearns_loss_and_gradient():
    torch.manual_seed(0)
    z = torch.randn(12, 6, requires_grad=True)
    idx = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 5, 5])
    (g_ref,) = torch.autograd.grad(nt_xent(z, idx, 0.2, gather=False), z)
    zn = torch.nn.functional.normalize(z, dim=1)
    plain = ntxent.plain_nt_xent(zn, idx, 0.2, zn, idx, 0)
    (g_plain,) = torch.autograd.grad(plain, z)
    assert abs(plain.item() - nt_xent(z, idx, 0.2, gather=False).item()) < 1e-6
    torch.testing.assert_close(g_plain, g_ref, atol=1e-6, rtol=1e-5)


def test_a_tiny_run_writes_the_section(tmp_path):
    doc = tmp_path / "scaling.md"
    doc.write_text("# Scaling\n")
    ntxent.main(["--worlds", "1", "4", "--repeats", "1", "--write", str(doc)])
    text = doc.read_text()
    assert "<!-- ntxent:start -->" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| 1 |") or ln.startswith("| 4 |")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert "/" not in cells[7]  # one loss: both contenders agree
        assert float(cells[8]) < 1e-4  # and so do their gradients
