"""Counts the dots and convolutions of a compiled step by operand dtype.

Two views of one jitted function:
- the program we hand to XLA (`jax.jit(f).lower(...).as_text()`, StableHLO): what the
  mixed-precision policy of `research.models.precision` controls, the same on every
  platform;
- the program XLA compiled (`.compile().as_text()`, HLO after the backend's passes): what
  the machine runs. XLA:CPU, for one, computes convolutions in float32 whatever their
  operand types, and upcasts the bfloat16 dots its AMX library path does not take.
"""
from __future__ import annotations

import collections
import re

_STABLEHLO_OP = re.compile(r'stablehlo\.(dot_general|convolution)\b.*:\s*\(tensor<[^>]*?x?(\w+)>,'
                           r'\s*tensor<[^>]*?x?(\w+)>\)')
_HLO_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%(\S+)\s*=\s*(\w+)\[[^\]]*\]\S*\s+([\w-]+)\((.*?)\)')
_HLO_COMPUTATION = re.compile(r'^(?:ENTRY\s+)?%\S+\s*\(.*\)\s*->.*\{\s*$')


def _dtype_of_tensor(element: str) -> str:
  # 'tensor<4x4xbf16>' yields 'bf16'; a scalar 'tensor<f32>' yields 'f32'.
  return element.rsplit('x', 1)[-1]


def stablehlo_dots(text: str) -> collections.Counter:
  """{(op, lhs dtype, rhs dtype): count} over `stablehlo.dot_general`/`convolution`."""
  counts: collections.Counter = collections.Counter()
  for line in text.splitlines():
    match = _STABLEHLO_OP.search(line)
    if match:
      op, lhs, rhs = match.groups()
      counts[('dot' if op == 'dot_general' else 'convolution',
              _dtype_of_tensor(lhs), _dtype_of_tensor(rhs))] += 1
  return counts


def compiled_dots(text: str) -> collections.Counter:
  """{(op, lhs dtype, rhs dtype): count} over the `dot`/`convolution` instructions of
  compiled HLO (fused computations included), operands resolved within each computation."""
  counts: collections.Counter = collections.Counter()
  dtypes: dict[str, str] = {}
  for line in text.splitlines():
    if _HLO_COMPUTATION.match(line):
      dtypes = {}
      continue
    match = _HLO_INSTRUCTION.match(line)
    if not match:
      continue
    name, dtype, op, operands = match.groups()
    dtypes[name] = dtype
    if op in ('dot', 'convolution'):
      names = [o.strip().lstrip('%') for o in operands.split(',')][:2]
      counts[(op, *(dtypes.get(n, '?') for n in names))] += 1
  return counts


def summary(counts: collections.Counter, dtype: str = 'bf16') -> str:
  """'73/99 dots bf16, 0/8 convolutions bf16' (kinds that do not occur are left out)."""
  parts = []
  for op, label in (('dot', 'dots'), ('convolution', 'convolutions')):
    total = sum(n for (kind, *_), n in counts.items() if kind == op)
    if total:
      both = sum(n for (kind, lhs, rhs), n in counts.items()
                 if kind == op and lhs == rhs == dtype)
      parts.append(f'{both}/{total} {label} {dtype}')
  return ', '.join(parts) or 'no dots'
