"""Command line: `python -m research.report WORKDIR` redraws a run's report.md and plots.

The logic lives in `research.evaluation.report`.
"""
import sys

from research.evaluation.report import main

if __name__ == '__main__':
  sys.exit(main())
