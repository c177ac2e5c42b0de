"""What a hosted backend reads from its table (the settings all of them take) and answers from
its model table alone (pure: planning never touches the network): its rows, a model's
capabilities and price, and what a shot asks that the model cannot do."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runner.backends.base import Capabilities, ShotRequest
from runner.film import model_table
from runner.film.model_table import ModelRow


class TableAnswers:
    """Mixed into a backend that sets `name`, `_models` (its rows by model), `_table` (where
    its rows are configured) and `_new_row` (the permissive row of a model not in the table)."""

    name: str
    poll_seconds: float
    _base_url: str | None
    _api_key: str | None
    _timeout: float
    _models: Mapping[str, ModelRow]
    _table: str
    _new_row: ModelRow

    def _settings(
        self, config: Mapping[str, Any] | None, keys: tuple[str, ...], timeout: float, poll: float
    ) -> dict[str, Any]:
        """The settings every hosted backend's table takes (`base_url`, `api_key`, `timeout`,
        `poll_seconds`), checked and set; returns the table for the backend's own keys."""
        cfg = dict(config or {})
        model_table.reject_unknown(cfg, keys, self._table)
        self._base_url = model_table.text_setting(cfg, "base_url", self._table)
        self._api_key = model_table.text_setting(cfg, "api_key", self._table)
        self._timeout = model_table.seconds_setting(cfg, "timeout", self._table, timeout)
        self.poll_seconds = model_table.seconds_setting(cfg, "poll_seconds", self._table, poll)
        return cfg

    def rows(self) -> Mapping[str, Capabilities]:
        """The backend's model table, by model name."""
        return dict(self._models)

    def capabilities(self, model: str) -> Capabilities:
        """The model's row; permissive for an unknown one (`check` then says what to add)."""
        return self._models.get(model, self._new_row)

    def price_per_second(self, model: str, width: int, height: int) -> float:
        row = self._models.get(model)
        return (row.price(width, height) if row else None) or 0.0

    def check(self, shot: ShotRequest) -> str | None:
        """What the backend cannot render about this shot, in words; None when it can."""
        missing = model_table.missing(self.name, shot.model, self._models, self._table)
        if missing:
            return missing
        row = self._models[shot.model]
        return model_table.words(shot, row, self.name) or self._problem(shot, row)

    def _problem(self, shot: ShotRequest, row: Any) -> str | None:
        """What only this backend's rows say against the shot (its own keys)."""
        return None
