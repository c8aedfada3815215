class RuntimeContract:
    pass
