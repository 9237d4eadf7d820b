r"""The user–item–modality heterograph every dataset produces, and helpers to read it.

Schema (see ``docs/data.md``)::

    data['user'].num_nodes                      U
    data['item'].num_nodes                      I
    data[m].x                                   [I, d_m] float32 feature rows, one node type
                                                per modality m ('image', 'text', ...)
    data['item', 'has', m].edge_index           [2, I_m] item -> its feature row (items whose
                                                modality is missing have no edge)
    data[m, 'rev_has', 'item'].edge_index       the reverse
    data['user', 'rates', 'item'].edge_index    [2, E_train] TRAINING interactions only
    data['user', 'rates', 'item'].val_edge_index   held-out validation positives
    data['user', 'rates', 'item'].test_edge_index  held-out test positives
    data['item', 'rev_rates', 'user'].edge_index   reverse of the training edges

Message passing may only ever read ``edge_index``: the held-out positives live under other
attribute names so that no transform or layer picks them up by accident.
"""
from typing import Dict, List, Optional

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

USER = 'user'
ITEM = 'item'
RATES = (USER, 'rates', ITEM)
REV_RATES = (ITEM, 'rev_rates', USER)
SPLITS = ('train', 'val', 'test')
#: Other names of the validation split (the command line and MMRec say 'valid').
SPLIT_ALIASES = {'valid': 'val', 'validation': 'val'}


def split_name(split: str) -> str:
    r"""The stored name of :obj:`split` (``'valid'`` and ``'validation'`` are ``'val'``)."""
    return SPLIT_ALIASES.get(split, split)


def build_heterodata(
    num_users: int,
    num_items: int,
    train: Tensor,
    val: Tensor,
    test: Tensor,
    features: Dict[str, Tensor],
    missing: Optional[Dict[str, Tensor]] = None,
) -> HeteroData:
    r"""Assemble the heterograph from already validated parts.

    Args:
        num_users (int): number of users :math:`U` (ids :obj:`0..U-1`).
        num_items (int): number of items :math:`I`.
        train, val, test (Tensor): :obj:`[2, E]` long (user, item) pairs, deduplicated.
        features (dict): modality name :math:`\rightarrow` :obj:`[I, d_m]` float tensor.
        missing (dict, optional): modality name :math:`\rightarrow` item ids that lack this
            modality (their feature row is a placeholder and they get no :obj:`has` edge).
    """
    missing = missing or {}
    data = HeteroData()
    data[USER].num_nodes = int(num_users)
    data[ITEM].num_nodes = int(num_items)
    data[RATES].edge_index = train.long().contiguous()
    data[RATES].val_edge_index = val.long().contiguous()
    data[RATES].test_edge_index = test.long().contiguous()
    data[REV_RATES].edge_index = train.long().flip(0).contiguous()
    for name, x in features.items():
        if name in (USER, ITEM):
            raise ValueError(f"A modality cannot be named '{name}'")
        data[name].x = x.float().contiguous()
        data[name].num_nodes = x.size(0)
        has = torch.ones(num_items, dtype=torch.bool)
        if name in missing and missing[name].numel() > 0:
            has[missing[name].long()] = False
        items = has.nonzero().view(-1)
        data[ITEM, 'has', name].edge_index = torch.stack([items, items])
        data[name, 'rev_has', ITEM].edge_index = torch.stack([items, items])
    return data


def modality_names(data: HeteroData) -> List[str]:
    r"""The modality node types of :obj:`data`, in storage order."""
    return [t for t in data.node_types if t not in (USER, ITEM)]


def split_edge_index(data: HeteroData, split: str) -> Tensor:
    r"""The :obj:`[2, E]` (user, item) pairs of :obj:`split` ('train', 'val' or 'test';
    'valid' too)."""
    split = split_name(split)
    if split not in SPLITS:
        raise ValueError(f"Unknown split '{split}' (expected one of {SPLITS})")
    store = data[RATES]
    return store.edge_index if split == 'train' else store[f'{split}_edge_index']


def missing_items(data: HeteroData, modality: str) -> Tensor:
    r"""Item ids that have no :obj:`modality` (no :obj:`has` edge)."""
    has = torch.zeros(data[ITEM].num_nodes, dtype=torch.bool)
    has[data[ITEM, 'has', modality].edge_index[0]] = True
    return (~has).nonzero().view(-1)


def item_features(data: HeteroData, modality: str, fill: str = 'keep') -> Tensor:
    r"""The :obj:`[I, d_m]` feature matrix of :obj:`modality`, item-aligned.

    Args:
        fill (str): what items without the modality get: :obj:`'keep'` (the stored
            placeholder rows), :obj:`'zero'`, or :obj:`'mean'` (the mean of the available
            rows — MMRec's choice for missing images, an explicit option here).
    """
    x = data[modality].x
    if fill == 'keep':
        return x
    miss = missing_items(data, modality)
    if miss.numel() == 0:
        return x
    x = x.clone()
    if fill == 'zero':
        x[miss] = 0.
    elif fill == 'mean':
        keep = torch.ones(x.size(0), dtype=torch.bool)
        keep[miss] = False
        x[miss] = x[keep].mean(0)
    else:
        raise ValueError(f"Unknown fill '{fill}' (expected 'keep', 'zero' or 'mean')")
    return x
