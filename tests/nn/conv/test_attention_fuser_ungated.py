r"""AttentionFuser without gates (SOIL's fuser)."""
import pytest
import torch

from mrdib_pyg.nn.conv.attention_fuser import AttentionFuser


def soil_fusion(fuser, image, text):
    r"""SOIL's fuser (models/soil.py) written out for its two modalities."""
    att = torch.cat([fuser.query(image), fuser.query(text)], dim=-1)
    w = torch.softmax(att, dim=-1)
    common = w[:, 0].unsqueeze(1) * image + w[:, 1].unsqueeze(1) * text
    return (image + text - common) / 3


def test_equals_soil_for_two_modalities_in_either_order():
    torch.manual_seed(0)
    fuser = AttentionFuser(8, 2, gates=False)
    image, text = torch.randn(7, 8), torch.randn(7, 8)
    ref = soil_fusion(fuser, image, text)
    assert torch.allclose(fuser([image, text]), ref, atol=1e-7)
    assert torch.allclose(fuser([text, image]), ref, atol=1e-7)
    assert torch.equal(fuser([image, text], torch.randn(7, 8)), fuser([image, text]))


def test_is_the_gated_fuser_with_open_gates():
    torch.manual_seed(1)
    ungated, gated = AttentionFuser(6, 3, gates=False), AttentionFuser(6, 3)
    gated.query.load_state_dict(ungated.query.state_dict())
    for gate in gated.gates:  # sigmoid(+large) = 1: every modality-specific part passes
        torch.nn.init.zeros_(gate.weight)
        torch.nn.init.constant_(gate.bias, 50.)
    xs = [torch.randn(5, 6) for _ in range(3)]
    assert torch.allclose(ungated(xs), gated(xs, torch.randn(5, 6)), atol=1e-6)


def test_one_modality_halves_the_view_and_parameters_are_the_query_only():
    fuser = AttentionFuser(4, 1, gates=False)
    x = torch.randn(3, 4)
    assert torch.equal(fuser([x]), x / 2)
    names = sorted(n for n, _ in fuser.named_parameters())
    assert names == ['query.0.bias', 'query.0.weight', 'query.2.weight']


def test_gradients_reach_views_and_query():
    fuser = AttentionFuser(4, 2, gates=False)
    xs = [torch.randn(3, 4, requires_grad=True) for _ in range(2)]
    fuser(xs).pow(2).sum().backward()
    assert all(x.grad.abs().sum() > 0 for x in xs)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fuser.parameters())


def test_rejects_a_wrong_number_of_views():
    fuser = AttentionFuser(4, 2, gates=False)
    with pytest.raises(ValueError, match='2 modalities'):
        fuser([torch.randn(3, 4)])
