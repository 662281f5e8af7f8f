"""PyTorch twins of the flax models, for `benchmarks.bench`: same shapes, same parameter counts.

Each twin is built from the same hyperparameters as its flax model (the `config.model`
block), and runs the same step a PyTorch user would write: forward, cross-entropy, backward,
`torch.optim.Adam`. PyTorch is optional (`pip install -e '.[bench]'`); only this module
imports it.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
  if name == 'gelu':  # flax's nn.gelu is the tanh approximation
    return lambda x: F.gelu(x, approximate='tanh')
  fn = getattr(F, name, None)
  if fn is None:
    raise ValueError(f'No PyTorch twin for activation {name!r}.')
  return fn


class MLP(nn.Module):
  """Twin of `research.models.simple.MLP` (residual where a layer keeps its width)."""

  def __init__(self, in_features: int, num_classes: int, hidden_sizes: Sequence[int],
               residual: bool, activation: str, dropout_rate: float = 0.0, **unused):
    super().__init__()
    self.act = _activation(activation)
    self.dropout = nn.Dropout(dropout_rate)
    self.residual = residual
    widths = [in_features, *hidden_sizes]
    self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
    self.head = nn.Linear(widths[-1], num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = x.flatten(1)
    for layer in self.hidden:
      update = self.dropout(self.act(layer(h)))
      h = h + update if self.residual and h.shape[-1] == update.shape[-1] else update
    return self.head(h)


class CNN(nn.Module):
  """Twin of `research.models.simple.CNN`; inputs are channels-first (N, C, L) or (N, C, H, W)."""

  def __init__(self, input_shape: Sequence[int], num_classes: int, features: Sequence[int],
               kernel_sizes: Sequence[int], strides: Sequence[int], padding: int,
               pooling: str, hidden_sizes: Sequence[int], activation: str,
               dropout_rate: float = 0.0, **unused):
    super().__init__()
    self.act = _activation(activation)
    self.dropout = nn.Dropout(dropout_rate)
    self.pooling = pooling
    spatial = list(input_shape[:-1]) if len(input_shape) > 1 else list(input_shape)
    channels = input_shape[-1] if len(input_shape) > 1 else 1
    conv_cls = nn.Conv1d if len(spatial) == 1 else nn.Conv2d
    convs = []
    for width, k, s in zip(features, kernel_sizes, strides):
      convs.append(conv_cls(channels, width, k, stride=s, padding=padding))
      spatial = [(n + 2 * padding - k) // s + 1 for n in spatial]
      channels = width
    self.convs = nn.ModuleList(convs)
    flat = channels * math.prod(spatial) if pooling == 'flatten' else channels
    widths = [flat, *hidden_sizes]
    self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
    self.head = nn.Linear(widths[-1], num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = x
    for conv in self.convs:
      h = self.act(conv(h))
    h = h.flatten(1) if self.pooling == 'flatten' else h.mean(dim=tuple(range(2, h.ndim)))
    for layer in self.hidden:
      h = self.dropout(self.act(layer(h)))
    return self.head(h)


def relative_offsets(length: int, max_distance: int) -> torch.Tensor:
  """`idx[i, j]` = clip(j - i, +-max_distance) + max_distance, as the flax model."""
  pos = torch.arange(length)
  return (pos[None, :] - pos[:, None]).clamp(-max_distance, max_distance) + max_distance


class EncoderBlock(nn.Module):
  """Pre-LN block: x + attention(LN(x)), then x + MLP(LN(x)), as the flax EncoderBlock.

  With `relative_distance > 0`, a learned per-head bias for each offset j - i is added to
  the attention logits; the first `num_prefix_tokens` (a class token) get none.
  """

  def __init__(self, dim: int, num_heads: int, mlp_dim: int, dropout_rate: float,
               attention_dropout_rate: float, relative_distance: int = 0,
               num_prefix_tokens: int = 0):
    super().__init__()
    self.num_heads = num_heads
    self.attention_dropout_rate = attention_dropout_rate
    self.relative_distance, self.num_prefix_tokens = relative_distance, num_prefix_tokens
    if relative_distance > 0:
      self.relative_bias = nn.Parameter(torch.zeros(2 * relative_distance + 1, num_heads))
    self.ln_attention = nn.LayerNorm(dim, eps=1e-6)
    self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))
    self.out = nn.Linear(dim, dim)
    self.ln_mlp = nn.LayerNorm(dim, eps=1e-6)
    self.mlp_in = nn.Linear(dim, mlp_dim)
    self.mlp_out = nn.Linear(mlp_dim, dim)
    self.dropout = nn.Dropout(dropout_rate)

  def attention_bias(self, length: int) -> torch.Tensor:
    """`bias_HxLxL` for `length` tokens, the prefix included (zeros there)."""
    prefix = self.num_prefix_tokens
    table = self.relative_bias[relative_offsets(length - prefix, self.relative_distance)]
    return F.pad(table.permute(2, 0, 1), (prefix, 0, prefix, 0))

  def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    b, n, d = x.shape
    h = self.ln_attention(x)
    q, k, v = (proj(h).view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)
               for proj in (self.query, self.key, self.value))
    if self.relative_distance > 0:  # an additive float mask: the bias, -big where masked
      bias = self.attention_bias(n)[None].to(q.dtype)
      if mask is not None:
        bias = bias.masked_fill(~mask, torch.finfo(q.dtype).min / 2)
      mask = bias
    att = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=self.attention_dropout_rate if self.training else 0.0)
    x = x + self.dropout(self.out(att.transpose(1, 2).reshape(b, n, d)))
    h = self.dropout(F.gelu(self.mlp_in(self.ln_mlp(x)), approximate='tanh'))
    return x + self.dropout(self.mlp_out(h))


class TransformerEncoder(nn.Module):
  """Twin of `research.models.transformer.TransformerEncoder` (channels-last inputs)."""

  def __init__(self, input_shape: Sequence[int], num_classes: int, frontend: str, head: str,
               num_layers: int, num_heads: int, hidden_size: int, mlp_ratio: float,
               dropout_rate: float, attention_dropout_rate: float, position_embedding: str,
               pooling: str, max_length: int, vocab_size: int, pad_id: int, patch_size: int,
               **unused):
    super().__init__()
    if position_embedding not in ('learned', 'sinusoidal', 'relative', 'none'):
      raise ValueError(f'No PyTorch twin for position_embedding={position_embedding!r}.')
    d = hidden_size
    self.frontend, self.head_kind, self.pooling = frontend, head, pooling
    self.pad_id, self.patch_size = pad_id, patch_size
    self.position_embedding = position_embedding
    if frontend == 'features':
      num_tokens = input_shape[0]
      self.embed = nn.Linear(input_shape[1] if len(input_shape) > 1 else 1, d)
    elif frontend == 'image':
      h, w = input_shape[:2]
      channels = input_shape[2] if len(input_shape) > 2 else 1
      num_tokens = (h // patch_size) * (w // patch_size)
      self.embed = nn.Linear(patch_size * patch_size * channels, d)
    else:
      num_tokens = input_shape[0]
      self.embed = nn.Embedding(vocab_size, d)
    if position_embedding == 'learned':
      rows = max_length if frontend == 'text' else num_tokens
      self.pos_embed = nn.Parameter(0.02 * torch.randn(rows, d))
    elif position_embedding == 'sinusoidal':
      position = torch.arange(num_tokens, dtype=torch.float32)[:, None]
      inv_freq = torch.exp(-math.log(10000.0) * torch.arange(0, d, 2).float() / d)
      table = torch.zeros(num_tokens, d)
      table[:, 0::2] = torch.sin(position * inv_freq)
      table[:, 1::2] = torch.cos(position * inv_freq)[:, :d // 2]
      self.register_buffer('pos_table', table)
    self.uses_class_token = head == 'classify' and pooling == 'cls'
    if self.uses_class_token:
      self.cls_token = nn.Parameter(0.02 * torch.randn(d))
    self.dropout = nn.Dropout(dropout_rate)
    mlp_dim = int(round(d * mlp_ratio))
    relative_distance = 0
    if position_embedding == 'relative':
      relative_distance = (max_length if frontend == 'text' else num_tokens) - 1
    self.blocks = nn.ModuleList(
        EncoderBlock(d, num_heads, mlp_dim, dropout_rate, attention_dropout_rate,
                     relative_distance, int(self.uses_class_token))
        for _ in range(num_layers))
    self.ln_final = nn.LayerNorm(d, eps=1e-6)
    self.head = nn.Linear(d, vocab_size if head == 'masked_lm' else num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    mask = None
    if self.frontend == 'features':
      tokens = self.embed(x[..., None] if x.ndim == 2 else x)
    elif self.frontend == 'image':
      x = x[..., None] if x.ndim == 3 else x
      b, h, w, c = x.shape
      p = self.patch_size
      patches = x.reshape(b, h // p, p, w // p, p, c).permute(0, 1, 3, 2, 4, 5)
      tokens = self.embed(patches.reshape(b, (h // p) * (w // p), p * p * c))
    else:
      mask = x != self.pad_id
      tokens = self.embed(x)
    n = tokens.shape[1]
    if self.position_embedding == 'learned':
      tokens = tokens + self.pos_embed[:n]
    elif self.position_embedding == 'sinusoidal':
      tokens = tokens + self.pos_table[:n]
    if self.uses_class_token:
      tokens = torch.cat([self.cls_token.expand(tokens.shape[0], 1, -1), tokens], dim=1)
      if mask is not None:
        mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
    h = self.dropout(tokens)
    attn_mask = None if mask is None else mask[:, None, None, :]
    for block in self.blocks:
      h = block(h, attn_mask)
    h = self.ln_final(h)
    if self.head_kind == 'masked_lm':
      return self.head(h)
    if self.pooling == 'cls':
      pooled = h[:, 0]
    elif mask is None:
      pooled = h.mean(dim=1)
    else:
      weight = mask.float()
      pooled = (h * weight[..., None]).sum(1) / weight.sum(1, keepdim=True).clamp(min=1.0)
    return self.head(pooled)


def param_count(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())


# ---- Registry: family name -> builder(hyperparameters, input_shape, num_classes) ----

BUILDERS: dict[str, Callable[..., nn.Module]] = {
    'mlp': lambda hp, shape, k: MLP(int(np.prod(shape)), k, **hp),
    'cnn': lambda hp, shape, k: CNN(tuple(shape), k, **hp),
    'transformer': lambda hp, shape, k: TransformerEncoder(tuple(shape), k, **hp),
}


def build(family: str, hp: dict[str, Any], input_shape: Sequence[int],
          num_classes: int) -> nn.Module:
  """The twin of flax model `family` with hyperparameters `hp` (a `config.model` block)."""
  if family not in BUILDERS:
    raise ValueError(f'No PyTorch twin for model {family!r}; twins exist for {sorted(BUILDERS)}.')
  hp = {k: tuple(v) if isinstance(v, list) else v for k, v in hp.items() if k != 'name'}
  return BUILDERS[family](hp, tuple(input_shape), num_classes)


def to_torch_layout(family: str, inputs: np.ndarray) -> np.ndarray:
  """The flax CNN takes channels-last inputs; its twin takes channels-first."""
  if family == 'cnn':
    if inputs.ndim == 2:  # x_BxL -> (B, 1, L)
      return inputs[:, None, :]
    return np.moveaxis(inputs, -1, 1)
  return inputs


def load_flax_params(family: str, twin: nn.Module, params: dict[str, Any]) -> None:
  """Copies a flax model's params (a nested dict of arrays) into its twin, in place.

  With the same weights the twin computes the same function (up to float rounding); the
  tests check that, so a twin cannot drift from its flax model unnoticed.
  """
  def put(dst: torch.Tensor, value) -> None:
    value = torch.from_numpy(np.array(value, dtype=np.float32))  # a writable copy
    if tuple(dst.shape) != tuple(value.shape):
      raise ValueError(f'shape mismatch: twin {tuple(dst.shape)} vs flax {tuple(value.shape)}')
    with torch.no_grad():
      dst.copy_(value)

  def dense(layer: nn.Linear, p: dict[str, Any], kernel_2d=None) -> None:
    kernel = np.asarray(p['kernel']) if kernel_2d is None else kernel_2d
    put(layer.weight, kernel.reshape(-1, layer.out_features).T)
    put(layer.bias, np.asarray(p['bias']).reshape(-1))

  def layer_norm(layer: nn.LayerNorm, p: dict[str, Any]) -> None:
    put(layer.weight, p['scale'])
    put(layer.bias, p['bias'])

  if family == 'mlp':
    for i, layer in enumerate(twin.hidden):
      dense(layer, params[f'hidden_{i}'])
    dense(twin.head, params['head'])
  elif family == 'cnn':
    for i, conv in enumerate(twin.convs):
      kernel = np.asarray(params[f'conv_{i}']['kernel'])  # (k..., in, out) -> (out, in, k...)
      nd = kernel.ndim - 2
      put(conv.weight, kernel.transpose((nd + 1, nd) + tuple(range(nd))))
      put(conv.bias, params[f'conv_{i}']['bias'])
    # flax flattens (B, spatial..., C), the twin (B, C, spatial...): permute the rows of
    # the first dense layer after the convolutions.
    first = twin.hidden[0] if len(twin.hidden) else twin.head
    first_name = 'hidden_0' if len(twin.hidden) else 'head'
    kernel = np.asarray(params[first_name]['kernel'])
    channels = twin.convs[-1].out_channels
    if twin.pooling == 'flatten':
      kernel = kernel.reshape(-1, channels, kernel.shape[-1]).transpose(1, 0, 2)
    dense(first, params[first_name], kernel.reshape(-1, kernel.shape[-1]))
    layers_ = list(twin.hidden) + [twin.head]
    for i, layer in enumerate(layers_[1:], start=1):
      dense(layer, params[f'hidden_{i}' if i < len(twin.hidden) else 'head'])
  elif family == 'transformer':
    front = {'features': 'feature_embed', 'image': 'patch_embed'}.get(twin.frontend)
    if front:
      dense(twin.embed, params[front])
    else:
      put(twin.embed.weight, params['token_embed']['embedding'])
    if twin.position_embedding == 'learned':
      put(twin.pos_embed, params['pos_embed'])
    if twin.uses_class_token:
      put(twin.cls_token, params['cls_token'])
    for i, block in enumerate(twin.blocks):
      if 'blocks' in params:  # scan_layers: stacked on a leading axis
        p = _tree_index(params['blocks'], i)
      else:
        p = params[f'block_{i}']
      layer_norm(block.ln_attention, p['ln_attention'])
      if block.relative_distance > 0:
        put(block.relative_bias, p['attention']['relative_bias'])
      for name in ('query', 'key', 'value'):
        dense(getattr(block, name), p['attention'][name])
      dense(block.out, p['attention']['out'])
      layer_norm(block.ln_mlp, p['ln_mlp'])
      dense(block.mlp_in, p['mlp_in'])
      dense(block.mlp_out, p['mlp_out'])
    layer_norm(twin.ln_final, params['ln_final'])
    dense(twin.head, params['mlm_head' if twin.head_kind == 'masked_lm' else 'head'])
  else:
    raise ValueError(f'No PyTorch twin for model {family!r}.')


def _tree_index(tree, i: int):
  if isinstance(tree, dict):
    return {k: _tree_index(v, i) for k, v in tree.items()}
  return np.asarray(tree)[i]


class Runner:
  """One model, its Adam optimizer and one fixed batch; `run(n)` times n training steps."""

  def __init__(self, family: str, hp: dict[str, Any], batch: dict[str, np.ndarray],
               num_classes: int, learning_rate: float = 1e-3, seed: int = 0,
               device: str = 'cpu'):
    torch.manual_seed(seed)
    inputs = batch['inputs']
    self.device = torch.device(device)
    self.model = build(family, hp, inputs.shape[1:], num_classes).to(self.device)
    self.model.train()
    self.optimizer = torch.optim.Adam(self.model.parameters(), lr=learning_rate)
    x = torch.from_numpy(np.ascontiguousarray(to_torch_layout(family, inputs)))
    self.x = (x.float() if x.is_floating_point() else x.long()).to(self.device)
    self.y = torch.from_numpy(batch['labels'].astype(np.int64)).to(self.device)
    self.autocast = hp.get('dtype', 'float32') == 'bfloat16'
    self.num_params = param_count(self.model)

  def step(self) -> torch.Tensor:
    self.optimizer.zero_grad(set_to_none=True)
    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
      logits = self.model(self.x)
    loss = F.cross_entropy(logits.float(), self.y)
    loss.backward()
    self.optimizer.step()
    return loss.detach()

  def run(self, num_steps: int) -> float:
    start = time.perf_counter()
    for _ in range(num_steps):
      loss = self.step()
    float(loss)  # waits for the device
    return time.perf_counter() - start


def matmul_peak_gflops(n: int = 2048, repeats: int = 5, device: str = 'cpu') -> float:
  a = torch.randn(n, n, device=device)
  sync = torch.cuda.synchronize if device != 'cpu' else (lambda: None)
  a @ a
  sync()
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    a @ a
    sync()
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best / 1e9


def serve(stdin=sys.stdin, stdout=sys.stdout, device: str = 'cpu') -> None:
  """JSON-lines requests from `benchmarks.bench`: hello, matmul_peak, setup, run, quit."""
  runner = None
  for line in stdin:
    request = json.loads(line)
    op = request.pop('op')
    try:
      if op == 'hello':
        reply = {'torch': torch.__version__, 'threads': torch.get_num_threads(),
                 'device': device}
        if device != 'cpu' and not torch.cuda.is_available():
          reply = {'error': f'--device={device}: this torch build has no CUDA '
                            f'({torch.__version__}); install a CUDA build of torch'}
        elif device != 'cpu':
          reply['device_name'] = torch.cuda.get_device_name(0)
      elif op == 'matmul_peak':
        reply = {'matmul_gflops': matmul_peak_gflops(device=device)}
      elif op == 'setup':
        with np.load(request['batch_path']) as data:
          batch = {k: data[k] for k in data.files}
        runner = Runner(request['family'], request['hyperparameters'], batch,
                        request['num_classes'], device=device)
        reply = {'num_params': runner.num_params}
      elif op == 'run':
        reply = {'seconds': runner.run(int(request['steps']))}
      elif op == 'quit':
        stdout.write(json.dumps({'ok': True}) + '\n')
        stdout.flush()
        return
      else:
        reply = {'error': f'unknown op {op!r}'}
    except Exception as e:  # reported to the parent, which raises it
      reply = {'error': f'{type(e).__name__}: {e}'}
    stdout.write(json.dumps(reply) + '\n')
    stdout.flush()


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description='PyTorch twins worker for benchmarks.bench.')
  parser.add_argument('--serve', action='store_true', help='answer JSON-lines requests')
  parser.add_argument('--threads', type=int, default=0, help='torch.set_num_threads (0: default)')
  parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
  args = parser.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  if not args.serve:
    parser.error('nothing to do: pass --serve (benchmarks.bench starts this worker).')
  serve(device=args.device)
