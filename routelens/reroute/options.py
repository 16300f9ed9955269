"""The command-line options of the re-routing policies: declared once, the same in every command.

Each :class:`PolicyOption` sets one settings field of every policy that has it (:mod:`.registry`):
``routelens reroute`` and ``finetune`` take one value (``--max-gpus 3``), ``reroute-eval`` a
comma-separated sweep (``--max-gpus 2,3``); the names follow docs/cli.md. ``commands._args`` adds them
to a parser from :data:`OPTIONS`. No torch here, so the command line starts fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import InputError

WEIGHTINGS = ("renorm", "keep")  # --routing-weights: the model's rule on the new choice, or unconstrained weights
GPU_SCORES = ("max", "mass")  # --gpu-score: how gpu-limited ranks GPUs (DeepSeek-V2's best expert, or weight held)
GPU_FILLS = ("best", "drop")  # --gpu-fill: experts lost on GPUs no longer visited are replaced, or dropped


def one_of(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"unknown {option} '{value}' (choose from {', '.join(choices)})")


@dataclass(frozen=True)
class PolicyOption:
    """One command-line option that sets a settings field, the same in every command that takes it.

    ``reroute`` and ``finetune`` take one value (``--max-gpus 3``); ``reroute-eval`` sweeps a
    comma-separated list (``--max-gpus 2,3``). See docs/cli.md.

    Attributes:
        flag: the option (``--group-size``); ``old_flags``: spellings accepted for one more release.
        dest: where argparse stores it (the same in every command).
        field: the settings field it sets, in every policy whose settings have that field.
        kind: ``int``, ``float`` or ``str`` (then ``choices``).
        lowest / highest: inclusive bounds; ``positive``: strictly above 0.
        metavar: one value's name.
        help: what it means, naming the policies that read it.
        default: the default of one run, and ``sweep_default``: of a sweep (words for ``--help``).
    """

    flag: str
    dest: str
    field: str
    kind: type
    metavar: str
    help: str
    default: str
    sweep_default: str
    choices: tuple[str, ...] = ()
    lowest: float | None = None
    highest: float | None = None
    positive: bool = False
    old_flags: tuple[str, ...] = ()

    def parse(self, text: str) -> Any:
        """One value from the command line.

        Raises:
            InputError: not a number of the option's kind, out of range, or not one of its choices.
        """
        return self._parse(text.strip(), text, sweep=False)

    def parse_list(self, text: str | None) -> tuple:
        """The comma-separated values of a sweep (``"2,3"`` -> ``(2, 3)``); ``()`` when not given."""
        if not text:
            return ()
        return tuple(self._parse(part.strip(), text, sweep=True) for part in text.split(",") if part.strip())

    def _parse(self, part: str, text: str, sweep: bool) -> Any:
        if self.choices:
            one_of(self.flag, part, self.choices)
            return part
        numbers = "whole numbers" if self.kind is int else "numbers"
        try:
            value = self.kind(part)
        except ValueError:
            raise InputError(f"{self.flag} takes {numbers}" + (" separated by commas" if sweep else "")
                             + f", got '{text}'") from None
        in_range = (math.isfinite(value) and (self.lowest is None or value >= self.lowest)
                    and (self.highest is None or value <= self.highest) and (not self.positive or value > 0))
        if not in_range:
            raise InputError(f"{self.flag} {'values ' if sweep else ''}must be {self.range_text()}, got '{text}'")
        return value

    def range_text(self) -> str:
        if self.positive:
            return "positive"
        if self.lowest is not None and self.highest is not None:
            return f"in [{self.lowest:g}, {self.highest:g}]"
        return f">= {self.lowest:g}"


OPTIONS: tuple[PolicyOption, ...] = (
    PolicyOption("--group-size", "top_t", "top_t", int, "T",
                 "c2r: T, collaborators each expert may be paired with", "E/4", "E/8, E/4, E/2", lowest=1,
                 old_flags=("--top-t",)),
    PolicyOption("--max-gpus", "max_gpus", "max_gpus", int, "M",
                 "gpu-limited: M, GPUs a token may visit; gpu-adaptive: an optional cap (never swept)",
                 "half the plan's GPUs", "from the fewest GPUs that hold k experts to half the plan's GPUs",
                 lowest=1),
    PolicyOption("--gpu-score", "gpu_score", "gpu_score", str, "max|mass",
                 "gpu-limited: pick the GPUs with the best single expert (max, DeepSeek-V2) or with the most "
                 "weight of the token's own top-k (mass)", "max", "max", choices=GPU_SCORES),
    PolicyOption("--min-gpu-share", "min_gpu_share", "min_gpu_share", float, "S",
                 "gpu-adaptive: share of a token's routing weight a GPU must hold to be visited", "0.1",
                 "0.05,0.075,0.1,0.15", lowest=0.0, highest=1.0),
    PolicyOption("--gpu-fill", "gpu_fill", "fill", str, "best|drop",
                 "GPU policies: experts a token loses on GPUs it no longer visits are replaced by the best on the "
                 "GPUs kept (best, DeepSeek-V2) or dropped (drop)", "best", "best", choices=GPU_FILLS),
    PolicyOption("--routing-weights", "routing_weights", "weights", str, "renorm|keep",
                 "routing weights of the re-routed experts: renorm: the model's rule on the new choice (as the "
                 "papers do); keep: each expert keeps the weight the unconstrained router gives it", "renorm",
                 "both", choices=WEIGHTINGS, old_flags=("--weights",)),
    PolicyOption("--capacity-factor", "capacity_factor", "capacity_factor", float, "F",
                 "capacity policies: gamma, capacity = ceil(gamma * tokens * k / experts)", "1.25",
                 "drop 1,1.25,1.5; reroute 1,1.1,1.25", positive=True),
)
