r"""Data-parallel training on PyTorch's own engine (:mod:`torch.distributed`).

``torchrun --nproc_per_node N -m mrdib_pyg.train ...`` starts N processes; each calls
:func:`init_from_env`, which joins the process group (``gloo`` on CPU, ``nccl`` on CUDA,
each CUDA rank on GPU ``LOCAL_RANK``) when ``WORLD_SIZE`` > 1. Nothing here keeps state of
its own: every helper asks :mod:`torch.distributed`, and without a process group (a plain
run) they are no-ops (rank 0 of 1).

What the trainer does with them (see :class:`~mrdib_pyg.train.trainer.Trainer`): every
rank trains on its share of each global batch (:class:`~mrdib_pyg.data.BPRSampler`),
the gradients of the main optimiser's parameters and of MRdIB's critics are averaged
across ranks, weighted by the ranks' batch shares (:func:`all_reduce_mean_grads`), the
evaluation is sharded by users and gathered, and only rank 0 writes files and prints.
"""
import os
from typing import Iterable, List, Optional

import torch
import torch.distributed as dist
from torch import Tensor


def env_world_size() -> int:
    r"""The ``WORLD_SIZE`` torchrun sets (1 without torchrun)."""
    return int(os.environ.get('WORLD_SIZE', '1') or 1)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_from_env(device: str = 'auto') -> bool:
    r"""Join the process group that torchrun describes (``WORLD_SIZE`` > 1; ``RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT`` from the environment), with ``nccl`` if the run is on
    CUDA and ``gloo`` otherwise. Returns whether a process group is (now) initialised.
    On CUDA it selects GPU ``LOCAL_RANK``; the device option should then be ``auto`` or
    ``cuda``."""
    if is_initialized():
        return True
    if env_world_size() <= 1:
        return False
    cuda = device.startswith('cuda') or (device == 'auto' and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', '0')))
    dist.init_process_group(backend='nccl' if cuda else 'gloo')
    return True


def shutdown() -> None:
    if is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_initialized() and world_size() > 1:
        dist.barrier()


def all_reduce_sum(t: Tensor) -> Tensor:
    r"""In place: the sum of :obj:`t` over ranks (unchanged in a single process)."""
    if is_initialized() and world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_(tensors: Iterable[Tensor], src: int = 0) -> None:
    r"""In place: rank :obj:`src`'s values of :obj:`tensors` on every rank."""
    if is_initialized() and world_size() > 1:
        for t in tensors:
            dist.broadcast(t.data, src=src)


def all_reduce_mean_grads(params: Iterable[torch.nn.Parameter],
                          weight: float = 1.0) -> float:
    r"""Replace every parameter's gradient by the weighted mean over ranks,
    :math:`\sum_r w_r g_r / \sum_r w_r` (:obj:`weight` is this rank's :math:`w_r`, e.g.
    its number of triples in the batch: for a loss that is a mean over the batch this is
    exactly the gradient of the global batch). A gradient that is :obj:`None` on a rank
    counts as zeros there; one that is :obj:`None` on every rank stays :obj:`None` (as in a
    single process, the optimiser then skips it). One collective per call (flags, weights and
    gradients in one buffer). Returns :math:`\sum_r w_r` (:obj:`weight` in a single
    process, where nothing changes)."""
    params: List[torch.nn.Parameter] = [p for p in params if p.requires_grad]
    if not (is_initialized() and world_size() > 1) or not params:
        return float(weight)
    ref = params[0]
    dtype = torch.float64 if ref.device.type == 'cpu' else torch.float32
    head = torch.zeros(len(params) + 1, dtype=dtype, device=ref.device)
    for i, p in enumerate(params):
        head[i] = float(p.grad is not None)
    head[-1] = float(weight)
    grads = [(p.grad.detach() * weight).reshape(-1).to(dtype) if p.grad is not None
             else torch.zeros(p.numel(), dtype=dtype, device=p.device) for p in params]
    buf = torch.cat([head] + [g.to(ref.device) for g in grads])
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    total = float(buf[len(params)])
    offset = len(params) + 1
    for i, p in enumerate(params):
        n = p.numel()
        if float(buf[i]) > 0:
            g = (buf[offset:offset + n] / total).view_as(p).to(p.device, p.dtype)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        offset += n
    return total


def gather_object(obj) -> Optional[list]:
    r"""Every rank's :obj:`obj` (a list in rank order) on every rank."""
    if not (is_initialized() and world_size() > 1):
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
