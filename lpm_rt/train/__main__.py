"""``python -m lpm_rt.train {base,distill} ...`` (also under torchrun)."""

from .cli import main

raise SystemExit(main())
