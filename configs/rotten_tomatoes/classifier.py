"""Fresh/rotten classification of Rotten Tomatoes snippets with the byte-level encoder of
`mlm.py`: from scratch, or fine-tuned from a masked-LM pretraining run.

  # from scratch
  python -m research.main --config=configs/rotten_tomatoes/classifier.py --workdir=runs/rt_scratch
  # pretrain (configs/rotten_tomatoes/mlm.py), then fine-tune every weight
  python -m research.main --config=configs/rotten_tomatoes/classifier.py --workdir=runs/rt_ft \
      --config.init_from.workdir=runs/rt_mlm
  # a linear probe: the pretrained encoder frozen, only the head trained
  python -m research.main --config=configs/rotten_tomatoes/classifier.py --workdir=runs/rt_probe \
      --config.init_from.workdir=runs/rt_mlm --config.optimizer.freeze='^(?!head/)'

The encoder's parameter paths are the pretraining run's; `init_from.skip` leaves out the
masked-LM head (`mlm_head/`) and the fresh classifier head (`head/`). Mean pooling over
the real tokens (the tokenizer's `input_mask`), as the pretrained model has no [CLS] token.
"""
import os
import runpy

from research import models
from research.config import default_config

# The AdamW recipe shared with configs/text/.
_TEXT = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'text',
                                    'mlm.py'))

_MLM = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'mlm.py'))


def get_config():
  config = default_config()
  config.dataset.name = 'rotten_tomatoes'
  config.dataset.eval_splits = 'test'
  config.dataset.preprocess = f"tokenize_bytes(max_len={_MLM['MAX_LENGTH']})"
  config.model = models.model_config('transformer', head='classify', pooling='mean',
                                     dropout_rate=0.1, **_MLM['encoder']())
  config.init_from.skip = '^head/|^mlm_head/'
  config.batch_size = 64
  config.eval_batch_size = 512
  config.num_train_steps = 1000
  config.eval_every_steps = 500
  config.log_every_steps = 100
  config.checkpoint.every_steps = 500
  _TEXT['adamw'](config, learning_rate=5e-4, warmup_steps=100)
  return config
