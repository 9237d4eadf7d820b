import pytest
import torch

from mrdib_pyg.nn.conv.attention_fuser import AttentionFuser
from mrdib_pyg.nn.conv.modality_purifier import ModalityPurifier


def test_purifier_gates_id_embeddings_with_projected_features():
    torch.manual_seed(0)
    layer = ModalityPurifier(12, 8)
    x, feat = torch.randn(5, 8), torch.randn(5, 12)
    out = layer(x, feat)
    hidden = feat @ layer.proj.weight.t() + layer.proj.bias
    expected = x * torch.sigmoid(hidden @ layer.gate.weight.t() + layer.gate.bias)
    assert out.shape == (5, 8)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(layer.gate_values(feat), expected / x, atol=1e-5)
    assert str(layer).startswith('ModalityPurifier(\n  12, 8')


def test_purifier_gradients_reach_ids_features_and_weights():
    layer = ModalityPurifier(6, 4)
    x = torch.randn(3, 4, requires_grad=True)
    feat = torch.randn(3, 6, requires_grad=True)
    layer(x, feat).pow(2).sum().backward()
    assert x.grad.abs().sum() > 0 and feat.grad.abs().sum() > 0
    assert all(p.grad is not None for p in layer.parameters())


def test_purifier_rejects_bad_inputs():
    layer = ModalityPurifier(6, 4)
    with pytest.raises(ValueError, match='same N'):
        layer(torch.randn(3, 4), torch.randn(2, 6))
    with pytest.raises(ValueError, match='positive widths'):
        ModalityPurifier(0, 4)


def mmrec_two_modality_fusion(fuser, image, text, h, image_gate, text_gate):
    r"""MMRec's MGCN fuser written out for its two hard-coded modalities."""
    att = torch.cat([fuser.query(image), fuser.query(text)], dim=-1)
    w = torch.softmax(att, dim=-1)
    common = w[:, 0:1] * image + w[:, 1:2] * text
    sep_image = torch.sigmoid(image_gate(h)) * (image - common)
    sep_text = torch.sigmoid(text_gate(h)) * (text - common)
    return (sep_image + sep_text + common) / 3


def test_fuser_equals_mmrec_for_two_modalities_in_either_order():
    torch.manual_seed(0)
    fuser = AttentionFuser(8, 2)
    text, image, h = torch.randn(7, 8), torch.randn(7, 8), torch.randn(7, 8)
    # our order: text first (MMRec's modality order), gates follow the views
    out = fuser([text, image], h)
    ref = mmrec_two_modality_fusion(fuser, image, text, h, fuser.gates[1], fuser.gates[0])
    assert out.shape == (7, 8)
    assert torch.allclose(out, ref, atol=1e-6)
    swapped = AttentionFuser(8, 2)
    swapped.load_state_dict(fuser.state_dict())
    with torch.no_grad():
        for p, q in zip(swapped.gates[0].parameters(), fuser.gates[1].parameters()):
            p.copy_(q)
        for p, q in zip(swapped.gates[1].parameters(), fuser.gates[0].parameters()):
            p.copy_(q)
    assert torch.allclose(swapped([image, text], h), out, atol=1e-6)


def test_fuser_generalises_to_any_number_of_modalities():
    torch.manual_seed(1)
    M = 3
    fuser = AttentionFuser(4, M)
    xs, h = [torch.randn(5, 4) for _ in range(M)], torch.randn(5, 4)
    alpha, common = fuser.attention(xs)
    assert alpha.shape == (M, 5)
    assert torch.allclose(alpha.sum(0), torch.ones(5))
    # naive per-node loop
    for n in range(5):
        a = torch.stack([fuser.query(x[n]).squeeze() for x in xs]).softmax(0)
        c = sum(a[m] * xs[m][n] for m in range(M))
        assert torch.allclose(common[n], c, atol=1e-6)
        s = sum(torch.sigmoid(fuser.gates[m](h[n])) * (xs[m][n] - c) for m in range(M))
        assert torch.allclose(fuser(xs, h)[n], (s + c) / (M + 1), atol=1e-6)


def test_fuser_single_modality_halves_the_view():
    fuser = AttentionFuser(4, 1)
    x, h = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.allclose(fuser([x], h), x / 2, atol=1e-6)


def test_fuser_backward_and_errors():
    fuser = AttentionFuser(4, 2)
    xs = [torch.randn(3, 4, requires_grad=True) for _ in range(2)]
    h = torch.randn(3, 4, requires_grad=True)
    fuser(xs, h).sum().backward()
    assert all(p.grad is not None for p in fuser.parameters())
    assert h.grad.abs().sum() > 0 and all(x.grad.abs().sum() > 0 for x in xs)
    with pytest.raises(ValueError, match='built for 2 modalities'):
        fuser([xs[0]], h)
    with pytest.raises(ValueError, match='behaviour view'):
        fuser(xs, torch.randn(2, 4))
    with pytest.raises(ValueError, match='num_modalities'):
        AttentionFuser(4, 0)
    assert 'num_modalities=2' in str(fuser)
