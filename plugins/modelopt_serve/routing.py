"""Which variant answers a request: :class:`Router`.

A request naming a variant in ``X-Variant`` gets that one (a shadow cannot be named: its
answers are never returned). Else a request with an ``X-Client-Key`` is placed by a hash of the
key (BLAKE2b, the same in every process and replica), so one client keeps hitting one variant
while the weights stay as they are; else a seeded random draw picks by weight. The weights
table is immutable and swapped in one assignment, so a promotion (:meth:`Router.update`) is
atomic: every request sees either the old split or the new one, never a mix.
"""

from __future__ import annotations

import bisect
import hashlib
import random
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from modelopt_core.errors import ConfigError

from .errors import UnknownVariantError, VariantConfigError

__all__ = ["CLIENT_KEY_HEADER", "FORCE_HEADER", "Router", "initial_weights", "parse_variant"]

#: request header naming the variant to use
FORCE_HEADER = "x-variant"
#: request header whose hash makes a client sticky to one variant
CLIENT_KEY_HEADER = "x-client-key"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(name: str, where: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(f"{where}: variant name {name!r} must be 1-64 letters, digits, '_', "
                          "'.' or '-', starting with a letter or digit.")
    return name


def parse_variant(text: str) -> tuple[str, str, float | None]:
    """``NAME=PATH[:WEIGHT]`` (``--variant``) -> (name, path, weight or None). A colon
    followed by something that is not a number stays part of the path."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise ConfigError(f"--variant {text!r}: expected NAME=PATH[:WEIGHT], e.g. "
                          "--variant int8=out/model-int8:10.")
    path, weight = rest, None
    head, colon, tail = rest.rpartition(":")
    if colon and head:
        try:
            weight = float(tail)
        except ValueError:
            pass
        else:
            path = head
    return check_name(name, "--variant"), path, weight


def initial_weights(names: Sequence[str], given: Mapping[str, float | None],
                    shadows: Sequence[str]) -> dict[str, float]:
    """Percent weights at start: explicit ones as given (a shadow's is 0); the variants without
    one (the primary, usually) share what is left of 100 equally."""
    out: dict[str, float] = {}
    for n in names:
        w = given.get(n)
        if n in shadows:
            if w:
                raise VariantConfigError(f"variant {n!r} is a shadow (--shadow) and has weight "
                                         f"{w:g}: a shadow gets a copy of the primary's traffic, "
                                         "no share of its own; drop one of the two.")
            out[n] = 0.0
        elif w is not None:
            if not 0 <= w <= 100:
                raise VariantConfigError(f"variant {n!r}: weight {w:g} is not a percentage "
                                         "in [0, 100].")
            out[n] = float(w)
    rest = 100.0 - sum(out.values())
    if rest < -1e-9:
        raise VariantConfigError(f"the variants' weights {out} add up to more than 100%.")
    free = [n for n in names if n not in out]
    for n in free:
        out[n] = rest / len(free)
    if sum(out.values()) <= 0:
        raise VariantConfigError(f"every variant has weight 0 ({out}): give one a share.")
    return {n: out[n] for n in names}


@attrs.frozen
class _Table:
    weights: dict[str, float]
    shadows: tuple[str, ...]
    live: tuple[str, ...]  # weight > 0, in order
    cum: tuple[float, ...]  # their cumulative weights
    version: int


class Router:
    """Picks the variant of each request (see the module doc); ``seed`` makes the random
    split repeatable (None: from the OS)."""

    def __init__(self, names: Sequence[str], weights: Mapping[str, float],
                 shadows: Sequence[str] = (), seed: int | None = None) -> None:
        self.names = tuple(names)
        self._rng = random.Random(seed)
        self._draw = threading.Lock()
        self._update = threading.Lock()
        self.table = self._build(dict(weights), tuple(shadows), 0)

    def _build(self, weights: dict[str, float], shadows: tuple[str, ...], version: int
               ) -> _Table:
        live = tuple(n for n in self.names if n not in shadows and weights.get(n, 0) > 0)
        cum, acc = [], 0.0
        for n in live:
            acc += weights[n]
            cum.append(acc)
        return _Table({n: float(weights.get(n, 0.0)) for n in self.names}, shadows, live,
                      tuple(cum), version)

    def pick(self, forced: str | None = None, client_key: str | None = None) -> str:
        """The variant for a request with these header values."""
        t = self.table  # one read: a concurrent update never splits a decision
        if forced:
            if forced not in t.weights:
                raise UnknownVariantError(f"{FORCE_HEADER}: {forced!r} is not a variant of this "
                                          f"server; it serves {list(self.names)}.")
            if forced in t.shadows:
                raise UnknownVariantError(f"{FORCE_HEADER}: {forced!r} is a shadow variant: "
                                          "its answers are never returned; promote it "
                                          "(POST /variants) to serve it.")
            return forced
        if client_key:
            digest = hashlib.blake2b(client_key.encode(), digest_size=8).digest()
            u = int.from_bytes(digest, "big") / 2**64
        else:
            with self._draw:
                u = self._rng.random()
        i = bisect.bisect_right(t.cum, u * t.cum[-1])
        return t.live[min(i, len(t.live) - 1)]

    def update(self, weights: Mapping[str, Any] | None = None,
               promote: str | None = None) -> _Table:
        """Set some variants' weights (the others keep theirs), or ``promote`` one to 100%
        (the others 0; a promoted shadow leaves the shadows). Checked whole before the swap:
        :class:`VariantConfigError` names what is wrong and nothing changes."""
        with self._update:
            t = self.table
            new, shadows = dict(t.weights), list(t.shadows)
            if promote is not None:
                self._known(promote)
                new = {n: 100.0 if n == promote else 0.0 for n in self.names}
                shadows = [s for s in shadows if s != promote]
            for n, w in (weights or {}).items():
                self._known(n)
                if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 100:
                    raise VariantConfigError(f"POST /variants: weight of {n!r} is {w!r}; "
                                             "expected a percentage in [0, 100].")
                if n in shadows and w > 0:
                    raise VariantConfigError(f"POST /variants: {n!r} is a shadow; promote it "
                                             '({"promote": "%s"}) to give it traffic.' % n)
                new[n] = float(w)
            if sum(w for n, w in new.items() if n not in shadows) <= 0:
                raise VariantConfigError(f"POST /variants: the weights {new} leave no live "
                                         "variant with traffic; give one a share.")
            self.table = self._build(new, tuple(shadows), t.version + 1)
            return self.table

    def apply(self, weights: Mapping[str, float], shadows: Sequence[str], version: int) -> bool:
        """Take a table decided elsewhere (another Ray replica's promotion, through
        :mod:`modelopt_serve.ray_deploy`'s store) when ``version`` is newer than ours."""
        with self._update:
            if version <= self.table.version or set(weights) != set(self.names):
                return False
            self.table = self._build(dict(weights), tuple(shadows), version)
            return True

    def _known(self, name: Any) -> None:
        if name not in self.names:
            raise VariantConfigError(f"POST /variants: {name!r} is not a variant of this "
                                     f"server; it serves {list(self.names)}.")
