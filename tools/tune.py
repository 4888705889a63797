"""edgeml-tune: the command line of compiled/tune.py (time an artifact's kernel candidates on this device and record
the fastest; the runtime alone, no compiler)."""
import sys

from compiled.tune import main

if __name__ == "__main__":
  sys.exit(main())
