"""The default experiment config (every tunable key, with its default) and its validation.

Experiment files in `configs/` start from `default_config()` and override what differs,
so every key can be overridden from the command line (`--config.optimizer.learning_rate=3e-4`)
and a misspelt key fails instead of being silently ignored.
"""
from __future__ import annotations

import difflib
import os
import re
import shlex

import ml_collections

from research import models, objectives
from research.data import holdout, preprocess
from research.evaluation import evaluators
from research.models import lora
from research.errors import ConfigError

OPTIMIZERS = ('adam', 'adamw', 'sgd')
SCHEDULES = ('constant', 'cosine', 'linear')
NAN_POLICIES = ('stop', 'skip')
QAT_MODES = ('', 'int8', 'w8a8')  # research.compress.quantize.QAT_MODES


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 100            # global batch, split over the mesh's data axes
  c.eval_batch_size = 1000      # the last eval batch is padded and masked
  c.num_train_steps = 6000
  c.eval_every_steps = 1000     # 0: evaluate only at the end
  c.log_every_steps = 100
  c.grad_accum_steps = 1        # micro-batches per step; batch_size must divide by it
  c.progress_bar = True
  c.write_report = True         # report.md, plots/ and tensorboard/ in the workdir at the end
  c.nan_policy = 'stop'         # non-finite loss: 'stop' (raise, last checkpoint intact) or 'skip' the update

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 1000  # 0: only at the end (and on preemption)
  c.checkpoint.keep = 2         # the newest N are kept ...
  c.checkpoint.best_metric = ''  # ... plus the best by this eval metric, e.g. 'test/accuracy'
  c.checkpoint.best_mode = 'max'
  c.checkpoint.async_save = True
  c.checkpoint.resume = True    # continue from WORKDIR/checkpoints when it has one
  # With several processes, how often they agree on a stop request (SIGTERM): an
  # all-gather, so not every step. One process checks its own flag every step.
  c.checkpoint.preemption_sync_every_steps = 10

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = 'mnist1d'    # an offline builder (research.data) or any tfds name
  c.dataset.data_dir = ''       # '' -> $TFDS_DATA_DIR -> ~/tensorflow_datasets
  c.dataset.train_split = 'train'
  c.dataset.eval_splits = 'test'  # comma-separated tfds split names
  c.dataset.shuffle = True      # a fresh permutation per epoch, a function of the seed
  c.dataset.input_key = ''      # '' -> the dataset's supervised_keys
  c.dataset.label_key = ''
  # Preprocessing ops, e.g. 'random_crop(pad=2)|flip|standardize' (research/data/preprocess.py
  # lists them). '' -> floats as float32; uint8 images stay uint8 and the models scale
  # them to [0, 1] on the device. Random ops act in training only.
  c.dataset.preprocess = ''
  # >0: hold this stratified fraction of the training split out of training, as split
  # 'validation' (the same examples for every seed; research/data/holdout.py), for choosing
  # hyperparameters on data that is not the test split.
  c.dataset.validation_fraction = 0.0
  c.dataset.balance_classes = False  # oversample rare classes: every class equally often
  c.dataset.prefetch_threads = 0  # >0: build batches in background threads (heavy augmentation)
  c.dataset.batches_per_chunk = 0  # training batches gathered per read; 0: auto (~4 MB, <=16)

  c.model = models.model_config('cnn')

  # What is learnt: research/objectives/ ('classification', 'masked_lm', ...). Its
  # hyperparameters live in objective_args (objectives.args_config(name) lists them).
  c.objective = 'classification'
  c.objective_args = objectives.args_config('classification')

  # Evaluators beyond the default one (the objective's metrics on each of
  # dataset.eval_splits every eval_every_steps). Each entry, keyed by the name its results
  # are logged under: {'evaluator': NAME, 'split': SPLIT, 'every_steps': N (0: at the end
  # only; -1: eval_every_steps), **the evaluator's own arguments}. See
  # research/evaluation/evaluators.py.
  c.evals = ml_collections.ConfigDict()

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'adam'     # one of OPTIMIZERS
  c.optimizer.learning_rate = 1e-2
  c.optimizer.schedule = 'constant'  # one of SCHEDULES, after linear warmup
  c.optimizer.warmup_steps = 0
  c.optimizer.min_learning_rate_ratio = 0.0  # final lr / peak lr for cosine and linear
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.momentum = 0.9    # sgd only
  c.optimizer.nesterov = False  # sgd only
  c.optimizer.weight_decay = 0.0  # adamw: decoupled; adam/sgd: added to the gradient (L2)
  c.optimizer.grad_clip_norm = 0.0  # 0: no clipping
  # Parameter groups: regexes over parameter paths such as 'block_0/attention/query/kernel'
  # (research/training/optim.py). Each must match some parameter.
  c.optimizer.freeze = ''       # not updated, no optimizer state, e.g. '^(?!head/)' (linear probe)
  c.optimizer.lr_multipliers = ''  # 'REGEX=MULT; REGEX=MULT', first match wins, e.g. '^head/=10'
  c.optimizer.no_weight_decay = ''  # e.g. 'bias$|scale$'

  # Compression (research/compress/). Quantization-aware training: the model's dots see
  # int8-rounded weights ('int8') or weights and activations ('w8a8') in the forward pass,
  # straight-through gradients; '' trains in float. Post-training quantization of any
  # finished run is `python -m research.quantize`.
  c.quantization = ml_collections.ConfigDict()
  c.quantization.qat = ''       # one of QAT_MODES
  # Magnitude pruning (research/compress/prune.py): masks in the optimizer state.
  c.pruning = ml_collections.ConfigDict()
  c.pruning.sparsity = 0.0      # final fraction of zero weights; 0 disables pruning
  c.pruning.scope = 'global'    # 'global' (one threshold over all pruned params) or 'layer'
  c.pruning.params = 'kernel$'  # regex over param paths: which params are pruned
  c.pruning.begin_step = 0      # the cubic schedule runs from begin_step ...
  c.pruning.end_step = -1       # ... to end_step (-1: 75% of num_train_steps), then holds
  c.pruning.update_every = 50   # steps between mask updates within the schedule

  # A jax.profiler trace of a few steps, written to WORKDIR/profile (TensorBoard / Perfetto).
  c.profile = ml_collections.ConfigDict()
  c.profile.start_step = 0      # 0: no profile
  c.profile.num_steps = 5

  # Start from another run's weights (fine-tuning); ignored when resuming this run.
  c.init_from = ml_collections.ConfigDict()
  c.init_from.workdir = ''      # the source run's workdir; '' = random initialisation
  c.init_from.step = -1         # -1 = its latest checkpoint
  c.init_from.load = '.*'       # regex over param paths, e.g. '^encoder/'
  c.init_from.skip = ''         # regex of params to reinitialise, e.g. '^head/'
  # Or a Hugging Face BERT-family directory (config.json, model.safetensors, tokenizer.json):
  # it sets config.model's architecture fields, its weights are loaded (load/skip apply)
  # and `tokenize_pretrained` reads its tokenizer (research/models/hf_bert.py).
  c.init_from.hf_dir = ''

  # LoRA adapters (research/models/lora.py); rank 0: none. Everything but the adapters and
  # `trainable` is frozen, and a LoRA run's checkpoints leave the frozen base out (it is
  # reloaded from init_from on resume and evaluation).
  c.lora = ml_collections.ConfigDict()
  c.lora.rank = 0
  c.lora.alpha = 16.0           # the update is scaled by alpha / rank
  c.lora.dropout = 0.0          # on the adapters' input, in training
  c.lora.targets = ''           # regexes over module paths, ';'-separated, e.g. 'attention/(query|value)$'
  c.lora.trainable = '^head/'   # other params trained with the adapters ('' for none)

  # Stop when an eval metric stops improving; its best checkpoint is kept.
  c.early_stopping = ml_collections.ConfigDict()
  c.early_stopping.metric = ''  # 'SPLIT/METRIC', e.g. 'test/accuracy'; '' disables
  c.early_stopping.mode = 'max'
  c.early_stopping.patience = 5  # evaluations without improvement
  c.early_stopping.min_delta = 0.0

  # Multi-process runs (see research/distributed.py); all defaults mean "one process".
  c.distributed = ml_collections.ConfigDict()
  c.distributed.auto = False    # True on TPU pods / managed clusters: jax finds the coordinator
  c.distributed.coordinator_address = ''  # 'host:port' of process 0
  c.distributed.num_processes = 0
  c.distributed.process_id = -1
  c.distributed.cpu_collectives = 'gloo'  # for CPU devices across processes
  c.distributed.initialization_timeout_s = 300

  # Device mesh. -1 means "all remaining devices". See research/sharding.py for the
  # logical-axis rules that map model axes onto these.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  return c


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the bad value and what is accepted."""
  def positive(key: str, value) -> None:
    if not isinstance(value, int) or value <= 0:
      raise ConfigError(f'config.{key} must be a positive integer, got {value!r}.')

  positive('batch_size', config.batch_size)
  positive('eval_batch_size', config.eval_batch_size)
  positive('num_train_steps', config.num_train_steps)
  positive('log_every_steps', config.log_every_steps)
  positive('grad_accum_steps', config.grad_accum_steps)
  if config.eval_every_steps < 0:
    raise ConfigError(f'config.eval_every_steps must be >= 0, got {config.eval_every_steps}.')
  if config.batch_size % config.grad_accum_steps:
    raise ConfigError(f'config.batch_size={config.batch_size} must be divisible by '
                     f'config.grad_accum_steps={config.grad_accum_steps}.')
  if config.nan_policy not in NAN_POLICIES:
    raise ConfigError(f'Unknown nan_policy {config.nan_policy!r}; available: {list(NAN_POLICIES)}.')
  for key in ('checkpoint.every_steps', 'dataset.prefetch_threads', 'dataset.batches_per_chunk'):
    block, field = key.split('.')
    if config[block][field] < 0:
      raise ConfigError(f'config.{key} must be >= 0, got {config[block][field]}.')
  split_keys = [results_key(s) for s in eval_splits(config)] + list(config.evals.keys())
  for key in ('checkpoint.best_metric', 'early_stopping.metric'):
    block, field = key.split('.')
    value = config[block][field]
    if value and (value.count('/') != 1 or value.split('/')[0] not in split_keys):
      raise ConfigError(f"config.{key} must be 'SPLIT/METRIC' for an eval split in "
                       f"config.dataset.eval_splits ({config.dataset.eval_splits!r}), e.g. "
                       f"'test/accuracy'; got {value!r}.")
  for key in ('checkpoint.best_mode', 'early_stopping.mode'):
    block, field = key.split('.')
    if config[block][field] not in ('max', 'min'):
      raise ConfigError(f"config.{key} must be 'max' or 'min', got {config[block][field]!r}.")
  if config.early_stopping.metric and (config.early_stopping.patience < 1 or
                                       not config.eval_every_steps):
    raise ConfigError('Early stopping needs config.early_stopping.patience >= 1 and '
                     f'config.eval_every_steps > 0; got patience='
                     f'{config.early_stopping.patience}, eval_every_steps={config.eval_every_steps}.')
  opt = config.optimizer
  if opt.name not in OPTIMIZERS:
    raise ConfigError(f'Unknown optimizer {opt.name!r}; available: {list(OPTIMIZERS)}.')
  if opt.schedule not in SCHEDULES:
    raise ConfigError(f'Unknown schedule {opt.schedule!r}; available: {list(SCHEDULES)}.')
  if opt.learning_rate <= 0:
    raise ConfigError(f'config.optimizer.learning_rate must be > 0, got {opt.learning_rate}.')
  if not 0 <= opt.warmup_steps <= config.num_train_steps:
    raise ConfigError(f'config.optimizer.warmup_steps={opt.warmup_steps} must be in '
                     f'[0, num_train_steps={config.num_train_steps}].')
  holdout.check_fraction(config.dataset.validation_fraction)
  preprocess.parse_spec(config.dataset.preprocess)  # unknown ops fail here, listing valid ones
  # Unknown model names and hyperparameters are reported by models.build_model.
  models.hyperparameters(config.model.name)
  objectives.hyperparameters(config.objective)
  evaluators.specs(config)  # unknown evaluators and their arguments fail here
  if config.profile.start_step < 0 or config.profile.num_steps < 1:
    raise ConfigError(f'config.profile needs start_step >= 0 and num_steps >= 1; got '
                      f'{config.profile.start_step}, {config.profile.num_steps}.')
  if config.init_from.workdir and config.init_from.hf_dir:
    raise ConfigError(f'config.init_from takes workdir or hf_dir, not both; got workdir='
                      f'{config.init_from.workdir!r}, hf_dir={config.init_from.hf_dir!r}.')
  lora.check_config(config.lora, config.optimizer.freeze)
  if lora.enabled(config.lora) and not (config.init_from.workdir or config.init_from.hf_dir):
    raise ConfigError('LoRA (config.lora.rank > 0) adapts a pretrained base: set '
                      'config.init_from.hf_dir or config.init_from.workdir.')
  if config.quantization.qat not in QAT_MODES:
    raise ConfigError(f'config.quantization.qat={config.quantization.qat!r}; accepted: '
                      f'{list(QAT_MODES)}.')
  from research.compress import prune  # here: research.training imports this module
  prune.check(config)
  if config.checkpoint.preemption_sync_every_steps < 1:
    raise ConfigError('config.checkpoint.preemption_sync_every_steps must be >= 1, got '
                      f'{config.checkpoint.preemption_sync_every_steps}.')


def results_key(split: str) -> str:
  """'train' names the training loop's metrics, so evaluating that split reports 'train_eval'."""
  return 'train_eval' if split == 'train' else split


