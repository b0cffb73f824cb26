"""Data in: the user's tables read and checked (``tables``), the bundled real datasets with
optional label noise (``datasets``), and the row-wise batching every stage uses (``batching``)."""
