def lanczos(*a, **k):
    raise NotImplementedError
