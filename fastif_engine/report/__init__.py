"""What a run writes for people: the output tables and metrics (``outputs``), and the report
(``content`` says what it says, as ``blocks`` rendered by ``markdown`` and ``html``; ``plots``)."""
