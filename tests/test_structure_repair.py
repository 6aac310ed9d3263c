"""benchmarks.structure_repair's ion-cluster grouping (the experiment's only logic beyond the model's own step)."""
import numpy as np
import torch

from benchmarks.structure_repair import noise_groups


def test_li_joins_the_noise_group_of_its_closest_binding_partner_across_the_box():
    box = np.array([3.0, 3.0, 3.0])
    species = np.array(["LI", "PEO", "PEO", "TFS", "LI", "LI"])
    molecule = torch.tensor([0, 1, 1, 2, 3, 4])
    x = np.array([[0.05, 1.0, 1.0],   # Li: PEO bead 0.30 nm away through the boundary (0.86 of its 0.35 nm reach)
                  [2.75, 1.0, 1.0],   # ... and TFSI 0.50 nm away (0.88 of 0.57 nm): the PEO chain wins
                  [2.45, 1.0, 1.0],
                  [0.55, 1.0, 1.0],
                  [1.5, 2.5, 1.5],    # Li with nothing within reach keeps its own group
                  [0.55, 1.45, 1.0]])  # Li 0.45 nm from the TFSI (0.79 of its reach), 0.9 nm from any PEO bead
    groups, partner = noise_groups(x, box, species, molecule)
    assert partner == {0: 1, 5: 3}
    assert groups[0] == groups[1] == groups[2] and groups[5] == groups[3]
    assert len({int(groups[i]) for i in (0, 3, 4)}) == 3 and int(groups.max()) + 1 == 3
