"""``python -m pseudoseg`` (also what ``torchrun -m pseudoseg`` runs on each process)."""

from pseudoseg.cli import main

main()
