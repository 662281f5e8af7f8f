"""Every notebook's code cells run top to bottom (no Jupyter needed: cells are exec'd)."""
import glob
import json
import os

import pytest

from tests.helpers import REPO_ROOT

NOTEBOOKS = sorted(glob.glob(os.path.join(REPO_ROOT, 'notebooks', '*.ipynb')))


@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with open(path) as f:
    notebook = json.load(f)
  namespace: dict = {}
  for i, cell in enumerate(notebook['cells']):
    if cell['cell_type'] != 'code':
      continue
    source = ''.join(cell['source'])
    source = '\n'.join(l for l in source.splitlines() if not l.lstrip().startswith(('!', '%')))
    source = source.replace('/tmp/notebook_run', str(tmp_path / 'run'))
    exec(compile(source, f'{os.path.basename(path)}[cell {i}]', 'exec'), namespace)
  assert namespace['results']['test']['accuracy'] > 0.5
