"""python -m framepack_native ...: the framepack-native command (torchrun --nproc-per-node N -m framepack_native generate
... runs one generation on N ranks: framepack_native.cli_parallel)."""
import sys

from framepack_native.cli import main

sys.exit(main())
