"""A small text Transformer taught by a larger fine-tuned encoder (distillation), or alone.

  python -m research.main --config=configs/text/distill.py:reuters_r8 --workdir=runs/text/r8_student \
      --config.objective_args.teacher=runs/text/table/classifier-reuters_r8+pretrained/seed0
  python -m research.main --config=configs/text/distill.py:reuters_r8+alone --workdir=runs/text/r8_alone

The student: 2 layers, d=64, 2 heads (`mlm.py`'s encoder at half the width), trained from
scratch. The teacher: a finished `classifier.py:DATASET+pretrained` run (2 layers, d=128,
masked-LM pretrained, then fine-tuned). Both read the same inputs: the pretraining
tokenizer of `mlm.py` at `classifier.py`'s length, so the teacher's logits are computed on
exactly the student's batch. `+alone` trains the same student with plain classification.
"""
import os
import runpy

from research import models, objectives

_HERE = os.path.dirname(os.path.abspath(__file__))
_CLASSIFIER = runpy.run_path(os.path.join(_HERE, 'classifier.py'))
_MLM = _CLASSIFIER['_MLM']


def get_config(arg: str = 'reuters_r8'):
  dataset, _, option = arg.partition('+')
  config = _CLASSIFIER['get_config'](f'{dataset}+pretrained')  # its tokenizer and recipe
  config.init_from.workdir = ''  # the student starts from scratch
  config.model = models.model_config(
      'transformer', head='classify', pooling='mean', dropout_rate=0.1,
      **{**_MLM['encoder'](), 'hidden_size': 64, 'num_heads': 2})
  if option != 'alone':
    config.objective = 'distillation'
    config.objective_args = objectives.args_config('distillation', temperature=2.0, alpha=0.7)
  return config
