"""Files on disk: atomic writes, fingerprints, pickle-free arrays and tensors, row files
(``files``), and handing freed memory back to the operating system (``memory``)."""
