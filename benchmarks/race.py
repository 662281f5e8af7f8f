"""End to end, as a user runs it: our command line against the seeds' PyTorch loops.

    taskset -c 1 python -m benchmarks.race            # = make race; both pinned to one core
    python -m benchmarks.race --races=mnist1d_cnn --repeats=3

Each race trains the same model on the same data with the same recipe twice, in fresh
processes, and times each process from start to its final test accuracy:
- ours: `python -m research.main --config=...` with the repository's config, as the README
  says to run it (start-up, compilation, evaluation, checkpoints and reports included);
- theirs: a plain PyTorch script written the way the seed documents write it (a `Dataset`
  of tensors, a `DataLoader` with shuffling, `model.train()`, `zero_grad / backward /
  step`, evaluation at the end), one thread (`torch.set_num_threads(1)`).
Both read the same arrays: the harness writes them to an `.npz` once (our side reads the
same split through tfds, prepared before timing). Repeats alternate ours, theirs, ours,
...; the table gives each side's median wall time, the accuracy each reached, and
theirs / ours (above 1: we are faster).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Race:
  name: str
  dataset: str          # tfds name (ours), also exported to the .npz theirs reads
  config: str           # our config file
  steps: int
  batch_size: int
  learning_rate: float
  model_code: str       # the torch model, as the seed writes it (input x: float32 batch)


RACES = {
    'mnist1d_cnn': Race(
        name='mnist1d_cnn', dataset='mnist1d', config='configs/mnist1d/cnn.py', steps=6000,
        batch_size=100, learning_rate=1e-2, model_code='''
class Net(nn.Module):
  def __init__(self):
    super().__init__()
    self.conv1 = nn.Conv1d(1, 25, 5, stride=2, padding=1)
    self.conv2 = nn.Conv1d(25, 25, 3, stride=2, padding=1)
    self.conv3 = nn.Conv1d(25, 25, 3, stride=2, padding=1)
    self.linear = nn.Linear(125, 10)

  def forward(self, x):
    x = x.view(-1, 1, x.shape[-1])
    h = F.relu(self.conv1(x))
    h = F.relu(self.conv2(h))
    h = F.relu(self.conv3(h))
    return self.linear(h.view(h.shape[0], -1))
'''),
    'mnist_subset_mlp': Race(
        name='mnist_subset_mlp', dataset='mnist_subset', config='configs/mnist_subset/mlp.py',
        steps=625, batch_size=64, learning_rate=1e-3, model_code='''
class Net(nn.Module):
  def __init__(self):
    super().__init__()
    self.fc1 = nn.Linear(784, 256)
    self.fc2 = nn.Linear(256, 128)
    self.fc3 = nn.Linear(128, 10)
    self.dropout = nn.Dropout(0.2)

  def forward(self, x):
    x = x.view(x.shape[0], -1) / 255.0
    x = self.dropout(F.relu(self.fc1(x)))
    x = self.dropout(F.relu(self.fc2(x)))
    return self.fc3(x)
'''),
}

# The seeds' training loop; {model_code}, {npz}, {steps}, {batch_size}, {lr} filled in.
TORCH_SCRIPT = '''
import json, time
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
torch.set_num_threads(1)
torch.manual_seed(0)
{model_code}
data = np.load({npz!r})
x_train = torch.tensor(data['train_inputs'], dtype=torch.float32)
y_train = torch.tensor(data['train_labels'], dtype=torch.long)
x_test = torch.tensor(data['test_inputs'], dtype=torch.float32)
y_test = torch.tensor(data['test_labels'], dtype=torch.long)
loader = DataLoader(TensorDataset(x_train, y_train), batch_size={batch_size}, shuffle=True)
model = Net()
optimizer = torch.optim.Adam(model.parameters(), lr={lr})
step = 0
while step < {steps}:
  model.train()
  for xb, yb in loader:
    optimizer.zero_grad()
    loss = F.cross_entropy(model(xb), yb)
    loss.backward()
    optimizer.step()
    step += 1
    if step == {steps}:
      break
model.eval()
with torch.no_grad():
  accuracy = (model(x_test).argmax(-1) == y_test).float().mean().item()
print(json.dumps({{'accuracy': accuracy}}))
'''


def export_split_arrays(dataset: str, path: str) -> None:
  """The train and test splits our pipeline reads, as the arrays a PyTorch script loads."""
  from research.data import sources  # imported here: the timed processes start cold
  import ml_collections
  cfg = ml_collections.ConfigDict({'name': dataset, 'data_dir': '', 'input_key': '',
                                   'label_key': ''})
  source = sources.open_source(cfg)
  arrays = {}
  for split in ('train', 'test'):
    data = source.load(split)
    arrays[f'{split}_inputs'] = np.asarray(data.inputs)
    arrays[f'{split}_labels'] = np.asarray(data.labels)
  np.savez(path, **arrays)


def timed(command: list[str], cwd: str) -> tuple[float, str]:
  start = time.perf_counter()
  proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=3600)
  seconds = time.perf_counter() - start
  if proc.returncode != 0:
    raise RuntimeError(f'{" ".join(command)} failed:\n{proc.stderr[-3000:]}')
  return seconds, proc.stdout


def run_race(race: Race, repeats: int, scratch: str) -> dict:
  npz = os.path.join(scratch, f'{race.name}.npz')
  export_split_arrays(race.dataset, npz)
  script = os.path.join(scratch, f'{race.name}_torch.py')
  with open(script, 'w') as f:
    f.write(TORCH_SCRIPT.format(model_code=race.model_code, npz=npz, steps=race.steps,
                                batch_size=race.batch_size, lr=race.learning_rate))
  ours_s, theirs_s, ours_acc, theirs_acc = [], [], [], []
  for repeat in range(repeats):
    workdir = os.path.join(scratch, f'{race.name}_ours_{repeat}')
    seconds, _ = timed([sys.executable, '-m', 'research.main', f'--config={race.config}',
                        f'--workdir={workdir}', '--config.progress_bar=False'], REPO_ROOT)
    ours_s.append(seconds)
    with open(os.path.join(workdir, 'results.json')) as f:
      ours_acc.append(json.load(f)['test']['accuracy'])
    seconds, out = timed([sys.executable, script], scratch)
    theirs_s.append(seconds)
    theirs_acc.append(json.loads(out.strip().splitlines()[-1])['accuracy'])
    print(f'{race.name} repeat {repeat}: ours {ours_s[-1]:.1f} s ({ours_acc[-1]:.4f}), '
          f'PyTorch loop {theirs_s[-1]:.1f} s ({theirs_acc[-1]:.4f})', file=sys.stderr)
  return {'race': race.name, 'steps': race.steps, 'repeats': repeats,
          'ours_s': statistics.median(ours_s), 'theirs_s': statistics.median(theirs_s),
          'ours_accuracy': statistics.mean(ours_acc),
          'theirs_accuracy': statistics.mean(theirs_acc),
          'speedup': statistics.median(t / o for t, o in zip(theirs_s, ours_s))}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m benchmarks.race', description=__doc__.split('\n')[0])
  parser.add_argument('--races', default=','.join(RACES), help=f'comma-separated, of {list(RACES)}')
  parser.add_argument('--repeats', type=int, default=1)
  parser.add_argument('--json', default='', help='also write the rows to this file')
  args = parser.parse_args(argv)
  names = [n.strip() for n in args.races.split(',') if n.strip()]
  unknown = [n for n in names if n not in RACES]
  if unknown or args.repeats < 1:
    print(f'Error: unknown races {unknown} (accepted: {list(RACES)}) or --repeats < 1.',
          file=sys.stderr)
    return 2
  try:
    import torch  # noqa: F401
  except ImportError:
    print('Error: the race needs PyTorch: pip install torch==2.13.0', file=sys.stderr)
    return 2
  rows = []
  with tempfile.TemporaryDirectory(prefix='race_') as scratch:
    for name in names:
      rows.append(run_race(RACES[name], args.repeats, scratch))
  cores = len(os.sched_getaffinity(0))
  print(f'End to end, {cores} core(s), median of {args.repeats} alternating repeat(s), '
        f'load {os.getloadavg()[0]:.1f}:\n')
  print('| race | steps | ours s | PyTorch loop s | ours test acc | PyTorch test acc | PyTorch s / ours s |')
  print('|---|---:|---:|---:|---:|---:|---:|')
  for r in rows:
    print(f"| {r['race']} | {r['steps']:,} | {r['ours_s']:.1f} | {r['theirs_s']:.1f} | "
          f"{r['ours_accuracy']:.4f} | {r['theirs_accuracy']:.4f} | {r['speedup']:.2f} |")
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rows, f, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
