"""``python -m skipnet`` runs the command line."""
from skipnet.cli import main

raise SystemExit(main())
