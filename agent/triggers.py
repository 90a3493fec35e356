"""Threshold triggers over decoded signals, with a hold time and a freeze frame.

A trigger is ``<condition> [for <N> s|ms]``; the condition is a small expression language
(comparisons, ``and``, ``or``, ``not``, parentheses, numbers, signal names). It is parsed with
Python's ``ast`` and only those nodes are interpreted: nothing is ever evaluated as code. A
signal name matches the end of a sample key: ``CoolantTemp``, ``ENGINE_2.CoolantTemp`` or
``pt/ENGINE_2/CoolantTemp``. When the condition has held for the hold time, a ``trigger`` episode
is set; an update brings its freeze frame: the chosen signals from ``before_s`` before to
``after_s`` after. When the condition stops holding, the episode clears.
"""

from __future__ import annotations

import ast
import operator
import re
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from canvoy.agent.collect import Sample, tee
from canvoy.agent.episodes import EpisodeTracker, Fault, Transition
from canvoy.errors import ConfigError
from canvoy.wire.events import (
    MAX_FREEZE_SAMPLES,
    MAX_FREEZE_SIGNALS,
    MAX_TEXT,
    FreezeFrame,
    TriggerEvent,
)

_HOLD = re.compile(r"^(?P<expr>.+?)\s+for\s+(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>s|ms)\s*$")
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class TriggerConfig:
    """One trigger of ``diagnostics.triggers``."""

    name: str
    when: str
    freeze_frame: tuple[str, ...] = ()
    before_s: float = 10.0
    after_s: float = 5.0

    def __post_init__(self) -> None:
        if not 1 <= len(self.name) <= MAX_TEXT or len(self.when) > MAX_TEXT:
            raise ConfigError(
                f"trigger {self.name[:40]!r}: name and condition must be 1-{MAX_TEXT} characters"
            )
        if len(self.freeze_frame) > MAX_FREEZE_SIGNALS:
            raise ConfigError(
                f"trigger {self.name}: at most {MAX_FREEZE_SIGNALS} freeze_frame signals"
            )
        parse_condition(self.when)  # raises ConfigError naming the problem
        if self.before_s < 0 or self.after_s < 0:
            raise ConfigError(f"trigger {self.name}: before_s and after_s must be >= 0")


@dataclass(frozen=True, slots=True)
class Condition:
    """A parsed trigger condition."""

    text: str
    tree: ast.expr
    names: frozenset[str]
    hold_s: float

    def evaluate(self, values: Mapping[str, float | str]) -> bool:
        """True when the condition holds for ``values`` (missing signals: False)."""
        try:
            return bool(_eval(self.tree, values))
        except KeyError:
            return False


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}/{node.attr}"
    raise ConfigError(f"{ast.unparse(node)!r} is not a signal name")


def _check(node: ast.AST, names: set[str]) -> None:
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And | ast.Or):
        for v in node.values:
            _check(v, names)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
        _check(node.operand, names)
    elif isinstance(node, ast.Compare):
        if not all(type(op) in _COMPARE for op in node.ops):
            raise ConfigError("comparisons are > >= < <= == !=")
        for v in (node.left, *node.comparators):
            _check(v, names)
    elif isinstance(node, ast.Name | ast.Attribute):
        names.add(_name(node))
    elif isinstance(node, ast.Constant) and isinstance(node.value, int | float | str):
        pass
    else:
        raise ConfigError(f"{ast.unparse(node)!r} is not allowed in a trigger")


def _eval(node: ast.expr, values: Mapping[str, float | str]) -> Any:
    if isinstance(node, ast.BoolOp):
        results = (_eval(v, values) for v in node.values)
        return all(results) if isinstance(node.op, ast.And) else any(results)
    if isinstance(node, ast.UnaryOp):
        operand = _eval(node.operand, values)
        return (not operand) if isinstance(node.op, ast.Not) else -operand
    if isinstance(node, ast.Compare):
        left = _eval(node.left, values)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _eval(right_node, values)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Constant):
        return node.value
    return values[_name(node)]


def parse_condition(text: str) -> Condition:
    """Parse ``CoolantTemp > 110 and VehicleSpeed > 0 for 5 s``.

    Raises:
        ConfigError: naming what is wrong with ``text``.
    """
    hold_s = 0.0
    expr = text.strip()
    m = _HOLD.match(expr)
    if m:
        expr = m["expr"]
        hold_s = float(m["n"]) / (1000 if m["unit"] == "ms" else 1)
    try:
        tree = ast.parse(expr, mode="eval").body
    except SyntaxError as exc:
        raise ConfigError(f"trigger {text!r} does not parse: {exc.msg}") from exc
    names: set[str] = set()
    try:
        _check(tree, names)
    except ConfigError as exc:
        raise ConfigError(f"trigger {text!r}: {exc}") from exc
    if not names:
        raise ConfigError(f"trigger {text!r} names no signal")
    return Condition(text, tree, frozenset(names), hold_s)


def _matches(key: str, name: str) -> bool:
    path = key.split("@", 1)[0]
    return path == name or path.endswith("/" + name)


