r"""Executes every notebook in examples/ so they cannot rot."""
from pathlib import Path

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

EXAMPLES = Path(__file__).resolve().parents[1] / 'examples'
NOTEBOOKS = sorted(EXAMPLES.glob('*.ipynb'))


def test_there_are_notebooks():
    assert NOTEBOOKS, 'examples/ has no notebook'


@pytest.mark.parametrize('path', NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever a notebook writes stays out of the repo
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name='python3',
                                     resources={'metadata': {'path': str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])
              if o.get('output_type') == 'error']
    assert not errors
