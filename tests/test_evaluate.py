import functools
import json
import math
from pathlib import Path

import pytest
import torch

from mrdib_pyg.data.schema import build_heterodata
from mrdib_pyg.evaluate import FullRankEvaluator, evaluate

GOLDEN = Path(__file__).resolve().parents[1].parent / 'shared' / 'data' / 'mmrec-eval-golden'
ALL_METRICS = ('Recall', 'Recall2', 'NDCG', 'Precision', 'MAP')


def load_golden():
    if not (GOLDEN / 'cases.npz').exists() or not (GOLDEN / 'expected.json').exists():
        pytest.skip(f'golden MMRec cases not found under {GOLDEN}')
    return _load_golden()


@functools.lru_cache(maxsize=1)
def _load_golden():
    import numpy as np
    z = np.load(GOLDEN / 'cases.npz')
    exp = json.loads((GOLDEN / 'expected.json').read_text())
    cases = []
    for case in exp['cases']:
        name = case['name']
        cases.append(dict(
            case,
            scores=torch.from_numpy(z[f'{name}_scores']),
            train=torch.from_numpy(z[f'{name}_train']),
            heldout=torch.from_numpy(z[f'{name}_heldout']),
        ))
    return exp['topk'], cases


def reference(scores, train, heldout, mask, ks):
    r"""Slow, obviously correct per-user computation (masked items are never ranked)."""
    num_users, num_items = scores.shape
    held = {}
    for u, i in heldout.t().tolist():
        held.setdefault(u, set()).add(i)
    masked = {}
    for u, i in mask.t().tolist():
        masked.setdefault(u, set()).add(i)
    sums = {f'{m}@{k}': 0.0 for m in ALL_METRICS for k in ks}
    total_hits = {k: 0 for k in ks}
    total_held = 0
    for u in sorted(held):
        cand = [i for i in range(num_items) if i not in masked.get(u, set())]
        cand.sort(key=lambda i: -float(scores[u, i]))
        pos = held[u]
        n = len(pos)
        total_held += n
        for k in ks:
            ranked = cand[:k]
            rel = [1 if i in pos else 0 for i in ranked]
            hits = sum(rel)
            total_hits[k] += hits
            sums[f'Recall@{k}'] += hits / n
            sums[f'Precision@{k}'] += hits / k
            dcg = sum(r / math.log2(j + 2) for j, r in enumerate(rel))
            idcg = sum(1 / math.log2(j + 2) for j in range(min(n, k)))
            sums[f'NDCG@{k}'] += dcg / idcg
            ap, seen = 0.0, 0
            for j, r in enumerate(rel):
                if r:
                    seen += 1
                    ap += seen / (j + 1)
            sums[f'MAP@{k}'] += ap / min(n, k)
    out = {}
    for key, value in sums.items():
        if key.startswith('Recall2'):
            k = int(key.split('@')[1])
            out[key] = total_hits[k] / total_held
        else:
            out[key] = value / len(held)
    return out


