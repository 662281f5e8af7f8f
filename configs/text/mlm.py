"""Masked-LM pretraining of a WordPiece Transformer encoder on the four text corpora.

  python -m research.main --config=configs/text/mlm.py --workdir=runs/text/mlm

Corpus: `text_pretraining`, the training texts of reuters_r8/r52, newsgroups20 and
rotten_tomatoes, deduplicated and without any text of their test splits (27,347 texts;
its `validation` split, 558 texts, is the masked-LM evaluation). Tokenizer: WordPiece
(8,000 pieces, trained on that corpus, saved in the workdir), each text's first 128
tokens (2.1M of the corpus's 4.7M; `window=random` reads whole texts instead, a random
window per epoch: tried, it did not help the fine-tuning, see the README's text table).
Objective: BERT's masking (15% of real tokens; 80% [MASK], 10% random, 10% unchanged).

`configs/text/classifier.py:DATASET+pretrained` fine-tunes this encoder (and reuses this
tokenizer). Sized for a 2-core CPU: 2 layers, d=128, 4 heads (about 2.3M parameters).
"""
from research import models, objectives
from research.config import default_config

MAX_LENGTH = 128
VOCAB_SIZE = 8000
WORKDIR = 'runs/text/mlm'  # where classifier.py:DATASET+pretrained looks for it


def encoder(**overrides) -> dict:
  """The encoder shared by pretraining and fine-tuning (the same parameter paths)."""
  return dict(frontend='text', vocab_size=VOCAB_SIZE, pad_id=0, max_length=MAX_LENGTH,
              num_layers=2, num_heads=4, hidden_size=128, mlp_ratio=4.0,
              position_embedding='learned', **overrides)


def adamw(config, learning_rate: float, warmup_steps: int) -> None:
  """AdamW with warmup and cosine decay, no decay on biases, norms and embeddings."""
  opt = config.optimizer
  opt.name, opt.learning_rate, opt.schedule = 'adamw', learning_rate, 'cosine'
  opt.warmup_steps, opt.weight_decay, opt.grad_clip_norm = warmup_steps, 0.01, 1.0
  opt.no_weight_decay = 'bias$|scale$|embedding$'


def get_config():
  config = default_config()
  config.dataset.name = 'text_pretraining'
  config.dataset.eval_splits = 'validation'
  config.dataset.preprocess = f'tokenize_wordpiece(vocab_size={VOCAB_SIZE}, max_len={MAX_LENGTH})'
  config.objective = 'masked_lm'
  # The head on at most 40 chosen positions per text (2 x 15% of 128), not all 128:
  # the vocabulary projection was 70% of the step's FLOPs.
  config.objective_args = objectives.args_config('masked_lm', max_predictions=40)
  config.model = models.model_config('transformer', head='masked_lm', dropout_rate=0.0,
                                     **encoder())
  config.batch_size = 64
  config.eval_batch_size = 256
  config.num_train_steps = 6000
  config.eval_every_steps = 1000
  config.log_every_steps = 100
  config.checkpoint.every_steps = 1000
  adamw(config, learning_rate=1e-3, warmup_steps=300)
  return config
