"""The project's error type: one clear message naming what is wrong."""


class ReasonlabError(ValueError):
    """Bad input or an unobtainable resource, with a message a researcher can act on."""
