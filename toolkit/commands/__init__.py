"""One module per verb: its click options, one library call, its rendering (toolkit.cli assembles them)."""
