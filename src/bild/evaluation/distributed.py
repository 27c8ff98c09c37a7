"""Process state for single- and multi-process (``accelerate launch``) runs.

Under ``accelerate launch`` with several processes the examples are split with accelerate's
``split_between_processes`` and the records gathered with ``gather_object``; only the main process
writes the final files. A plain ``python`` run uses :class:`LocalState`, which has the same methods
and needs no accelerate import.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any


class LocalState:
    """A single process: every split is the whole list, gathering is the identity."""

    num_processes = 1
    process_index = 0
    is_main_process = True
    device = None

    @contextmanager
    def split_between_processes(self, items: Sequence[Any]) -> Iterator[Sequence[Any]]:
        yield items

    def gather_object(self, items: Sequence[Any]) -> list[Any]:
        return list(items)

    def wait_for_everyone(self) -> None:
        pass


class AccelerateState:
    """Thin wrapper over ``accelerate.PartialState`` with the :class:`LocalState` interface."""

    def __init__(self, cpu: bool = False) -> None:
        from accelerate import PartialState

        self._state = PartialState(cpu=cpu)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and self._state.num_processes != world:
            raise RuntimeError(
                f"launched with WORLD_SIZE={world} but accelerate set up {self._state.num_processes} process(es); "
                "the processes would overwrite each other's files. Launch with `accelerate launch`."
            )

    num_processes = property(lambda self: self._state.num_processes)
    process_index = property(lambda self: self._state.process_index)
    is_main_process = property(lambda self: self._state.is_main_process)
    device = property(lambda self: self._state.device)

    @contextmanager
    def split_between_processes(self, items: Sequence[Any]) -> Iterator[Sequence[Any]]:
        with self._state.split_between_processes(list(items)) as shard:
            yield shard

    def gather_object(self, items: Sequence[Any]) -> list[Any]:
        from accelerate.utils import gather_object

        if self.num_processes == 1:
            return list(items)
        return gather_object(list(items))

    def wait_for_everyone(self) -> None:
        self._state.wait_for_everyone()


def get_state(device: str = "auto") -> LocalState | AccelerateState:
    """:class:`AccelerateState` when launched with several processes (``WORLD_SIZE`` > 1), else local.

    Processes run on CPU (gloo backend) when ``device`` is ``cpu`` or no GPU is available.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        return AccelerateState(cpu=device == "cpu" or not torch.cuda.is_available())
    return LocalState()
