r"""The package's CSR constructors: the matrix they make, and their handling of torch's
one-time beta warning."""
import warnings

import torch

from mrdib_pyg.data.graphs import csr_from_parts, csr_tensor, to_csr


def test_constructors_make_the_same_matrix():
    dense = torch.tensor([[0., 2., 0.], [1., 0., 3.]])
    coo = dense.to_sparse()
    a = csr_from_parts(coo.indices(), coo.values(), dense.shape)
    b = csr_tensor(a.crow_indices(), a.col_indices(), a.values(), dense.shape)
    for csr in (a, b, to_csr(coo), to_csr(a)):
        assert csr.layout == torch.sparse_csr
        torch.testing.assert_close(csr.to_dense(), dense)
    # duplicated pairs are summed
    twice = csr_from_parts(torch.cat([coo.indices()] * 2, 1), torch.cat([coo.values()] * 2),
                           dense.shape)
    torch.testing.assert_close(twice.to_dense(), 2 * dense)


def _users_own_warning():
    warnings.warn('a warning of the user, shown once per location', UserWarning)


def test_repeated_csr_construction_keeps_a_users_once_per_location_warnings_once():
    # Python forgets which warnings it has shown whenever the filters change; a constructor
    # that entered catch_warnings on every call (every training step of GRCN) made a user's
    # default-action warning print again on every step.
    csr_tensor(torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([1.]), (1, 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('default')
        for _ in range(3):
            _users_own_warning()
            csr_tensor(torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([1.]), (1, 1))
            to_csr(torch.eye(2).to_sparse())
    assert len([w for w in caught if 'of the user' in str(w.message)]) == 1
