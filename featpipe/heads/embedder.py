"""The Embedder's former home: it is ``featpipe.extract.embedder.Embedder`` now. This name
stays so that imports of ``featpipe.heads.embedder`` and Embedders pickled before the move
still load."""


def __getattr__(name: str):
    if name == "Embedder":
        from featpipe.extract.embedder import Embedder

        return Embedder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
