"""The GPU check, one table: a BERT-base-sized encoder's bfloat16 training step.

    python -m benchmarks.gpu_check                 # on a machine with one NVIDIA GPU, < 6 min
    python -m benchmarks.gpu_check --device=cpu --size=small   # the same code path, on CPU

Rows: our step with the XLA attention (`attention_impl='fused'`: the policy's einsums, which
XLA fuses) and with cuDNN's flash attention (`'cudnn'`), then the PyTorch twin under
`torch.autocast(bfloat16)` on the same GPU (it needs a CUDA build of torch; the row says
why when it is missing). MFU is model FLOPs per second over the device's dense bfloat16
peak (`research.training.hardware`, e.g. 989 TFLOP/s for an H100 SXM). The shapes are
`benchmarks.bench`'s 'bert_base' case: 12 layers, 768 wide, 12 heads, sequence 512,
vocabulary 30,522, batch 32.
"""
from __future__ import annotations

import argparse
import datetime
from typing import Sequence

from benchmarks import bench


def _row(label: str, ex_per_s: float | None, mfu: float | None, note: str = '') -> str:
  ex = f'{ex_per_s:,.1f}' if ex_per_s else '-'
  mfu_text = f'{100 * mfu:.1f}' if mfu else '-'
  return f'| {label} | {ex} | {mfu_text} | {note} |'


def main(argv: Sequence[str] | None = None) -> None:
  p = argparse.ArgumentParser(prog='python -m benchmarks.gpu_check', description=__doc__.split('\n')[0])
  p.add_argument('--device', default='gpu')
  p.add_argument('--size', default='bert_base', help="bench's transformer size")
  p.add_argument('--repeats', type=int, default=3)
  args = p.parse_args(argv)
  common = [f'--device={args.device}', '--dtype=bfloat16', '--models=transformer',
            f'--sizes={args.size}', f'--repeats={args.repeats}']
  lines = []
  xla = bench.run(common + ['--set', 'attention_impl=fused'], log=print)
  machine, row = xla['machine'], xla['rows'][0]
  lines.append(_row('jax, XLA attention', row['jax_examples_per_s'], row['mfu'],
                    f"compile {row['compile_s']:.0f} s"))
  try:
    cudnn = bench.run(common + ['--no-torch', '--set', 'attention_impl=cudnn'], log=print)
    c = cudnn['rows'][0]
    lines.append(_row('jax, cuDNN flash attention', c['jax_examples_per_s'], c['mfu'],
                      f"{c['jax_examples_per_s'] / row['jax_examples_per_s']:.2f}x the XLA row"))
  except (ValueError, RuntimeError) as e:  # no cuDNN here (e.g. on CPU)
    lines.append(_row('jax, cuDNN flash attention', None, None, f'not run: {e}'.split('\n')[0]))
  if 'torch_examples_per_s' in row:
    torch_mfu = row['flops_per_step'] / row['torch_step_s'] / machine['peak_gflops'] / 1e9
    lines.append(_row(f"torch {machine['torch']} autocast bf16, same device",
                      row['torch_examples_per_s'], torch_mfu,
                      f"jax (XLA attention) / torch = {row['jax_over_torch']:.2f}"))
  else:
    lines.append(_row('torch autocast bf16', None, None, f"not run: {machine['torch_note']}"))
  print()
  print(f"{datetime.date.today()}, {machine['device']} ({machine['platform']}), peak "
        f"{machine['peak_gflops'] / 1e3:.3g} TFLOP/s ({machine['peak_source']}); "
        f"{args.size}: batch {row['batch']}, {row['params']:,} parameters; jax {machine['jax']}")
  print()
  print('| training step, bfloat16 | examples/s | MFU % | |')
  print('|---|---:|---:|---|')
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
