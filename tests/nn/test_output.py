import pytest
import torch

from mrdib_pyg.nn import LazyModalities, ModalityOutput, RecOutput


def test_lazy_modalities_compute_each_table_once_on_first_read():
    calls = []

    def compute(m):
        calls.append(m)
        return ModalityOutput(item=torch.full((3, 2), float(len(calls))))

    mods = LazyModalities(['text', 'image'], compute)
    out = RecOutput(user=torch.zeros(4, 2), item=torch.zeros(3, 2), modalities=mods)
    assert list(out.modalities) == ['text', 'image'] and len(out.modalities) == 2
    assert 'image' in out.modalities and 'audio' not in out.modalities
    assert calls == [] and mods.computed() == []  # names alone compute nothing
    first = out.modalities['image'].item
    assert calls == ['image'] and mods.computed() == ['image']
    assert out.modalities['image'].item is first  # cached, not recomputed
    assert out.modality_user_table('text') is out.user
    assert calls == ['image', 'text']
    with pytest.raises(KeyError):
        out.modalities['audio']
    assert calls == ['image', 'text']
