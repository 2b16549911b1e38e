"""The parts of the ``analyze`` action (SPEC §7): ``model`` (comments, colours, column
names), ``details`` (scan details of an instance as a DataFrame), ``pairs`` (which
source scan goes with which target scan), ``compare`` (pure, columnar comparison),
``report``, ``sheetxml`` and ``cells`` (the colour-coded workbook). ``handlers.analyze`` ties them
together."""
