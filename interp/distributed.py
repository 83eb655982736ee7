"""Several processes, one run: JAX's own multi-process runtime (``jax.distributed``), nothing home-made.

    >>> import interp.distributed
    >>> interp.distributed.initialize()          # on a cluster JAX finds the coordinator itself (SLURM, TPU pods...)
    >>> interp.distributed.initialize("10.0.0.1:1234", num_processes=2, process_id=0)   # or say where it is

Call it first in every process, before anything touches a device. Then ``sae.train`` splits each batch over every
device of every process: each process places its own rows of the batch on its own devices
(``jax.make_array_from_process_local_data``), the gradients are reduced across processes by XLA's collectives,
the first process alone writes checkpoints and the final dictionary, and a run resumes from its checkpoints with any
number of processes. On CPUs the collectives run over Gloo (switched on here), on GPUs over NCCL, on TPUs over ICI.
"""

from __future__ import annotations

import jax


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, local_device_ids=None) -> None:
    """``jax.distributed.initialize`` with CPU collectives switched on (Gloo), so that CPU-only processes can reduce
    across each other too. Without arguments JAX reads the cluster's environment (SLURM, Open MPI, TPU pods,
    Kubernetes); otherwise give ``coordinator`` (``host:port`` of process 0), ``num_processes`` and ``process_id``."""
    if jax.distributed.is_initialized():
        raise RuntimeError("interp.distributed.initialize was called twice; call it once, first in every process")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id, local_device_ids=local_device_ids)


def info() -> dict:
    """This process's index, the number of processes and the devices: local to this process and in all."""
    return {"process": jax.process_index(), "processes": jax.process_count(),
            "local_devices": jax.local_device_count(), "devices": jax.device_count()}
