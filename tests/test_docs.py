r"""The API reference builds with warnings as errors, and documents every public layer,
backbone and module (a new module left out of ``docs/api`` fails here)."""
import pkgutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / 'docs' / 'api'


def test_every_module_is_in_the_reference():
    import mrdib_pyg
    pages = ' '.join(p.read_text() for p in API.glob('*.rst'))
    missing = []
    for mod in pkgutil.walk_packages(mrdib_pyg.__path__, 'mrdib_pyg.'):
        name = mod.name
        if mod.ispkg or name.endswith('__main__'):
            continue
        if f'automodule:: {name}\n' not in pages + '\n':
            missing.append(name)
    assert not missing, f'modules missing from docs/api/*.rst: {missing}'


def test_sphinx_builds_without_warnings(tmp_path):
    sphinx = pytest.importorskip('sphinx.cmd.build')
    code = sphinx.build_main(['-W', '--keep-going', '-q', '-b', 'html', str(API),
                              str(tmp_path / 'html')])
    assert code == 0
    html = (tmp_path / 'html' / 'models.html').read_text()
    for cls in ('DualGNN', 'LATTICE', 'GRCN', 'BM3', 'LGMRec', 'SOIL', 'PyGBackbone'):
        assert f'id="mrdib_pyg.nn.models.' in html and cls in html
