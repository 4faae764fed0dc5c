"""A model loaded on first use, once, and announced once: what the CLI, recipes and
schedules hand to the stages (random and full selections never load it)."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping

from curator import models
from curator.models import LoadedModel

Echo = Callable[[str], None]
DEFAULT_LABEL = "default (SmolLM2-135M-Instruct)"


class LazyModel:
    """Callable: ``lazy()`` returns the model, loading it the first time.

    ``loader`` replaces loading by name (tests, the demo's tiny model). ``cache`` is shared
    between providers (a worker keeps its models between runs), keyed by what was loaded.
    """

    def __init__(self, name: str | None = None, *, dtype: str = "auto",
                 trust_remote_code: bool = False,
                 loader: Callable[[], LoadedModel] | None = None, echo: Echo | None = None,
                 cache: MutableMapping[tuple, LoadedModel] | None = None) -> None:
        self.name, self.dtype, self.trust_remote_code = name, dtype, trust_remote_code
        self.loader, self.echo = loader, echo
        self.cache: MutableMapping[tuple, LoadedModel] = {} if cache is None else cache
        self.key: tuple = ("given",) if loader is not None else (name, dtype)

    @property
    def loaded(self) -> bool:
        return self.key in self.cache

    def __call__(self) -> LoadedModel:
        if self.key not in self.cache:
            if self.loader is not None:
                self.cache[self.key] = self.loader()
            else:
                if self.echo is not None:
                    self.echo(f"loading model {self.name or DEFAULT_LABEL}")
                # looked up when called, so a test can stand a tiny model in for it
                self.cache[self.key] = models.load_model(
                    self.name, dtype=self.dtype, trust_remote_code=self.trust_remote_code)
        return self.cache[self.key]
