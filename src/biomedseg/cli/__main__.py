"""``python -m biomedseg.cli``: the command line (as ``torchrun -m biomedseg.cli`` uses it)."""

from biomedseg.cli import main

main()
