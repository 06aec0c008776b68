"""A run's ``config.yaml``: the resolved configuration, under a checksum line and the run's id."""

from __future__ import annotations

import json
import uuid

import yaml

from ..config import RunConfig, config_difference, merged_seeds
from ..errors import ConfigError, RunDirError
from .integrity import config_checksum_broken, config_run_id, config_text
from .layout import RunLayout
from .writer import write_text


class ConfigFile:
    """The ``config.yaml`` of the run directory laid out by ``layout``."""

    def __init__(self, layout: RunLayout):
        self.layout = layout
        self.path = layout.config_path
        self._run_id: str | None = None

    def read(self) -> RunConfig:
        """The run's saved configuration, verified against the checksum in its first line.

        Raises:
            RunDirError: not a run directory, or a ``config.yaml`` that is damaged or cannot be read.
        """
        if not self.layout.is_run():
            raise RunDirError(f"{self.layout.root} is not a run directory (no config.yaml); give the directory "
                              "`refinery run` made")
        text = self.path.read_text(errors="replace")
        fix = "restore it, or start a new run directory (another --name)"
        if config_checksum_broken(text):
            raise RunDirError(f"{self.path} is damaged (its checksum does not match); {fix}")
        try:
            return RunConfig.from_dict(yaml.safe_load(text) or {})
        except (yaml.YAMLError, ConfigError, TypeError, AttributeError, ValueError) as e:
            raise RunDirError(f"{self.path} cannot be read ({str(e).splitlines()[0]}); {fix}") from None

    @property
    def run_id(self) -> str | None:
        """The run's id (``# run id:`` line), or None (no ``config.yaml``, or one of an older version)."""
        if self._run_id is None and self.path.is_file():
            self._run_id = config_run_id(self.path.read_text(errors="replace"))
        return self._run_id

    def _recorded_run_id(self) -> str | None:
        """The run id the summaries here record, for a ``config.yaml`` that lost its id line (rewritten by hand
        or by an older version): the directory keeps the id its generations were made under."""
        for path in self.layout.summary_paths():
            try:
                found = json.loads(path.read_text()).get("run_id")
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                continue
            if isinstance(found, str):
                return found
        return None

    def check_resumable(self, cfg: RunConfig) -> bool:
        """Check the directory against ``cfg``; True when it holds a run being resumed.

        Raises:
            RunDirError: it holds something else, or a run with a different configuration.
        """
        root = self.layout.root
        if not self.layout.is_run():
            if root.exists() and (not root.is_dir() or not self.layout.is_empty_or_leftovers()):
                raise RunDirError(f"{root} exists and is not a refinery run (no config.yaml); choose another "
                                  "--name or --runs-dir")
            return False
        diff = config_difference(self.read(), cfg)
        if diff is not None:
            raise RunDirError(f"run directory {root} was made with a different configuration ({diff}); "
                              f"rerun with the same flags, or `refinery run --resume {root}` to continue it with "
                              "its saved settings (a preset's values can change between versions), or pick a new "
                              "--name")
        return True

    def write(self, cfg: RunConfig) -> None:
        """Save ``cfg``; ``generations`` and ``seeds`` only ever extend what the directory records."""
        stored = cfg.to_dict()
        if self.layout.is_run():
            saved = self.read()
            stored["generations"] = max(saved.generations, cfg.generations)
            stored["seeds"] = merged_seeds(saved.seeds, cfg.seeds)
        run_id = self.run_id or self._recorded_run_id() or uuid.uuid4().hex
        write_text(self.path, config_text(run_id, yaml.safe_dump(stored, sort_keys=False)))
        self._run_id = None  # read again from the file
