"""The command line run most end-to-end tests use: fast LiSSA settings on a small model."""
from flows.cli import main

FAST = ["--solver", "lissa", "--depth", "200", "--repeats", "2", "--batch-size", "8", "--k", "100"]


def clean(paths, out, *extra, model="tabular-mlp"):
    return main(["clean", "--train", str(paths["train"]), "--valid", str(paths["valid"]), "--test",
                 str(paths["test"]), "--out", str(out), "--model", model, *FAST, *extra])
