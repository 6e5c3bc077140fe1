"""natural: one client per real group (writer, user): heterogeneity that no generator imitates."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from partitions.schemes.registry import Deal, NoParams, scheme

if TYPE_CHECKING:
    from partitions.spec import PartitionSpec


@scheme("natural", NoParams)
def natural(y: np.ndarray, spec: PartitionSpec, params: NoParams, gen: np.random.Generator,
            groups: np.ndarray | None = None) -> Deal:
    """Groups smaller than min_samples are left out; when more groups remain than num_clients, a
    random subset of them is kept. Client ids follow the ascending group ids; examples of groups
    not kept stay unassigned. The meta records each client's group id (`client_groups`), so that
    a result can be traced back to its writer."""
    if groups is None:
        raise ValueError("natural: the data set has no group ids; set data.group_column to the column that names "
                         "each example's writer/user (e.g. writer)")
    ids, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    eligible = np.flatnonzero(sizes >= spec.min_samples)
    if spec.num_clients > len(eligible):
        raise ValueError(f"natural: partition.num_clients={spec.num_clients} but the data set has only "
                         f"{len(eligible)} groups with >= partition.min_samples={spec.min_samples} samples "
                         f"({len(ids)} groups in all); set num_clients <= {len(eligible)}")
    kept = np.sort(gen.choice(eligible, spec.num_clients, replace=False))
    client_of_group = np.full(len(ids), -1, dtype=np.int64)
    client_of_group[kept] = np.arange(spec.num_clients)
    owner = client_of_group[inverse.ravel()]
    client_group = np.full(spec.num_clients, -1, dtype=np.int64)
    client_group[owner[owner >= 0]] = groups[owner >= 0]
    return Deal(owner, {"client_groups": client_group.tolist()})