@dataclass
class _State:
    config: TriggerConfig
    condition: Condition
    since: float | None = None
    active: bool = False
    resumed: bool = False  # an episode open before a restart waits for the first evaluation
    fired: float | None = None  # a set whose freeze frame is still collecting "after" samples
    ring: dict[str, deque[tuple[float, Any]]] = field(default_factory=dict)

    @property
    def scope(self) -> str:
        return f"trigger:{self.config.name}"


# What ``observe`` does after it lets go of the lock: report "on" or "off", or send a "frame".
_Action = tuple[str, _State, float, FreezeFrame | None]


class TriggerWatcher:
    """Evaluates every trigger as samples arrive; reports their episodes. Thread-safe.

    A trigger that fires opens an episode (``set``); once ``after_s`` has passed, an ``update``
    carries the freeze frame; when the condition stops holding, ``clear``. After a restart, an
    episode still open continues if the condition holds at its first evaluation (without
    waiting for the hold time again) and is cleared if it does not.
    """

    def __init__(
        self,
        triggers: tuple[TriggerConfig, ...],
        episodes: EpisodeTracker,
        context: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self._states = [_State(t, parse_condition(t.when)) for t in triggers]
        self.episodes = episodes
        for s in self._states:
            s.resumed = s.config.name in episodes.open_keys(s.scope)
        self._context = context
        self._values: dict[str, float | str] = {}
        self._lock = threading.Lock()
        self._route: dict[str, list[tuple[_State, str | None, str | None]]] = {}

    def _routes(self, key: str) -> list[tuple[_State, str | None, str | None]]:
        route = self._route.get(key)
        if route is None:
            route = []
            for s in self._states:
                name = next((n for n in s.condition.names if _matches(key, n)), None)
                frozen = next((f for f in s.config.freeze_frame if _matches(key, f)), None)
                if name is not None or frozen is not None:
                    route.append((s, name, frozen))
            self._route[key] = route
        return route

    def observe(self, sample: Sample) -> None:
        """Look at one sample."""
        t, key, value = sample
        route = self._routes(key)
        actions: list[_Action] = []
        with self._lock:
            for s, name, frozen in route:
                if frozen is not None:
                    ring = s.ring.setdefault(frozen, deque())
                    ring.append((t, value))
                    # Keep enough for a frame that is still collecting its "after" samples.
                    horizon = t - 2 * (s.config.before_s + s.config.after_s) - 1.0
                    while ring and ring[0][0] < horizon:
                        ring.popleft()
                if name is not None:
                    self._values[name] = value
                    actions += self._step(s, t)
            for s in self._states:
                if s.fired is not None and t > s.fired + s.config.after_s:
                    actions.append(self._take_frame(s))
                # A condition still holding fires once its hold time has passed, even when its
                # own signals are unchanged (and so not sampled): any later sample tells the time.
                if s.since is not None and not s.active and t - s.since >= s.condition.hold_s:
                    actions += self._step(s, t)
        self._run(actions)

    def _run(self, actions: list[_Action]) -> None:
        for what, s, t, frame in actions:
            if what == "frame":
                self.episodes.touch(s.scope, s.config.name, partial(self._event, s, t, frame))
            else:
                active = {s.config.name: Fault(s.config.name)} if what == "on" else {}
                build = partial(self._event, s, t, None)
                self.episodes.report("trigger", s.scope, active, build, int(t * 1000))

    def _step(self, s: _State, t: float) -> list[_Action]:
        holds = s.condition.evaluate(self._values)
        if not holds:
            s.since = None
            if not (s.active or s.resumed):
                return []
            out = [self._take_frame(s)] if s.fired is not None else []
            s.active = s.resumed = False
            return [*out, ("off", s, t, None)]
        if s.since is None:
            s.since = t
        if not s.active and (s.resumed or t - s.since >= s.condition.hold_s):
            s.fired = None if s.resumed else t  # a resumed episode sent its frame before
            s.active, s.resumed = True, False
            return [("on", s, t, None)]
        return []

    def _take_frame(self, s: _State) -> _Action:
        """The freeze frame of the last set: ``before_s`` before it to ``after_s`` after."""
        fired = s.fired if s.fired is not None else 0.0
        s.fired = None
        low, high = fired - s.config.before_s, fired + s.config.after_s
        frame = {}
        for name, ring in s.ring.items():
            samples = [[int(t * 1000), v] for t, v in ring if low <= t <= high]
            # The protocol's bound per signal: a fast signal is thinned evenly to fit.
            step = -(-len(samples) // MAX_FREEZE_SAMPLES)
            frame[name] = samples[::step] if step > 1 else samples
        return ("frame", s, fired, frame)

    def _event(
        self, s: _State, t: float, frame: FreezeFrame | None, step: Transition
    ) -> TriggerEvent:
        return TriggerEvent(
            t_ms=int(t * 1000),
            name=s.config.name,
            state=step.state,
            condition=s.condition.text,
            episode=step.episode.id,
            freeze_frame=frame,
            **self._context(),
        )

    def flush(self) -> None:
        """Send freeze frames still collecting their "after" samples (shutdown)."""
        with self._lock:
            actions = [self._take_frame(s) for s in self._states if s.fired is not None]
        self._run(actions)

    def wrap(self, emit: Callable[[Sample], None]) -> Callable[[Sample], None]:
        """An emit function that passes samples on and watches them (``emit`` itself when no
        trigger is configured: nothing to watch)."""
        return tee(emit, self.observe) if self._states else emit