def random_case(seed, num_users=37, num_items=23):
    g = torch.Generator().manual_seed(seed)
    # Distinct scores per row, so that rankings do not depend on tie-breaking.
    scores = torch.stack([torch.randperm(num_items, generator=g) for _ in range(num_users)])
    scores = scores.float() + 0.1 * torch.rand(num_users, 1, generator=g)
    train, heldout = [], []
    for u in range(num_users):
        kind = u % 5
        n_train = int(torch.randint(0, num_items // 2, (1, ), generator=g))
        if kind == 3:  # almost everything masked: masked items reach the top-K tail
            n_train = num_items - 2
        items = torch.randperm(num_items, generator=g)
        train += [(u, int(i)) for i in items[:n_train]]
        if kind == 0:  # no held-out item: not evaluated
            continue
        n_held = num_items - n_train if kind == 1 else int(
            torch.randint(1, 4, (1, ), generator=g))  # kind 1: more held-out items than K
        heldout += [(u, int(i)) for i in items[n_train:n_train + n_held]]
        if kind == 4 and n_train > 0:  # a held-out item that is also a training item
            heldout.append((u, int(items[0])))
    train = torch.tensor(train, dtype=torch.long).t()
    heldout = torch.tensor(heldout, dtype=torch.long).t()
    # Duplicates must not change anything.
    train = torch.cat([train, train[:, :5]], dim=1)
    heldout = torch.cat([heldout, heldout[:, :5]], dim=1)
    return scores, train, heldout


def assert_close(out, want, keys, tol=1e-6):
    for key in keys:
        assert abs(out[key] - want[key]) <= tol, (key, out[key], want[key])


# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize('batch_size', [4096, 64])
def test_golden_exact(batch_size):
    ks, cases = load_golden()
    for case in cases:
        ev = FullRankEvaluator(case['num_users'], case['num_items'], case['train'],
                               case['heldout'], ks=ks, metrics=ALL_METRICS,
                               batch_size=batch_size)
        assert ev.num_eval_users == case['num_users']
        out = ev.evaluate(lambda u, s=case['scores']: s[u])
        keys = [f'{m}@{k}' for m in ALL_METRICS for k in ks]
        assert list(out) == keys
        assert_close(out, case['exact'], keys)


def test_golden_rounded():
    ks, cases = load_golden()
    for case in cases:
        ev = FullRankEvaluator(case['num_users'], case['num_items'], case['train'],
                               case['heldout'], ks=ks, metrics=ALL_METRICS, round_to=4)
        out = ev.evaluate(lambda u, s=case['scores']: s[u])
        for key, value in out.items():
            assert value == case['mmrec_rounded'][key.lower()], (case['name'], key)


def test_golden_topk_helper():
    ks, cases = load_golden()
    case = cases[0]
    ev = FullRankEvaluator(case['num_users'], case['num_items'], case['train'],
                           case['heldout'], ks=ks, metrics=ALL_METRICS, batch_size=50)
    scores = case['scores'].clone()
    scores[case['train'][0], case['train'][1]] = float('-inf')
    users = torch.arange(case['num_users'] - 1, -1, -1)  # any order
    top = scores[users].topk(max(ks), dim=-1).indices
    out = ev.evaluate_topk(top, users)
    assert_close(out, case['exact'], out.keys())


# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize('seed', [0, 1])
@pytest.mark.parametrize('batch_size', [1, 4, 10, 37, 1000])
def test_against_reference(seed, batch_size):
    scores, train, heldout = random_case(seed)
    ks = (1, 3, 10, 22, 25, 40)  # 25 and 40 exceed the 23 items
    ev = FullRankEvaluator(scores.size(0), scores.size(1), train, heldout, ks=ks,
                           metrics=ALL_METRICS, batch_size=batch_size)
    seen = []

    def score_fn(users):
        assert users.numel() <= batch_size
        seen.append(users.clone())
        return scores[users]

    out = ev.evaluate(score_fn)
    seen = torch.cat(seen)
    want_users = torch.unique(heldout[0])
    assert torch.equal(seen, want_users)  # each evaluated user exactly once
    assert ev.num_eval_users < scores.size(0)  # some users have no held-out item
    want = reference(scores, train, heldout, train, ks)
    assert_close(out, want, want.keys())


def test_against_reference_default_ks_and_precision_with_large_k():
    scores, train, heldout = random_case(5, num_users=60, num_items=80)
    ev = FullRankEvaluator(60, 80, train, heldout, batch_size=7)
    assert ev.ks == [5, 10, 20, 50]
    out = ev.evaluate(lambda u: scores[u])
    assert list(out) == [f'{m}@{k}' for m in ('Recall', 'NDCG', 'Precision', 'MAP')
                         for k in (5, 10, 20, 50)]
    want = reference(scores, train, heldout, train, (5, 10, 20, 50))
    assert_close(out, want, out.keys())

    # K beyond the number of items: the list is clipped, Precision divides by K.
    ev = FullRankEvaluator(60, 80, train, heldout, ks=(200, ), metrics=ALL_METRICS)
    out = ev.evaluate(lambda u: scores[u])
    want = reference(scores, train, heldout, train, (200, ))
    assert_close(out, want, out.keys())
    assert out['Recall2@200'] < 1.0  # held-out copies of training items are never hit


# ---------------------------------------------------------------------------------------
def test_heldout_training_item_never_hit():
    # One user, 4 items; item 0 is training AND held-out and has the best score.
    train = torch.tensor([[0], [0]])
    heldout = torch.tensor([[0, 0], [0, 1]])
    scores = torch.tensor([[10., 5., 1., 0.]])
    ev = FullRankEvaluator(1, 4, train, heldout, ks=(1, 4, 10), metrics=ALL_METRICS)
    out = ev.evaluate(lambda u: scores[u])
    assert out['Recall@1'] == pytest.approx(0.5)  # item 1 is ranked first
    assert out['Recall@4'] == pytest.approx(0.5)  # item 0 is masked, even in the tail
    assert out['Recall@10'] == pytest.approx(0.5)
    assert out['Recall2@10'] == pytest.approx(0.5)
    assert out['Precision@10'] == pytest.approx(0.1)
    assert out['NDCG@1'] == pytest.approx(1.0)
    # The caller's scores are untouched with clone_scores=True.
    cached = scores.clone()
    ev.evaluate(lambda u: cached[:1], clone_scores=True)
    assert torch.equal(cached, scores)


def make_data():
    # 3 users, 6 items. User 0: train {0}, val {1}, test {2}; user 1: test {3};
    # user 2: validation only (not evaluated on test).
    train = torch.tensor([[0, 1, 2], [0, 4, 5]])
    val = torch.tensor([[0, 2], [1, 3]])
    test = torch.tensor([[0, 1], [2, 3]])
    return build_heterodata(3, 6, train, val, test, {'image': torch.randn(6, 4)})


SCORES = torch.tensor([
    [9., 8., 7., 1., 0., -1.],  # train 0 first, then val 1, then test 2
    [0., 1., 2., 3., 9., 5.],   # train 4 first, then test 3 (after masking)
    [1., 2., 3., 4., 5., 6.],
])


def test_validation_items_not_masked_at_test_by_default():
    data = make_data()
    ev = FullRankEvaluator.from_data(data, 'test', ks=(1, 2), metrics=ALL_METRICS)
    assert ev.users.tolist() == [0, 1]
    out = ev.evaluate(lambda u: SCORES[u])
    # User 0: val item 1 outranks test item 2 -> miss at K=1, hit at K=2 (rank 2).
    # User 1: training item 4 masked -> item 5 first, test item 3 second.
    assert out['Recall@1'] == pytest.approx(0.0)
    assert out['Recall@2'] == pytest.approx(1.0)
    assert out['NDCG@2'] == pytest.approx(1 / math.log2(3))

    ev = FullRankEvaluator.from_data(data, 'test', mask=('train', 'val'), ks=(1, 2))
    out = ev.evaluate(lambda u: SCORES[u])
    assert out['Recall@1'] == pytest.approx(0.5)  # user 0's test item is now first
    assert out['NDCG@1'] == pytest.approx(0.5)

    # Validation evaluation does not mask test items either.
    ev = FullRankEvaluator.from_data(data, 'val', ks=(1, ))
    assert ev.users.tolist() == [0, 2]
    out = ev.evaluate(lambda u: SCORES[u])
    assert out['Recall@1'] == pytest.approx(0.5)  # user 0: item 1 first; user 2: item 5

    # 'valid' (the command line's and MMRec's name) is the same split, as a mask too
    for name in ('valid', 'validation'):
        assert FullRankEvaluator.from_data(data, name, ks=(1, )).evaluate(
            lambda u: SCORES[u]) == out
    masked = FullRankEvaluator.from_data(data, 'test', mask=('train', 'valid'), ks=(1, 2))
    assert masked.evaluate(lambda u: SCORES[u])['Recall@1'] == pytest.approx(0.5)


class DummyModel:
    def __init__(self, scores):
        self.scores = scores
        self.training = True
        self.calls = []

    def eval(self):
        self.training = False
        return self

    def train(self, mode=True):
        self.training = mode
        return self

    def score(self, users):
        assert not self.training
        self.calls.append(users.clone())
        return self.scores[users]


def test_evaluate_model_on_heterodata():
    data = make_data()
    model = DummyModel(SCORES)
    out = evaluate(model, data, split='test', ks=(1, 2), batch_size=1)
    assert model.training  # mode restored
    assert [c.tolist() for c in model.calls] == [[0], [1]]
    assert out == FullRankEvaluator.from_data(data, ks=(1, 2)).evaluate(lambda u: SCORES[u])
    assert set(out) == {f'{m}@{k}' for m in ('Recall', 'NDCG', 'Precision', 'MAP')
                        for k in (1, 2)}
    out = evaluate(model, data, split='val', ks=(1, ), round_to=2, metrics=('recall', ))
    assert out == {'Recall@1': 0.5}


def test_no_heldout_users():
    ev = FullRankEvaluator(3, 5, torch.tensor([[0], [1]]), torch.empty(2, 0, dtype=torch.long))
    assert ev.num_eval_users == 0
    out = ev.evaluate(lambda u: torch.zeros(u.numel(), 5))
    # a mean over nobody is undefined: NaN, never a 0 that reads as a result
    assert out and all(math.isnan(v) for v in out.values())
    ev = FullRankEvaluator(3, 5, torch.tensor([[0], [1]]), torch.empty(2, 0, dtype=torch.long),
                           metrics=('recall2', ), round_to=4)
    assert all(math.isnan(v) for v in ev.evaluate(lambda u: torch.zeros(u.numel(), 5)).values())


def test_errors():
    train = torch.tensor([[0], [1]])
    held = torch.tensor([[0], [2]])
    with pytest.raises(ValueError, match=r"FullRankEvaluator.*'Hits'"):
        FullRankEvaluator(2, 4, train, held, metrics=('Recall', 'Hits'))
    with pytest.raises(ValueError, match=r"FullRankEvaluator.*0"):
        FullRankEvaluator(2, 4, train, held, ks=(5, 0))
    with pytest.raises(ValueError, match='batch_size'):
        FullRankEvaluator(2, 4, train, held, batch_size=0)
    with pytest.raises(ValueError, match='item id'):
        FullRankEvaluator(2, 4, train, torch.tensor([[0], [4]]))
    with pytest.raises(ValueError, match=r'\[2, E\]'):
        FullRankEvaluator(2, 4, train, held.view(-1))
    ev = FullRankEvaluator(2, 4, train, held)
    with pytest.raises(ValueError, match=r'\[1, 4\]'):
        ev.evaluate(lambda u: torch.zeros(u.numel(), 3))
    with pytest.raises(ValueError, match='floating'):
        ev.evaluate(lambda u: torch.zeros(u.numel(), 4, dtype=torch.long))
    with pytest.raises(ValueError, match="'test'"):
        FullRankEvaluator.from_data(make_data(), 'test', mask=('train', 'test'))
    with pytest.raises(ValueError, match="'dev'"):
        FullRankEvaluator.from_data(make_data(), 'dev')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA not available')
def test_cuda_matches_cpu():
    scores, train, heldout = random_case(3)
    ks = (1, 5, 10, 30)
    ev = FullRankEvaluator(scores.size(0), scores.size(1), train, heldout, ks=ks,
                           metrics=ALL_METRICS, batch_size=8)
    gpu = scores.cuda()
    out = ev.evaluate(lambda u: gpu[u], device='cuda')
    want = reference(scores, train, heldout, train, ks)
    assert_close(out, want, want.keys())