def eval_splits(config: ml_collections.ConfigDict) -> list[str]:
  return [s.strip() for s in config.dataset.eval_splits.split(',') if s.strip()]


def check_override_keys(config: ml_collections.ConfigDict, dotted_keys: list[str]) -> None:
  """Raises KeyError naming an override key that the config lacks, with the valid keys.

  ml_collections' own error on a locked config is a bare `AttributeError: 'key'` from
  inside flag parsing; this runs first and says what to use instead.
  """
  for dotted in dotted_keys:
    node, path = config, 'config'
    for part in dotted.split('.'):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        close = difflib.get_close_matches(part, valid, n=3)
        hint = f' Did you mean {", ".join(close)}?' if close else ''
        raise KeyError(
            f'Unknown config key {"config." + dotted!r}: {path!r} has no key {part!r}.{hint}\n'
            f'Valid keys in {path}: {", ".join(valid) or "(none: it is not a block)"}.')
      node, path = node[part], f'{path}.{part}'


EXTRA_OVERRIDES_ENV = 'RESEARCH_EXTRA_OVERRIDES'


def extra_overrides() -> list[str]:
  """The `--config.KEY=VALUE` overrides in $RESEARCH_EXTRA_OVERRIDES, split as a shell would
  (research.main and research.reproduce apply them after the command line's)."""
  args = shlex.split(os.environ.get(EXTRA_OVERRIDES_ENV, ''))
  bad = [arg for arg in args if not re.match(r'^--config\.[A-Za-z0-9_.]+=', arg)]
  if bad:
    raise ConfigError(f'${EXTRA_OVERRIDES_ENV} takes only --config.KEY=VALUE overrides, got {bad}.')
  return args
