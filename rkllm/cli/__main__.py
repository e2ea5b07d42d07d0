import sys

from rkllm.cli import main

sys.exit(main())
