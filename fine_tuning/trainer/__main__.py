import sys

from fine_tuning.trainer.train import main

sys.exit(main())
