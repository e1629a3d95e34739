"""``python -m example_app``: the quickstart app, offline on the emulators unless configured."""

from .offline import main

main()
