"""Every notebook runs top to bottom in a real Jupyter kernel (nbclient), with small values
injected after its `parameters` cell, as papermill does; a failing cell fails the test."""
import glob
import json
import os
import runpy

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from tests.helpers import REPO_ROOT

NOTEBOOKS = sorted(glob.glob(os.path.join(REPO_ROOT, 'notebooks', '*.ipynb')))
# Per notebook: the values injected after its parameters cell, and what its run must leave.
SMALL = {
    'quickstart.ipynb': ('num_train_steps = 60', ['results.json']),
    'text.ipynb': ('pretrain_steps, finetune_steps = 30, 30\n'
                   'num_layers, hidden_size, max_len = 1, 32, 48',
                   ['mlm/results.json', 'classifier/results.json']),
    'compression.ipynb': ('train_steps = 60',
                          [f'{r}/results.json' for r in ('cnn', 'cnn_pruned', 'mlp_distilled')]),
    'scaling.ipynb': ('num_train_steps = 20',
                      [f'{m}/results.json' for m in
                       ('data_parallel_8', 'FSDP_8', 'data_2_x_tensor_4')]),
}


def execute(notebook, workdir: str) -> None:
  NotebookClient(notebook, timeout=600, kernel_name='python3',
                 resources={'metadata': {'path': workdir}}).execute()


def with_parameters(notebook, source: str):
  index = next(i for i, c in enumerate(notebook.cells)
               if 'parameters' in c.get('metadata', {}).get('tags', []))
  notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(
      source, metadata={'tags': ['injected-parameters']}))
  return notebook


def test_every_notebook_has_small_parameters():
  assert sorted(os.path.basename(p) for p in NOTEBOOKS) == sorted(SMALL)


@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_in_a_kernel(path, tmp_path):
  overrides, outputs = SMALL[os.path.basename(path)]
  workdir = tmp_path / 'notebook'
  notebook = with_parameters(nbformat.read(path, as_version=4),
                             f'workdir = {str(workdir)!r}\n{overrides}')
  execute(notebook, str(tmp_path))
  for relative in outputs:  # the runs the notebook made, with the injected step counts
    assert json.loads((workdir / relative).read_text())['steps'] > 0
  last = notebook.cells[-1]
  assert last.outputs, 'the last cell shows a result'


def test_a_failing_cell_fails(tmp_path):
  notebook = nbformat.v4.new_notebook(cells=[
      nbformat.v4.new_code_cell('x = 1'), nbformat.v4.new_code_cell("raise ValueError('boom')")])
  notebook.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3',
                                     'language': 'python'}
  with pytest.raises(CellExecutionError, match='boom'):
    execute(notebook, str(tmp_path))


def test_every_notebook_opens_with_its_colab_badge_and_install_cell():
  """Both come from pyproject's Repository URL; `python notebooks/headers.py` rewrites them."""
  headers = runpy.run_path(os.path.join(REPO_ROOT, 'notebooks', 'headers.py'))
  url = headers['repository_url']()
  for path in NOTEBOOKS:
    assert headers['headers_differ'](path, url) == [], path
    badge = nbformat.read(path, as_version=4).cells[0].source
    assert (f'colab.research.google.com/github/{url.removeprefix("https://github.com/")}'
            f'/blob/main/notebooks/{os.path.basename(path)})') in badge
