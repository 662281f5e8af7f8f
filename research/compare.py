"""Command line: `python -m research.compare runs/` tabulates finished runs against papers.

The logic lives in `research.evaluation.compare`.
"""
import sys

from research.evaluation.compare import main

if __name__ == '__main__':
  sys.exit(main())
