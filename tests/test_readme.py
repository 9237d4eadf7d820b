r"""README's two fresh-machine commands exist, CI runs the test one verbatim, and its
Python examples run as written."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bash_blocks():
    return re.findall(r'^```bash\n(.*?)^```', (ROOT / 'README.md').read_text(), re.S | re.M)


def test_readme_has_run_and_test_commands():
    blocks = bash_blocks()
    assert len(blocks) >= 2
    run_cmd, test_cmd = blocks[0].strip(), blocks[1].strip()
    assert 'mrdib-train' in run_cmd and 'pip install' in run_cmd
    assert 'pytest' in test_cmd and '.[test]' in test_cmd
    assert '../shared' not in run_cmd + test_cmd  # a fresh machine has no ../shared


def test_ci_executes_readme_test_block():
    ci = (ROOT / '.ci' / 'run').read_text()
    assert "n==2" in ci and 'README.md' in ci and 'bash -euo pipefail -c "$test_cmd"' in ci


def test_readme_python_blocks_run_as_written(capsys):
    # in order, in one namespace, as a reader pastes them (the later blocks use the tour's
    # `data`): a missing import or a renamed argument fails here
    blocks = re.findall(r'^```python\n(.*?)^```', (ROOT / 'README.md').read_text(),
                        re.S | re.M)
    assert len(blocks) >= 2
    namespace = {}
    for block in blocks:
        exec(compile(block, 'README.md', 'exec'), namespace)
    assert 'Recall@20' in capsys.readouterr().out
